"""Flagging a holder whose update is far outside the others': observation, never exclusion.

For every round aggregated in the clear, each accepted update ``u_i = reply_i - global`` is
measured two ways: its L2 norm, and its L2 distance to the coordinate-wise median of all the
round's updates. A holder is flagged when either value is more than :data:`OUTLIER_FACTOR` (3)
times the median of the same value over the *other* holders, with the reason written out
(``"update norm 12.3 is 8.1x the median 1.5 of the others"``). Honest DP-SGD updates are clipped
and noised alike, so their norms sit close together; a scaled or sign-flipped update stands out
on one measure or both. With fewer than three updates there is no majority to compare with, so
nothing is flagged. Under ``secagg`` or ``he`` the coordinator never sees one update on its own,
so nothing is measured.

Flagging does not change what is aggregated: the strategy (FedAvg, or a robust rule) decides
that; the flag goes into the round's line of ``metrics.jsonl`` (``flagged``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["OUTLIER_FACTOR", "flag_outliers"]

OUTLIER_FACTOR = 3.0
_MIN_UPDATES = 3
_TINY = 1e-12

Arrays = Mapping[str, npt.NDArray[Any]]


def _flat(arrays: Arrays, names: Sequence[str]) -> npt.NDArray[np.float64]:
    return np.concatenate([np.asarray(arrays[n], dtype=np.float64).ravel() for n in names])


def _over(values: npt.NDArray[np.float64], index: int, factor: float) -> tuple[float, float] | None:
    """(ratio, median of the others) when ``values[index]`` is over ``factor`` times it."""
    others = float(np.median(np.delete(values, index)))
    value = float(values[index])
    if others <= _TINY:
        return None
    ratio = value / others
    return (ratio, others) if ratio > factor else None


def flag_outliers(
    global_arrays: Arrays,
    updates: Mapping[str, Arrays],
    *,
    factor: float = OUTLIER_FACTOR,
) -> dict[str, str]:
    """``{holder: reason}`` for the holders in ``updates`` whose update stands out.

    ``updates`` maps each holder to the arrays it sent (the whole trainable model, as a reply
    carries it); the update is their difference from ``global_arrays``.
    """
    if len(updates) < _MIN_UPDATES:
        return {}
    names = sorted(global_arrays)
    base = _flat(global_arrays, names)
    holders = list(updates)
    deltas = np.stack([_flat(updates[h], names) - base for h in holders])
    norms = np.linalg.norm(deltas, axis=1)
    distances = np.linalg.norm(deltas - np.median(deltas, axis=0), axis=1)
    flagged: dict[str, str] = {}
    for index, holder in enumerate(holders):
        reasons = []
        if (over := _over(norms, index, factor)) is not None:
            reasons.append(
                f"update norm {norms[index]:.3g} is {over[0]:.1f}x the median "
                f"{over[1]:.3g} of the others"
            )
        if (over := _over(distances, index, factor)) is not None:
            reasons.append(
                f"distance to the median update {distances[index]:.3g} is {over[0]:.1f}x "
                f"the others' median {over[1]:.3g}"
            )
        if reasons:
            flagged[holder] = "; ".join(reasons)
    return flagged
