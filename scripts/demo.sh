#!/usr/bin/env bash
# The main job: installs fedge with every extra, then runs `fedge demo` on embedded defaults.
# Extra arguments go to `fedge demo`, e.g.  scripts/demo.sh --workdir /tmp/fedge-demo
set -euo pipefail
source "$(dirname "$0")/setup-env.sh"
cd "$FEDGE_ROOT"

fedge_setup_python "all"
fedge_setup_debian mosquitto   # the demo's broker (TLS, passwords, ACLs), started and stopped by it
exec "$FEDGE_VENV/bin/fedge" demo "$@"
