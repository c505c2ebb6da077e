"""Pre-processing shared by every backend: letterbox an RGB uint8 image to the fixed network input size.

The image is resized keeping its aspect ratio so that it fits the input (H, W), placed at the top-left
corner, and the rest is padded. Top-left placement (rather than centred) keeps the mapping back a pure
per-axis scale with no offset: a network-input point (x, y) is image point (x / scale_x, y / scale_y),
in the continuous convention of results.py (pixel (r, c) covers [c, c + 1) x [r, r + 1)). The scales
are the exact ratios of the rounded resized size to the image size, per axis, because rounding makes
them differ by up to half a pixel over the image. cv2.resize (INTER_LINEAR) samples at pixel centres
with the same half-pixel convention, so the mapping is consistent with the resampled pixels.

The network normalises its [0, 1] input itself (contract 2), so this is the whole pre-processing.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """How one image was placed into the network input.

    Attributes:
        image_height: rows of the original image.
        image_width: columns of the original image.
        input_height: network input rows.
        input_width: network input columns.
        resized_height: rows the image occupies in the input (from row 0).
        resized_width: columns the image occupies in the input (from column 0).
    """

    image_height: int
    image_width: int
    input_height: int
    input_width: int
    resized_height: int
    resized_width: int

    @property
    def scale_x(self) -> float:
        """Network-input pixels per image pixel along x."""
        return self.resized_width / self.image_width

    @property
    def scale_y(self) -> float:
        """Network-input pixels per image pixel along y."""
        return self.resized_height / self.image_height

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """Network-input points [..., 2] (x, y) -> image pixels [..., 2] (float32; not clipped)."""
        xy = np.asarray(xy, dtype=np.float32)
        return xy / np.array([self.scale_x, self.scale_y], dtype=np.float32)

    def boxes_to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Network-input boxes [N, 4] x1, y1, x2, y2 -> image pixels, clipped to the image (float32)."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], dtype=np.float32)
        out = boxes / scale
        limits = np.array([self.image_width, self.image_height, self.image_width, self.image_height],
                          dtype=np.float32)
        return np.clip(out, 0.0, limits)


def letterbox_geometry(image_height: int, image_width: int, input_height: int, input_width: int) -> Letterbox:
    """The placement of an image of the given size into the input (no pixels touched)."""
    if image_height <= 0 or image_width <= 0:
        raise ValueError(f'image must have a positive size, got {image_height}x{image_width}')
    if input_height <= 0 or input_width <= 0:
        raise ValueError(f'input size must be positive, got {input_height}x{input_width}')
    scale = min(input_height / image_height, input_width / image_width)
    resized_height = min(input_height, max(1, round(image_height * scale)))
    resized_width = min(input_width, max(1, round(image_width * scale)))
    return Letterbox(image_height, image_width, input_height, input_width, resized_height, resized_width)


def check_image(image: np.ndarray, where: str = 'image') -> None:
    """Raise ValueError unless `image` is a uint8 [H, W, 3] array (RGB) with H, W > 0."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f'{where} must be a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f'{where} must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}')


def letterbox(image: np.ndarray, input_size: tuple[int, int], pad_value: float = 0.0
              ) -> tuple[np.ndarray, Letterbox]:
    """Resize (aspect kept), pad at the bottom/right, scale to [0, 1] and go channels-first.

    Args:
        image: uint8 [H, W, 3] RGB.
        input_size: (input_height, input_width) of the network.
        pad_value: value of the padding, in [0, 1].

    Returns:
        (float32 [3, input_height, input_width] in [0, 1], the Letterbox geometry).
    """
    check_image(image)
    input_height, input_width = (int(v) for v in input_size)
    geometry = letterbox_geometry(image.shape[0], image.shape[1], input_height, input_width)
    if (geometry.resized_height, geometry.resized_width) == image.shape[:2]:
        resized = image
    else:
        resized = cv2.resize(image, (geometry.resized_width, geometry.resized_height),
                             interpolation=cv2.INTER_LINEAR)
    canvas = np.full((3, input_height, input_width), pad_value, dtype=np.float32)
    canvas[:, :geometry.resized_height, :geometry.resized_width] = \
        resized.transpose(2, 0, 1).astype(np.float32) / 255.0
    return canvas, geometry
