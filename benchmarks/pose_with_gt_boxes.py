"""Pose accuracy with ground-truth boxes: how much of the keypoint error is the pose stage's own.

Runs a checkpoint's pose stage on the *annotated* boxes of a COCO-format split, instead of its detections.
Everything else is as at inference: the branch's encoder, the predicted mask as the gate, and E_Pose ->
D_Pose. It then reports:
- keypoint AP (13 joints, pycocotools) of those poses, every person scored 1. Compared with the
  end-to-end AP of `ppe eval`, this separates detection misses from pose errors;
- the median joint error as a fraction of the box height, for visible (v = 2) and occluded (v = 1) joints;
- the left/right swap rate: the share of labelled joints of a left/right pair (both labelled) whose
  prediction lies closer to the *other* side's ground truth than to its own and more than 0.05 x the
  box height from its own;
- the same per view, front / side / back, read from the ground truth as the pose loss's facing label
  does (`losses.facing_labels`: the left shoulder, else hip, on the image right = facing the camera;
  neither pair 0.1 box widths apart = side), with the share of people flipped as a whole (the mean
  joint lies closer to the mirrored truth than to the truth, and more than 0.05 x the box height from
  the truth). A network that has not learned which way people face puts every back view's left joints
  on the image right, as for a front view: back views then flip as a whole.

Usage (from the repository root):
    .venv/bin/python benchmarks/pose_with_gt_boxes.py --checkpoint runs/learning_check/stage2/last.pt \
        [--split runs/synthetic/heldout] [--domain coco] [--threads 1]
`--split` is a folder with annotations.json and images/ (what `ppe synth` writes).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_check import _import_source_tree  # noqa: E402

SWAP_MARGIN = 0.05      # of the box height: a joint this close to its own truth is never a swap
VIEWS = ('side', 'front', 'back')


def _share(flags: list[bool]) -> float | None:
    """The share of True in `flags`; None for an empty list."""
    return float(np.mean(flags)) if flags else None


def pose_on_boxes(model, image_rgb: np.ndarray, boxes_xyxy: np.ndarray, domain: str) -> np.ndarray:
    """Keypoints [N, 13, 3] (x, y pixels, score) of the pose stage on the given boxes of one image.

    Args:
        model: a PPENet in eval mode.
        image_rgb: uint8 [H, W, 3]; H and W multiples of 32 (the synthetic splits are made so).
        boxes_xyxy: float [N, 4] pixels.
        domain: the branch.
    """
    import torch

    images = torch.from_numpy(image_rgb).permute(2, 0, 1)[None].float() / 255.0
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32)
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    with torch.no_grad():
        branch = model.branches[domain]
        _, keypoints, _ = model.instance_outputs(branch, branch.encoder(images), rois)
    return keypoints.numpy()


def main(argv: list[str] | None = None) -> int:
    """Score the pose stage on ground-truth boxes; print and return JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', required=True, help='a training or packaged checkpoint (contract 3)')
    parser.add_argument('--split', default=str(REPO_ROOT / 'runs' / 'synthetic' / 'heldout'),
                        help='folder with annotations.json and images/')
    parser.add_argument('--domain', default='coco', help='the branch to run')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    args = parser.parse_args(argv)
    _import_source_tree()
    import cv2
    import torch

    from occluded_ppe_ros.model.checkpoint import model_from_checkpoint
    from occluded_ppe_ros.model.losses import facing_labels
    from occluded_ppe_ros.skeleton import COCO17_INDEX, FLIP_PERMUTATION
    from occluded_ppe_training.evaluation.coco_eval import evaluate_coco

    torch.set_num_threads(args.threads)
    split = Path(args.split)
    ground_truth = json.loads((split / 'annotations.json').read_text())
    model = model_from_checkpoint(args.checkpoint)[0].eval()
    slots = np.asarray(COCO17_INDEX)
    mirror = np.asarray(FLIP_PERMUTATION)
    people: dict[int, list[dict]] = {}
    for annotation in ground_truth['annotations']:
        if not annotation.get('iscrowd') and annotation.get('num_keypoints', 0) > 0:
            people.setdefault(annotation['image_id'], []).append(annotation)
    results, errors, swaps = [], {1: [], 2: []}, []
    by_view: dict[str, dict[str, list[bool]]] = {view: {'swaps': [], 'flipped': []} for view in VIEWS}
    for info in ground_truth['images']:
        annotations = people.get(info['id'], [])
        if not annotations:
            continue
        bgr = cv2.imread(str(split / 'images' / info['file_name']))
        if bgr is None:
            raise FileNotFoundError(f'{split / "images" / info["file_name"]}: cannot read image {info["id"]}')
        boxes = np.array([a['bbox'] for a in annotations], np.float32)
        boxes[:, 2:] += boxes[:, :2]                      # x, y, w, h -> x1, y1, x2, y2
        predicted = pose_on_boxes(model, np.ascontiguousarray(bgr[:, :, ::-1]), boxes, args.domain)
        truths = np.stack([np.asarray(a['keypoints'], np.float32).reshape(17, 3)[slots] for a in annotations])
        faces, has_facing = facing_labels(torch.from_numpy(truths), torch.from_numpy(boxes))
        for annotation, joints, truth, front, decided in zip(annotations, predicted, truths, faces.tolist(),
                                                              has_facing.tolist()):
            view = VIEWS[0 if not decided else (1 if front else 2)]
            height = max(annotation['bbox'][3], 1.0)
            own = np.hypot(*(joints[:, :2] - truth[:, :2]).T) / height
            other = np.hypot(*(joints[:, :2] - truth[mirror, :2]).T) / height
            labelled = truth[:, 2] > 0
            by_view[view]['flipped'].append(bool(other[labelled].mean() < own[labelled].mean()
                                                 and own[labelled].mean() > SWAP_MARGIN))
            for joint in range(len(truth)):
                visibility = int(truth[joint, 2])
                if visibility > 0:
                    errors[visibility].append(own[joint])
                paired = mirror[joint] != joint and visibility > 0 and truth[mirror[joint], 2] > 0
                if paired:
                    swapped = bool(other[joint] < own[joint] and own[joint] > SWAP_MARGIN)
                    swaps.append(swapped)
                    by_view[view]['swaps'].append(swapped)
            full = np.zeros((17, 3))
            full[slots, :2] = joints[:, :2]
            full[slots, 2] = 1.0
            results.append({'image_id': info['id'], 'category_id': 1, 'score': 1.0,
                            'keypoints': full.reshape(-1).tolist()})
    metrics = evaluate_coco(ground_truth, results, ['keypoints'])['keypoints'].named
    summary = {
        'checkpoint': str(args.checkpoint), 'split': str(split), 'domain': args.domain,
        'people': len(results), 'keypoint_AP': metrics['AP'], 'keypoint_AP50': metrics['AP50'],
        'median_error_visible': float(np.median(errors[2])) if errors[2] else None,
        'median_error_occluded': float(np.median(errors[1])) if errors[1] else None,
        'left_right_swap_rate': _share(swaps),
        'paired_joints': len(swaps),
        'by_view': {view: {'people': len(values['flipped']),
                           'left_right_swap_rate': _share(values['swaps']),
                           'flipped_people_rate': _share(values['flipped'])}
                    for view, values in by_view.items()},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
