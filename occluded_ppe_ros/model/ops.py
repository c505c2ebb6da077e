"""Small ops of the network, each a function (plus a module wrapper where it has parameters).

- The attention between encoder and each task decoder (paper section 2.1: "spatial attention ... applies
  GAP on feature maps to generate vector and that is multiplied with the same feature map to generate
  most attentive area"), in two forms chosen by `attention` in DetectionConfig / MaskConfig
  (`build_attention`):
  - `ChannelAttention` ('channel', the default and every shipped model's): the pooled vector goes through
    a 1x1 bottleneck and a sigmoid and scales each channel (squeeze-and-excitation form). It weights
    *what* the decoder looks at, the same at every position.
  - `SpatialAttention` ('spatial', the paper's form, config/train_stage*.yaml): the pooled vector is
    multiplied with the feature vector at each position (cosine similarity), giving one map of how much
    each position looks like the image's dominant content; a sigmoid of it (learned gain and bias)
    scales every channel at that position. It weights *where* the decoder looks.
  Both are bounded in (0, 1) and start near 0.5 instead of multiplying the map by its raw mean (which
  would square the feature scale).
- `grad_reverse` / `GradientReversal`: identity forward, gradient times -lambda backward (DANN).
- `mask_gate`, `random_occlusion_gate`: the mask-and-predict gating of instance features.
- `decode_heatmaps`: keypoint argmax with sub-pixel quarter-offset refinement, and the joint's score.
- `rois_from_boxes`: per-image boxes -> the [R, 5] rows torchvision.ops.roi_align takes.
- `trainable_roi_align`: RoIAlign with a fast CPU backward pass (separable matrix form) in training.

Coordinates: "cell coordinates" of a map of W x H cells put cell (r, c)'s centre at (c + 0.5, r + 0.5),
the same continuous convention as image pixels.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from occluded_ppe_ros.model.config import ATTENTION_KINDS, HEATMAP_LOSSES, SUBCELL_DECODINGS


class ChannelAttention(nn.Module):
    """GAP attention: x * sigmoid(W2 relu(W1 GAP(x))), shape preserved ([B, C, H, W])."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x float [B, C, H, W]. Returns x scaled per channel, [B, C, H, W]."""
        pooled = x.mean(dim=(2, 3), keepdim=True)
        weights = torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))
        return x * weights


class SpatialAttention(nn.Module):
    """The paper's spatial attention: x * sigmoid(gain * cos(GAP(x), x[:, :, i, j]) + bias), [B, C, H, W].

    The cosine (not the raw dot product) keeps the map independent of the feature scale, so the two
    scalars start it in (0.27, 0.73) whatever the encoder's output magnitude.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x float [B, C, H, W]. Returns x scaled per position, [B, C, H, W]."""
        pooled = x.mean(dim=(2, 3), keepdim=True)                          # [B, C, 1, 1]
        dot = (x * pooled).sum(dim=1, keepdim=True)                        # [B, 1, H, W]
        norms = x.norm(dim=1, keepdim=True) * pooled.norm(dim=1, keepdim=True)
        similarity = dot / norms.clamp_min(1e-6)
        return x * torch.sigmoid(self.gain * similarity + self.bias)


def build_attention(kind: str, channels: int, reduction: int) -> nn.Module:
    """The attention module of ATTENTION_KINDS `kind` for a [B, channels, H, W] encoder map."""
    if kind == 'channel':
        return ChannelAttention(channels, reduction)
    if kind == 'spatial':
        return SpatialAttention()
    raise ValueError(f'attention {kind!r} is not one of {ATTENTION_KINDS}')


class _GradientReversalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.scale * grad_output, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; the gradient flowing back through it is multiplied by -scale."""
    return _GradientReversalFunction.apply(x, scale)


class GradientReversal(nn.Module):
    """Module form of `grad_reverse` with a fixed scale (lambda)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity; reverses and scales the gradient."""
        return grad_reverse(x, self.scale)


def rois_from_boxes(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-image boxes -> RoIAlign rows.

    Args:
        boxes: B tensors [N_b, 4] x1, y1, x2, y2 in network-input pixels.

    Returns:
        float [sum N_b, 5]: (image index, x1, y1, x2, y2).
    """
    rows = []
    for index, image_boxes in enumerate(boxes):
        column = torch.full((image_boxes.shape[0], 1), float(index), dtype=image_boxes.dtype,
                            device=image_boxes.device)
        rows.append(torch.cat([column, image_boxes], dim=1))
    if not rows:
        return torch.zeros((0, 5))
    return torch.cat(rows, dim=0)


def _roi_axis_weights(start: torch.Tensor, bin_size: torch.Tensor, bins: int, sampling_ratio: int,
                      size: int) -> torch.Tensor:
    """The bilinear sampling of RoIAlign along one axis as a matrix: [R, bins, size].

    Row b of RoI r holds the weights with which the `sampling_ratio` samples of bin b (at
    start + (b + (i + 0.5) / sampling_ratio) x bin_size, map-cell index coordinates) read the map's
    `size` cells, averaged over the samples. The sample rules are torchvision's CPU kernel's: a sample
    beyond one cell outside the map reads 0; others are clamped to [0, size - 1] and interpolated
    between their two neighbouring cells.
    """
    samples = torch.arange(bins * sampling_ratio, dtype=start.dtype, device=start.device)
    steps = (samples + 0.5) / sampling_ratio                              # in bins
    position = start[:, None] + steps[None] * bin_size[:, None]           # [R, bins x samples]
    inside = ((position >= -1.0) & (position <= size)).to(start.dtype)
    position = position.clamp(min=0.0)
    low = position.floor()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    position = torch.where(at_end, low, position)
    fraction = position - low
    high = (low + 1).clamp(max=size - 1)
    weights = start.new_zeros((start.shape[0], bins * sampling_ratio, size))
    weights.scatter_add_(2, low.long()[..., None], ((1.0 - fraction) * inside)[..., None])
    weights.scatter_add_(2, high.long()[..., None], (fraction * inside)[..., None])
    return weights.reshape(start.shape[0], bins, sampling_ratio, size).mean(dim=2)


def roi_align_separable(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                        spatial_scale: float, sampling_ratio: int = 2) -> torch.Tensor:
    """torchvision.ops.roi_align (aligned=True, a fixed sampling_ratio) as two batched matrix products.

    Bilinear sampling on a grid that is the product of a row grid and a column grid is separable, so
    each RoI's output is Wy @ map @ Wx^T with Wy [out_h, H] and Wx [out_w, W] (`_roi_axis_weights`).
    The values equal torchvision's to float rounding (test_ops.py); the point is the backward pass:
    torchvision's CPU RoIAlign backward scatters every sample's gradient one by one on one thread, and
    for the pose and mask heads of the tiny preset it was about 8 % of a stage-2 training step. Here it
    is two matrix products and an index_add.

    Args:
        features: float [B, C, H, W].
        rois: float [R, 5] (image index, x1, y1, x2, y2) in input pixels.
        output_size: (out_h, out_w).
        spatial_scale: map cells per input pixel (1 / stride).
        sampling_ratio: samples per bin along each axis (> 0).

    Returns:
        float [R, C, out_h, out_w].
    """
    out_h, out_w = output_size
    height, width = features.shape[-2:]
    x1 = rois[:, 1] * spatial_scale - 0.5        # aligned=True: pixel centres at half-integers
    y1 = rois[:, 2] * spatial_scale - 0.5
    x2 = rois[:, 3] * spatial_scale - 0.5
    y2 = rois[:, 4] * spatial_scale - 0.5
    row_weights = _roi_axis_weights(y1, (y2 - y1) / out_h, out_h, sampling_ratio, height)
    column_weights = _roi_axis_weights(x1, (x2 - x1) / out_w, out_w, sampling_ratio, width)
    per_roi = features.index_select(0, rois[:, 0].long())                        # [R, C, H, W]
    columns = torch.matmul(per_roi, column_weights.transpose(1, 2)[:, None])     # [R, C, H, out_w]
    return torch.matmul(row_weights[:, None], columns)                           # [R, C, out_h, out_w]


def trainable_roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                        spatial_scale: float, sampling_ratio: int = 2) -> torch.Tensor:
    """The RoIAlign (aligned=True) of `roi_align_separable` where a gradient will flow, else torchvision's.

    Inference and ONNX export keep torchvision's op, which exports as ONNX RoiAlign
    (docs: EXPORT_FACTS); training takes the separable form for its fast backward pass.
    """
    if features.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
        return roi_align_separable(features, rois, output_size, spatial_scale, sampling_ratio)
    return roi_align(features, rois, output_size=output_size, spatial_scale=spatial_scale,
                     sampling_ratio=sampling_ratio, aligned=True)


def jitter_boxes(boxes: torch.Tensor, fraction: float, image_height: int, image_width: int) -> torch.Tensor:
    """Move each side of each box by a uniform random amount up to `fraction` of the box's size.

    Args:
        boxes: float [N, 4] x1, y1, x2, y2 pixels.
        fraction: largest move as a share of the width (x sides) or height (y sides); 0 = unchanged.
        image_height: the result is clipped to the image.
        image_width: see image_height.

    Returns:
        float [N, 4]; every box keeps at least 1 px a side.
    """
    if fraction == 0.0 or boxes.shape[0] == 0:
        return boxes
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    moved = boxes + (torch.rand(boxes.shape, device=boxes.device) * 2 - 1) * fraction * size
    x1 = moved[:, 0].clamp(0, image_width - 1)
    y1 = moved[:, 1].clamp(0, image_height - 1)
    x2 = torch.maximum(moved[:, 2].clamp(max=image_width), x1 + 1)
    y2 = torch.maximum(moved[:, 3].clamp(max=image_height), y1 + 1)
    return torch.stack([x1, y1, x2, y2], dim=1)


def mask_gate(mask_probs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resample box-relative masks onto a RoI grid that covers the same box.

    Both grids span the box exactly, so bilinear resampling with align_corners=False maps cell centre
    to cell centre (a cell at (c + 0.5) / width of the box reads the mask at the same box fraction).

    Args:
        mask_probs: float [N, Hm, Wm] in [0, 1], over each instance's box.
        height: RoI grid height.
        width: RoI grid width.

    Returns:
        float [N, 1, height, width] gate in [0, 1].
    """
    return F.interpolate(mask_probs[:, None], size=(height, width), mode='bilinear', align_corners=False)


def dilate_gate(gate: torch.Tensor, cells: int) -> torch.Tensor:
    """Grow a gate by `cells` RoI cells in every direction (a (2 cells + 1)^2 max filter); 0 = unchanged.

    Args:
        gate: float [N, 1, h, w] in [0, 1].
        cells: dilation radius in RoI cells (>= 0).

    Returns:
        float [N, 1, h, w], >= gate everywhere.
    """
    if cells <= 0:
        return gate
    return F.max_pool2d(gate, kernel_size=2 * cells + 1, stride=1, padding=cells)


def visible_box_gate(boxes: torch.Tensor, visible_boxes: torch.Tensor, height: int,
                     width: int) -> torch.Tensor:
    """A gate that is 1 on RoI cells whose centre lies in the visible box (used where no mask is known).

    Args:
        boxes: float [N, 4] full boxes (the RoIs), pixels.
        visible_boxes: float [N, 4] visible boxes, pixels.
        height: RoI grid height.
        width: RoI grid width.

    Returns:
        float [N, 1, height, width] of 0 / 1.
    """
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    fx = (torch.arange(width, dtype=boxes.dtype, device=boxes.device) + 0.5) / width
    fy = (torch.arange(height, dtype=boxes.dtype, device=boxes.device) + 0.5) / height
    cx = x1[:, None] + fx[None] * (x2 - x1)[:, None]          # [N, W]
    cy = y1[:, None] + fy[None] * (y2 - y1)[:, None]          # [N, H]
    inside_x = (cx >= visible_boxes[:, 0:1]) & (cx <= visible_boxes[:, 2:3])
    inside_y = (cy >= visible_boxes[:, 1:2]) & (cy <= visible_boxes[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).to(boxes.dtype)[:, None]


def random_occlusion_gate(count: int, height: int, width: int, ratio: float,
                          generator: torch.Generator | None = None,
                          device: torch.device | str = 'cpu') -> torch.Tensor:
    """Mask-and-predict curriculum: zero a random rectangle covering `ratio` of each RoI grid.

    The rectangle has a random aspect (its width fraction drawn in [ratio, 1], height fraction =
    ratio / width fraction, both rounded to whole cells) at a random position, so the hidden part may be
    a band across the legs, a side, or a block, as occluders in traffic scenes are.

    Args:
        count: number of instances N.
        height: RoI grid height.
        width: RoI grid width.
        ratio: share of the grid to hide, in [0, 1); 0 gives all ones.
        generator: random generator (CPU) for reproducibility.
        device: device of the returned tensor.

    Returns:
        float [N, 1, height, width] of 0 / 1 (0 = hidden).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f'mask_ratio must be in [0, 1), got {ratio}')
    gate = torch.ones((count, 1, height, width))
    if ratio == 0.0 or count == 0:
        return gate.to(device)
    uniform = torch.rand((count, 3), generator=generator)
    for index in range(count):
        width_fraction = ratio + (1.0 - ratio) * float(uniform[index, 0])
        height_fraction = min(1.0, ratio / width_fraction)
        cells_w = max(1, round(width_fraction * width))
        cells_h = max(1, round(height_fraction * height))
        left = int(float(uniform[index, 1]) * (width - cells_w + 1))
        top = int(float(uniform[index, 2]) * (height - cells_h + 1))
        gate[index, 0, top:top + cells_h, left:left + cells_w] = 0.0
    return gate.to(device)


@functools.cache
def target_window_mass(sigma: float, radius: int) -> float:
    """Share of a cell-centred Gaussian target's mass within the (2 radius + 1)^2 cells around its centre.

    The Gaussian (`sigma` cells) is sampled at cell centres as `gaussian_2d` builds the training targets,
    on a map large enough for no border to cut it.
    """
    offsets = torch.arange(-4 * radius - 8, 4 * radius + 9, dtype=torch.float64)
    weights = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    inside = weights[offsets.abs() <= radius].sum() / weights.sum()
    return float(inside ** 2)


def decode_heatmaps(heatmaps: torch.Tensor, heatmap_loss: str = 'softmax', sigma: float = 2.0,
                   subcell: str = 'quarter') -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keypoint locations and scores from heatmap logits: the argmax cell, refined below a cell.

    Sub-cell refinement (`subcell`):
    - 'quarter' (Simple Baselines / HRNet): 0.25 cell along each axis toward the larger of the peak's two
      neighbours; exports as a gather and a sign. At the map border the missing neighbour is the peak
      itself (index clamped), so a border peak moves 0.25 toward the border unless the inner neighbour
      is equal.
    - 'window_mean' ('softmax' maps only): the mean position under the softmax probabilities of the
      (2r + 1)^2 cells around the peak, the window the score reads (r below). It is the expectation the
      coordinate loss trains (PoseConfig.coordinate_loss_weight), restricted to the peak's mode so a
      second mode elsewhere cannot pull the estimate between the two. The window also cuts the far
      tail of the mode: for a map shaped like the training target, about a third of the joint's offset
      from the cell centre remains.

    Args:
        heatmaps: float [N, J, H, W] logits (a larger logit = more likely).
        heatmap_loss: the loss the maps were trained with (PoseConfig.heatmap_loss), which sets how the
            joint's confidence is read. 'softmax' (spatial softmax cross-entropy): the probability mass
            of the (2r + 1)^2 cells around the peak, r = max(1, round(1.5 sigma)), divided by the mass a
            perfectly learned target (a Gaussian of `sigma` cells on a cell centre) has there, clamped
            to [0, 1]: a map as sharp as the training target scores 1, a spread-out or multi-modal map
            low. 'focal' (per-cell focal loss): sigmoid of the peak logit.
        sigma: the training target's Gaussian sigma in cells ('softmax' only).
        subcell: 'quarter' or 'window_mean' (SUBCELL_DECODINGS), see above.

    Returns:
        xy: float [N, J, 2] in cell coordinates (cell (r, c) centre = (c + 0.5, r + 0.5)).
        scores: float [N, J] in [0, 1].
        flat_index: int64 [N, J], r * W + c of the peak cell.
    """
    if heatmap_loss not in HEATMAP_LOSSES:
        raise ValueError(f'heatmap_loss must be one of {HEATMAP_LOSSES}, got {heatmap_loss!r}')
    if subcell not in SUBCELL_DECODINGS:
        raise ValueError(f'subcell must be one of {SUBCELL_DECODINGS}, got {subcell!r}')
    if subcell == 'window_mean' and heatmap_loss != 'softmax':
        raise ValueError("subcell 'window_mean' reads softmax probabilities; heatmap_loss is "
                         f'{heatmap_loss!r}')
    n, j, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, j, h * w)
    peak, flat_index = flat.max(dim=2)
    row = torch.div(flat_index, w, rounding_mode='floor')
    col = flat_index - row * w
    if heatmap_loss == 'focal':
        return _quarter_offset(flat, row, col, h, w), torch.sigmoid(peak), flat_index
    radius = max(1, round(1.5 * sigma))
    probabilities = torch.softmax(flat, dim=2).reshape(n, j, h, w)
    if subcell == 'quarter':
        mass = _window_sums(probabilities[:, :, None], radius, flat_index)[..., 0]
        xy = _quarter_offset(flat, row, col, h, w)
    else:
        columns = torch.arange(w, dtype=heatmaps.dtype, device=heatmaps.device) + 0.5
        rows = torch.arange(h, dtype=heatmaps.dtype, device=heatmaps.device) + 0.5
        weighted = torch.stack([probabilities, probabilities * columns, probabilities * rows[:, None]], dim=2)
        sums = _window_sums(weighted, radius, flat_index)
        mass = sums[..., 0]
        xy = sums[..., 1:] / mass.clamp(min=1e-12)[..., None]
    scores = (mass / target_window_mass(sigma, radius)).clamp(0.0, 1.0)
    return xy, scores, flat_index


def _quarter_offset(flat: torch.Tensor, row: torch.Tensor, col: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The peak cell's centre moved 0.25 cell toward the larger neighbour per axis: [N, J, 2] cells."""
    n, j, _ = flat.shape
    left = row * w + (col - 1).clamp(min=0)
    right = row * w + (col + 1).clamp(max=w - 1)
    up = (row - 1).clamp(min=0) * w + col
    down = (row + 1).clamp(max=h - 1) * w + col
    neighbours = torch.gather(flat, 2, torch.stack([left, right, up, down], dim=2).reshape(n, j, 4))
    dx = torch.sign(neighbours[..., 1] - neighbours[..., 0]) * 0.25
    dy = torch.sign(neighbours[..., 3] - neighbours[..., 2]) * 0.25
    return torch.stack([col.to(flat.dtype) + 0.5 + dx, row.to(flat.dtype) + 0.5 + dy], dim=2)


def _window_sums(maps: torch.Tensor, radius: int, flat_index: torch.Tensor) -> torch.Tensor:
    """Sums of K maps over the (2 radius + 1)^2 cells around each joint's peak cell.

    Args:
        maps: float [N, J, K, H, W].
        radius: window half-size in cells.
        flat_index: int64 [N, J] peak cell, r * W + c.

    Returns:
        float [N, J, K].
    """
    n, j, k, h, w = maps.shape
    size = 2 * radius + 1
    # one axis at a time (2 x size adds a cell instead of size^2); zero padding: a border peak only
    # counts the cells that exist
    stacked = maps.reshape(n * j * k, 1, h, w)
    rows = F.avg_pool2d(stacked, (1, size), stride=1, padding=(0, radius), count_include_pad=True)
    window = F.avg_pool2d(rows, (size, 1), stride=1, padding=(radius, 0), count_include_pad=True) * size ** 2
    index = flat_index[:, :, None, None].expand(n, j, k, 1)
    return window.reshape(n, j, k, h * w).gather(3, index)[..., 0]


def cells_to_pixels(xy_cells: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Map cell coordinates of a heatmap spanning each box to pixels.

    Args:
        xy_cells: float [N, J, 2] cell coordinates on an H x W map over the box.
        boxes: float [N, 4] x1, y1, x2, y2 pixels.
        height: map height H.
        width: map width W.

    Returns:
        float [N, J, 2] pixels.
    """
    scale_x = (boxes[:, 2] - boxes[:, 0]) / width
    scale_y = (boxes[:, 3] - boxes[:, 1]) / height
    x = boxes[:, None, 0] + xy_cells[..., 0] * scale_x[:, None]
    y = boxes[:, None, 1] + xy_cells[..., 1] * scale_y[:, None]
    return torch.stack([x, y], dim=2)


def gaussian_2d(center_x: torch.Tensor, center_y: torch.Tensor, sigma_x: torch.Tensor, sigma_y: torch.Tensor,
                height: int, width: int) -> torch.Tensor:
    """Unnormalised Gaussians exp(-dx^2 / 2sx^2 - dy^2 / 2sy^2) sampled at cell centres.

    Args:
        center_x: float [N] in cell coordinates; likewise center_y, sigma_x, sigma_y (cells, > 0).
        center_y: float [N].
        sigma_x: float [N].
        sigma_y: float [N].
        height: map height.
        width: map width.

    Returns:
        float [N, height, width].
    """
    xs = torch.arange(width, dtype=center_x.dtype, device=center_x.device) + 0.5
    ys = torch.arange(height, dtype=center_x.dtype, device=center_x.device) + 0.5
    gx = torch.exp(-((xs[None] - center_x[:, None]) ** 2) / (2 * sigma_x[:, None] ** 2))
    gy = torch.exp(-((ys[None] - center_y[:, None]) ** 2) / (2 * sigma_y[:, None] ** 2))
    return gy[:, :, None] * gx[:, None, :]


def joint_cells(keypoints: torch.Tensor, boxes: torch.Tensor, height: int, width: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each joint falls on an H x W map spanning its box.

    Args:
        keypoints: float [N, J, 3] x, y (pixels), v (COCO: 0 unlabelled, 1 occluded, 2 visible).
        boxes: float [N, 4] the RoI boxes, pixels.
        height: map height.
        width: map width.

    Returns:
        cx, cy: float [N, J] exact cell coordinates; col, row: float [N, J] the containing cell;
        valid: bool [N, J], labelled (v > 0) and inside the box. All four coordinates are 0 where
        not valid.
    """
    box_w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    box_h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    cx = (keypoints[..., 0] - boxes[:, None, 0]) / box_w[:, None] * width
    cy = (keypoints[..., 1] - boxes[:, None, 1]) / box_h[:, None] * height
    col = torch.floor(cx)
    row = torch.floor(cy)
    valid = (keypoints[..., 2] > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    zero = torch.zeros_like(cx)
    return (torch.where(valid, cx, zero), torch.where(valid, cy, zero), torch.where(valid, col, zero),
            torch.where(valid, row, zero), valid)


def keypoint_targets(keypoints: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                     sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian heatmap targets of keypoints on an H x W map spanning each box.

    The peak cell (value exactly 1) is the cell containing the joint; the Gaussian is centred on that
    cell's centre so the focal loss has one positive per joint.

    Args:
        keypoints: float [N, J, 3] x, y (pixels), v (COCO: 0 unlabelled, 1 occluded, 2 visible).
        boxes: float [N, 4] the RoI boxes, pixels.
        height: heatmap height.
        width: heatmap width.
        sigma: Gaussian sigma in cells.

    Returns:
        targets: float [N, J, H, W] in [0, 1].
        valid: bool [N, J]: labelled (v > 0) and inside the box.
        flat_index: int64 [N, J], row * W + col of the joint's cell (0 where not valid).
    """
    n, j, _ = keypoints.shape
    _, _, col, row, valid = joint_cells(keypoints, boxes, height, width)
    sigmas = torch.full((n * j,), float(sigma), dtype=keypoints.dtype, device=keypoints.device)
    targets = gaussian_2d((col + 0.5).reshape(-1), (row + 0.5).reshape(-1), sigmas, sigmas, height, width)
    targets = targets.reshape(n, j, height, width) * valid[..., None, None].to(keypoints.dtype)
    flat_index = (row * width + col).long()
    return targets, valid, flat_index


def keypoint_distribution_targets(keypoints: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                                  sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-joint target distributions over an H x W map spanning each box (for the spatial softmax loss).

    Each labelled joint's target is a Gaussian of `sigma` cells centred on the joint's exact (sub-cell)
    position, normalised to sum to 1 over the map: the soft form of Mask R-CNN's one-hot keypoint
    target, which keeps sub-cell information and tolerates label noise of a cell or two.

    Args:
        keypoints: float [N, J, 3] x, y (pixels), v (COCO: 0 unlabelled, 1 occluded, 2 visible).
        boxes: float [N, 4] the RoI boxes, pixels.
        height: heatmap height.
        width: heatmap width.
        sigma: Gaussian sigma in cells (> 0).

    Returns:
        targets: float [N, J, H, W], each valid joint's map sums to 1, invalid joints' maps are 0.
        valid: bool [N, J]: labelled (v > 0) and inside the box.
        flat_index: int64 [N, J], row * W + col of the cell containing the joint (0 where not valid).
    """
    n, j, _ = keypoints.shape
    cx, cy, col, row, valid = joint_cells(keypoints, boxes, height, width)
    sigmas = torch.full((n * j,), float(sigma), dtype=keypoints.dtype, device=keypoints.device)
    targets = gaussian_2d(cx.reshape(-1), cy.reshape(-1), sigmas, sigmas, height, width)
    targets = targets.reshape(n, j, height, width)
    targets = targets / targets.sum(dim=(2, 3), keepdim=True).clamp(min=1e-12)
    targets = targets * valid[..., None, None].to(keypoints.dtype)
    flat_index = (row * width + col).long()
    return targets, valid, flat_index


def focal_radius_sigma(size: torch.Tensor, alpha: float) -> torch.Tensor:
    """The Gaussian sigma of TTFNet for an object side: alpha * side / 6 (clamped to >= 0.5 cell)."""
    return (alpha * size / 6.0).clamp(min=0.5)


def inverse_sigmoid(probability: float) -> float:
    """log(p / (1 - p)): the bias giving a prior probability p after a sigmoid."""
    return math.log(probability / (1.0 - probability))
