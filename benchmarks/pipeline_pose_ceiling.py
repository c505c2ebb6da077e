"""The pose stage's ceiling: keypoint AP when every annotated person is handed to it by its true box.

Issue 17 asks for 13-joint keypoint AP >= 0.50 on the held-out photos. Whatever the detector does, the
pose stage cannot score above what it scores on the ground-truth boxes, so this script measures that
ceiling, on the same photos and with the same pycocotools evaluation as `pipeline_vs_peers.py`:
- our pipeline's pose graph (PyTorch) on the annotated boxes, with the test-time flip off and on
  (`PipelineConfig.pose_flip_test`), the boxes letterboxed exactly as the Predictor letterboxes images;
- the NanoDet -> Thunder peer's pose step (`NanoDetThunderPeer.estimate_pose`: Google's Thunder ONNX on
  its own warpAffine crop) on the same boxes.
Every annotated non-crowd person with at least one labelled joint gets one pose; its COCO result score
is the mean joint score (keypoint AP ranks people by it, as the pipeline's pose score does: with equal
scores the ranking would be arbitrary and AP meaningless).

    .venv/bin/python benchmarks/pipeline_pose_ceiling.py --split heldout [--checkpoint models/ppe_default.pt]

Prints one table row per pose step and writes them as JSON with --output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))

from pipeline_vs_peers import DEFAULT_DATA, load_split, require_coco_folder  # noqa: E402

from occluded_ppe_ros.inference.preprocess import letterbox  # noqa: E402
from occluded_ppe_ros.skeleton import COCO17_INDEX, coco13_to_17  # noqa: E402


def annotated_people(gt: dict) -> dict[int, list[dict]]:
    """image id -> its non-crowd person annotations with at least one labelled joint."""
    people: dict[int, list[dict]] = {}
    for annotation in gt['annotations']:
        if annotation.get('num_keypoints', 0) > 0 and not annotation.get('iscrowd', 0):
            people.setdefault(annotation['image_id'], []).append(annotation)
    return people


def result(image_id: int, annotation: dict, joints13: np.ndarray) -> dict:
    """A COCO keypoint result: joints13 float [13, 3] (x, y image pixels, score)."""
    return {'image_id': image_id, 'category_id': 1, 'bbox': annotation['bbox'],
            'score': float(joints13[:, 2].mean()),
            'keypoints': [float(value) for value in coco13_to_17(joints13).reshape(-1)]}


def pipeline_poses(checkpoint: Path, flip: bool, loaded, people) -> list[dict]:
    """Our pose graph on the annotated boxes, as COCO results."""
    from occluded_ppe_training.datasets.common import xywh_to_xyxy

    from occluded_ppe_ros.model.pipeline_checkpoint import pipeline_from_checkpoint

    net, _ = pipeline_from_checkpoint(checkpoint)
    net.cfg.pose_flip_test = flip     # PoseStage reads the same config object
    results = []
    for image_id, image in loaded:
        annotations = people.get(image_id, [])
        if not annotations:
            continue
        network_input, geometry = letterbox(image, net.cfg.input_size)
        scale = np.array([geometry.resized_width / geometry.image_width,
                          geometry.resized_height / geometry.image_height] * 2)
        boxes = xywh_to_xyxy([a['bbox'] for a in annotations]) * scale
        rois = torch.from_numpy(np.concatenate([np.zeros((len(boxes), 1)), boxes], 1)).float()
        with torch.no_grad():
            keypoints, _, _ = net.pose(torch.from_numpy(network_input[None]), rois)
        keypoints = keypoints.numpy().astype(np.float64)
        keypoints[..., :2] /= scale[:2]
        results += [result(image_id, a, joints) for a, joints in zip(annotations, keypoints)]
    return results


def peer_poses(peer_dir: Path, threads: int, loaded, people) -> list[dict]:
    """The NanoDet -> Thunder peer's pose step on the annotated boxes, as COCO results."""
    from occluded_ppe_training.datasets.common import xywh_to_xyxy

    from occluded_ppe_ros.peers import NanoDetThunderPeer

    peer = NanoDetThunderPeer(peer_dir / 'nanodet_416.onnx', peer_dir / 'movenet_thunder.onnx',
                              threads=threads)
    results = []
    for image_id, image in loaded:
        for annotation in people.get(image_id, []):
            xy, scores = peer.estimate_pose(image, xywh_to_xyxy(annotation['bbox'])[0])
            joints = np.concatenate([xy, scores[:, None]], 1)[list(COCO17_INDEX)]
            results.append(result(image_id, annotation, joints))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', type=Path, default=REPO_ROOT / 'models' / 'ppe_default.pt')
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--split', default='heldout', choices=('heldout', 'train', 'all'))
    parser.add_argument('--peer-dir', type=Path, default=REPO_ROOT / 'models' / 'peers')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--output', type=Path)
    args = parser.parse_args()
    require_coco_folder(parser, args.data)
    torch.set_num_threads(args.threads)
    from occluded_ppe_training.evaluation.coco_eval import evaluate_coco

    gt, images, loaded = load_split(args.data, args.split)
    people = annotated_people(gt)
    image_ids = [record['id'] for record in images]
    rows = {
        f'{args.checkpoint.name} pose graph, flip off': pipeline_poses(args.checkpoint, False, loaded,
                                                                        people),
        f'{args.checkpoint.name} pose graph, flip on': pipeline_poses(args.checkpoint, True, loaded, people),
        'Thunder (peer crop)': peer_poses(args.peer_dir, args.threads, loaded, people),
    }
    summary = {'split': args.split, 'photos': len(image_ids), 'rows': {}}
    print(f'{len(image_ids)} photos ({args.split}); every annotated person given by its true box')
    print('| pose step | people | 13-joint kp AP | AP50 |\n|---|---:|---:|---:|')
    for name, results in rows.items():
        metrics = evaluate_coco(gt, results, ['keypoints'], image_ids)['keypoints'].named
        summary['rows'][name] = {'people': len(results), 'kp_AP': metrics['AP'], 'kp_AP50': metrics['AP50']}
        print(f"| {name} | {len(results)} | {metrics['AP']:.3f} | {metrics['AP50']:.3f} |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(summary, indent=1))
        print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
