"""Detection decoder D_D: an anchor-free, fully convolutional head on the encoder's single output map.

Choice: TTFNet-style CenterNet (Liu et al. 2019, "Training-Time-Friendly Network"): per class a centre
heatmap (elliptical Gaussian, sigma = alpha * side / 6, so tall pedestrians get tall kernels) and per
cell the four distances to the box sides (left, top, right, bottom, in pixels). Unlike CenterNet's single
centre-cell size regression, every cell inside the object's central Gaussian regresses the box (GIoU
loss weighted by that Gaussian, normalised per object), which TTFNet showed converges several times
faster - what matters when training on a CPU with little data. Decoding is a 3x3 max-pool peak pick,
top-k, class-wise NMS (torchvision nms with per-class, per-image coordinate offsets; across images too)
and a fixed top-K, so the exported graph has fixed shapes and no data-dependent Python control flow.

Ignore regions (CityPersons 'ignore', COCO crowd): cells whose centre falls in one get no negative
heatmap loss, so detections there are never penalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from occluded_ppe_ros.model.backbone import _groups
from occluded_ppe_ros.model.config import DetectionConfig
from occluded_ppe_ros.model.losses import gaussian_focal_loss, giou_loss
from occluded_ppe_ros.model.ops import build_attention, focal_radius_sigma, gaussian_2d, inverse_sigmoid

# Distances are predicted as stride * exp(raw); the clamp bounds exp in half precision and early training.
_MAX_LOG_DISTANCE = 8.0


class DetectionHead(nn.Module):
    """GAP attention (cfg.attention), then a heatmap tower and a box tower (3x3 conv + GN + ReLU, 1x1 out).

    forward(features [B, C, h, w]) -> (heatmap logits [B, num_classes, h, w],
    side distances [B, 4, h, w] in input pixels: left, top, right, bottom of the cell centre).
    """

    def __init__(self, in_channels: int, num_classes: int, stride: int, cfg: DetectionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.stride = stride
        self.attention = build_attention(cfg.attention, in_channels, cfg.attention_reduction)
        self.heatmap = _tower(in_channels, cfg.head_channels, num_classes)
        self.box = _tower(in_channels, cfg.head_channels, 4)
        # Start every cell at a 0.1 centre probability (CenterNet's prior) so early focal losses stay small.
        nn.init.constant_(self.heatmap[-1].bias, inverse_sigmoid(0.1))
        nn.init.normal_(self.box[-1].weight, std=0.01)
        nn.init.constant_(self.box[-1].bias, 0.0)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See the class docstring."""
        attended = self.attention(features)
        heatmap_logits = self.heatmap(attended)
        distances = self.stride * torch.exp(self.box(attended).clamp(max=_MAX_LOG_DISTANCE))
        return heatmap_logits, distances


def _tower(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
        nn.GroupNorm(_groups(hidden), hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 1))


def cell_centers(height: int, width: int, stride: int, device: torch.device | str = 'cpu',
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates of the cell centres of an h x w map at `stride`: (x [w], y [h])."""
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * stride
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * stride
    return xs, ys


def detection_targets(boxes: torch.Tensor, labels: torch.Tensor, ignore_boxes: torch.Tensor, num_classes: int,
                      height: int, width: int, stride: int, cfg: DetectionConfig) -> dict[str, torch.Tensor]:
    """Targets of one image on an h x w map.

    Args:
        boxes: float [N, 4] x1, y1, x2, y2 network-input pixels (boxes under 1 px a side are skipped).
        labels: int64 [N] class index in the branch.
        ignore_boxes: float [M, 4] regions without negative loss.
        num_classes: classes of the branch.
        height: map height h.
        width: map width w.
        stride: map stride in pixels.
        cfg: detection settings.

    Returns:
        heatmap float [C, h, w]; negative_weight float [1, h, w] (0 in ignore regions);
        box_target float [h, w, 4]; box_weight float [h, w] (sums to 1 per regressed object);
        num_objects float scalar.
    """
    device, dtype = boxes.device, boxes.dtype
    heatmap = torch.zeros((num_classes, height, width), device=device, dtype=dtype)
    box_target = torch.zeros((height, width, 4), device=device, dtype=dtype)
    box_weight = torch.zeros((height, width), device=device, dtype=dtype)
    xs, ys = cell_centers(height, width, stride, device, dtype)
    negative_weight = torch.ones((1, height, width), device=device, dtype=dtype)
    if ignore_boxes.numel():
        inside_x = (xs[None] >= ignore_boxes[:, 0:1]) & (xs[None] <= ignore_boxes[:, 2:3])   # [M, w]
        inside_y = (ys[None] >= ignore_boxes[:, 1:2]) & (ys[None] <= ignore_boxes[:, 3:4])   # [M, h]
        ignored = (inside_y[:, :, None] & inside_x[:, None, :]).any(dim=0)
        negative_weight[0][ignored] = 0.0
    sizes = boxes[:, 2:] - boxes[:, :2] if boxes.numel() else boxes.new_zeros((0, 2))
    keep = (sizes >= 1.0).all(dim=1)
    boxes, labels, sizes = boxes[keep], labels[keep], sizes[keep]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f'labels must be in [0, {num_classes}), got {labels.tolist()}')
    num_objects = torch.tensor(float(boxes.shape[0]), device=device, dtype=dtype)
    if boxes.shape[0] == 0:
        return {'heatmap': heatmap, 'negative_weight': negative_weight, 'box_target': box_target,
                'box_weight': box_weight, 'num_objects': num_objects}
    # Centre cell: the cell containing the box centre; the Gaussian is centred on that cell's centre
    # so the target is exactly 1 there (one positive per object).
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride
    centre_cell = torch.stack([centre[:, 0].floor().clamp(0, width - 1),
                               centre[:, 1].floor().clamp(0, height - 1)], dim=1) + 0.5
    size_cells = sizes / stride
    gaussians = gaussian_2d(centre_cell[:, 0], centre_cell[:, 1],
                            focal_radius_sigma(size_cells[:, 0], cfg.gaussian_alpha),
                            focal_radius_sigma(size_cells[:, 1], cfg.gaussian_alpha), height, width)
    for class_index in range(num_classes):
        of_class = labels == class_index
        if of_class.any():
            heatmap[class_index] = gaussians[of_class].max(dim=0).values
    # Regression cells: inside the box and inside the object's (beta) Gaussian; overlaps go to the
    # smaller object (FCOS's rule: the small one has fewer cells to spare).
    regression = gaussian_2d(centre_cell[:, 0], centre_cell[:, 1],
                             focal_radius_sigma(size_cells[:, 0], cfg.regression_beta),
                             focal_radius_sigma(size_cells[:, 1], cfg.regression_beta), height, width)
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
    inside_x = (xs[None, None] >= x1) & (xs[None, None] <= x2)            # [N, 1, w]
    inside_y = (ys[None, :, None] >= y1) & (ys[None, :, None] <= y2)      # [N, h, 1]
    inside = inside_x & inside_y
    candidate = (regression >= cfg.regression_min_weight) & inside
    # Always regress at the centre cell, even for objects smaller than a cell.
    centre_index = (centre_cell - 0.5).long()
    candidate[torch.arange(boxes.shape[0], device=device), centre_index[:, 1], centre_index[:, 0]] = True
    area = sizes[:, 0] * sizes[:, 1]
    cost = torch.where(candidate, area[:, None, None].expand_as(regression),
                       torch.full_like(regression, float('inf')))
    best_cost, owner = cost.min(dim=0)
    assigned = torch.isfinite(best_cost)
    weights = torch.where(assigned, regression.gather(0, owner[None])[0], torch.zeros_like(best_cost))
    weights = torch.where(assigned & (weights <= 0), torch.full_like(weights, 1e-3), weights)
    per_object = torch.zeros(boxes.shape[0], device=device, dtype=dtype).index_add_(
        0, owner[assigned], weights[assigned])
    box_weight[assigned] = weights[assigned] / per_object[owner[assigned]]
    box_target[assigned] = boxes[owner[assigned]]
    return {'heatmap': heatmap, 'negative_weight': negative_weight, 'box_target': box_target,
            'box_weight': box_weight, 'num_objects': num_objects}


def detection_loss(heatmap_logits: torch.Tensor, distances: torch.Tensor,
                   targets: list[dict[str, torch.Tensor]], num_classes: int, stride: int,
                   cfg: DetectionConfig) -> dict[str, torch.Tensor]:
    """L_det of a batch: focal heatmap loss / positives + box_loss_weight x weighted GIoU / objects.

    Args:
        heatmap_logits: float [B, C, h, w].
        distances: float [B, 4, h, w] predicted left, top, right, bottom in pixels.
        targets: B target dicts (contract 2: boxes, labels, ignore_boxes).
        num_classes: C.
        stride: map stride.
        cfg: detection settings.

    Returns:
        {'loss_det_heatmap': scalar, 'loss_det_box': scalar}; finite for images without objects.
    """
    batch, _, height, width = heatmap_logits.shape
    built = [detection_targets(t['boxes'].to(heatmap_logits), t['labels'].to(heatmap_logits.device),
                               t.get('ignore_boxes', t['boxes'].new_zeros((0, 4))).to(heatmap_logits),
                               num_classes, height, width, stride, cfg) for t in targets]
    heatmap_target = torch.stack([b['heatmap'] for b in built])
    negative_weight = torch.stack([b['negative_weight'] for b in built])
    focal_sum, positives = gaussian_focal_loss(heatmap_logits, heatmap_target, negative_weight,
                                               cfg.focal_alpha, cfg.focal_beta)
    loss_heatmap = focal_sum / positives.clamp(min=1.0)

    box_weight = torch.stack([b['box_weight'] for b in built])          # [B, h, w]
    box_target = torch.stack([b['box_target'] for b in built])          # [B, h, w, 4]
    num_objects = torch.stack([b['num_objects'] for b in built]).sum()
    selected = box_weight > 0
    if not bool(selected.any()):
        loss_box = distances.sum() * 0.0
    else:
        xs, ys = cell_centers(height, width, stride, heatmap_logits.device, heatmap_logits.dtype)
        cx = xs[None, None, :].expand(batch, height, width)[selected]
        cy = ys[None, :, None].expand(batch, height, width)[selected]
        sides = distances.permute(0, 2, 3, 1)[selected]                  # [P, 4]
        predicted = torch.stack([cx - sides[:, 0], cy - sides[:, 1], cx + sides[:, 2], cy + sides[:, 3]], 1)
        per_cell = giou_loss(predicted, box_target[selected])
        loss_box = (per_cell * box_weight[selected]).sum() / num_objects.clamp(min=1.0)
    return {'loss_det_heatmap': loss_heatmap, 'loss_det_box': loss_box * cfg.box_loss_weight}


# Per-cell step of the tie-breaking ramp in `decode_detections` (score units).
TIE_BREAK_STEP = 1e-8


def decode_detections(heatmap_logits: torch.Tensor, distances: torch.Tensor, stride: int, image_height: int,
                      image_width: int, pre_nms_topk: int, max_detections: int, nms_iou: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peaks -> boxes with fixed K rows per image (export-friendly: fixed shapes, no value-dependent loops).

    Args:
        heatmap_logits: float [B, C, h, w].
        distances: float [B, 4, h, w] left, top, right, bottom pixels.
        stride: map stride.
        image_height: network input height (boxes are clipped to it).
        image_width: network input width.
        pre_nms_topk: peaks kept per image before NMS.
        max_detections: K.
        nms_iou: NMS IoU threshold (per class and image).

    Returns:
        boxes float [B, K, 4] pixels, scores float [B, K] (0 on padded rows), labels int64 [B, K],
        valid bool [B, K]; rows are sorted by score.
    """
    num_classes, height, width = heatmap_logits.shape[1:]
    heat = torch.sigmoid(heatmap_logits)
    peak_max = F.max_pool2d(heat, kernel_size=3, stride=1, padding=1)
    peaks = heat * (peak_max == heat).to(heat.dtype)
    flat = peaks.flatten(1)                                                # [B, C*h*w]
    candidates = min(pre_nms_topk, num_classes * height * width)
    if candidates < max_detections:
        raise ValueError(f'max_detections {max_detections} exceeds the {candidates} heatmap cells of a '
                         f'{height}x{width} map: use a larger input or fewer detections')
    # Exactly tied scores (plateaus where a weakly trained head outputs only its bias) would leave the
    # choice among them to each runtime's TopK / NMS, so PyTorch and ONNX Runtime could keep different
    # cells. Ranking by score minus a tiny ramp over the cell index breaks ties the same way everywhere
    # (scores closer than ~1e-8 per cell swap order at most); the reported scores stay the true ones.
    ramp = torch.arange(flat.shape[1], device=flat.device, dtype=flat.dtype) * TIE_BREAK_STEP
    rank_keys, index = (flat - ramp).topk(candidates, dim=1)               # [B, P]
    scores = flat.gather(1, index)
    cells = height * width
    labels = torch.div(index, cells, rounding_mode='floor')
    cell = index - labels * cells
    row = torch.div(cell, width, rounding_mode='floor')
    col = cell - row * width
    sides = distances.flatten(2).gather(2, cell[:, None, :].expand(-1, 4, -1)).permute(0, 2, 1)   # [B, P, 4]
    cx = (col.to(heat.dtype) + 0.5) * stride
    cy = (row.to(heat.dtype) + 0.5) * stride
    boxes = torch.stack([(cx - sides[..., 0]).clamp(min=0, max=image_width),
                         (cy - sides[..., 1]).clamp(min=0, max=image_height),
                         (cx + sides[..., 2]).clamp(min=0, max=image_width),
                         (cy + sides[..., 3]).clamp(min=0, max=image_height)], dim=2)
    batch_index = torch.arange(boxes.shape[0], device=boxes.device)[:, None].expand_as(labels)
    groups = (batch_index * num_classes + labels).reshape(-1)
    # Class- and image-wise NMS in one call by moving each group to its own coordinate range (what
    # torchvision's batched_nms does inside). Called directly because batched_nms is scripted and
    # exports as an ONNX `If` around NonMaxSuppression, which TensorRT handles poorly.
    offsets = groups.to(boxes.dtype) * float(max(image_width, image_height) + 1)
    keep = nms(boxes.reshape(-1, 4) + offsets[:, None], rank_keys.reshape(-1), nms_iou)
    kept = torch.zeros_like(scores.reshape(-1), dtype=torch.bool)
    kept[keep] = True
    kept = kept.reshape(scores.shape)
    ranked = torch.where(kept, rank_keys, torch.full_like(rank_keys, -2.0))
    _, order = ranked.topk(max_detections, dim=1)
    valid = kept.gather(1, order)
    top_scores = scores.gather(1, order)
    out_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    out_labels = labels.gather(1, order)
    out_scores = torch.where(valid, top_scores, torch.zeros_like(top_scores))
    return out_boxes, out_scores, out_labels, valid
