"""Bare Flower for ``bench/scale.py``: FedAvg and a ClientApp that sends arrays back, nothing else.

The baseline that fedge's figures stand beside: the same engine, the same number of holders and
the same sampling (``perRound`` of them a round), arrays of the same names and shapes as fedge's
trainable weights, but no model, no DP-SGD, no privacy ledger, no evaluation, no checkpoint. The
ClientApp adds a constant to what it receives (so an update exists) and replies; the ServerApp
is Flower's own ``FedAvg.start``, timed per round from ``configure_train`` (sampling and
building the messages) to the end of ``aggregate_train``: the span fedge's ``metrics.jsonl``
calls ``seconds`` (push the train messages, collect, aggregate).

One module serves both engines. The simulation builds the ServerApp with
:func:`make_server_app` and hands :data:`client_app` to Flower's ``run_simulation`` (Ray workers
import this module by name: Flower gives them the driver's ``sys.path``). The Deployment Engine
loads ``scale_flower_app:server_app`` and ``scale_flower_app:client_app`` from the app folder
``bench/scale.py`` writes with this file in it, and the ServerApp reads its settings from the run
config.

Note what stock Flower does that fedge does not: on a SuperLink, ``Grid.send_and_receive`` polls
for replies every 3 s, so a bare round there lasts a multiple of about 3 s; fedge's round loop
polls every 0.1 s. Both are what a user of each gets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

__all__ = ["BareSettings", "client_app", "make_server_app", "server_app"]

EXAMPLES = 20  # what each holder reports as its number of examples (weights the average)


class BareSettings:
    """What the bare ServerApp needs: the arrays' shapes, the holders, sampling, where to write."""

    def __init__(
        self,
        *,
        shapes: dict[str, list[int]],
        holders: int,
        per_round: int,
        rounds: int,
        timing_file: Path,
        round_timeout: float = 600.0,
    ) -> None:
        self.shapes, self.holders, self.per_round = shapes, holders, per_round
        self.rounds, self.timing_file, self.round_timeout = rounds, timing_file, round_timeout

    @classmethod
    def from_run_config(cls, context: Context) -> BareSettings:
        config = context.run_config
        return cls(
            shapes=json.loads(str(config["shapes"])),
            holders=int(str(config["holders"])),
            per_round=int(str(config["per-round"])),
            rounds=int(str(config["rounds"])),
            timing_file=Path(str(config["timing-file"])),
            round_timeout=float(str(config["round-timeout"])),
        )


class _TimedFedAvg(FedAvg):
    """FedAvg that remembers when each round's train phase began and when it was aggregated."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started: dict[int, float] = {}
        self.seconds: dict[int, float] = {}
        self.replies: dict[int, int] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.started[server_round] = time.monotonic()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        result = super().aggregate_train(server_round, replies)
        self.seconds[server_round] = time.monotonic() - self.started[server_round]
        self.replies[server_round] = sum(1 for reply in replies if not reply.has_error())
        return result


def _run(grid: Grid, settings: BareSettings) -> None:
    initial = ArrayRecord(
        {
            name: Array(np.zeros(shape, dtype=np.float32))
            for name, shape in sorted(settings.shapes.items())
        }
    )
    strategy = _TimedFedAvg(
        fraction_train=settings.per_round / settings.holders,
        fraction_evaluate=0.0,  # fedge's evaluation rides on its train messages
        min_train_nodes=settings.per_round,
        min_evaluate_nodes=0,
        min_available_nodes=settings.per_round,
    )
    started = time.monotonic()
    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=settings.rounds,
        timeout=settings.round_timeout,
    )
    settings.timing_file.write_text(
        json.dumps(
            {
                "seconds": [strategy.seconds[r] for r in sorted(strategy.seconds)],
                "replies": [strategy.replies[r] for r in sorted(strategy.replies)],
                "wall_seconds": time.monotonic() - started,
            }
        )
        + "\n"
    )


def make_server_app(settings: BareSettings) -> ServerApp:
    """The bare ServerApp for the simulation, where no run config reaches it."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, _context: Context) -> None:
        _run(grid, settings)

    return app


server_app = ServerApp()


@server_app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    _run(grid, BareSettings.from_run_config(context))


client_app = ClientApp()


@client_app.train()
def _train(message: Message, _context: Context) -> Message:
    received = message.content.array_records["arrays"]
    updated = ArrayRecord(
        {name: Array(array.numpy() + np.float32(0.01)) for name, array in received.items()}
    )
    content = RecordDict({"arrays": updated, "metrics": MetricRecord({"num-examples": EXAMPLES})})
    return Message(content=content, reply_to=message)
