"""Occluders pasted over person crops: the street's cars, poles and bags, made from real scene texture.

Shared by the heads' training (`pipeline_heads --occluded-copies`: crops whose hidden joints and visible
mask are known exactly because we hid them) and the mask-and-predict fine-tuning (`pipeline_finetune`).
"""
from __future__ import annotations

import math

import torch


def occluder_rectangle(joints: torch.Tensor, visibility: torch.Tensor, ratio: float, size: int,
                       generator: torch.Generator) -> tuple[int, int, int, int] | None:
    """One occluder over `ratio` of a person's joint extent, clipped to the crop.

    The kinds of street occlusion, drawn uniformly: a car hiding the legs (a bottom band), a pole or
    another person hiding one side (a side band), a sign or a bag anywhere (a block).

    Args:
        joints: float [13, 2] x, y crop pixels. visibility: [13] COCO v (0 = unlabelled).
        ratio: fraction of the joint extent (area) to cover, in (0, 1).
        size: crop side S, pixels.
        generator: torch RNG (reproducible, resumable).

    Returns:
        (left, top, right, bottom) crop pixels, right/bottom exclusive; None with fewer than two labelled
        joints or an empty clip.
    """
    labelled = visibility > 0
    if labelled.sum() < 2:
        return None
    low = joints[labelled].min(0).values.clamp(0, size - 1)
    high = joints[labelled].max(0).values.clamp(1, size)
    extent_x, extent_y = (float(v) for v in (high - low).clamp(min=8.0))
    mode = int(torch.randint(3, (1,), generator=generator))
    if mode == 0:
        width, height = extent_x * 1.2, extent_y * ratio
        x0, y0 = float(low[0]) - extent_x * 0.1, float(high[1]) - height
    elif mode == 1:
        width, height = extent_x * ratio, extent_y * 1.1
        from_left = bool(torch.rand(1, generator=generator) < 0.5)
        x0, y0 = (float(low[0]) if from_left else float(high[0]) - width), float(low[1])
    else:
        width, height = extent_x * math.sqrt(ratio), extent_y * math.sqrt(ratio)
        x0 = float(low[0]) + float(torch.rand(1, generator=generator)) * (extent_x - width)
        y0 = float(low[1]) + float(torch.rand(1, generator=generator)) * (extent_y - height)
    left, top = max(int(x0), 0), max(int(y0), 0)
    right, bottom = min(int(x0 + width) + 1, size), min(int(y0 + height) + 1, size)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def paste_from_donor(target: torch.Tensor, donor: torch.Tensor, rectangle: tuple[int, int, int, int],
                     generator: torch.Generator) -> None:
    """Copy a random same-size patch of `donor` [3, S, S] into `rectangle` of `target` [3, S, S], in place."""
    left, top, right, bottom = rectangle
    size = donor.shape[-1]
    dx = int(torch.randint(size - (right - left) + 1, (1,), generator=generator))
    dy = int(torch.randint(size - (bottom - top) + 1, (1,), generator=generator))
    target[:, top:bottom, left:right] = donor[:, dy:dy + bottom - top, dx:dx + right - left]


def paste_occluders(crops: torch.Tensor, joints: torch.Tensor, visibility: torch.Tensor, ratio: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Paste one occluder per crop over `ratio` of the person's joint extent (mask-and-predict).

    Args:
        crops: float [N, 3, S, S] in [0, 1]. joints: float [N, 13, 2] crop pixels. visibility: [N, 13].
        ratio: fraction of the person's extent (area) to cover, in [0, 1).
        generator: torch RNG (reproducible, resumable).

    Returns:
        crops with a rectangle of another crop's pixels (a real scene texture) pasted on each.
    """
    if ratio <= 0:
        return crops
    count, _, size, _ = crops.shape
    out = crops.clone()
    for index in range(count):
        rectangle = occluder_rectangle(joints[index], visibility[index], ratio, size, generator)
        if rectangle is None:
            continue
        donor = int(torch.randint(count, (1,), generator=generator))
        paste_from_donor(out[index], crops[donor], rectangle, generator)
    return out


def hide_under(rectangle: tuple[int, int, int, int], joints: torch.Tensor, visibility: torch.Tensor,
               mask: torch.Tensor, stride: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the targets after an occluder covers `rectangle`.

    Seen joints under it become hidden (v = 1), and the visible mask loses the cells under it.

    Args:
        rectangle: (left, top, right, bottom) crop pixels. joints: float [13, 2] crop pixels.
        visibility: int64 [13] COCO v. mask: float [h, h] visible mask over the crop. stride: S / h.

    Returns:
        (visibility [13], mask [h, h]), new tensors.
    """
    left, top, right, bottom = rectangle
    inside = ((joints[:, 0] >= left) & (joints[:, 0] < right) & (joints[:, 1] >= top)
              & (joints[:, 1] < bottom))
    visibility = torch.where((visibility == 2) & inside, torch.ones_like(visibility), visibility)
    mask = mask.clone()
    # a cell c covers crop pixels [c * stride, (c + 1) * stride): cleared when its centre is covered
    cell_left, cell_top = math.ceil(left / stride - 0.5), math.ceil(top / stride - 0.5)
    cell_right, cell_bottom = math.ceil(right / stride - 0.5), math.ceil(bottom / stride - 0.5)
    mask[max(cell_top, 0):max(cell_bottom, 0), max(cell_left, 0):max(cell_right, 0)] = 0.0
    return visibility, mask
