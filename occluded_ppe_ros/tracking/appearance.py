"""A pedestrian's appearance for the tracker: the mean colour of body bands inside the visible mask.

Two people crossing each other swap places within a few frames while one hides the other; box overlap,
keypoints and motion then say little about who is who, but their clothes do. The cue is deliberately
small: per band of the full (amodal) box (`BODY_BANDS`, fractions of the box height: the upper body,
then the legs), the mean colour of the image pixels that the person's visible instance mask covers,
in CIELAB (a Euclidean distance there is roughly perceptual: ~2.3 is a just-noticeable difference).
Only the visible mask's pixels count, so an occluder in front of the person does not colour their
appearance; a band too little of which is visible (`MIN_BAND_SHARE`) has no colour (NaN) and takes no
part in comparisons.

Cost: each band is read at a fixed grid of points (`BAND_GRID`), so a person costs the same whatever
their size: about 5 us per person (one gather from their mask) plus a few batched numpy operations and one
colour conversion per frame.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from occluded_ppe_ros.inference.results import Pedestrian

# Bands of the full box, (top, bottom) as fractions of its height from its top: upper body (shoulders
# to hips; the head above is mostly skin and hair, alike for many people) and legs.
BODY_BANDS: tuple[tuple[float, float], ...] = ((0.12, 0.5), (0.5, 0.95))
NUM_BANDS = len(BODY_BANDS)
# Points per band at which the image and the visible mask are read: rows, columns (see `band_colours`).
BAND_GRID = (10, 8)
# A band needs this share of its grid points on the visible mask to have a colour (fewer: too little of
# it is seen, or too little is in the image).
MIN_BAND_SHARE = 0.1
# The grid's rows over all bands [B x R] as fractions of the box height, its columns [C] of the box width.
_GRID_ROW_FRACTIONS = np.concatenate([top + (bottom - top) * (np.arange(BAND_GRID[0]) + 0.5) / BAND_GRID[0]
                                      for top, bottom in BODY_BANDS])
_GRID_COL_FRACTIONS = (np.arange(BAND_GRID[1]) + 0.5) / BAND_GRID[1]


def pedestrian_colours(image: np.ndarray, pedestrians: Sequence[Pedestrian]) -> np.ndarray:
    """The band colours of each pedestrian (see the module docstring).

    Args:
        image: uint8 [H, W, 3] RGB, the frame the pedestrians were detected in.
        pedestrians: their `box` (full box, pixels), `mask` and `mask_origin` (visible mask crop).

    Returns:
        float64 [D, NUM_BANDS, 3], CIELAB (L in [0, 100], a and b about [-128, 127]) per band; NaN for a
        band without enough visible pixels.
    """
    return band_colours(image, [p.box for p in pedestrians], [p.mask for p in pedestrians],
                        [p.mask_origin for p in pedestrians])


def band_colours(image: np.ndarray, boxes: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray],
                 mask_origins: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """The band colours of people given as arrays (`pedestrian_colours` on plain arrays).

    Each band is read on a fixed grid of `BAND_GRID` (rows, columns) points spread over the band of the
    box, whatever the person's size: the mean of the grid points that fall on the visible mask (and in
    the image). A grid rather than every pixel keeps a 300-px tall person as cheap as a 60-px one, and
    all people's pixels are read with one gather.

    Args:
        image: uint8 [H, W, 3] RGB.
        boxes: float [D, 4] x1, y1, x2, y2 full boxes, image pixels.
        masks: D bool [H_m, W_m] visible masks; masks[d][r, c] is image pixel (row mask_origins[d][1] + r,
            column mask_origins[d][0] + c).
        mask_origins: int [D, 2] x0, y0 (column, row) of each mask's top-left pixel.

    Returns:
        float64 [D, NUM_BANDS, 3] CIELAB, NaN where a band has too few visible points (`MIN_BAND_SHARE`).
    """
    count = len(masks)
    if not count:
        return np.zeros((0, NUM_BANDS, 3))
    rows, cols = image.shape[:2]
    boxes = np.asarray(boxes, np.float64).reshape(count, 4)
    origins = np.asarray(mask_origins, np.int64).reshape(count, 2)
    mask_sizes = np.array([mask.shape for mask in masks], np.int64).reshape(count, 2)  # rows, columns
    # The grid's rows (all bands, [D, B x R]) and columns ([D, C]) in image pixels: the pixel containing
    # each point; a point is read if both its row and column are in the image and in the mask crop.
    ys = np.floor(boxes[:, 1:2] + _GRID_ROW_FRACTIONS * (boxes[:, 3:4] - boxes[:, 1:2])).astype(np.int64)
    xs = np.floor(boxes[:, 0:1] + _GRID_COL_FRACTIONS * (boxes[:, 2:3] - boxes[:, 0:1])).astype(np.int64)
    mask_ys, mask_xs = ys - origins[:, 1:], xs - origins[:, :1]
    # 0 <= v < size in one comparison: a negative int64 viewed as uint64 is huge.
    row_usable = (ys.view(np.uint64) < rows) & (mask_ys.view(np.uint64) < mask_sizes[:, :1].view(np.uint64))
    col_usable = (xs.view(np.uint64) < cols) & (mask_xs.view(np.uint64) < mask_sizes[:, 1:].view(np.uint64))
    # Each grid point's index into its person's flattened mask [D, B x R, C], one take per person (each
    # mask is its own array). Points outside the crop or the image read some clipped index: `visible`
    # leaves them out.
    mask_points = (mask_ys * mask_sizes[:, 1:])[:, :, None] + mask_xs[:, None, :]
    on_mask = np.array([np.take(mask, points, mode='clip') for mask, points in zip(masks, mask_points)])
    visible = on_mask & row_usable[:, :, None] & col_usable[:, None, :]  # [D, B x R, C]
    flat = ((ys * cols)[:, :, None] + xs[:, None, :]).reshape(count, NUM_BANDS, -1)  # [D, B, N = R x C]
    pixels = np.take(image.reshape(-1, 3), flat, axis=0, mode='clip')  # [D, B, N, 3]
    visible = visible.reshape(count, NUM_BANDS, -1)
    points = visible.sum(axis=2)  # [D, B]
    sums = np.einsum('dbn,dbnc->dbc', visible.astype(np.float32), pixels.astype(np.float32))
    rgb_means = (sums / np.maximum(points, 1)[..., None]).astype(np.float32)  # cv2's Lab: 8-bit or float32
    # The colour of the mean RGB, converted once for all: cv2 takes float RGB in [0, 1] to L in [0, 100].
    lab = cv2.cvtColor(rgb_means.reshape(1, -1, 3) / 255.0, cv2.COLOR_RGB2LAB)
    lab = lab.reshape(count, NUM_BANDS, 3).astype(np.float64)
    lab[points < MIN_BAND_SHARE * BAND_GRID[0] * BAND_GRID[1]] = np.nan
    return lab


def colour_similarity(track_colours: np.ndarray, detection_colours: np.ndarray,
                      colour_std: float) -> np.ndarray:
    """Appearance similarity of every track and detection: float64 [T, D] in [0, 1], NaN if unknown.

    exp(-m / (2 colour_std^2)), m = the mean over the bands both have of dE^2, the squared CIELAB distance
    of the band colours: 1 for the same clothes, small when either the top or the trousers differ. NaN
    where the two share no band (nothing to compare).

    Args:
        track_colours: float [T, NUM_BANDS, 3] CIELAB, NaN for bands not seen.
        detection_colours: float [D, NUM_BANDS, 3] CIELAB, NaN for bands not seen.
        colour_std: CIELAB distance at which the similarity is exp(-1/2) (> 0).
    """
    track_known = np.isfinite(track_colours[..., 0]).astype(np.float64)  # [T, B]
    detection_known = np.isfinite(detection_colours[..., 0]).astype(np.float64)  # [D, B]
    tracks, detections = np.nan_to_num(track_colours), np.nan_to_num(detection_colours)
    # sum over shared bands of |t - d|^2 = |t|^2 + |d|^2 - 2 t.d, each term a small matrix product (an
    # unknown band is zero, so it drops out of t.d; the norms count only where the other side knows it).
    track_norms = (tracks ** 2).sum(axis=2)  # [T, B]
    detection_norms = (detections ** 2).sum(axis=2)  # [D, B]
    squared = (track_norms @ detection_known.T + track_known @ detection_norms.T
               - 2.0 * tracks.reshape(len(tracks), -1) @ detections.reshape(len(detections), -1).T)
    bands = track_known @ detection_known.T  # [T, D] bands both have
    mean_squared = np.maximum(squared, 0.0) / np.maximum(bands, 1.0)
    return np.where(bands > 0, np.exp(mean_squared * (-0.5 / colour_std ** 2)), np.nan)
