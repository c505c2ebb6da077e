"""Post-processing shared by every backend: contract-4 outputs of one image -> `Pedestrian`s in image pixels.

Steps per valid row scoring >= score_threshold: an optional extra class-wise NMS (the graph's NMS IoU is
fixed at export; a lower runtime threshold removes more, a higher one cannot bring boxes back), boxes
and keypoints mapped through the letterbox (`Letterbox.to_image`), the M x M box-relative mask
probabilities pasted onto the image pixels the box touches (bilinear, zero outside the box) and cut at
`mask_threshold`, and each joint flagged occluded where its occlusion probability > occlusion_threshold.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from occluded_ppe_ros.inference.nms import greedy_nms
from occluded_ppe_ros.inference.preprocess import Letterbox
from occluded_ppe_ros.inference.results import Pedestrian


def bilinear_weights(positions: np.ndarray, size: int) -> np.ndarray:
    """Interpolation matrix sampling a length-`size` signal at `positions` (sample i sits at i).

    Positions inside the signal's extent [-0.5, size - 0.5] are clamped to [0, size - 1] and read
    (1 - f) x s[floor(p)] + f x s[floor(p) + 1], f = p - floor(p) (so the border cells extend to the
    extent's edge instead of fading to 0 there); positions outside the extent read 0.

    Args:
        positions: float [N].
        size: signal length.

    Returns:
        float32 [N, size] with the weights of each position in its row.
    """
    positions = np.asarray(positions, dtype=np.float64)
    inside = (positions >= -0.5) & (positions <= size - 0.5)
    clamped = np.clip(positions, 0.0, size - 1.0)
    low = np.minimum(np.floor(clamped).astype(np.int64), size - 1)
    high = np.minimum(low + 1, size - 1)
    fraction = clamped - low
    weights = np.zeros((positions.size, size), dtype=np.float64)
    rows = np.flatnonzero(inside)
    np.add.at(weights, (rows, low[rows]), 1.0 - fraction[rows])
    np.add.at(weights, (rows, high[rows]), fraction[rows])
    return weights.astype(np.float32)


def paste_mask(mask_probs: np.ndarray, box: np.ndarray, image_height: int, image_width: int,
               threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a box-relative mask onto the image pixels the box touches.

    Pixel (r, c) of the image has its centre at (c + 0.5, r + 0.5); it reads the mask at the box
    fraction of that centre, i.e. mask cell coordinate u = (c + 0.5 - x1) / (x2 - x1) x M - 0.5 (cell i
    centred at i), bilinearly, clamped to the border cells inside the box (a visible mask reaching the
    box edge stays on up to the edge) and 0 for pixel centres outside the box.

    Args:
        mask_probs: float [M, M] probabilities over the box (rows top to bottom).
        box: float [4] x1, y1, x2, y2 in image pixels.
        image_height: image rows (the crop is clipped to the image).
        image_width: image columns.
        threshold: probability above which a pixel is in the mask.

    Returns:
        (bool [h, w] crop, int64 [2] origin x0, y0) with mask[r, c] = image pixel (y0 + r, x0 + c);
        at least 1 x 1 (all False for a box without area).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    x0 = min(max(int(math.floor(x1)), 0), image_width - 1)
    y0 = min(max(int(math.floor(y1)), 0), image_height - 1)
    x_end = max(min(int(math.ceil(x2)), image_width), x0 + 1)
    y_end = max(min(int(math.ceil(y2)), image_height), y0 + 1)
    origin = np.array([x0, y0], dtype=np.int64)
    width, height = x2 - x1, y2 - y1
    if width <= 0 or height <= 0:
        return np.zeros((y_end - y0, x_end - x0), dtype=bool), origin
    rows_m, cols_m = mask_probs.shape
    u = (np.arange(x0, x_end) + 0.5 - x1) / width * cols_m - 0.5
    v = (np.arange(y0, y_end) + 0.5 - y1) / height * rows_m - 0.5
    crop = bilinear_weights(v, rows_m) @ mask_probs.astype(np.float32) @ bilinear_weights(u, cols_m).T
    return crop > threshold, origin


def to_pedestrians(outputs: dict[str, np.ndarray], geometry: Letterbox, class_names: Sequence[str],
                   score_threshold: float, mask_threshold: float = 0.5, occlusion_threshold: float = 0.5,
                   nms_threshold: float | None = None) -> list[Pedestrian]:
    """Contract-4 outputs of ONE image (arrays without the batch axis) -> Pedestrians, best first.

    Args:
        outputs: boxes [K, 4], scores [K], labels [K], valid [K], masks [K, M, M], keypoints [K, 13, 3],
            keypoint_occluded [K, 13], in network-input pixels.
        geometry: how the image was letterboxed.
        class_names: names by label.
        score_threshold: minimum detection score.
        mask_threshold: mask probability cut.
        occlusion_threshold: occlusion probability above which a joint is flagged occluded.
        nms_threshold: extra class-wise NMS IoU on the image's detections; None = the graph's NMS only.

    Returns:
        Pedestrians in image pixels, sorted by decreasing score.
    """
    scores = np.asarray(outputs['scores'], dtype=np.float32)
    keep = np.flatnonzero(np.asarray(outputs['valid'], dtype=bool) & (scores >= score_threshold))
    if keep.size == 0:
        return []
    boxes_net = np.asarray(outputs['boxes'], dtype=np.float32)[keep]
    labels = np.asarray(outputs['labels']).astype(np.int64)[keep]
    if nms_threshold is not None:
        kept = greedy_nms(boxes_net, scores[keep], nms_threshold, labels=labels)
        keep, boxes_net, labels = keep[kept], boxes_net[kept], labels[kept]
    order = np.argsort(-scores[keep], kind='stable')
    keep, boxes_net, labels = keep[order], boxes_net[order], labels[order]
    boxes = geometry.boxes_to_image(boxes_net)
    # The masks span the network's boxes; paste them over those boxes before clipping to the image.
    mask_boxes = geometry.to_image(boxes_net.reshape(-1, 2, 2)).reshape(-1, 4)
    keypoints = np.asarray(outputs['keypoints'], dtype=np.float32)[keep]
    keypoint_xy = geometry.to_image(keypoints[..., :2])
    occluded = np.asarray(outputs['keypoint_occluded'], dtype=np.float32)[keep]
    masks = np.asarray(outputs['masks'], dtype=np.float32)[keep]
    pedestrians = []
    for row in range(keep.size):
        label = int(labels[row])
        if not 0 <= label < len(class_names):
            raise ValueError(f'label {label} has no class name; class names are {list(class_names)}')
        mask, origin = paste_mask(masks[row], mask_boxes[row], geometry.image_height, geometry.image_width,
                                  mask_threshold)
        pedestrians.append(Pedestrian(
            box=boxes[row].astype(np.float32),
            class_id=label,
            class_name=str(class_names[label]),
            score=float(scores[keep[row]]),
            mask=mask,
            mask_origin=origin,
            keypoints=keypoint_xy[row].astype(np.float32),
            keypoint_scores=np.clip(keypoints[row, :, 2], 0.0, 1.0).astype(np.float32),
            keypoint_occluded=occluded[row] > occlusion_threshold,
        ))
    return pedestrians
