"""The distribution-invariant pose stage (paper section 2.2): E_Pose, D_Pose and D_C behind a GRL.

Pipeline per instance (shared by both branches, which is what makes it distribution invariant):
1. RoIAlign (aligned=True) of the instance's full box onto the branch encoder's output map (the "last
   layer of encoded feature maps") to roi_height x roi_width cells. The RoI is the full (amodal) box as
   is - no aspect padding - so the box-relative mask grid and the RoI grid cover the same rectangle and
   the gate is a plain resampling (`ops.mask_gate`); a box is tall for a pedestrian, so 16 x 12 cells
   distort little.
2. Mask-and-predict gating: features x gate. At inference the gate is the predicted visible-mask
   probability (soft, so an uncertain mask does not cut features off hard). In training it is the
   ground-truth visible mask (or the visible box where no mask is known) times a random rectangle hiding
   `mask_ratio` of the box (the curriculum of section 3.1: the trainer raises mask_ratio over time), so
   E_Pose learns to place joints it cannot see.
3. E_Pose: `encoder_convs` 3x3 conv + GN + ReLU (dilated by `encoder_dilations` where given), then,
   with `global_context`, a learned projection of the instance's max feature added to every cell.
   D_C: GAP of E_Pose's features -> gradient reversal -> MLP -> one domain logit per instance
   (1 = source). With `facing_loss_weight` > 0 a linear layer on that max feature is trained to
   say whether the person faces the camera (training only). The reversal makes E_Pose's features domain
   invariant while D_C learns to tell the domains apart (DANN; Kocabas et al. use the same form).
4. D_Pose: `decoder_deconvs` 4x4 stride-2 deconvolutions + GN + ReLU, then a 1x1 conv to 2 x 13 maps:
   13 keypoint heatmap logits and 13 occlusion logit maps (heatmap = roi x 2 ** decoder_deconvs cells).
   With `detail_channels` the gated image pixels of the box, at the heatmap's resolution, pass two 3x3
   convs and join the last deconvolution's output in a 3x3 conv before the 1x1 (a high-resolution skip).
   D_Pose runs only on source-domain instances with keypoints in training, so target-domain inputs
   never update it (the paper's rule).

Keypoint outputs: location = heatmap argmax refined below a cell (`PoseConfig.subcell_decoding`: a
quarter cell toward the higher neighbour, or the softmax-weighted mean of the cells around the peak;
`ops.decode_heatmaps`); score = for the default spatial-softmax loss (`heatmap_loss: softmax`) the
softmax probability mass around the peak relative to that of the training target (1 = as sharp as the
target), for the focal form sigmoid of the peak logit;
occlusion = sigmoid of the occlusion map at
the peak cell. The occlusion estimate is *learned*: COCO labels v = 1 (labelled but hidden), and joints
under the random mask-and-predict rectangle are hidden by construction; both are positives. A learned
head was preferred over "outside the predicted visible mask" because the mask cannot tell a joint hidden
by another person's body inside the box (self-occlusion, a crossing arm) from a visible one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from occluded_ppe_ros.model.backbone import _groups
from occluded_ppe_ros.model.config import PoseConfig
from occluded_ppe_ros.model.ops import (GradientReversal, cells_to_pixels, decode_heatmaps, inverse_sigmoid,
                                        joint_cells, trainable_roi_align)
from occluded_ppe_ros.skeleton import NUM_KEYPOINTS


class PoseStage(nn.Module):
    """E_Pose + D_Pose + D_C. See the module docstring for the data flow."""

    def __init__(self, in_channels: int, stride: int, cfg: PoseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stride = stride
        layers: list[nn.Module] = []
        channels = in_channels
        dilations = cfg.encoder_dilations or [1] * cfg.encoder_convs
        for dilation in dilations:
            layers += [nn.Conv2d(channels, cfg.encoder_channels, 3, padding=dilation, dilation=dilation,
                                 bias=False),
                       nn.GroupNorm(_groups(cfg.encoder_channels), cfg.encoder_channels),
                       nn.ReLU(inplace=True)]
            channels = cfg.encoder_channels
        self.encoder = nn.Sequential(*layers)          # E_Pose
        # instance-wide summary added to every cell (PoseConfig.global_context)
        self.context = nn.Linear(channels, channels) if cfg.global_context else None
        # auxiliary 'faces the camera' logit (PoseConfig.facing_loss_weight); training only
        self.facing = nn.Linear(channels, 1) if cfg.facing_loss_weight > 0 else None
        decoder: list[nn.Module] = []
        for _ in range(cfg.decoder_deconvs):
            decoder += [nn.ConvTranspose2d(channels, cfg.decoder_channels, 4, stride=2, padding=1,
                                           bias=False),
                        nn.GroupNorm(_groups(cfg.decoder_channels), cfg.decoder_channels),
                        nn.ReLU(inplace=True)]
            channels = cfg.decoder_channels
        self.detail = None
        self.fuse = None
        if cfg.detail_channels > 0:
            # high-resolution skip (PoseConfig.detail_channels): image pixels at the heatmap's resolution
            width = cfg.detail_channels
            self.detail = nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1, bias=False), nn.GroupNorm(_groups(width), width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.GroupNorm(_groups(width), width),
                nn.ReLU(inplace=True))
            self.fuse = nn.Sequential(
                nn.Conv2d(channels + width, channels, 3, padding=1, bias=False),
                nn.GroupNorm(_groups(channels), channels), nn.ReLU(inplace=True))
        decoder.append(nn.Conv2d(channels, 2 * NUM_KEYPOINTS, 1))
        self.decoder = nn.Sequential(*decoder)         # D_Pose (fuse and detail join before its last conv)
        # focal form: every cell starts at a 0.1 prior (CenterNet); a softmax is shift-invariant, 0 is as good
        heatmap_prior = inverse_sigmoid(0.1) if cfg.heatmap_loss == 'focal' else 0.0
        nn.init.constant_(self.decoder[-1].bias[:NUM_KEYPOINTS], heatmap_prior)
        nn.init.constant_(self.decoder[-1].bias[NUM_KEYPOINTS:], 0.0)
        self.gradient_reversal = GradientReversal(cfg.grl_lambda)
        self.domain_classifier = nn.Sequential(        # D_C
            nn.Linear(cfg.encoder_channels, cfg.domain_hidden), nn.ReLU(inplace=True),
            nn.Linear(cfg.domain_hidden, 1))
        self.heatmap_height = cfg.roi_height * 2 ** cfg.decoder_deconvs
        self.heatmap_width = cfg.roi_width * 2 ** cfg.decoder_deconvs

    def pool(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """Pool instances onto the encoder map with RoIAlign.

        Args:
            features: float [B, C, h, w] encoder output.
            rois: float [R, 5] (image index, x1, y1, x2, y2 pixels).

        Returns:
            float [R, C, roi_height, roi_width].
        """
        return trainable_roi_align(features, rois, (self.cfg.roi_height, self.cfg.roi_width),
                                   1.0 / self.stride, sampling_ratio=2)

    def pool_detail(self, images: torch.Tensor, rois: torch.Tensor, gate: torch.Tensor
                    ) -> torch.Tensor | None:
        """The gated image pixels of each instance at the heatmap's resolution, for the detail skip.

        Args:
            images: float [B, 3, H, W] the network input (RGB in [0, 1]).
            rois: float [R, 5] (image index, x1, y1, x2, y2 pixels).
            gate: float [R, 1, roi_height, roi_width] the instance gate E_Pose's input was multiplied by;
                resampled bilinearly to the heatmap grid so that what mask-and-predict or the visible
                mask hides from E_Pose is hidden here too.

        Returns:
            float [R, 3, heatmap_height, heatmap_width] centred on 0, or None when the skip is off.
        """
        if self.detail is None:
            return None
        size = (self.heatmap_height, self.heatmap_width)
        crops = roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        fine_gate = F.interpolate(gate, size=size, mode='bilinear', align_corners=False)
        return (crops - 0.5) * fine_gate

    def encode(self, pooled: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """E_Pose on gated instance features: [R, C, rh, rw] x [R, 1, rh, rw] -> [R, C_pose, rh, rw]."""
        return self.encode_with_summary(pooled, gate)[0]

    def encode_with_summary(self, pooled: torch.Tensor, gate: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """E_Pose, and the max of its conv output per instance: ([R, C_pose, rh, rw], [R, C_pose]).

        The summary is None when neither `global_context` nor the facing loss is configured.

        The summary is a max, not a mean: the facing cue sits in a few head cells of the 16 x 12 grid,
        and a mean dilutes it. In stage-2 runs of the tiny preset (1200 iterations, one run each) a
        facing head on the mean never left chance, and on the max it reached 85 % held-out accuracy.
        """
        encoded = self.encoder(pooled * gate)
        if self.context is None and self.facing is None:
            return encoded, None     # nothing reads it: no reduction on the inference path
        summary = encoded.amax(dim=(2, 3))
        if self.context is not None:
            encoded = torch.relu(encoded + self.context(summary)[:, :, None, None])
        return encoded, summary

    def domain_logits(self, encoded: torch.Tensor) -> torch.Tensor:
        """D_C behind the GRL: [R, C_pose, rh, rw] -> [R] logits (1 = source domain)."""
        pooled = encoded.mean(dim=(2, 3))
        return self.domain_classifier(self.gradient_reversal(pooled))[:, 0]

    def decode(self, encoded: torch.Tensor, detail: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """D_Pose: [R, C_pose, rh, rw] -> (heatmap logits, occlusion logits), each [R, 13, Hh, Wh].

        `detail` ([R, 3, Hh, Wh] from `pool_detail`) is required when the detail skip is configured and
        ignored (None) otherwise.
        """
        if self.detail is None:
            maps = self.decoder(encoded)
        else:
            if detail is None:
                raise ValueError('pose.detail_channels > 0: decode needs the pool_detail crops')
            upsampled = self.decoder[:-1](encoded)
            fused = self.fuse(torch.cat([upsampled, self.detail(detail)], dim=1))
            maps = self.decoder[-1](fused)
        return maps[:, :NUM_KEYPOINTS], maps[:, NUM_KEYPOINTS:]

    def keypoints(self, encoded: torch.Tensor, boxes: torch.Tensor, detail: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode keypoints of R instances.

        Args:
            encoded: float [R, C_pose, rh, rw] E_Pose output.
            boxes: float [R, 4] the RoI boxes, pixels.
            detail: float [R, 3, Hh, Wh] `pool_detail` crops (detail skip only).

        Returns:
            keypoints float [R, 13, 3] (x, y pixels, score in [0, 1]); occluded float [R, 13] probability.
        """
        heatmap_logits, occlusion_logits = self.decode(encoded, detail)
        cfg = self.cfg
        xy, scores, flat_index = decode_heatmaps(heatmap_logits, cfg.heatmap_loss, cfg.heatmap_sigma,
                                                 cfg.subcell_decoding)
        occlusion = torch.sigmoid(occlusion_logits.flatten(2).gather(2, flat_index[..., None])[..., 0])
        pixels = cells_to_pixels(xy, boxes, self.heatmap_height, self.heatmap_width)
        return torch.cat([pixels, scores[..., None]], dim=2), occlusion


def gate_hides(gate: torch.Tensor, keypoints: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Whether each joint lies in a hidden (gate < 0.5) cell of its instance's RoI grid.

    Args:
        gate: float [R, 1, rh, rw].
        keypoints: float [R, J, 3] pixels, v (0 = not labelled).
        boxes: float [R, 4] pixels.

    Returns:
        bool [R, J] (False for joints outside the box or not labelled).
    """
    rh, rw = gate.shape[-2:]
    _, _, col, row, labelled_inside = joint_cells(keypoints, boxes, rh, rw)
    values = gate.flatten(1).gather(1, (row * rw + col).long())
    return labelled_inside & (values < 0.5)


def soft_visible_gate(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Ground-truth visible masks resampled to the RoI grid of their boxes (bilinear RoIAlign).

    Args:
        masks: [N, H, W] full-image masks (any numeric dtype), network-input pixels.
        boxes: float [N, 4] pixels.
        height: RoI grid height.
        width: RoI grid width.

    Returns:
        float [N, 1, height, width] in [0, 1].
    """
    if masks.shape[0] == 0:
        return boxes.new_zeros((0, 1, height, width))
    index = torch.arange(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
    rois = torch.cat([index[:, None], boxes], 1)
    return roi_align(masks[:, None].to(boxes.dtype), rois, output_size=(height, width), spatial_scale=1.0,
                     sampling_ratio=2, aligned=True).clamp(0.0, 1.0)

