"""The CKKS arm of ``protected_aggregation.py``: one round through fedge's own HE code.

One job: generate the keys once (``he_setup``) and run a round with
``client.federation.he.encrypt_update``, ``server.federation.he_aggregate.aggregate_encrypted``
and ``decrypt_aggregate``, timing each side and counting the ciphertexts' bytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from aggregation_workload import RoundCost, Workload, timed


@dataclass
class HeSetup:
    secret: Any
    public: Any
    keygen_s: float
    max_total_weight: int


def he_setup(params: Any) -> HeSetup:
    from client.federation.he import generate_keys, secret_context_from_bytes
    from server.federation.he_aggregate import public_context_from_bytes

    keys, seconds = timed(lambda: generate_keys(params))
    return HeSetup(
        secret_context_from_bytes(keys.secret_context),
        public_context_from_bytes(keys.public_context),
        seconds,
        params.max_total_weight,
    )


def run_he(work: Workload, he: HeSetup) -> RoundCost:
    from client.federation.he import decrypt_aggregate, encrypt_update
    from server.federation.he_aggregate import ClientUpdate, aggregate_encrypted

    cost = RoundCost()
    sent = []
    for index, (update, count) in enumerate(zip(work.updates, work.counts, strict=True)):
        encrypted, seconds = timed(functools.partial(encrypt_update, he.secret, [update]))
        cost.client_s.append(seconds)
        sent.append(ClientUpdate(f"h{index}", encrypted.chunks, count, encrypted.digest))
    size = work.reference.size
    result, cost.server_s = timed(
        lambda: aggregate_encrypted(
            he.public,
            sent,
            num_values=size,
            minimum=len(sent),
            max_total_weight=he.max_total_weight,
        )
    )
    (decoded,), cost.decode_s = timed(
        lambda: decrypt_aggregate(he.secret, result.chunks, [(size,)], result.total_weight)
    )
    cost.bytes_up = sum(len(c) for c in sent[0].chunks)
    cost.bytes_down = result.bytes_out
    cost.max_err = float(np.max(np.abs(decoded.astype(np.float64) - work.reference)))
    return cost
