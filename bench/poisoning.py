"""Poisoning: one of 5 simulated holders sends sign-flipped updates scaled x10 every round.

Runs four arms on the same near-IID synthetic task (the real ClientApps, DP-SGD, a head on
all-MiniLM-L6-v2): clean fedavg, then poisoned fedavg, fedtrimmedavg and krum (byzantine 1),
and prints each arm's final accuracy (the holders' held-out parts, which they never train on)
and the rounds in which the bad holder (client-0) was flagged in ``metrics.jsonl``. The poisoned
holder is the test-only ClientApp ``tests/support/poisoning.py``; fedge's own has no attack
switch.

Run: ``.venv/bin/python bench/poisoning.py`` (about 90 s an arm on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support

from tests.support.poisoning import POISONED_HOLDER, make_task, run_arm

ARMS = (("fedavg", False), ("fedavg", True), ("fedtrimmedavg", True), ("krum", True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--examples", type=int, default=100, help="examples per holder")
    parser.add_argument("--model", default="builtin:all-MiniLM-L6-v2")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedge-poisoning-") as tmp:
        root = Path(tmp)
        data = make_task(root, clients=5, examples=args.examples)
        clean = None
        print(f"{'arm':<24} {'accuracy':>8} {'vs clean':>9}  flagged {POISONED_HOLDER} in rounds")
        for strategy, poisoned in ARMS:
            result = run_arm(
                root,
                model=args.model,
                data=data,
                strategy=strategy,
                poisoned=poisoned,
                rounds=args.rounds,
            )
            clean = result.accuracy if clean is None else clean
            rounds = [r for r, holders in result.flagged.items() if POISONED_HOLDER in holders]
            others = sorted({h for f in result.flagged.values() for h in f} - {POISONED_HOLDER})
            name = f"{strategy} ({'poisoned' if poisoned else 'clean'})"
            print(
                f"{name:<24} {result.accuracy:>8.3f} {100 * (result.accuracy - clean):>+8.1f}p"
                f"  {rounds or '-'}{'  others flagged: ' + ', '.join(others) if others else ''}"
                f"  ({result.seconds:.0f} s)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
