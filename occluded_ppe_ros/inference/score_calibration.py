"""Person confidence from the whole pipeline's evidence, not the detector's score alone.

The detector scores a box from its own features only. After the pose pass each box also has MoveNet's
joint scores, the visible-mask head's coverage, and the boxes ranked above it (a duplicate of a found
person overlaps one of them). A logistic model over those cues, fitted on the training split's photos
(`occluded_ppe_training.score_calibration`), gives P(the box is a person at box IoU >= 0.5, not a
duplicate): that probability replaces `scores`, so box AP, mask AP and the pose score
(`Pedestrian.pose_score` = score x mean joint score) rank by it.

The model is plain data in the checkpoint's `model_config['score_calibration']` (and so in the ONNX
metadata): {'features': names, 'mean': [F], 'std': [F], 'weights': [F], 'bias': float}. An empty dict
turns calibration off. It runs in numpy after both graphs, so every backend (PyTorch, ONNX Runtime,
TensorRT) applies the same arithmetic.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Each cue, in the order calibration_features returns them. Chosen by two-fold cross-validation of box
# AP50 over the training split's photos (NanoDet -> Thunder heads): the detector's logit and its square
# (its score is not calibrated across the range), the best joint's score and the share of joints >= 0.3
# (MoveNet finds a body in the crop), the mask head's coverage of the box, and three duplicate cues
# against the valid boxes ranked above (max IoU, max IoU x that box's score, max share of this box inside
# one of them). The mean joint score, box aspect, box height / image height and the occluded share did
# not add to them.
FEATURE_NAMES = ('detector_logit', 'detector_logit_squared', 'max_joint_score', 'share_joints_above_0.3',
                 'mask_coverage', 'max_iou_above', 'max_iou_times_score_above', 'max_cover_by_above')
JOINT_FOUND_SCORE = 0.3
_LOGIT_EPS = 1e-4


def calibration_features(boxes: np.ndarray, scores: np.ndarray, keypoint_scores: np.ndarray,
                         masks: np.ndarray, mask_threshold: float) -> np.ndarray:
    """The cues of one image's N posed boxes.

    Args:
        boxes: float [N, 4] x1, y1, x2, y2 (any pixel frame; only ratios are used), best detector score
            first.
        scores: float [N] detector scores in [0, 1], the same order.
        keypoint_scores: float [N, J] joint scores in [0, 1].
        masks: float [N, M, M] box-relative visible-mask probabilities.
        mask_threshold: probability above which a mask cell counts as the person.

    Returns:
        float64 [N, len(FEATURE_NAMES)].
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    count = len(scores)
    clipped = np.clip(scores, _LOGIT_EPS, 1.0 - _LOGIT_EPS)
    logit = np.log(clipped / (1.0 - clipped))
    joints = np.asarray(keypoint_scores, dtype=np.float64)
    joints = joints.reshape(count, joints.shape[-1] if joints.ndim > 1 else -1)
    coverage = (np.asarray(masks).reshape(count, -1) >= mask_threshold).mean(axis=1) if count else np.zeros(0)
    widths = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    areas = widths * heights
    left = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    top = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    right = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    bottom = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    iou = inter / np.maximum(areas[:, None] + areas[None, :] - inter, 1e-12)
    cover = inter / areas[:, None]                       # share of row i inside box j
    above = np.tril(np.ones((count, count), dtype=bool), k=-1)   # j ranked above i
    max_iou = np.where(above, iou, 0.0).max(axis=1, initial=0.0)
    max_iou_score = np.where(above, iou * scores[None, :], 0.0).max(axis=1, initial=0.0)
    max_cover = np.where(above, cover, 0.0).max(axis=1, initial=0.0)
    return np.stack([logit, logit ** 2, joints.max(axis=1, initial=0.0),
                     (joints >= JOINT_FOUND_SCORE).mean(axis=1) if joints.shape[1] else np.zeros(count),
                     coverage, max_iou, max_iou_score, max_cover], axis=1)


def check_calibration(calibration: Mapping, source: str = 'score_calibration') -> None:
    """Raise ValueError naming `source` unless `calibration` is empty or a complete model of FEATURE_NAMES."""
    if not calibration:
        return
    names = tuple(calibration.get('features', ()))
    if names != FEATURE_NAMES:
        raise ValueError(f'{source}: features {list(names)} are not this version\'s {list(FEATURE_NAMES)}; '
                         f'refit it (python -m occluded_ppe_training.score_calibration)')
    for key in ('mean', 'std', 'weights'):
        values = np.asarray(calibration.get(key, ()), dtype=np.float64)
        if values.shape != (len(FEATURE_NAMES),) or not np.isfinite(values).all():
            raise ValueError(f'{source}: {key} must be {len(FEATURE_NAMES)} finite numbers, got '
                             f'{calibration.get(key)!r}')
    if np.any(np.asarray(calibration['std'], dtype=np.float64) <= 0):
        raise ValueError(f'{source}: std must be positive, got {calibration["std"]!r}')
    try:
        bias = float(calibration.get('bias', np.nan))
    except (TypeError, ValueError):
        bias = np.nan
    if not np.isfinite(bias):
        raise ValueError(f'{source}: bias must be a finite number, got {calibration.get("bias")!r}')


def calibrated_probability(features: np.ndarray, calibration: Mapping) -> np.ndarray:
    """Logistic model: features float [N, F] -> float [N] probabilities in (0, 1)."""
    mean = np.asarray(calibration['mean'], dtype=np.float64)
    std = np.asarray(calibration['std'], dtype=np.float64)
    weights = np.asarray(calibration['weights'], dtype=np.float64)
    logits = ((features - mean) / std) @ weights + float(calibration['bias'])
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))


def posed_row_features(outputs: dict[str, np.ndarray], image: int, mask_threshold: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The posed rows of one image of contract-4 outputs, best detector score first, and their cues.

    Args:
        outputs: boxes [B, K, 4], scores [B, K] (the detector's), valid [B, K], keypoints [B, K, J, 3],
            masks [B, K, M, M].
        image: index into B.
        mask_threshold: the model's mask probability cut.

    Returns:
        (rows int [N] into K, in the order the "ranked above" cues rely on; features float64 [N, F]).
    """
    scores = outputs['scores'][image]
    rows = np.flatnonzero(outputs['valid'][image])
    rows = rows[np.argsort(-scores[rows], kind='stable')]
    features = calibration_features(outputs['boxes'][image, rows], scores[rows],
                                    outputs['keypoints'][image, rows, :, 2], outputs['masks'][image, rows],
                                    mask_threshold)
    return rows, features


def calibrate_scores(outputs: dict[str, np.ndarray], calibration: Mapping, mask_threshold: float
                     ) -> dict[str, np.ndarray]:
    """Replace the valid rows' scores of contract-4 outputs by the calibrated probability; best first again.

    Args:
        outputs: boxes [B, K, 4], scores [B, K], valid [B, K] (rows with a pose pass), keypoints
            [B, K, J, 3], masks [B, K, M, M] and the other contract-4 arrays; rows best detector score first.
        calibration: the model (see the module docstring); empty = return `outputs` unchanged.
        mask_threshold: the model's mask probability cut (its config's, not a user's display setting).

    Returns:
        the same keys; every array re-ordered so that each image's valid rows come first, best calibrated
        score first (invalid rows keep their detector scores, after them).
    """
    if not calibration:
        return outputs
    scores = np.asarray(outputs['scores'], dtype=np.float32).copy()
    valid = np.asarray(outputs['valid'], dtype=bool)
    for image in range(scores.shape[0]):
        rows, features = posed_row_features(outputs, image, mask_threshold)
        if rows.size:
            scores[image, rows] = calibrated_probability(features, calibration)
    order = np.argsort(-np.where(valid, scores, scores - 2.0), axis=1, kind='stable')
    calibrated = {}
    for name, value in outputs.items():
        value = scores if name == 'scores' else np.asarray(value)
        index = order.reshape(order.shape + (1,) * (value.ndim - 2))
        calibrated[name] = np.take_along_axis(value, index, axis=1)
    return calibrated
