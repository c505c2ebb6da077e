"""Overlay rendering of a frame's results: boxes, visible masks and skeletons (plain numpy + OpenCV).

Shared by the node's `overlay` topic and `ppe infer`. No ROS here.

Colours are RGB tuples (the images drawn on are RGB). A joint is drawn in `VISIBLE_COLOR` when the
network estimates it on the pedestrian's visible part and in `OCCLUDED_COLOR` when it is estimated
behind an occluder; joints below the keypoint score threshold are not drawn. A limb is drawn when
both of its joints are present, in the occluded colour if either end is occluded.

Coordinates follow the results contract (continuous COCO convention: the centre of pixel (r, c) is
(c + 0.5, r + 0.5)); OpenCV draws at integer pixel centres, so a point (x, y) lands on pixel
(round(y - 0.5), round(x - 0.5)).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_ros.skeleton import LIMBS, NUM_KEYPOINTS

# Keypoint states; the same values as occluded_ppe_msgs/Keypoint2D's STATE_* constants.
STATE_NOT_PRESENT = 0
STATE_VISIBLE = 1
STATE_OCCLUDED = 2

VISIBLE_COLOR: tuple[int, int, int] = (0, 230, 0)      # green
OCCLUDED_COLOR: tuple[int, int, int] = (255, 140, 0)   # orange

# Instance colours (boxes and masks), cycled by detection index; none is green or orange so that the
# joint colours stay readable on top of a mask.
INSTANCE_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (214, 39, 40), (148, 103, 189), (23, 190, 207), (227, 119, 194),
    (140, 86, 75), (188, 189, 34), (127, 127, 127),
)


def instance_color(index: int) -> tuple[int, int, int]:
    """RGB colour of the detection with this index in the frame."""
    return INSTANCE_PALETTE[index % len(INSTANCE_PALETTE)]


def keypoint_states(scores: np.ndarray, occluded: np.ndarray, score_threshold: float) -> np.ndarray:
    """Classify each joint as not present, visible or occluded.

    Args:
        scores: float [13], joint confidences in [0, 1].
        occluded: bool [13], True where the network estimates the joint to be hidden.
        score_threshold: joints with a score below this are STATE_NOT_PRESENT.

    Returns:
        uint8 [13] of STATE_NOT_PRESENT / STATE_VISIBLE / STATE_OCCLUDED.
    """
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    occluded = np.asarray(occluded, dtype=bool).reshape(-1)
    if scores.shape != (NUM_KEYPOINTS,) or occluded.shape != (NUM_KEYPOINTS,):
        raise ValueError(f'expected {NUM_KEYPOINTS} keypoint scores and flags, got {scores.shape} '
                         f'and {occluded.shape}')
    states = np.where(occluded, STATE_OCCLUDED, STATE_VISIBLE).astype(np.uint8)
    states[scores < score_threshold] = STATE_NOT_PRESENT
    return states


def _pixel(x: float, y: float) -> tuple[int, int]:
    """The integer point (column, row) OpenCV draws for a continuous-convention image point."""
    return int(round(float(x) - 0.5)), int(round(float(y) - 0.5))


def blend_mask(image: np.ndarray, pedestrian: Pedestrian, color: tuple[int, int, int],
               alpha: float) -> None:
    """Tint the pedestrian's visible-mask pixels of `image` (uint8 [H, W, 3]) in place."""
    height, width = image.shape[:2]
    x0, y0 = (int(v) for v in pedestrian.mask_origin)
    mask_height, mask_width = pedestrian.mask.shape
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + mask_width, width), min(y0 + mask_height, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    inside = pedestrian.mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    # Only the rectangle around the mask's pixels is read and written (a box's corners are often empty).
    left, top, width, height = cv2.boundingRect(inside.view(np.uint8))
    if width == 0:
        return
    inside = inside[top:top + height, left:left + width]
    crop = image[cy0 + top:cy0 + top + height, cx0 + left:cx0 + left + width]
    # The tinted value of a channel depends only on its byte: a 256-entry table per channel (the same
    # float32 arithmetic as blending each pixel) applied by cv2.LUT over the crop, then copied where the
    # mask is by OpenCV's masked copy, which writes into the canvas view in place. Boolean gather/scatter
    # with per-pixel float maths cost ~0.5 ms per large mask, and numpy's copyto(where=) 4x OpenCV's.
    tinted = cv2.LUT(crop, _tint_table(tuple(int(c) for c in color), float(alpha)))
    cv2.copyTo(tinted, inside.view(np.uint8), crop)


def _tint_table(color: tuple[int, int, int], alpha: float) -> np.ndarray:
    """uint8 [1, 256, 3]: round(v (1 - alpha) + color[c] alpha) for every byte v and channel c."""
    key = (color, alpha)
    table = _TINT_TABLES.get(key)
    if table is None:
        values = np.arange(256, dtype=np.float32)[:, None]
        tint = np.asarray(color, dtype=np.float32)[None, :]
        table = (values * (1.0 - alpha) + tint * alpha + 0.5).astype(np.uint8)[None]
        if len(_TINT_TABLES) > 1024:  # colours come from a fixed palette; bound it anyway
            _TINT_TABLES.clear()
        _TINT_TABLES[key] = table
    return table


_TINT_TABLES: dict[tuple[tuple[int, int, int], float], np.ndarray] = {}


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, states: np.ndarray,
                  joint_radius: int = 3, limb_thickness: int = 2) -> None:
    """Draw limbs and joints on `image` (uint8 [H, W, 3] RGB) in place.

    Args:
        image: the canvas.
        keypoints: float [13, 2] x, y in image pixels.
        states: uint8 [13] from `keypoint_states`.
        joint_radius: radius of a joint disc, pixels.
        limb_thickness: line width of a limb, pixels.
    """
    for first, second in LIMBS:
        if states[first] == STATE_NOT_PRESENT or states[second] == STATE_NOT_PRESENT:
            continue
        occluded = STATE_OCCLUDED in (states[first], states[second])
        cv2.line(image, _pixel(*keypoints[first]), _pixel(*keypoints[second]),
                 OCCLUDED_COLOR if occluded else VISIBLE_COLOR, limb_thickness, cv2.LINE_AA)
    for joint in range(NUM_KEYPOINTS):
        if states[joint] == STATE_NOT_PRESENT:
            continue
        color = OCCLUDED_COLOR if states[joint] == STATE_OCCLUDED else VISIBLE_COLOR
        cv2.circle(image, _pixel(*keypoints[joint]), joint_radius, color, -1, cv2.LINE_AA)


def draw_overlay(image: np.ndarray, pedestrians: Sequence[Pedestrian], keypoint_threshold: float,
                 mask_alpha: float = 0.45, draw_masks: bool = True, draw_labels: bool = True) -> np.ndarray:
    """Render a frame's results on a copy of the image.

    Args:
        image: uint8 [H, W, 3] RGB input image (not modified).
        pedestrians: the frame's results, coordinates in this image's pixels.
        keypoint_threshold: joints with a lower score are not drawn.
        mask_alpha: opacity of the instance-colour tint over visible-mask pixels, in [0, 1].
        draw_masks: tint the visible masks.
        draw_labels: write "class score" above each box.

    Returns:
        uint8 [H, W, 3] RGB, a new array.
    """
    _check_canvas(image)
    canvas = np.ascontiguousarray(image).copy()
    render_overlay(canvas, pedestrians, keypoint_threshold, mask_alpha, draw_masks, draw_labels)
    return canvas


def _check_canvas(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}')


def render_overlay(canvas: np.ndarray, pedestrians: Sequence[Pedestrian], keypoint_threshold: float,
                   mask_alpha: float = 0.45, draw_masks: bool = True, draw_labels: bool = True) -> None:
    """Draw a frame's results into `canvas` in place (arguments as `draw_overlay`).

    The node renders straight into the outgoing message's buffer this way, saving a full-frame copy.

    Args:
        canvas: uint8 [H, W, 3] RGB, C-contiguous, modified in place.
        pedestrians: the frame's results, coordinates in this image's pixels.
        keypoint_threshold: joints with a lower score are not drawn.
        mask_alpha: opacity of the instance-colour tint over visible-mask pixels, in [0, 1].
        draw_masks: tint the visible masks.
        draw_labels: write "class score" above each box.
    """
    _check_canvas(canvas)
    if not canvas.flags.c_contiguous or not canvas.flags.writeable:
        raise ValueError('the canvas must be a writable C-contiguous array')
    if not 0.0 <= mask_alpha <= 1.0:
        raise ValueError(f'mask_alpha must be in [0, 1], got {mask_alpha}')
    if draw_masks:
        for index, pedestrian in enumerate(pedestrians):
            blend_mask(canvas, pedestrian, instance_color(index), mask_alpha)
    # Boxes span pixel edges [x1, x2); the last covered pixel column is ceil(x2) - 1.
    for index, pedestrian in enumerate(pedestrians):
        x1, y1, x2, y2 = (float(v) for v in pedestrian.box)
        top_left = (int(np.floor(x1)), int(np.floor(y1)))
        bottom_right = (int(np.ceil(x2)) - 1, int(np.ceil(y2)) - 1)
        color = instance_color(index)
        cv2.rectangle(canvas, top_left, bottom_right, color, 2)
        if draw_labels:
            text = f'{pedestrian.class_name} {pedestrian.score:.2f}'
            cv2.putText(canvas, text, (top_left[0], max(top_left[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.45, color, 1, cv2.LINE_AA)
    for pedestrian in pedestrians:
        states = keypoint_states(pedestrian.keypoint_scores, pedestrian.keypoint_occluded,
                                 keypoint_threshold)
        draw_skeleton(canvas, pedestrian.keypoints, states)
