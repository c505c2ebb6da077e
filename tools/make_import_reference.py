"""Write the import check's reference: the original MoveNet Lightning's backbone features on a real crop.

Runs the ONNX conversion of the original TF.js model (with four backbone feature maps exposed as extra
outputs, see tools/build_peers.sh --reference) on a 192 x 192 crop of a CC BY COCO photo and stores the
crop and the four maps (NCHW float32) in one compressed .npz. test/test_pretrained_import.py compares
the imported PyTorch backbone against it, so a fresh clone needs neither npm nor TensorFlow.

Usage (project venv):
    python tools/make_import_reference.py --onnx movenet_lightning_features.onnx \
        --output test/data/movenet_reference/lightning_features_129648.npz
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parents[1]
# COCO train2017 129648, Flickr CC BY 2.0 (see samples/ATTRIBUTION.md); the crop holds a person.
PHOTO = REPO_ROOT / 'samples' / '000000129648.jpg'
CROP_XYWH = (36, 140, 192, 192)
# Output name suffix -> the torchvision `features` index whose output it equals.
FEATURE_OUTPUTS = {
    'block_2_add/add:0': 'stride4_features3',
    'block_5_add/add:0': 'stride8_features6',
    'block_12_add/add:0': 'stride16_features13',
    'out_relu/Relu6:0': 'stride32_features18',
}


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--onnx', type=Path, required=True, help='Lightning ONNX with the feature outputs')
    parser.add_argument('--photo', type=Path, default=PHOTO)
    parser.add_argument('--output', type=Path, required=True)
    args = parser.parse_args()
    bgr = cv2.imread(str(args.photo))
    if bgr is None:
        parser.error(f'cannot read the photo {args.photo}')
    x, y, w, h = CROP_XYWH
    crop = np.ascontiguousarray(bgr[y:y + h, x:x + w, ::-1])
    session = ort.InferenceSession(str(args.onnx), providers=['CPUExecutionProvider'])
    names = {}
    for output in session.get_outputs():
        for suffix, key in FEATURE_OUTPUTS.items():
            if output.name.endswith(suffix):
                names[key] = output.name
    if len(names) != len(FEATURE_OUTPUTS):
        parser.error(f'{args.onnx} lacks some feature outputs; found {sorted(names)}')
    values = session.run(list(names.values()), {session.get_inputs()[0].name: crop[None].astype(np.int32)})
    arrays = {key: value.transpose(0, 3, 1, 2).astype(np.float32) for key, value in zip(names, values)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, crop_rgb=crop, crop_xywh=np.array(CROP_XYWH), image_id=np.array(129648),
                        **arrays)
    for key, value in arrays.items():
        print(f'{key}: {value.shape} max |v| {np.abs(value).max():.3f}')
    print(f'wrote {args.output} ({args.output.stat().st_size / 1e3:.0f} kB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
