"""A warm ClientApp executor for a data holder: two small patches over Flower 1.41 internals.

Why: Flower 1.41's Deployment Engine runs every message (train, evaluate) in a fresh
``flwr-clientapp`` process. Each one imports torch, transformers, peft and opacus and loads the
model again, which on a small CPU machine is most of a round. Flower's own warm executor pools
exist only for the Kubernetes executor and only for AgentApp/Model/Connector tasks, never for a
ClientApp; what it does offer is ``flower-supernode --isolation process``, where the data holder
runs the SuperExec (the process that starts the ClientApps) itself. This module is that
SuperExec, and a wrapper around the SuperNode:

``python -m client.node.warm superexec [--preload-node-config CONFIG] FLOWER-SUPEREXEC-ARGS...``
    Imports fedge's ClientApp once (torch, transformers, peft, opacus), optionally loads the
    holder's model and tokenizes its data into ``client.federation.transaction``'s module cache
    (CONFIG is the SuperNode's own ``--node-config`` string, or a JSON object), then runs Flower's
    own ``flower-superexec`` with one change: a ClientApp task is started with ``os.fork()`` of this
    warm process (copy-on-write, so each task still is a process of its own that exits when the
    task is done) calling Flower's ``run_clientapp`` in the child, instead of exec'ing a new
    ``flwr-clientapp``. Other task types go through Flower's launcher unchanged. Finished
    children are reaped between task polls. ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (Flower's
    own setting, 1 s by default) is set to 0.05 s unless already set, and a task's first wait for
    its message's content is shortened (patch 3 below).

``python -m client.node.warm supernode [--idle-poll SECONDS] FLOWER-SUPERNODE-ARGS...``
    Runs Flower's own ``flower-supernode``, with the sleeps of its message loop capped at
    ``--idle-poll`` (0.2 s by default): Flower 1.41 waits a hard-coded 3 s after every empty
    pull from the SuperLink and polls for a ClientApp's reply every 0.5 s. Its first wait for a
    message's content is shortened too (patch 4 below).

The patches, exactly (Flower is pinned to 1.41.0 in pyproject.toml; every Flower internal named
here is listed, and checked by a test, in ``client/node/flower_internals.py``):

1. ``flwr.supercore.superexec.executor.subprocess_executor.SubprocessExecutor.launch`` and
   ``.reconcile`` are replaced on the class (in the SuperExec process only). The child relies on
   ``ExecutionSpec``'s fields, on ``flwr.supernode.runtime.run_clientapp.run_clientapp``'s
   signature, and on ``flwr.supercore.exit.exit_handler.registered_exit_handlers`` (emptied in
   the child so that it never runs the SuperExec's own exit handlers).
2. The name ``time`` in ``flwr.supernode.start_client_internal`` (and only there) is rebound to a
   shim whose ``sleep`` is capped; every other attribute is the real ``time`` module's.
3. The name ``pull_and_inflate_object_from_tree`` in ``flwr.supernode.runtime.run_clientapp``
   (in the SuperExec, hence in every forked task) is rebound to Flower's own function with
   ``initial_backoff=0.05`` instead of 1 s; the later retries still double up to Flower's cap,
   so the task waits about as long in all before giving up. Why: the SuperNode creates a task
   before it has pulled the message's content from the SuperLink. A task forked within
   milliseconds asks too early, and Flower's first retry then waits a full second; a stock
   ``flwr-clientapp`` never noticed, since its start-up takes seconds.
4. The same for the name ``pull_objects`` in ``flwr.supernode.start_client_internal`` (in the
   SuperNode): it can see a message on the SuperLink before the ServerApp has finished pushing
   the message's content there, and then waited a full second too; with a 3 s idle sleep that
   race was rare, with a 0.2 s one it is not.

Patches 3 and 4 change only how soon the first retry comes, never whether or what is pulled.

If Flower renames or reshapes any of these, that patch is skipped with a warning in the log and
Flower's stock behaviour runs: correct, just slower (a fresh process per message, 3 s idle sleep,
1 s first retries).
If Flower keeps the names but changes what they mean (say ``run_clientapp`` starts needing
state the SuperExec sets up, or the SuperNode loop uses ``time.sleep`` for something that must
not be shortened), the patch could misbehave silently: re-check both against the new release's
source before raising the pin. The version check below warns on any Flower but 1.41.x.

Forking a process that uses PyTorch needs one precaution: GNU OpenMP (PyTorch's CPU thread pool
on Linux) does not survive ``fork`` once its worker threads exist, and a child that enters a
parallel region then hangs. The SuperExec therefore keeps torch at one thread for everything it
does itself (imports, model load) so that the pool is never started in the parent, and each child
restores the thread count it would have had and starts a fresh pool of its own. Tokenizers'
Rust thread pool has the same problem, hence ``TOKENIZERS_PARALLELISM=false``.

The SuperExec talks to the SuperNode's Runtime API over plain HTTP (``--insecure``), as Flower's
default subprocess isolation does: the API listens on loopback only (``--host 127.0.0.1``), so
nothing leaves the machine, but any local user who can reach that port could ask it for tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import signal
import sys
import time
import traceback
import types
from collections.abc import Mapping, Sequence
from logging import DEBUG, INFO, WARNING
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

__all__ = [
    "DEFAULT_IDLE_POLL",
    "DEFAULT_TASK_POLL",
    "OBJECT_PULL_BACKOFF",
    "cap_supernode_sleep",
    "install_fork_launcher",
    "main",
    "parse_node_config",
    "shorten_pull_backoff",
    "superexec_main",
    "supernode_main",
]

PINNED_FLOWER = "1.41."
DEFAULT_TASK_POLL = "0.05"
"""``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` unless the environment sets it (Flower's default: 1 s)."""
DEFAULT_IDLE_POLL = 0.2
"""The longest sleep of the SuperNode's message loop (Flower 1.41: 3 s when idle)."""
OBJECT_PULL_BACKOFF = 0.05
"""A task's first wait before asking again for its message's content (Flower 1.41: 1 s)."""
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"

_USAGE = "usage: python -m client.node.warm {superexec,supernode} [OPTIONS] [FLOWER OPTIONS]"

# The SuperExec's own state: the torch thread count a child restores, the children to reap.
_threads: int | None = None
_children: set[int] = set()


def _log(level: int, message: str, *args: object) -> None:
    from flwr.supercore import log  # Flower's logger: same format, same file as Flower's lines

    log(level, "[fedge warm] " + message, *args)


def _version_ok() -> bool:
    from flwr.supercore.version import package_version

    if str(package_version).startswith(PINNED_FLOWER):
        return True
    _log(
        WARNING,
        "Flower %s is not the pinned %sx: the warm patches are off, Flower runs as shipped",
        package_version,
        PINNED_FLOWER,
    )
    return False


# ----------------------------------------------------------------------------- the SuperNode


class _CappedTime(types.ModuleType):
    """The ``time`` module, except that ``sleep`` never sleeps longer than ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self.cap = cap

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))


def cap_supernode_sleep(cap: float = DEFAULT_IDLE_POLL) -> bool:
    """Patches 2 and 4: cap the SuperNode loop's sleeps at ``cap`` s; False if not patched."""
    if not 0.01 <= cap <= 3.0:
        raise ValueError(f"idle poll: expected 0.01 to 3 seconds, got {cap}")
    import flwr.supernode.start_client_internal as loop

    if not _version_ok():
        return False
    if getattr(loop, "time", None) is not time:
        _log(WARNING, "start_client_internal has no `time` module to patch; left as shipped")
        return False
    loop.time = _CappedTime(cap)  # type: ignore[attr-defined]
    _log(DEBUG, "SuperNode loop sleeps capped at %.2f s", cap)
    shorten_pull_backoff(loop, "pull_objects", OBJECT_PULL_BACKOFF)
    return True


def supernode_main(argv: Sequence[str]) -> NoReturn:
    """``flower-supernode`` with a short idle poll; every other argument goes to Flower."""
    parser = argparse.ArgumentParser(
        prog="python -m client.node.warm supernode", add_help=False, allow_abbrev=False
    )
    parser.add_argument("--idle-poll", type=float, default=DEFAULT_IDLE_POLL)
    ours, rest = parser.parse_known_args(argv)
    cap_supernode_sleep(ours.idle_poll)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()
    sys.exit(0)


# ----------------------------------------------------------------------------- the SuperExec


def parse_node_config(text: str) -> dict[str, Any]:
    """A ``--node-config`` string (``key="value" ...``, parsed as Flower does) or a JSON object."""
    if text.lstrip().startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("node config: expected a JSON object")
        return value
    from flwr.common.config import parse_config_args

    return parse_config_args([text])


def _child(spec: ExecutionSpec) -> NoReturn:
    """The forked task: Flower's ``flwr-clientapp`` main, in this already-warm process."""
    code = 1
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        from flwr.supercore.exit import exit_handler

        exit_handler.registered_exit_handlers.clear()  # the SuperExec's, not this task's
        _children.clear()
        if _threads is not None:
            import torch

            torch.set_num_threads(_threads)  # a fresh OpenMP pool, this process's own
        if spec.suppress_output:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.close(devnull)
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        sys.argv = ["flwr-clientapp"]
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(
                spec.root_certificates_path, spec.insecure
            ),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        code = 0
    except SystemExit as exc:  # run_clientapp ends with flwr_exit, i.e. sys.exit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a child must never return into the SuperExec's loop
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def install_fork_launcher() -> bool:
    """Patches 1 and 3: fork ClientApp tasks from this process; False if not patched."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.types import LaunchResult

    if not _version_ok():
        return False
    executor = subprocess_executor.SubprocessExecutor
    if getattr(executor, "_fedge_warm", False):
        return True  # patched already in this process
    if not (callable(getattr(executor, "launch", None)) and hasattr(TaskType, "CLIENT_APP")):
        _log(WARNING, "SubprocessExecutor has no launch() to patch; left as shipped")
        return False
    stock_launch = executor.launch
    stock_reconcile = executor.reconcile

    def launch(self: subprocess_executor.SubprocessExecutor, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return stock_launch(self, spec)
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
            stream.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            return LaunchResult.failed(f"fork: {exc}")
        if pid == 0:
            _child(spec)
        _children.add(pid)
        _log(INFO, "task %d: ClientApp forked as process %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def reconcile(self: subprocess_executor.SubprocessExecutor) -> None:
        _reap()
        stock_reconcile(self)

    executor.launch = launch  # type: ignore[method-assign]
    executor.reconcile = reconcile  # type: ignore[method-assign]
    executor._fedge_warm = True  # type: ignore[attr-defined]
    from flwr.supernode.runtime import run_clientapp as task

    shorten_pull_backoff(task, "pull_and_inflate_object_from_tree", OBJECT_PULL_BACKOFF)
    return True


def shorten_pull_backoff(module: types.ModuleType, name: str, initial: float) -> bool:
    """Patches 3 and 4: rebind ``module.name`` (a Flower object pull) with a short first wait."""
    import inspect

    pull = getattr(module, name, None)
    if isinstance(pull, functools.partial):
        return True  # patched already in this process
    if not callable(pull) or "initial_backoff" not in inspect.signature(pull).parameters:
        _log(WARNING, "%s.%s has no backoff to shorten; left as shipped", module.__name__, name)
        return False
    setattr(module, name, functools.partial(pull, initial_backoff=initial))
    return True


def _reap() -> None:
    """Collect the forked tasks that ended (only ours: Flower's own Popen children are its own)."""
    for pid in list(_children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            _children.discard(pid)
            continue
        if done:
            _children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                _log(WARNING, "ClientApp process %d exited with status %d", pid, code)


def _preload(config: Mapping[str, Any]) -> None:
    from client.federation import flower_app
    from fedge.errors import FedgeError

    started = time.monotonic()
    try:
        settings = flower_app.settings_from_node_config(config)
        loaded = flower_app.warm_up(settings)
    except FedgeError as exc:  # a task meets the same error and declines the round with it
        _log(WARNING, "could not pre-load the model: %s", exc)
        return
    except Exception as exc:  # noqa: BLE001 - pre-loading only saves time; tasks load lazily
        _log(WARNING, "could not pre-load the model (%s: %s)", type(exc).__name__, exc)
        return
    if loaded:
        _log(
            INFO,
            "pre-loaded the model and %s's data in %.1f s",
            settings.name,
            time.monotonic() - started,
        )
    else:
        _log(INFO, "no policy-path in the node config: the model loads with the first task")


def superexec_main(argv: Sequence[str]) -> NoReturn:
    """Warm up once, then Flower's ``flower-superexec`` forking every ClientApp task."""
    global _threads  # noqa: PLW0603 - process-wide by nature: the parent's thread count

    parser = argparse.ArgumentParser(
        prog="python -m client.node.warm superexec", add_help=False, allow_abbrev=False
    )
    parser.add_argument("--preload-node-config", default=None)
    ours, rest = parser.parse_known_args(argv)
    os.environ.setdefault(TASK_POLL_ENV, DEFAULT_TASK_POLL)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # set before any tokenizer is loaded

    import torch

    _threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no OpenMP pool in the parent: see the module docstring
    import client.federation.flower_app  # noqa: F401 - the heavy imports, paid once

    if ours.preload_node_config:
        _preload(parse_node_config(ours.preload_node_config))
    gc.collect()
    gc.freeze()  # fewer pages copied on write in each child
    install_fork_launcher()
    from flwr.supercore.cli.flower_superexec import flower_superexec

    sys.argv = ["flower-superexec", *rest]
    flower_superexec()
    sys.exit(0)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """``python -m client.node.warm superexec|supernode ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in {"superexec", "supernode"}:
        print(_USAGE, file=sys.stderr)
        sys.exit(2)
    if args[0] == "superexec":
        superexec_main(args[1:])
    supernode_main(args[1:])


if __name__ == "__main__":
    main()
