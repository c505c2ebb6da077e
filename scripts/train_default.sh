#!/usr/bin/env bash
# Train the shipped default model (models/ppe_default.pt) from scratch on this machine's CPU and export it:
#   stage 1 (config/train_default_stage1.yaml, 16 min) -> stage 2 (config/train_default_stage2.yaml,
#   20 min) -> models/ppe_default.pt (fp16) -> models/ppe_default.onnx (`ppe export`, parity checked).
# Needs ../shared/data/coco_train2017_person_kp (the real photos; only their train split is used).
# Extra arguments go to both `ppe train` calls, e.g. --set time_limit_s=60 for a smoke run.
# The model card (models/README.md) gives the evaluation commands.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/setup.sh
py="$repo/.venv/bin/python"
start=$(date +%s)
"$repo/.venv/bin/ppe" train --config config/train_default_stage1.yaml "$@"
stage1_done=$(date +%s)
"$repo/.venv/bin/ppe" train --config config/train_default_stage2.yaml "$@"
stage2_done=$(date +%s)
echo "{\"train/stage1_wall_s\": $((stage1_done - start)), \"train/stage2_wall_s\": $((stage2_done - stage1_done))}" \
  > runs/default/wall_time.json
"$py" -m occluded_ppe_training.package_model runs/default/stage2/last.pt models/ppe_default.pt \
  --stage1 runs/default/stage1/last.pt --domain coco --metrics runs/default/wall_time.json
"$repo/.venv/bin/ppe" export --checkpoint models/ppe_default.pt --out models/ppe_default.onnx --threads 2
echo "[train_default] stage 1 $((stage1_done - start)) s, stage 2 $((stage2_done - stage1_done)) s"
