"""DeployModel: the one module exported to ONNX and run by every backend (docs/architecture.md, contract 4).

`forward(images float32 [B, 3, H, W] RGB in [0, 1])` returns a tuple in `OUTPUT_NAMES` order with a fixed
K = max_detections rows per image; rows past the detections NMS kept have valid = False and score 0.
The graph is the chosen branch's encoder, detection decoder (peak pick, top-k, batched NMS, fixed top-K),
mask decoder and the shared pose stage; no loss code, no Python branching on tensor values.
"""
from __future__ import annotations

import torch
from torch import nn

from occluded_ppe_ros.model.network import PPENet

INPUT_NAME = 'images'
OUTPUT_NAMES: tuple[str, ...] = (
    'boxes', 'scores', 'labels', 'valid', 'masks', 'keypoints', 'keypoint_occluded')


class DeployModel(nn.Module):
    """Inference wrapper of one branch with fixed K rows per image.

    Outputs (in OUTPUT_NAMES order): boxes float32 [B, K, 4] x1, y1, x2, y2 network-input pixels;
    scores float32 [B, K]; labels int64 [B, K]; valid bool [B, K]; masks float32 [B, K, M, M] visible-mask
    probabilities over each box; keypoints float32 [B, K, 13, 3] x, y network-input pixels and score;
    keypoint_occluded float32 [B, K, 13] probability that the joint is hidden.
    """

    def __init__(self, model: PPENet, domain: str, max_detections: int) -> None:
        super().__init__()
        if domain not in model.branches:
            raise ValueError(f'unknown domain {domain!r}; expected one of {tuple(model.branches)}')
        if max_detections < 1:
            raise ValueError(f'max_detections must be >= 1, got {max_detections}')
        self.model = model
        self.domain = domain
        self.max_detections = max_detections
        # Inference only: start in eval mode, so that tools restoring "the previous mode" after tracing
        # (torch.onnx.export does) do not switch batch norm to batch statistics.
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """See the class docstring."""
        outputs = self.model.predict_padded(images, self.domain, self.max_detections)
        return tuple(outputs[name] for name in OUTPUT_NAMES)
