"""Fit the pipeline's score calibration on real photos and write it into the checkpoint.

The shipped network runs over every photo of `--split` (the Predictor's letterbox, every box down to the
config's min_score gets a pose pass); each posed box gets the cues of
`occluded_ppe_ros.inference.score_calibration.calibration_features` and a label: 1 when it is the best-scored
box matching a non-crowd ground-truth person at box IoU >= 0.5 (COCO's greedy matching in detector-score
order), else 0 (a miss or a duplicate). A logistic regression (Newton's method, L2 on the standardised
weights) fits P(label | cues); the model lands in `model_config['score_calibration']` and the checkpoint
is written to `--out` (the weights unchanged). The gain is measured by benchmarks/pipeline_vs_peers.py
(`--ablate-calibration` adds each checkpoint's row without it).

    python -m occluded_ppe_training.score_calibration --checkpoint models/ppe_default.pt \
        --data ../shared/data/coco_train2017_person_kp --split train --out models/ppe_default.pt
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from occluded_ppe_ros.inference.score_calibration import (FEATURE_NAMES, calibrated_probability,
                                                          posed_row_features)
from occluded_ppe_ros.tracking.tracker import box_iou
from occluded_ppe_training.datasets.splits import in_split

DEFAULT_L2 = 1e-2        # two-fold cross-validation on the training split: 1e-3 and 1e-2 within 0.001 AP50
MATCH_IOU = 0.5


def match_labels(boxes: np.ndarray, truth_boxes: np.ndarray, iou: float = MATCH_IOU) -> np.ndarray:
    """1.0 for each box (best score first) that takes a still-free truth box at IoU >= `iou`, else 0.0.

    Args:
        boxes: float [N, 4] detections, best first (x1, y1, x2, y2, pixels).
        truth_boxes: float [T, 4] ground-truth boxes in the same frame.
        iou: the least overlap that counts as a match (COCO's 0.5).
    """
    labels = np.zeros(len(boxes))
    if len(boxes) == 0 or len(truth_boxes) == 0:
        return labels
    overlap = box_iou(boxes, truth_boxes)
    free = np.ones(len(truth_boxes), dtype=bool)
    for row in range(len(boxes)):
        candidates = np.where(free, overlap[row], -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= iou:
            free[best] = False
            labels[row] = 1.0
    return labels


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = DEFAULT_L2, iterations: int = 50
                 ) -> dict:
    """L2-regularised logistic regression on standardised features (Newton's method; the bias is free).

    Args:
        features: float [N, F]; labels: float [N] in {0, 1}, both classes present.

    Returns:
        {'mean', 'std', 'weights' (lists of F floats), 'bias'}: P = sigmoid(((x - mean) / std) @ w + b).
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.min() == labels.max():
        raise ValueError(f'calibration needs both matched and unmatched boxes; all {len(labels)} are '
                         f'{int(labels[0]) if len(labels) else "absent"}')
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)      # a constant cue: weight ~0, no division by zero
    design = np.c_[(features - mean) / std, np.ones(len(features))]
    penalty = np.r_[np.full(features.shape[1], l2), 0.0]
    weights = np.zeros(design.shape[1])
    for _ in range(iterations):
        probability = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (probability - labels) / len(labels) + penalty * weights
        hessian = (design * (probability * (1 - probability))[:, None]).T @ design / len(labels)
        step = np.linalg.solve(hessian + np.diag(penalty), gradient)
        weights -= step
        if np.abs(step).max() < 1e-10:
            break
    return {'mean': mean.tolist(), 'std': std.tolist(), 'weights': weights[:-1].tolist(),
            'bias': float(weights[-1])}


def log_loss(probability: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy (nats)."""
    probability = np.clip(probability, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(probability) + (1 - labels) * np.log(1 - probability)))


def collect_cues(backend, annotation_file: Path, image_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """Run `backend` (calibration off) over the split's photos.

    Returns:
        (cues [N, F], labels [N], detector scores [N]).

    Raises:
        FileNotFoundError: an image of the annotation file cannot be read (names it and the file).
        ValueError: an annotation without a 4-number bbox (names the file and the record).
    """
    from occluded_ppe_ros.inference.preprocess import letterbox

    data = json.loads(Path(annotation_file).read_text())
    truths: dict[int, list[list[float]]] = {}
    for index, record in enumerate(data.get('annotations', [])):
        bbox = record.get('bbox')
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f'{annotation_file}: annotation #{index} (id {record.get("id")}) has bbox '
                             f'{bbox!r}, expected [x, y, width, height]')
        if not record.get('iscrowd'):
            x, y, width, height = (float(v) for v in bbox)
            truths.setdefault(int(record['image_id']), []).append([x, y, x + width, y + height])
    cues, labels, scores = [], [], []
    for info in data['images']:
        if split != 'all' and not in_split(int(info['id']), split):
            continue
        path = Path(image_dir) / info['file_name']
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise FileNotFoundError(f'cannot read image {path} (listed in {annotation_file})')
        tensor, geometry = letterbox(np.ascontiguousarray(bgr[:, :, ::-1]), backend.input_size)
        outputs = backend.run(tensor[None])
        rows, features = posed_row_features(outputs, 0, backend.mask_threshold)
        if rows.size == 0:
            continue
        cues.append(features)
        labels.append(match_labels(geometry.boxes_to_image(outputs['boxes'][0, rows]),
                                   np.asarray(truths.get(int(info['id']), []), np.float64).reshape(-1, 4)))
        scores.append(outputs['scores'][0, rows])
    if not cues:
        raise ValueError(f'no detections on the {split!r} images of {annotation_file}')
    return np.concatenate(cues), np.concatenate(labels), np.concatenate(scores)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', type=Path, required=True, help='pipeline checkpoint (.pt)')
    parser.add_argument('--data', type=Path, required=True, help='COCO person-keypoints folder')
    parser.add_argument('--split', default='train', choices=('train', 'heldout', 'all'),
                        help='training/datasets/splits.py (fit on train; heldout is for reporting)')
    parser.add_argument('--out', type=Path, required=True, help='checkpoint to write (may be --checkpoint)')
    parser.add_argument('--l2', type=float, default=DEFAULT_L2)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from occluded_ppe_ros.inference.backends.pipeline_backend import pipeline_torch_backend
    from occluded_ppe_ros.model.checkpoint import atomic_torch_save, load_checkpoint
    from occluded_ppe_ros.model.pipeline_checkpoint import pipeline_from_checkpoint

    torch.set_num_threads(args.threads)
    annotation_file = args.data / 'annotations.json'
    if not annotation_file.is_file():
        parser.error(f'no {annotation_file}: --data must be a COCO person-keypoints folder')
    checkpoint = load_checkpoint(args.checkpoint)
    net, _ = pipeline_from_checkpoint(args.checkpoint, checkpoint)
    net.cfg.score_calibration = {}          # fit on the detector's own scores
    backend = pipeline_torch_backend(net)
    backend.pose_min_score = net.cfg.min_score
    cues, labels, scores = collect_cues(backend, annotation_file, args.data / 'images', args.split)
    model = fit_logistic(cues, labels, args.l2)
    calibration = {'features': list(FEATURE_NAMES), **model}
    fit = {'split': args.split, 'boxes': int(len(labels)), 'matched': int(labels.sum()), 'l2': args.l2,
           'log_loss_detector_score': round(log_loss(scores, labels), 4),
           'log_loss_calibrated': round(log_loss(calibrated_probability(cues, calibration), labels), 4)}
    checkpoint['model_config']['score_calibration'] = calibration
    checkpoint.setdefault('metrics', {})['score_calibration_fit'] = fit
    atomic_torch_save(checkpoint, args.out)
    print(f'[score_calibration] {json.dumps(fit)}; weights '
          f'{dict(zip(FEATURE_NAMES, np.round(model["weights"], 3).tolist()))} -> {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
