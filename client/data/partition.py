"""Split one labelled file among simulated data holders: IID, or skewed by label (Dirichlet).

Federated learning behaves differently when data holders see different label mixes, so demos and
tests need both an even split and a skewed one. The skewed split follows Hsu et al. (2019), as
Flower Datasets' ``DirichletPartitioner`` does: for every label, the share of that label each
client receives is drawn from ``Dirichlet(alpha, ..., alpha)``. A small ``alpha`` (0.1) gives most
clients one or two labels; a large one (100) is close to IID.

:func:`partition_indices` is pure (labels in, index lists out) and deterministic by ``seed``: the
same labels and seed give the same split on any machine, since it uses only Python's own
Mersenne Twister. Writing the files is a thin layer on top (:func:`write_partition`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from client.contract.data_format import DataFormat, detect_format
from client.contract.labelled import (
    DEFAULT_MAX_BYTES,
    LabelledData,
    OnBadRow,
    load_labelled,
    write_labelled,
)
from fedge.errors import DataError, UsageError

__all__ = [
    "Partition",
    "PartitionedFiles",
    "apportion",
    "client_file_name",
    "partition_file",
    "partition_indices",
    "sample_dirichlet",
    "write_partition",
]


@dataclass(frozen=True, slots=True)
class Partition:
    """Which examples each client holds (sorted indices), and which are held out for testing.

    Every index of the input appears exactly once across ``clients`` and ``heldout``.
    """

    clients: tuple[tuple[int, ...], ...]
    heldout: tuple[int, ...] = ()

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(indices) for indices in self.clients)


def sample_dirichlet(rng: random.Random, alpha: float, size: int) -> list[float]:
    """One draw from a symmetric Dirichlet, through normalised Gamma draws.

    With a very small ``alpha`` every Gamma draw can underflow to zero; the limit of the
    distribution is then all mass on one component, which is what is returned.
    """
    draws = [rng.gammavariate(alpha, 1.0) for _ in range(size)]
    total = math.fsum(draws)
    if total <= 0.0 or not math.isfinite(total):
        winner = rng.randrange(size)
        return [1.0 if i == winner else 0.0 for i in range(size)]
    return [draw / total for draw in draws]


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Whole counts proportional to ``weights`` that sum to ``total`` (largest remainder).

    Ties go to the lower index, so the result depends on nothing but its arguments.
    """
    weight_sum = math.fsum(weights)
    if total < 0 or not weights or weight_sum <= 0.0:
        raise ValueError("apportion needs a non-negative total and positive weights")
    exact = [total * weight / weight_sum for weight in weights]
    counts = [math.floor(share) for share in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _check_options(num_clients: int, alpha: float | None, heldout_fraction: float) -> None:
    if num_clients < 1:
        raise UsageError(f"num_clients must be at least 1, got {num_clients}")
    if alpha is not None and not (alpha > 0.0 and math.isfinite(alpha)):
        raise UsageError(f"alpha must be a positive number (or None for IID), got {alpha}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise UsageError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")


def _check_count(count: int, num_clients: int) -> None:
    if count < num_clients:
        raise UsageError(
            f"cannot split {count} examples among {num_clients} clients: "
            "each client needs at least one"
        )


def _by_label(indices: Sequence[int], labels: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for index in indices:
        groups.setdefault(labels[index], []).append(index)
    return dict(sorted(groups.items()))


def _take_heldout(
    labels: Sequence[int], fraction: float, rng: random.Random
) -> tuple[list[int], list[int]]:
    """A held-out set stratified by label, so it mirrors the label mix of the whole file."""
    if fraction == 0.0:
        return list(range(len(labels))), []
    wanted = max(1, round(fraction * len(labels)))
    groups = _by_label(range(len(labels)), labels)
    quotas = apportion(wanted, [len(group) for group in groups.values()])
    kept: list[int] = []
    heldout: list[int] = []
    for group, quota in zip(groups.values(), quotas, strict=True):
        rng.shuffle(group)
        heldout.extend(group[:quota])
        kept.extend(group[quota:])
    return sorted(kept), heldout


def _iid(indices: list[int], num_clients: int, rng: random.Random) -> list[list[int]]:
    rng.shuffle(indices)
    base, extra = divmod(len(indices), num_clients)
    clients: list[list[int]] = []
    start = 0
    for client in range(num_clients):
        size = base + (1 if client < extra else 0)
        clients.append(indices[start : start + size])
        start += size
    return clients


def _dirichlet(
    indices: list[int], labels: Sequence[int], num_clients: int, alpha: float, rng: random.Random
) -> list[list[int]]:
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    for group in _by_label(indices, labels).values():
        rng.shuffle(group)
        counts = apportion(len(group), sample_dirichlet(rng, alpha, num_clients))
        start = 0
        for client, count in zip(clients, counts, strict=True):
            client.extend(group[start : start + count])
            start += count
    _fill_empty(clients)
    return clients


def _fill_empty(clients: list[list[int]]) -> None:
    """Give every empty client one example from the largest client.

    Redrawing until no client is empty (what some partitioners do) may never end for a tiny
    ``alpha``; moving one example each keeps the skew and always terminates, given at least as
    many examples as clients.
    """
    for empty in [client for client in clients if not client]:
        donor = max(clients, key=len)
        empty.append(donor.pop())


def partition_indices(
    labels: Sequence[int],
    num_clients: int,
    *,
    alpha: float | None = None,
    seed: int = 0,
    heldout_fraction: float = 0.0,
) -> Partition:
    """Split the examples whose labels are ``labels`` among ``num_clients`` clients.

    ``alpha=None`` is an IID split (sizes differ by at most one); a number is the Dirichlet
    concentration of a label-skewed split. ``heldout_fraction`` first sets aside that share of
    the examples (at least one when it is above zero), stratified by label. Raises
    :class:`UsageError` when a client would be left empty.
    """
    _check_options(num_clients, alpha, heldout_fraction)
    _check_count(len(labels), num_clients)
    rng = random.Random(seed)
    kept, heldout = _take_heldout(labels, heldout_fraction, rng)
    if len(kept) < num_clients:
        raise UsageError(
            f"after holding out {len(heldout)} of {len(labels)} examples, {len(kept)} remain "
            f"for {num_clients} clients: each client needs at least one"
        )
    clients = (
        _iid(kept, num_clients, rng)
        if alpha is None
        else _dirichlet(kept, labels, num_clients, alpha, rng)
    )
    return Partition(
        clients=tuple(tuple(sorted(client)) for client in clients),
        heldout=tuple(sorted(heldout)),
    )


def client_file_name(index: int, num_clients: int, fmt: DataFormat) -> str:
    """``client-07.tsv``: zero-padded so that the files sort in client order."""
    width = len(str(max(num_clients - 1, 0)))
    return f"client-{index:0{width}d}.{fmt}"


def write_partition(
    data: LabelledData,
    partition: Partition,
    out_dir: str | Path,
    *,
    format: DataFormat = "tsv",  # the word users know, as in load_labelled
    text_column: str = "text",
    label_column: str = "label",
) -> tuple[Path, ...]:
    """One file per client (``client-NN.<format>``) and ``heldout.<format>`` if any, atomically.

    Labels are written as the source wrote them (names or indices), so each client's file loads
    with the same options as the original. Other columns of the source are not carried over.
    """
    folder = Path(out_dir)
    count = len(partition.clients)
    written = [
        write_labelled(
            folder / client_file_name(i, count, format),
            data.subset(indices),
            format=format,
            text_column=text_column,
            label_column=label_column,
        )
        for i, indices in enumerate(partition.clients)
    ]
    if partition.heldout:
        written.append(
            write_labelled(
                folder / f"heldout.{format}",
                data.subset(partition.heldout),
                format=format,
                text_column=text_column,
                label_column=label_column,
            )
        )
    return tuple(written)


@dataclass(frozen=True, slots=True)
class PartitionedFiles:
    """What :func:`partition_file` read, how it split it, and the files it wrote."""

    data: LabelledData
    partition: Partition
    files: tuple[Path, ...]


def partition_file(
    path: str | Path,
    out_dir: str | Path,
    *,
    num_clients: int,
    alpha: float | None = None,
    seed: int = 0,
    heldout_fraction: float = 0.0,
    format: str | None = None,  # the input's format; the output keeps it
    text_column: str = "text",
    label_column: str = "label",
    num_labels: int | None = None,
    label_names: Sequence[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    on_bad_row: OnBadRow = "error",
) -> PartitionedFiles:
    """Load a labelled file and write its split among ``num_clients`` clients, same format.

    A split that cannot be made from this file (fewer examples than clients) is a
    :class:`DataError` naming the file; a bad option is a :class:`UsageError`, raised before
    the file is read.
    """
    _check_options(num_clients, alpha, heldout_fraction)
    data = load_labelled(
        path,
        format=format,
        text_column=text_column,
        label_column=label_column,
        num_labels=num_labels,
        label_names=label_names,
        max_bytes=max_bytes,
        on_bad_row=on_bad_row,
    )
    fmt = detect_format(path, format=format)
    try:
        partition = partition_indices(
            data.labels,
            num_clients,
            alpha=alpha,
            seed=seed,
            heldout_fraction=heldout_fraction,
        )
    except UsageError as exc:
        raise DataError(str(exc), path=str(path)) from exc
    files = write_partition(
        data,
        partition,
        out_dir,
        format=fmt,
        text_column=text_column,
        label_column=label_column,
    )
    return PartitionedFiles(data=data, partition=partition, files=files)
