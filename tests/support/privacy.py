"""A privacy history and Opacus's own accountants, shared by the accounting and ledger tests."""

from __future__ import annotations

from typing import Any

from opacus.accountants import PRVAccountant, RDPAccountant

from client.privacy.accounting import Mechanism

DELTA = 1e-5
# Small histories keep PRV (a numerical convolution) fast; two equal rounds exercise the merge.
ROUNDS: list[Mechanism] = [(1.1, 0.01, 40), (1.1, 0.01, 40), (0.9, 0.02, 25), (1.3, 0.01, 30)]
ACCOUNTANTS = [("rdp", RDPAccountant), ("prv", PRVAccountant)]


def watched(cls: type[Any], rounds: list[Mechanism]) -> Any:
    """An Opacus accountant that saw every optimizer step, as during real DP training."""
    accountant = cls()
    for noise, rate, steps in rounds:
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
    return accountant
