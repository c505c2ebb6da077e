"""Instance segmentation decoder D_S: one class-agnostic binary (visible) mask per instance box.

Paper: "a set of deconvolution layers to perform instance segmentation", one binary mask per instance,
BCE loss. Choice: Mask R-CNN's RoI mask head made light - GAP attention on the encoder map, RoIAlign
(aligned=True) of the box to roi_size x roi_size, `num_convs` 3x3 convs, one 2x2 stride-2 deconvolution
and a 1x1 conv to M x M logits (M = 2 * roi_size) over the box. Class-agnostic because both branches'
classes (pedestrian, rider, person) share the human silhouette and CityPersons riders are few.
The mask is the *visible* part (what CityPersons/COCO polygons annotate); the box is the full one, so
the mask also tells the pose stage which parts of the box are occluded.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from occluded_ppe_ros.model.backbone import _groups
from occluded_ppe_ros.model.config import MaskConfig
from occluded_ppe_ros.model.ops import build_attention, trainable_roi_align


class MaskHead(nn.Module):
    """Mask decoder: (features [B, C, h, w], rois [R, 5] = image index, x1, y1, x2, y2 px) -> [R, M, M]."""

    def __init__(self, in_channels: int, stride: int, cfg: MaskConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stride = stride
        self.attention = build_attention(cfg.attention, in_channels, cfg.attention_reduction)
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(cfg.num_convs):
            layers += [nn.Conv2d(channels, cfg.channels, 3, padding=1, bias=False),
                       nn.GroupNorm(_groups(cfg.channels), cfg.channels), nn.ReLU(inplace=True)]
            channels = cfg.channels
        layers += [nn.ConvTranspose2d(channels, cfg.channels, 2, stride=2), nn.ReLU(inplace=True),
                   nn.Conv2d(cfg.channels, 1, 1)]
        self.decoder = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """See the class docstring; M = cfg.resolution."""
        attended = self.attention(features)
        size = (self.cfg.roi_size, self.cfg.roi_size)
        pooled = trainable_roi_align(attended, rois, size, 1.0 / self.stride, sampling_ratio=2)
        return self.decoder(pooled)[:, 0]


def mask_targets(masks: torch.Tensor, boxes: torch.Tensor, resolution: int) -> torch.Tensor:
    """Crop full-image instance masks to their boxes at M x M (bilinear RoIAlign, then >= 0.5).

    Args:
        masks: uint8/bool/float [N, H, W] masks in network-input pixels.
        boxes: float [N, 4] x1, y1, x2, y2 pixels.
        resolution: M.

    Returns:
        float [N, M, M] of 0 / 1.
    """
    if masks.shape[0] == 0:
        return masks.new_zeros((0, resolution, resolution), dtype=torch.float32)
    index = torch.arange(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
    rois = torch.cat([index[:, None], boxes], 1)
    crops = roi_align(masks[:, None].to(boxes.dtype), rois, output_size=resolution, spatial_scale=1.0,
                      sampling_ratio=2, aligned=True)[:, 0]
    return (crops >= 0.5).to(torch.float32)
