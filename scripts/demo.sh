#!/usr/bin/env bash
# Set up .venv (idempotent) and run the main job on the shipped defaults: the node on the sample
# photos over real (loopback-only) DDS. Extra arguments go to `ppe demo`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
export AMENT_PREFIX_PATH="$repo/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
exec "$repo/.venv/bin/ppe" demo "$@"
