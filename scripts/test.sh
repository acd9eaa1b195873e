#!/usr/bin/env bash
# The test command: installs fedge with every extra and the test servers, then runs
# ruff, mypy (strict) and the whole pytest suite (slow tiers included).
# Extra arguments go to pytest, e.g.  scripts/test.sh -m "not slow"  for a quick local run.
set -euo pipefail
source "$(dirname "$0")/setup-env.sh"
cd "$FEDGE_ROOT"

fedge_setup_python "all,dev"
fedge_setup_servers

echo "== ruff"
"$FEDGE_VENV/bin/ruff" check .
"$FEDGE_VENV/bin/ruff" format --check .
echo "== mypy (strict)"
"$FEDGE_VENV/bin/mypy" .
echo "== pytest"
"$FEDGE_VENV/bin/python" -m pytest "$@"
