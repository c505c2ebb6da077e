"""Pick the node's thresholds: precision, recall and F1 of person boxes and of joints on a split.

Reads the COCO ground truth and a COCO results JSON (as `ppe eval model` writes: results_torch.json, or
`ppe infer --coco-gt`), matches detections to non-crowd persons greedily by score at box IoU >= 0.5 (the
COCO rule; detections matching a crowd region are neither true nor false positives), and prints a
table per threshold plus the F1-best one. Used to set the node's default `score_threshold` for the
shipped default model on the held-out real photos (models/README.md).

Joints (`keypoint_threshold`): over the detections matched to a person at the F1-best score threshold,
a labelled joint (v > 0, the 13 of the skeleton) counts as correct when the predicted one lies within
0.1 x the larger side of the person's box (PCK@0.1); a joint is reported when its score reaches the
threshold. Precision = correct reported / reported, recall = correct reported / labelled.

Usage:
    .venv/bin/python benchmarks/operating_point.py --gt runs/default/heldout_real.json \
        --results outputs/eval/default_real/results_torch.json [--thresholds 0.05 0.1 ...]
        [--keypoint-thresholds 0.1 0.2 ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of boxes given as x, y, w, h (pixels)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    width = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-9)


def counts_at(gt: dict, results: list[dict], threshold: float, iou: float = 0.5,
              pairs: list[tuple[dict, dict]] | None = None) -> tuple[int, int, int]:
    """(true positives, false positives, persons) of detections scoring >= threshold.

    Args:
        gt: COCO ground truth.
        results: COCO results.
        threshold: minimum detection score.
        iou: box IoU of a match.
        pairs: if given, each (result, person annotation) match is appended to it.
    """
    persons, crowds, detections = defaultdict(list), defaultdict(list), defaultdict(list)
    for a in gt['annotations']:   # persons: the annotations; crowds: only their boxes
        if a.get('iscrowd'):
            crowds[a['image_id']].append(a['bbox'])
        else:
            persons[a['image_id']].append(a)
    for r in results:
        if r['score'] >= threshold:
            detections[r['image_id']].append(r)
    true_positives = false_positives = 0
    for image in gt['images']:
        found = sorted(detections.get(image['id'], []), key=lambda r: -r['score'])
        targets = np.array([a['bbox'] for a in persons.get(image['id'], [])], float).reshape(-1, 4)
        crowd = np.array(crowds.get(image['id'], []), float).reshape(-1, 4)
        boxes = np.array([r['bbox'] for r in found], float).reshape(-1, 4)
        overlaps = box_iou_xywh(boxes, targets)
        taken = np.zeros(len(targets), bool)
        for index in range(len(boxes)):
            candidates = np.where(~taken & (overlaps[index] >= iou))[0] if len(targets) else []
            if len(candidates):
                match = candidates[np.argmax(overlaps[index, candidates])]
                taken[match] = True
                true_positives += 1
                if pairs is not None:
                    pairs.append((found[index], persons[image['id']][match]))
            elif len(crowd) and box_iou_xywh(boxes[index:index + 1], crowd).max() >= iou:
                continue
            else:
                false_positives += 1
    return true_positives, false_positives, sum(len(v) for v in persons.values())


def joint_counts(pairs: list[tuple[dict, dict]], threshold: float, alpha: float = 0.1
                 ) -> tuple[int, int, int]:
    """(correct reported, reported, labelled) joints of matched detections at a keypoint threshold.

    Args:
        pairs: (COCO result with 17-slot keypoints x, y, score; person annotation) matches.
        threshold: minimum joint score to report the joint.
        alpha: PCK tolerance as a fraction of the larger side of the person's box.
    """
    from occluded_ppe_ros.skeleton import COCO17_INDEX

    slots = np.asarray(COCO17_INDEX)
    correct_reported = reported = labelled = 0
    for result, person in pairs:
        predicted = np.asarray(result['keypoints'], float).reshape(17, 3)[slots]
        truth = np.asarray(person['keypoints'], float).reshape(17, 3)[slots]
        has_label = truth[:, 2] > 0
        tolerance = alpha * max(person['bbox'][2], person['bbox'][3])
        correct = np.hypot(*(predicted[:, :2] - truth[:, :2]).T) <= tolerance
        shown = predicted[:, 2] >= threshold
        correct_reported += int((correct & shown & has_label).sum())
        reported += int((shown & has_label).sum())
        labelled += int(has_label.sum())
    return correct_reported, reported, labelled


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: prints the table and the F1-best threshold."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--gt', type=Path, required=True, help='COCO ground truth of the split')
    parser.add_argument('--results', type=Path, required=True, help='COCO results JSON')
    parser.add_argument('--thresholds', type=float, nargs='+',
                        default=[0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5])
    parser.add_argument('--keypoint-thresholds', type=float, nargs='+',
                        default=[0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5])
    args = parser.parse_args(argv)
    gt = json.loads(args.gt.read_text())
    results = json.loads(args.results.read_text())
    print(f'{len(gt["images"])} images, {len(results)} detections; box IoU >= 0.5')
    print('| score threshold | detections | true pos. | false pos. | precision | recall | F1 |')
    print('|---:|---:|---:|---:|---:|---:|---:|')
    best = (-1.0, None)
    for threshold in args.thresholds:
        tp, fp, persons = counts_at(gt, results, threshold)
        precision = tp / max(tp + fp, 1)
        recall = tp / max(persons, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        print(f'| {threshold:.2f} | {tp + fp} | {tp} | {fp} | {precision:.3f} | {recall:.3f} | {f1:.3f} |')
        best = max(best, (f1, threshold))
    print(f'F1-best threshold: {best[1]} (F1 {best[0]:.3f})')

    pairs: list[tuple[dict, dict]] = []
    counts_at(gt, results, best[1], pairs=pairs)
    print(f'\njoints of the {len(pairs)} detections matched at score threshold {best[1]}; correct = PCK@0.1')
    print('| keypoint threshold | reported | correct reported | labelled | precision | recall | F1 |')
    print('|---:|---:|---:|---:|---:|---:|---:|')
    best_joints = (-1.0, None)
    for threshold in args.keypoint_thresholds:
        correct, reported, labelled = joint_counts(pairs, threshold)
        precision = correct / max(reported, 1)
        recall = correct / max(labelled, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        print(f'| {threshold:.2f} | {reported} | {correct} | {labelled} | {precision:.3f} | {recall:.3f} | '
              f'{f1:.3f} |')
        best_joints = max(best_joints, (f1, threshold))
    print(f'F1-best keypoint threshold: {best_joints[1]} (F1 {best_joints[0]:.3f})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
