#!/usr/bin/env bash
# Measure the numbers of the model card (models/README.md) for models/ppe_default.pt:
#   1. the 42 held-out real photos (training/datasets/splits.py): box AP/AP50, 13-joint keypoint AP,
#      mask AP, with PyTorch, and ONNX Runtime's parity against it;
#   2. 100 held-out synthetic occluded pedestrians (seed 13, never trained on): keypoint AP and PCK of
#      occluded / visible joints.
# Needs ../shared/data/coco_train2017_person_kp. Writes outputs/eval/default_*/ (report.md, metrics.json).
# Peers on the same held-out photos: .venv/bin/python benchmarks/peers.py  (outputs/bench/peers.json).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
ppe="$repo/.venv/bin/ppe"
data=../shared/data/coco_train2017_person_kp
model=${1:-models/ppe_default.pt}
"$repo/.venv/bin/python" -m occluded_ppe_training.datasets.splits "$data/annotations.json" \
  --split heldout --out runs/default/heldout_real.json
"$ppe" eval model --gt runs/default/heldout_real.json --images "$data/images" --checkpoint "$model" \
  --backend torch --compare-backend onnxruntime --out outputs/eval/default_real
if [ ! -f runs/default/synthetic/heldout/annotations.json ]; then
  "$ppe" synth --out runs/default/synthetic/heldout --num-images 100 --seed 13 --size 352x256 --max-people 4
fi
"$ppe" eval synthetic --gt runs/default/synthetic/heldout/annotations.json \
  --images runs/default/synthetic/heldout/images --checkpoint "$model" --backend torch \
  --out outputs/eval/default_synthetic
