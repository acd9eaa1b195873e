"""The SecAgg+ arm of ``protected_aggregation.py``: one round with Flower's own primitives.

One job: run every stage of a SecAgg+ round among all holders (key pairs, Shamir shares sent
encrypted to every neighbour, quantized and masked updates, the coordinator's unmasking) as
Flower's ``secaggplus_mod`` and ``SecAggPlusWorkflow`` do, timing each holder's work and counting
the bytes each sends; the transport itself is left out.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from aggregation_workload import Floats, RoundCost, Workload, timed


@dataclass(frozen=True)
class SecAggConfig:
    """The SecAggPlusWorkflow defaults fedge uses (server/federation/secagg.py)."""

    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    max_weight: float = 1000.0
    threshold_fraction: float = 0.5


class SecAggRound:
    """One SecAgg+ round among all holders, stage by stage as Flower runs it, timed per holder.

    The stages follow ``flwr.client.mod.secure_aggregation.secaggplus_mod`` (setup, share keys,
    collect masked vectors, unmask) and the unmasking of ``SecAggPlusWorkflow``, with Flower's own
    primitives; the transport is left out, its bytes are counted.
    """

    def __init__(self, work: Workload, config: SecAggConfig) -> None:
        self.work, self.config = work, config
        self.nids = list(range(1, len(work.updates) + 1))
        self.threshold = max(2, math.ceil(config.threshold_fraction * len(self.nids)))
        self.client_s = dict.fromkeys(self.nids, 0.0)
        self.up = dict.fromkeys(self.nids, 0)
        self.keys: dict[int, tuple[bytes, bytes, bytes, bytes]] = {}  # sk1, pk1, sk2, pk2
        self.seeds: dict[int, bytes] = {}
        self.own_shares: dict[int, bytes] = {}
        self.inbox: dict[int, list[tuple[int, bytes]]] = {nid: [] for nid in self.nids}
        self.held: dict[int, dict[int, bytes]] = {}  # holder -> owner -> seed share
        self.masked: dict[int, list[bytes]] = {}

    def charge(self, nid: int, fn: Callable[[], Any]) -> Any:
        value, seconds = timed(fn)
        self.client_s[nid] += seconds
        return value

    def setup(self, nid: int) -> None:
        from flwr.supercore.primitives.asymmetric import (
            generate_key_pairs,
            private_key_to_bytes,
            public_key_to_bytes,
        )

        def make() -> tuple[bytes, bytes, bytes, bytes]:
            sk1, pk1 = generate_key_pairs()
            sk2, pk2 = generate_key_pairs()
            return (
                private_key_to_bytes(sk1),
                public_key_to_bytes(pk1),
                private_key_to_bytes(sk2),
                public_key_to_bytes(pk2),
            )

        self.keys[nid] = self.charge(nid, make)
        self.up[nid] += len(self.keys[nid][1]) + len(self.keys[nid][3])

    def _shared(self, nid: int, peer: int, pair: int) -> bytes:
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
            generate_shared_key,
        )
        from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

        secret, public = (0, 1) if pair == 1 else (2, 3)
        key: bytes = generate_shared_key(
            bytes_to_private_key(self.keys[nid][secret]),
            bytes_to_public_key(self.keys[peer][public]),
        )
        return key

    def share_keys(self, nid: int) -> None:
        from flwr.common.secure_aggregation.crypto.shamir import create_shares
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt
        from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat

        def make() -> list[tuple[int, bytes]]:
            self.seeds[nid] = os.urandom(32)
            b_shares = create_shares(self.seeds[nid], self.threshold, len(self.nids))
            sk1_shares = create_shares(self.keys[nid][0], self.threshold, len(self.nids))
            out = []
            for idx, peer in enumerate(self.nids):
                if peer == nid:
                    self.own_shares[nid] = b_shares[idx]
                    continue
                plaintext = share_keys_plaintext_concat(nid, peer, b_shares[idx], sk1_shares[idx])
                out.append((peer, encrypt(self._shared(nid, peer, 2), plaintext)))
            return out

        for peer, ciphertext in self.charge(nid, make):
            self.inbox[peer].append((nid, ciphertext))
            self.up[nid] += len(ciphertext)

    def collect_masked(self, nid: int, update: Floats, count: int) -> None:
        from flwr.common import ndarray_to_bytes
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            factor_combine,
            parameters_addition,
            parameters_mod,
            parameters_multiply,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.quantization import quantize
        from flwr.common.secure_aggregation.secaggplus_utils import (
            pseudo_rand_gen,
            share_keys_plaintext_separate,
        )

        config, mod = self.config, self.config.modulus_range

        def make() -> list[bytes]:
            self.held[nid] = {nid: self.own_shares[nid]}
            for src, ciphertext in self.inbox[nid]:
                plaintext = decrypt(self._shared(nid, src, 2), ciphertext)
                self.held[nid][src] = share_keys_plaintext_separate(plaintext)[2]
            q_ratio = round(count / config.max_weight * config.quantization_range)
            params = parameters_multiply([update], q_ratio / config.quantization_range)
            quantized = quantize(params, config.clipping_range, config.quantization_range)
            quantized = factor_combine(q_ratio, quantized)
            dims = [a.shape for a in quantized]
            quantized = parameters_addition(quantized, pseudo_rand_gen(self.seeds[nid], mod, dims))
            for peer in self.nids:
                if peer != nid:
                    pairwise = pseudo_rand_gen(self._shared(nid, peer, 1), mod, dims)
                    combine = parameters_addition if nid > peer else parameters_subtraction
                    quantized = combine(quantized, pairwise)
            return [ndarray_to_bytes(a) for a in parameters_mod(quantized, mod)]

        self.masked[nid] = self.charge(nid, make)
        self.up[nid] += sum(len(b) for b in self.masked[nid])

    def unmask(self) -> bytes:
        """The coordinator: sum, reconstruct every seed from shares, remove masks, dequantize."""
        from flwr.common import bytes_to_ndarray, ndarray_to_bytes
        from flwr.common.secure_aggregation.crypto.shamir import combine_shares
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            factor_extract,
            parameters_addition,
            parameters_mod,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.quantization import dequantize
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

        config, mod = self.config, self.config.modulus_range
        total: list[Any] | None = None
        for blobs in self.masked.values():
            vec = [bytes_to_ndarray(b) for b in blobs]
            total = vec if total is None else parameters_addition(total, vec)
        assert total is not None
        total = parameters_mod(total, mod)
        shapes = [a.shape for a in total]
        for nid in self.nids:
            shares = [self.held[peer][nid] for peer in self.nids[: self.threshold]]
            private = pseudo_rand_gen(combine_shares(shares), mod, shapes)
            total = parameters_subtraction(total, private)
        q_total, recon = factor_extract(parameters_mod(total, mod))
        (mean,) = dequantize(recon, config.clipping_range, config.quantization_range)
        mean += -(len(self.nids) - 1) * config.clipping_range
        mean *= config.quantization_range / q_total
        return bytes(ndarray_to_bytes(mean.astype(np.float32)))


def run_secagg(work: Workload, config: SecAggConfig) -> RoundCost:
    from flwr.common import bytes_to_ndarray

    secagg = SecAggRound(work, config)
    for nid in secagg.nids:
        secagg.setup(nid)
    for nid in secagg.nids:
        secagg.share_keys(nid)
    for nid, update, count in zip(secagg.nids, work.updates, work.counts, strict=True):
        secagg.collect_masked(nid, update, count)
    for nid in secagg.nids:  # stage 3: each holder sends the seed shares it holds
        secagg.up[nid] += sum(len(share) for share in secagg.held[nid].values())
    result, server_s = timed(secagg.unmask)
    decoded, decode_s = timed(lambda: bytes_to_ndarray(result))
    return RoundCost(
        client_s=list(secagg.client_s.values()),
        server_s=server_s,
        decode_s=decode_s,
        bytes_up=int(statistics.median(secagg.up.values())),
        bytes_down=len(result),
        max_err=float(np.max(np.abs(decoded.astype(np.float64) - work.reference))),
    )
