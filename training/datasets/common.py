"""What every dataset shares: the target dict of contract 2, record errors, skip accounting, image I/O.

A dataset item is `(image, target)`: image float32 [3, H, W], RGB in [0, 1]; target the dict described
in docs/architecture.md (contract 2), coordinates in pixels of that image with the continuous COCO
convention (pixel (r, c) covers [c, c + 1) x [r, r + 1)).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from occluded_ppe_ros.skeleton import NUM_KEYPOINTS

TARGET_KEYS = ('boxes', 'labels', 'masks', 'has_mask', 'keypoints', 'has_keypoints', 'visible_boxes',
               'ignore_boxes', 'image_id')


class DatasetRecordError(ValueError):
    """A record of an annotation file that cannot be used; the message names the file and the record."""

    def __init__(self, source: str | Path, record: str, reason: str) -> None:
        self.source = str(source)
        self.record = record
        self.reason = reason
        super().__init__(f'{source}: {record}: {reason}')


@dataclass(frozen=True)
class SkippedRecord:
    """One record left out by a dataset built with `skip_invalid=True`."""

    source: str
    record: str
    reason: str


class RecordChecker:
    """Raises `DatasetRecordError`, or with `skip_invalid` records the problem and lets the caller skip.

    Args:
        skip_invalid: False: the first bad record stops with an error naming the file and record;
            True: bad records are appended to `skipped` and the caller leaves them out.
    """

    def __init__(self, skip_invalid: bool) -> None:
        self.skip_invalid = skip_invalid
        self.skipped: list[SkippedRecord] = []

    def reject(self, source: str | Path, record: str, reason: str) -> None:
        """Report a bad record: raise, or (skip_invalid) remember it and return."""
        if not self.skip_invalid:
            raise DatasetRecordError(source, record, reason)
        self.skipped.append(SkippedRecord(str(source), record, reason))


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 [H, W, 3] RGB.

    Raises:
        FileNotFoundError: the file is missing or OpenCV cannot decode it.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'cannot read image {path} (missing or not an image)')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] RGB -> float32 [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] x, y, w, h (top-left corner and size) -> [N, 4] x1, y1, x2, y2, float32."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def make_target(image_id: int, height: int, width: int, *,
                boxes: np.ndarray | None = None,
                labels: np.ndarray | None = None,
                masks: np.ndarray | None = None,
                has_mask: np.ndarray | None = None,
                keypoints: np.ndarray | None = None,
                has_keypoints: np.ndarray | None = None,
                visible_boxes: np.ndarray | None = None,
                ignore_boxes: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Build a contract-2 target dict from numpy arrays, filling what a dataset does not have.

    Args:
        image_id: the record's image id.
        height, width: image size in pixels (the masks' size).
        boxes: [N, 4] x1, y1, x2, y2 full boxes, pixels.
        labels: [N] 0-based class in the domain's branch.
        masks: [N, H, W] visible instance masks (0/1); zeros where unknown.
        has_mask: [N] bool; default: True where the mask has any pixel.
        keypoints: [N, 13, 3] x, y, v (COCO visibility 0/1/2); default zeros.
        has_keypoints: [N] bool; default: any v > 0.
        visible_boxes: [N, 4]; default: `boxes`.
        ignore_boxes: [M, 4] x1, y1, x2, y2 crowd / ignore regions.

    Returns:
        the target dict (TARGET_KEYS) of torch tensors with the contract's dtypes.
    """
    boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    count = len(boxes)
    labels = np.zeros(count, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(count)
    if masks is None:
        masks = np.zeros((count, height, width), np.uint8)
    masks = np.asarray(masks, np.uint8).reshape(count, height, width)
    if has_mask is None:
        has_mask = masks.reshape(count, height * width).any(axis=1)
    if keypoints is None:
        keypoints = np.zeros((count, NUM_KEYPOINTS, 3), np.float32)
    keypoints = np.asarray(keypoints, np.float32).reshape(count, NUM_KEYPOINTS, 3)
    if has_keypoints is None:
        has_keypoints = (keypoints[:, :, 2] > 0).any(axis=1)
    visible_boxes = boxes.copy() if visible_boxes is None else np.asarray(visible_boxes, np.float32)
    ignore_boxes = (np.zeros((0, 4), np.float32) if ignore_boxes is None
                    else np.asarray(ignore_boxes, np.float32).reshape(-1, 4))
    return {
        'boxes': torch.from_numpy(np.ascontiguousarray(boxes)),
        'labels': torch.from_numpy(labels),
        'masks': torch.from_numpy(np.ascontiguousarray(masks)),
        'has_mask': torch.from_numpy(np.asarray(has_mask, bool).reshape(count)),
        'keypoints': torch.from_numpy(np.ascontiguousarray(keypoints)),
        'has_keypoints': torch.from_numpy(np.asarray(has_keypoints, bool).reshape(count)),
        'visible_boxes': torch.from_numpy(np.ascontiguousarray(visible_boxes.reshape(count, 4))),
        'ignore_boxes': torch.from_numpy(np.ascontiguousarray(ignore_boxes)),
        'image_id': torch.tensor(int(image_id), dtype=torch.int64),
    }


def select_instances(target: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The target with only the instances where `keep` (bool [N]) is True; ignore boxes untouched."""
    out = dict(target)
    for key in ('boxes', 'labels', 'masks', 'has_mask', 'keypoints', 'has_keypoints', 'visible_boxes'):
        out[key] = target[key][keep]
    return out


def box_outside_image(box: np.ndarray, width: int, height: int, tolerance: float) -> bool:
    """Whether an x1, y1, x2, y2 box leaves the image [0, width] x [0, height] by more than `tolerance`."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance)
