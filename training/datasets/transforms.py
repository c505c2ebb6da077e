"""Augmentations and batching for (image, target) pairs (contract 2).

Images are float32 [3, H, W] RGB in [0, 1]; targets are contract-2 dicts. Geometry runs through
torchvision.transforms.v2.functional on tv_tensors (BoundingBoxes for `boxes`, `visible_boxes` and
`ignore_boxes`; Mask for `masks`); keypoints are transformed here explicitly because their visibility
changes (a flip swaps left and right joints, a crop makes joints outside it "not labelled", v = 0).

Coordinates are continuous pixels (pixel (r, c) covers [c, c + 1) x [r, r + 1)), so a horizontal flip
maps x to W - x and a resize by (sx, sy) maps (x, y) to (x sx, y sy) for boxes and keypoints alike.

The paper's training augmentations (`train_transforms`): horizontal flip, scale and crop, blur,
brightness and contrast, then the letterbox to the network's fixed input size. Every random transform
draws from its own `torch.Generator` when given one (tests, reproducible runs) and from torch's global
generator otherwise (DataLoader workers seed that one per worker).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from occluded_ppe_ros.skeleton import FLIP_PERMUTATION
from occluded_ppe_training.datasets.common import select_instances

Target = dict[str, torch.Tensor]
BOX_KEYS = ('boxes', 'visible_boxes', 'ignore_boxes')


def _boxes(target: Target, key: str, height: int, width: int) -> tv_tensors.BoundingBoxes:
    return tv_tensors.BoundingBoxes(target[key], format='XYXY', canvas_size=(height, width))


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_subclass(torch.Tensor)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def horizontal_flip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirror the image left-right; x -> W - x; left and right joints swap (skeleton.FLIP_PERMUTATION)."""
    height, width = image.shape[-2:]
    out = dict(target)
    for key in BOX_KEYS:
        out[key] = _plain(F.horizontal_flip(_boxes(target, key, height, width)))
    out['masks'] = target['masks'].flip(-1)
    keypoints = target['keypoints'].clone()
    labelled = keypoints[..., 2] > 0
    keypoints[..., 0] = torch.where(labelled, width - keypoints[..., 0], keypoints[..., 0])
    # After the flip, the person's left joint sits where the right one was drawn: joint k takes the
    # values of joint FLIP_PERMUTATION[k] (the permutation is its own inverse).
    out['keypoints'] = keypoints[:, list(FLIP_PERMUTATION)]
    return image.flip(-1), out


def _clip_and_drop(target: Target, height: int, width: int, min_box_size: float) -> Target:
    """Clamp boxes to the image, drop instances (and ignore boxes) left thinner than `min_box_size`."""
    out = dict(target)
    for key in BOX_KEYS:
        boxes = target[key].clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        out[key] = boxes
    sizes = out['boxes'][:, 2:] - out['boxes'][:, :2]
    keep = (sizes >= min_box_size).all(dim=1)
    ignore_sizes = out['ignore_boxes'][:, 2:] - out['ignore_boxes'][:, :2]
    out['ignore_boxes'] = out['ignore_boxes'][(ignore_sizes >= min_box_size).all(dim=1)]
    out = select_instances(out, keep)
    keypoints = out['keypoints']
    outside = ((keypoints[..., 0] < 0) | (keypoints[..., 0] >= width)
               | (keypoints[..., 1] < 0) | (keypoints[..., 1] >= height))
    keypoints = keypoints.clone()
    keypoints[outside] = 0.0
    out['keypoints'] = keypoints
    out['has_keypoints'] = out['has_keypoints'] & (keypoints[..., 2] > 0).any(dim=1)
    return out


def resize(image: torch.Tensor, target: Target, new_height: int, new_width: int, antialias: bool = True
           ) -> tuple[torch.Tensor, Target]:
    """Resize image (bilinear), masks (nearest), boxes and keypoints to new_height x new_width.

    `antialias=False` samples like cv2.resize(INTER_LINEAR), which the inference letterbox uses.
    """
    height, width = image.shape[-2:]
    out = dict(target)
    size = [new_height, new_width]
    for key in BOX_KEYS:
        out[key] = _plain(F.resize(_boxes(target, key, height, width), size))
    if target['masks'].shape[0]:
        out['masks'] = _plain(F.resize(tv_tensors.Mask(target['masks']), size))
    else:
        out['masks'] = target['masks'].new_zeros((0, new_height, new_width))
    keypoints = target['keypoints'].clone()
    keypoints[..., 0] *= new_width / width
    keypoints[..., 1] *= new_height / height
    out['keypoints'] = keypoints
    return F.resize(image, size, antialias=antialias).clamp_(0.0, 1.0), out


def crop(image: torch.Tensor, target: Target, top: int, left: int, height: int, width: int,
         min_box_size: float = 2.0) -> tuple[torch.Tensor, Target]:
    """Cut the window [left, left + width) x [top, top + height) out of the image.

    Boxes are shifted and clamped to the window; instances whose box becomes thinner than
    `min_box_size` pixels are removed; keypoints outside the window become v = 0 (x = y = 0).
    """
    image_height, image_width = image.shape[-2:]
    if top < 0 or left < 0 or top + height > image_height or left + width > image_width:
        raise ValueError(f'crop window top={top} left={left} {width}x{height} leaves the '
                         f'{image_width}x{image_height} image')
    out = dict(target)
    for key in BOX_KEYS:
        out[key] = target[key] - torch.tensor([left, top, left, top], dtype=target[key].dtype)
    out['masks'] = target['masks'][:, top:top + height, left:left + width]
    keypoints = target['keypoints'].clone()
    labelled = keypoints[..., 2] > 0
    keypoints[..., 0] = torch.where(labelled, keypoints[..., 0] - left, keypoints[..., 0])
    keypoints[..., 1] = torch.where(labelled, keypoints[..., 1] - top, keypoints[..., 1])
    out['keypoints'] = keypoints
    return image[:, top:top + height, left:left + width], _clip_and_drop(out, height, width, min_box_size)


def letterbox_geometry(height: int, width: int, size: Sequence[int]) -> tuple[int, int]:
    """(new_height, new_width) of a height x width image fitted inside size = (H, W), aspect kept."""
    out_height, out_width = int(size[0]), int(size[1])
    scale = min(out_height / height, out_width / width)
    return (min(out_height, max(1, round(height * scale))), min(out_width, max(1, round(width * scale))))


def letterbox(image: torch.Tensor, target: Target, size: Sequence[int]) -> tuple[torch.Tensor, Target]:
    """Fit the image inside size = (H, W) keeping its aspect ratio, then pad right and bottom with 0.

    The image keeps its top-left corner, so network-input pixels map back to image pixels by dividing
    x by new_width / width and y by new_height / height (`letterbox_geometry`). Geometry, padding and
    the (non-antialiased bilinear) resampling match occluded_ppe_ros/inference/preprocess.py, so the
    network trains on inputs made the way the Predictor makes them.
    """
    out_height, out_width = int(size[0]), int(size[1])
    new_height, new_width = letterbox_geometry(image.shape[-2], image.shape[-1], size)
    if (new_height, new_width) != tuple(image.shape[-2:]):
        image, target = resize(image, target, new_height, new_width, antialias=False)
    return pad_to(image, target, out_height, out_width)


def pad_to(image: torch.Tensor, target: Target, height: int, width: int) -> tuple[torch.Tensor, Target]:
    """Pad image and masks with zeros on the right and bottom to height x width (coordinates unchanged)."""
    pad_bottom, pad_right = height - image.shape[-2], width - image.shape[-1]
    if pad_bottom < 0 or pad_right < 0:
        raise ValueError(f'cannot pad a {image.shape[-1]}x{image.shape[-2]} image to {width}x{height}')
    if pad_bottom == 0 and pad_right == 0:
        return image, target
    out = dict(target)
    out['masks'] = torch.nn.functional.pad(target['masks'], (0, pad_right, 0, pad_bottom))
    return torch.nn.functional.pad(image, (0, pad_right, 0, pad_bottom)), out


class Compose:
    """Apply (image, target) transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target


class RandomHorizontalFlip:
    """`horizontal_flip` with probability p."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if float(torch.rand((), generator=self.generator)) < self.p:
            return horizontal_flip(image, target)
        return image, target


class RandomScaleCrop:
    """Scale the image by s ~ U(scale_range), then bring it back to its original size.

    Where it grew, a random window of the original size is cut out (`crop`); where it shrank, it is
    padded with zeros on the right and bottom, so the letterbox that follows keeps the smaller scale.

    Args:
        scale_range: (min, max) scale factor.
        min_box_size: instances whose box is left thinner than this (pixels) are removed.
        generator: random source.
    """

    def __init__(self, scale_range: tuple[float, float] = (0.75, 1.25), min_box_size: float = 2.0,
                 generator: torch.Generator | None = None) -> None:
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f'scale_range must be 0 < min <= max, got {scale_range}')
        self.scale_range = scale_range
        self.min_box_size = min_box_size
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        height, width = image.shape[-2:]
        scale = _uniform(*self.scale_range, self.generator)
        new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
        image, target = resize(image, target, new_height, new_width)
        crop_height, crop_width = min(height, new_height), min(width, new_width)
        top = int(torch.randint(0, new_height - crop_height + 1, (), generator=self.generator))
        left = int(torch.randint(0, new_width - crop_width + 1, (), generator=self.generator))
        image, target = crop(image, target, top, left, crop_height, crop_width, self.min_box_size)
        return pad_to(image, target, height, width)


class RandomGaussianBlur:
    """Gaussian blur with probability p, sigma ~ U(sigma_range) pixels (kernel 2 ceil(3 sigma) + 1)."""

    def __init__(self, p: float = 0.3, sigma_range: tuple[float, float] = (0.3, 1.5),
                 generator: torch.Generator | None = None) -> None:
        self.p = p
        self.sigma_range = sigma_range
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return image, target
        sigma = _uniform(*self.sigma_range, self.generator)
        kernel = 2 * math.ceil(3 * sigma) + 1
        return F.gaussian_blur(image, [kernel, kernel], [sigma, sigma]), target


class RandomBrightnessContrast:
    """Brightness factor ~ U(1 - brightness, 1 + brightness), then contrast ~ U(1 - contrast, 1 + contrast).

    Both are always applied (a factor near 1 changes little); the image stays in [0, 1].
    """

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3,
                 generator: torch.Generator | None = None) -> None:
        self.brightness = brightness
        self.contrast = contrast
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        brightness = _uniform(1 - self.brightness, 1 + self.brightness, self.generator)
        contrast = _uniform(1 - self.contrast, 1 + self.contrast, self.generator)
        image = F.adjust_brightness(image, brightness)
        return F.adjust_contrast(image, contrast), target


class Letterbox:
    """`letterbox` to the network's fixed input size (H, W)."""

    def __init__(self, size: Sequence[int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        return letterbox(image, target, self.size)


def train_transforms(input_size: Sequence[int], generator: torch.Generator | None = None,
                     scale_range: tuple[float, float] = (0.75, 1.25)) -> Compose:
    """The paper's augmentations (flip, scale and crop, blur, brightness and contrast) + letterbox.

    Args:
        input_size: the network's (H, W), multiples of 32.
        generator: one random source shared by all steps (None: torch's global one).
        scale_range: the scale-and-crop factor range.
    """
    return Compose([
        RandomHorizontalFlip(0.5, generator),
        RandomScaleCrop(scale_range, generator=generator),
        RandomGaussianBlur(0.3, generator=generator),
        RandomBrightnessContrast(0.3, 0.3, generator=generator),
        Letterbox(input_size),
    ])


def eval_transforms(input_size: Sequence[int]) -> Compose:
    """Only the letterbox to the network's input size (H, W)."""
    return Compose([Letterbox(input_size)])


def collate(batch: Sequence[tuple[torch.Tensor, Target]], size_divisor: int = 32
            ) -> tuple[torch.Tensor, list[Target]]:
    """Stack (image, target) pairs: images padded (right, bottom, zeros) to a common size.

    Args:
        batch: pairs from a dataset; images float32 [3, H_i, W_i].
        size_divisor: the padded H and W are the batch maxima rounded up to a multiple of this.

    Returns:
        images float32 [B, 3, H, W] and the targets, whose masks are padded to [N, H, W] as well.
    """
    if not batch:
        raise ValueError('collate got an empty batch')
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    height = math.ceil(height / size_divisor) * size_divisor
    width = math.ceil(width / size_divisor) * size_divisor
    images, targets = [], []
    for image, target in batch:
        image, target = pad_to(image, target, height, width)
        images.append(image)
        targets.append(target)
    return torch.stack(images), targets
