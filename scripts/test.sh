#!/usr/bin/env bash
# Set up .venv (idempotent) and run the whole test suite. Extra arguments go to pytest.
# Exit status: pytest's, except that "no tests collected" (pytest's 5) is a failure too.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/setup.sh || exit 1
export AMENT_PREFIX_PATH="$repo/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# Loopback-only DDS for anything the tests start (test/conftest.py sets it again, per run).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
"$repo/.venv/bin/python" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
