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
               alpha: float, scale: tuple[float, float] = (1.0, 1.0)) -> None:
    """Tint the pedestrian's visible-mask pixels of `image` (uint8 [H, W, 3]) in place.

    Args:
        image: the canvas.
        pedestrian: its mask and mask_origin are in the pixels of the image the results refer to.
        color: RGB tint.
        alpha: opacity of the tint, [0, 1].
        scale: (x, y) factors from the results' image to `image` (see `overlay_size`); the mask is then
            resampled to the canvas by nearest neighbour (each canvas pixel takes the mask value under
            its centre).
    """
    height, width = image.shape[:2]
    placed = _mask_on_canvas(pedestrian, height, width, scale)
    if placed is None:
        return
    cx0, cy0, inside = placed
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


def _mask_on_canvas(pedestrian: Pedestrian, height: int, width: int,
                    scale: tuple[float, float]) -> tuple[int, int, np.ndarray] | None:
    """The pedestrian's mask on a canvas of `height` x `width`: (x, y, bool [h, w]), or None if off it."""
    x0, y0 = (int(v) for v in pedestrian.mask_origin)
    mask = pedestrian.mask
    mask_height, mask_width = mask.shape
    if scale == (1.0, 1.0):
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + mask_width, width), min(y0 + mask_height, height)
        if cx1 <= cx0 or cy1 <= cy0:
            return None
        return cx0, cy0, mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    columns = _source_indices(x0, mask_width, float(scale[0]), width)
    rows = _source_indices(y0, mask_height, float(scale[1]), height)
    if columns is None or rows is None:
        return None
    # Row subset first, then columns: only the canvas-size result is gathered (no full-size temporary).
    return columns[0], rows[0], np.ascontiguousarray(mask[rows[1]][:, columns[1]])


def _source_indices(origin: int, length: int, scale: float,
                    canvas_length: int) -> tuple[int, np.ndarray] | None:
    """Nearest-neighbour sampling of one mask axis: (first canvas index, mask index per canvas index).

    Canvas pixel c has its centre at (c + 0.5) / scale in the source image; it samples the mask when that
    source pixel lies in [origin, origin + length).
    """
    first = max(int(np.floor(origin * scale - 0.5)), 0)
    stop = min(int(np.ceil((origin + length) * scale)) + 1, canvas_length)
    if stop <= first:
        return None
    canvas = np.arange(first, stop)
    source = np.floor((canvas + 0.5) / scale).astype(np.int64) - origin
    inside = (source >= 0) & (source < length)
    if not inside.any():
        return None
    return int(canvas[inside][0]), source[inside]


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


def overlay_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) of an overlay whose longer side is at most `max_side` (the aspect ratio kept).

    Args:
        height, width: the input image's size, pixels.
        max_side: cap on the longer side, pixels; 0 = no cap. An image within the cap keeps its size
            (never enlarged).

    Returns:
        The overlay size; each side at least 1 pixel.
    """
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return height, width
    factor = max_side / longest
    return max(1, round(height * factor)), max(1, round(width * factor))


def shrink_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` resized down to `height` x `width` (e.g. an `overlay_size`), anti-aliased and fast.

    Halves with INTER_AREA (pixel-area averaging, OpenCV's fast path for 2x) while the image is at least
    twice the target, then finishes with INTER_LINEAR (at most 2x, where it barely aliases): close to
    a direct INTER_AREA and ~7x faster at a non-integer ratio (2048x1024 -> 640x320: 0.6 vs 4 ms here).
    Returns `image` itself when it already has that size.
    """
    while image.shape[0] >= 2 * height and image.shape[1] >= 2 * width:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image


def render_overlay(canvas: np.ndarray, pedestrians: Sequence[Pedestrian], keypoint_threshold: float,
                   mask_alpha: float = 0.45, draw_masks: bool = True, draw_labels: bool = True,
                   source_size: tuple[int, int] | None = None) -> None:
    """Draw a frame's results into `canvas` in place (arguments as `draw_overlay`).

    The node renders straight into the outgoing message's buffer this way, saving a full-frame copy.

    Args:
        canvas: uint8 [H, W, 3] RGB, C-contiguous, modified in place.
        pedestrians: the frame's results, coordinates in the pixels of the image of `source_size`.
        keypoint_threshold: joints with a lower score are not drawn.
        mask_alpha: opacity of the instance-colour tint over visible-mask pixels, in [0, 1].
        draw_masks: tint the visible masks.
        draw_labels: write "class score" above each box.
        source_size: (height, width) of the image the results refer to, when the canvas is that image
            resized (e.g. to `overlay_size`); coordinates are scaled by canvas / source size per axis and
            masks resampled by nearest neighbour. None = the canvas's own size. Line widths, joint discs
            and label text keep their pixel sizes on the canvas.
    """
    _check_canvas(canvas)
    if not canvas.flags.c_contiguous or not canvas.flags.writeable:
        raise ValueError('the canvas must be a writable C-contiguous array')
    if not 0.0 <= mask_alpha <= 1.0:
        raise ValueError(f'mask_alpha must be in [0, 1], got {mask_alpha}')
    scale = (1.0, 1.0)
    if source_size is not None:
        source_height, source_width = (int(v) for v in source_size)
        if source_height <= 0 or source_width <= 0:
            raise ValueError(f'source_size must be positive, got {source_size}')
        scale = (canvas.shape[1] / source_width, canvas.shape[0] / source_height)
    if draw_masks:
        for index, pedestrian in enumerate(pedestrians):
            blend_mask(canvas, pedestrian, instance_color(index), mask_alpha, scale)
    # Boxes span pixel edges [x1, x2); the last covered pixel column is ceil(x2) - 1.
    for index, pedestrian in enumerate(pedestrians):
        x1, x2 = (float(v) * scale[0] for v in pedestrian.box[0::2])
        y1, y2 = (float(v) * scale[1] for v in pedestrian.box[1::2])
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
        keypoints = pedestrian.keypoints
        if scale != (1.0, 1.0):
            keypoints = np.asarray(keypoints, np.float64) * np.asarray(scale)
        draw_skeleton(canvas, keypoints, states)
