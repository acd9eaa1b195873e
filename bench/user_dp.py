"""User-level DP: what the coordinator's clipping and noise cost in accuracy, next to the others.

Arms on the same near-IID synthetic task (the real ClientApps in the simulation engine, a head on
all-MiniLM-L6-v2, every holder every round), scored by federated evaluation on the holders'
held-out parts, which no holder trains on:

- ``ceiling``: no privacy to speak of (level user with noise 1e-6: no DP-SGD, no real noise);
- ``sample``: DP-SGD at each holder at ``--epsilon`` (fedge's default level);
- ``user``: no DP-SGD; each holder's update clipped to ``--clip`` and noise ``--noise`` at the
  coordinator, priced by Opacus over the rounds (the user-level epsilon is printed);
- ``both``: the two together.

Run: ``.venv/bin/python bench/user_dp.py`` (about 90 s an arm on a 2-core CPU;
``--holders 20`` shows the noise shrinking with the number of holders).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support

from tests.support.poisoning import make_task, run_arm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--holders", type=int, default=10)
    parser.add_argument("--examples", type=int, default=100, help="examples per holder")
    parser.add_argument("--epsilon", type=float, default=8.0, help="sample-level budget")
    parser.add_argument("--noise", type=float, default=1.0, help="user-level noise multiplier")
    parser.add_argument("--clip", type=float, default=0.5, help="user-level clipping norm")
    parser.add_argument("--model", default="builtin:all-MiniLM-L6-v2")
    args = parser.parse_args(argv)
    user = f"user: {{clippingNorm: {args.clip}, noiseMultiplier: {args.noise}}}"
    arms = (
        ("ceiling", 100.0, "level: user, user: {clippingNorm: 1000, noiseMultiplier: 1e-6}"),
        ("sample", args.epsilon, ""),
        ("user", args.epsilon, f"level: user, {user}"),
        ("both", args.epsilon, f"level: both, {user}"),
    )
    with tempfile.TemporaryDirectory(prefix="fedge-user-dp-") as tmp:
        root = Path(tmp)
        data = make_task(root, clients=args.holders, examples=args.examples)
        print(
            f"{args.holders} holders x {args.examples} examples, {args.rounds} rounds; "
            f"user level: noise {args.noise}, clipping {args.clip}"
        )
        print(f"{'arm':<8} {'accuracy':>8} {'holder eps':>10} {'user eps':>9}")
        for label, epsilon, privacy in arms:
            result = run_arm(
                root,
                model=args.model,
                data=data,
                strategy="fedavg",
                poisoned=False,
                rounds=args.rounds,
                clients=args.holders,
                epsilon=epsilon,
                privacy=privacy,
                label=label,
            )
            user_eps = "-" if result.user_epsilon is None else f"{result.user_epsilon:.2f}"
            if label == "ceiling":
                user_eps = "(none)"
            print(
                f"{label:<8} {result.accuracy:>8.3f} {result.holder_epsilon:>10.2f} "
                f"{user_eps:>9}  ({result.seconds:.0f} s)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
