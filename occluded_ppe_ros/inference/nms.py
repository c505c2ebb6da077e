"""Greedy non-maximum suppression in numpy.

The one implementation of the Predictor's extra class-wise NMS (inference/postprocess.py) and of the
CPU peers' person NMS (peers.py).

The network's own NMS runs inside the graph (torchvision.ops.nms, exported to ONNX); this one runs on a
handful of already decoded boxes per image, where numpy beats a round trip through torch.
"""
from __future__ import annotations

import numpy as np


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
               labels: np.ndarray | None = None) -> np.ndarray:
    """Greedy NMS: walk the boxes by decreasing score; keep one, drop every later box it overlaps too much.

    Args:
        boxes: float [N, 4] x1, y1, x2, y2 (a box with x2 < x1 or y2 < y1 has area 0).
        scores: float [N].
        iou_threshold: a box is dropped when its IoU with a kept higher-scoring box exceeds this.
        labels: int [N]: boxes only suppress boxes of the same label (class-wise NMS); None = all
            boxes compete.

    Returns:
        int64 [K] indices of the kept boxes, highest score first (ties: lower index first).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f'{len(boxes)} boxes but {len(scores)} scores')
    labels = np.zeros(len(scores), np.int64) if labels is None else np.asarray(labels).reshape(-1)
    if len(labels) != len(scores):
        raise ValueError(f'{len(labels)} labels for {len(scores)} boxes')
    order = np.argsort(-scores, kind='stable')
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    suppressed = np.zeros(len(scores), dtype=bool)
    keep: list[int] = []
    for position, index in enumerate(order):
        if suppressed[index]:
            continue
        keep.append(int(index))
        rest = order[position + 1:]
        rest = rest[(labels[rest] == labels[index]) & ~suppressed[rest]]
        if rest.size == 0:
            continue
        x1 = np.maximum(boxes[index, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[index, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[index, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[index, 3], boxes[rest, 3])
        intersection = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        # two zero-area boxes have IoU 0 (the floor keeps the division defined)
        iou = intersection / np.maximum(areas[index] + areas[rest] - intersection, 1e-12)
        suppressed[rest[iou > iou_threshold]] = True
    return np.array(keep, dtype=np.int64)
