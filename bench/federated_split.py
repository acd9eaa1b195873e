"""The data of ``federated_accuracy.py``: a labelled file split among holders and a held-out part.

One job: subsample the file, split it among the clients with Dirichlet label skew
(``client.data.partition``) and a stratified held-out part no client sees, write each client's
file, and pool what the clients' ClientApps train on (each keeps its own evaluation share) for
the central arms.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from client.contract.labelled import LabelledData


@dataclass
class Split:
    """The subsample, each client's file, the held-out part, and what the clients train on."""

    clients: list[LabelledData]
    heldout: LabelledData
    pooled_train: LabelledData  # the union of the clients' training parts
    client_train_sizes: list[int]


def split_data(args: argparse.Namespace, data: LabelledData, data_dir: Path) -> Split:
    from client.data.partition import partition_indices, write_partition
    from client.federation.transaction import ClientSettings, split_heldout

    wanted = args.train_size + args.test_size
    if wanted > len(data):
        raise SystemExit(
            f"federated_accuracy: {args.data} has {len(data)} examples, fewer than the "
            f"{wanted} asked for (--train-size + --test-size)"
        )
    chosen = sorted(random.Random(args.seed).sample(range(len(data)), wanted))
    sample = data.subset(chosen)
    partition = partition_indices(
        sample.labels,
        args.clients,
        alpha=args.alpha,
        seed=args.seed,
        heldout_fraction=args.test_size / wanted,
    )
    write_partition(sample, partition, data_dir, format="tsv")
    clients = [sample.subset(indices) for indices in partition.clients]
    # What each simulated ClientApp trains on: its file minus its own evaluation share.
    defaults = ClientSettings(name="bench", data_path=Path(), state_dir=Path())
    trains = [
        split_heldout(client, fraction=defaults.eval_fraction, seed=defaults.seed)[0]
        for client in clients
    ]
    texts = [text for train in trains for text in train.texts]
    labels = [label for train in trains for label in train.labels]
    pooled = type(sample)(
        texts=tuple(texts),
        labels=tuple(labels),
        label_names=sample.label_names,
        path=sample.path,
        named_labels=sample.named_labels,
    )
    return Split(clients, sample.subset(partition.heldout), pooled, [len(t) for t in trains])
