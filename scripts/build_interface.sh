#!/usr/bin/env bash
# Build one ROS 2 interface package (ament_cmake + rosidl) and install it into a Python venv prefix.
#
# Usage: scripts/build_interface.sh VENV_DIR PACKAGE_SOURCE_DIR BUILD_DIR
#
# Why this exists: this machine has no ROS 2 apt packages, only the Jazzy wheels from PyPI. Those
# wheels install CMake configs under the venv, so `cmake` with the venv as prefix builds a real
# interface package (C, C++ and Python type support) exactly as colcon would on a ROS 2 system.
set -euo pipefail
venv=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
build=$3
py="$venv/bin/python"

# Some wheels' exported CMake files still name the wheel builder's Python and numpy include dirs
# (/opt/python/cp311-cp311/...). CMake then stops with "includes non-existent path". Point them at
# this venv's interpreter instead. Idempotent: a second run finds nothing to rewrite.
py_include=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_include=$("$py" -c 'import numpy; print(numpy.get_include())')
mapfile -t stale < <(grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$venv/share" --include='*.cmake' 2>/dev/null || true)
for f in "${stale[@]}"; do
  sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/(_core|core)/include#${np_include}#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${py_include}#g" \
    "$f"
done

export CMAKE_PREFIX_PATH="$venv" AMENT_PREFIX_PATH="$venv"
# The ROS wheels' .pth hook re-executes Python with its own library path; make sure the generators run
# with the venv's interpreter and libraries.
export PATH="$venv/bin:$PATH"
cmake -S "$src" -B "$build" \
  -DCMAKE_INSTALL_PREFIX="$venv" \
  -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$py" \
  -DPYTHON_EXECUTABLE="$py" > "$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" > "$build.build.log" 2>&1 || { tail -50 "$build.build.log"; exit 1; }
cmake --install "$build" > "$build.install.log" 2>&1 || { tail -50 "$build.install.log"; exit 1; }
