#!/usr/bin/env bash
# Create or update .venv with everything the project needs, pinned; idempotent and fast when nothing
# changed (each step is skipped while the hash of its inputs matches the stamp it wrote last time).
#
#   1. Python packages: requirements/venv.txt with the exact versions of requirements/constraints.txt
#      (ROS 2 Jazzy wheels, torch 2.14.1 / torchvision 0.29.1, onnxruntime, pycocotools, ...).
#   2. Interface packages built into the venv prefix with CMake (as colcon would on a ROS 2 system):
#      interfaces/vision_msgs only where `import vision_msgs.msg` fails, and interfaces/occluded_ppe_msgs.
#   3. This project, installed (not editable), so that with AMENT_PREFIX_PATH=.venv the ament index finds
#      share/occluded_ppe_ros/{launch,config,models} and lib/occluded_ppe_ros/ppe_node.
#
# Usage: bash scripts/setup.sh            (from anywhere; works on the repository it lives in)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
venv="$repo/.venv"
stamps="$venv/.ppe_stamps"
log_dir="$repo/build/logs"
mkdir -p "$log_dir"

find_python() {
  # The ROS 2 Jazzy wheels are built for CPython 3.11.
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
       && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  echo "setup.sh: CPython 3.11 is required (the ROS 2 Jazzy wheels are cp311); none found on PATH" >&2
  return 1
}

# hash_of PATH... : one digest over the names and contents of every file under the given paths.
hash_of() {
  find "$@" -type f ! -path '*/__pycache__/*' -print0 2>/dev/null | LC_ALL=C sort -z \
    | xargs -0 sha256sum | sha256sum | cut -c1-16
}
up_to_date() { [ -f "$stamps/$1" ] && [ "$(cat "$stamps/$1")" = "$2" ]; }
mark_done() { mkdir -p "$stamps"; echo "$2" > "$stamps/$1"; }

if [ ! -x "$venv/bin/python" ]; then
  python=$(find_python)
  echo "[setup] creating $venv with $python"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"

# One setup at a time per venv (parallel test runs would otherwise reinstall over each other).
exec 9>"$venv/.setup.lock"
flock 9

# 1. Python packages.
deps_hash=$(hash_of requirements)
if ! up_to_date deps "$deps_hash"; then
  echo "[setup] installing pinned Python packages (first time: a few minutes; torch is ~5.5 GB)"
  "$py" -m pip install -q --upgrade 'pip==25.3' >"$log_dir/pip-self.log" 2>&1 \
    || "$py" -m pip install -q --upgrade pip >>"$log_dir/pip-self.log" 2>&1
  "$py" -m pip install -c requirements/constraints.txt -r requirements/venv.txt >"$log_dir/pip.log" 2>&1 \
    || { tail -40 "$log_dir/pip.log"; echo "[setup] pip install failed; full log: $log_dir/pip.log" >&2; exit 1; }
  mark_done deps "$deps_hash"
fi

# 2. Interface packages.
build_interface() {  # name
  local name=$1 key
  key=$(hash_of "interfaces/$name" scripts/build_interface.sh requirements)
  if up_to_date "msgs-$name" "$key" && [ -d "$venv/share/$name" ]; then return 0; fi
  echo "[setup] building interface package $name into the venv"
  bash scripts/build_interface.sh "$venv" "interfaces/$name" "$repo/build/$name"
  mark_done "msgs-$name" "$key"
}
if [ -f "$stamps/msgs-vision_msgs" ] || ! "$py" -c 'import vision_msgs.msg' >/dev/null 2>&1; then
  # Ours to maintain: built here before, or no vision_msgs exists (no ROS 2 install provides it).
  build_interface vision_msgs
fi
build_interface occluded_ppe_msgs

# 3. The project itself, as colcon would install it: a real (non-editable) install, because pip's
# editable mode does not install data_files (the ament index marker and share/). Any change to the
# package's files reinstalls it (about 10 s).
project_hash=$(hash_of setup.py setup.cfg package.xml resource launch config models samples occluded_ppe_ros training)
node_exe="$venv/lib/occluded_ppe_ros/ppe_node"
if ! up_to_date project "$project_hash" || [ ! -x "$node_exe" ]; then
  echo "[setup] installing occluded_ppe_ros into the venv"
  "$py" -m pip install -q --no-deps --no-build-isolation --force-reinstall . >"$log_dir/pip-project.log" 2>&1 \
    || { tail -40 "$log_dir/pip-project.log"; exit 1; }
  # `ros2 run` / `ros2 launch` look for executables in <prefix>/lib/<package>/; pip puts console
  # scripts in bin/ (it ignores setup.cfg's script_dir), so place the node's launcher there too.
  mkdir -p "$(dirname "$node_exe")"
  install -m 0755 "$venv/bin/ppe_node" "$node_exe"
  mark_done project "$project_hash"
fi
echo "[setup] .venv is ready ($venv)"
