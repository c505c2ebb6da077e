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
  on the image right, as for a front view: back views then flip as a whole;
- per joint, the median OKS error and the share of labelled joints whose own OKS term is >= 0.5. The
  OKS error is e = d / (sqrt(area) x 2 sigma_k), the joint's OKS term is exp(-e^2 / 2), so e < 1.18 is
  a term >= 0.5 (COCO's sigma_k: the nose's is a third of a hip's);
- oracle upper bounds: the keypoint AP after correcting the predictions with the truth in one way at a
  time (`oracle_corrections`): people flipped as a whole mirrored back, each left/right pair given its
  better assignment, the visible (or occluded) joints or one joint group set to the truth, or every
  error halved. They tell which error, removed, would lift AP most.

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
# joint groups of the 13-joint layout set to the truth by the per-group oracles
ORACLE_GROUPS = {'nose_exact': (0,), 'wrists_exact': (5, 6), 'elbows_exact': (3, 4), 'ankles_exact': (11, 12)}


def _share(flags: list[bool]) -> float | None:
    """The share of True in `flags`; None for an empty list."""
    return float(np.mean(flags)) if flags else None


def oks_errors(predicted_xy: np.ndarray, truth: np.ndarray, area: float, sigmas: np.ndarray) -> np.ndarray:
    """Per-joint OKS error e = d / (sqrt(area) x 2 sigma): the joint's OKS term is exp(-e^2 / 2).

    Args:
        predicted_xy: float [13, 2] pixels.
        truth: float [13, 3] x, y pixels, v (0 = unlabelled).
        area: the annotation's area in pixels^2 (COCO's OKS scale s^2).
        sigmas: float [13] COCO's per-joint sigmas (skeleton.OKS_SIGMAS).

    Returns:
        float [13], NaN where the joint is unlabelled.
    """
    distance = np.hypot(*(predicted_xy - truth[:, :2]).T)
    errors = distance / (np.sqrt(max(area, 1.0)) * 2.0 * sigmas)
    return np.where(truth[:, 2] > 0, errors, np.nan)


def oracle_corrections(predicted_xy: np.ndarray, truth: np.ndarray, mirror: np.ndarray
                       ) -> dict[str, np.ndarray]:
    """The prediction corrected with the truth in one way at a time (upper bounds, not estimates).

    Args:
        predicted_xy: float [13, 2] pixels.
        truth: float [13, 3] x, y pixels, v (0 unlabelled, 1 occluded, 2 visible).
        mirror: int [13] skeleton.FLIP_PERMUTATION.

    Returns:
        name -> float [13, 2]: 'flip_people' (mirrored as a whole where the mirrored pose's mean error
        over labelled joints is lower), 'swap_pairs' (each left/right pair in its better assignment),
        'visible_exact' / 'occluded_exact' (those joints at the truth), 'errors_halved' (every labelled
        joint moved halfway to its truth), and one entry per ORACLE_GROUPS.
    """
    labelled = truth[:, 2] > 0
    own = np.hypot(*(predicted_xy - truth[:, :2]).T)
    mirrored = predicted_xy[mirror]
    mirrored_error = np.hypot(*(mirrored - truth[:, :2]).T)
    flipped = bool(labelled.any() and mirrored_error[labelled].mean() < own[labelled].mean())
    swapped = predicted_xy.copy()
    for joint, partner in enumerate(mirror):
        if partner > joint:
            keep = own[joint] * labelled[joint] + own[partner] * labelled[partner]
            other = (np.hypot(*(predicted_xy[partner] - truth[joint, :2])) * labelled[joint]
                     + np.hypot(*(predicted_xy[joint] - truth[partner, :2])) * labelled[partner])
            if other < keep:
                swapped[[joint, partner]] = predicted_xy[[partner, joint]]
    corrected = {'flip_people': mirrored if flipped else predicted_xy.copy(), 'swap_pairs': swapped}
    for name, visibility in (('visible_exact', 2), ('occluded_exact', 1)):
        exact = (truth[:, 2] == visibility)[:, None]
        corrected[name] = np.where(exact, truth[:, :2], predicted_xy)
    corrected['errors_halved'] = np.where(labelled[:, None], (predicted_xy + truth[:, :2]) / 2, predicted_xy)
    for name, joints in ORACLE_GROUPS.items():
        exact = np.zeros((len(truth), 1), bool)
        exact[list(joints)] = True
        corrected[name] = np.where(exact & labelled[:, None], truth[:, :2], predicted_xy)
    return corrected


def _coco_keypoint_result(image_id: int, joints_xy: np.ndarray, slots: np.ndarray) -> dict:
    """A COCO keypoint result (17-joint layout, score 1) of 13 predicted joints."""
    full = np.zeros((17, 3))
    full[slots, :2] = joints_xy
    full[slots, 2] = 1.0
    return {'image_id': image_id, 'category_id': 1, 'score': 1.0, 'keypoints': full.reshape(-1).tolist()}


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
        _, keypoints, _ = model.instance_outputs(branch, images, branch.encoder(images), rois)
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
    from occluded_ppe_ros.skeleton import COCO17_INDEX, FLIP_PERMUTATION, KEYPOINT_NAMES, OKS_SIGMAS
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
    results, errors, swaps, oks = [], {1: [], 2: []}, [], []
    oracle_results: dict[str, list[dict]] = {}
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
            results.append(_coco_keypoint_result(info['id'], joints[:, :2], slots))
            oks.append(oks_errors(joints[:, :2], truth, annotation['area'], OKS_SIGMAS))
            for name, corrected in oracle_corrections(joints[:, :2], truth, mirror).items():
                oracle_results.setdefault(name, []).append(
                    _coco_keypoint_result(info['id'], corrected, slots))
    metrics = evaluate_coco(ground_truth, results, ['keypoints'])['keypoints'].named
    oracle_ap = {name: evaluate_coco(ground_truth, corrected, ['keypoints'])['keypoints'].named['AP']
                 for name, corrected in oracle_results.items()}
    oks_table = np.array(oks).reshape(-1, len(KEYPOINT_NAMES))
    per_joint = {}
    for index, name in enumerate(KEYPOINT_NAMES):
        values = oks_table[:, index][~np.isnan(oks_table[:, index])]
        per_joint[name] = {'median_oks_error': float(np.median(values)) if len(values) else None,
                           'share_oks_term_above_half': _share(list(values < np.sqrt(2 * np.log(2))))}
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
        'per_joint': per_joint,
        'oracle_keypoint_AP': oracle_ap,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
