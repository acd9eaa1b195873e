"""``fedge``: the operator's command line. Each command group lives in a module of its own in
this package with a ``register(app)``; this module only creates the app and mounts them.

The order of registration is the order ``fedge --help`` lists them in: commands first (deploy,
export, train, certs, report, demo), then groups (policy, keys, artifact, enroll, place, fleet).
"""

from __future__ import annotations

from fedge.cli import main_for, new_app
from server.cli import (
    artifact,
    broker,
    certs,
    console,
    demo,
    enroll,
    explain,
    export,
    fleet,
    keys,
    kit,
    place,
    policy,
    proxy,
    report,
    runs,
    train,
)

__all__ = ["app", "main"]

app = new_app(
    "fedge", "fedge for the operator: policies, keys, artifacts, training, placement, fleet."
)
for group in (
    policy,
    keys,
    artifact,
    enroll,
    place,
    fleet,
    runs,
    kit,
    broker,
    proxy,
    export,
    explain,
    train,
    certs,
    report,
    console,
    demo,
):
    group.register(app)


main = main_for(app, "fedge")
