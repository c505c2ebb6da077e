"""PyTorch backend: DeployModel run eagerly under torch.inference_mode (CPU or CUDA)."""
from __future__ import annotations

import os

import numpy as np
import torch

from occluded_ppe_ros.cpu_allocator import keep_large_buffers_in_heap
from occluded_ppe_ros.model.config import ModelConfig
from occluded_ppe_ros.model.deploy import OUTPUT_NAMES, DeployModel
from occluded_ppe_ros.model.network import PPENet


class TorchBackend:
    """Runs `DeployModel(model, domain, max_detections)` in PyTorch.

    Attributes:
        name: 'torch'.
        input_size: (H, W) the Predictor letterboxes to (the model config's inference size unless given).
        class_names: the deployed branch's classes.
        device: torch device the model runs on.
    """

    name = 'torch'

    def __init__(self, model: PPENet, domain: str | None = None, max_detections: int | None = None,
                 input_size: tuple[int, int] | None = None, device: str | torch.device = 'cpu') -> None:
        """Wrap a network.

        Args:
            model: the network (put into eval mode and moved to `device`).
            domain: branch to run; default the model config's inference domain.
            max_detections: K rows per image; default the model config's.
            input_size: (H, W), multiples of 32; default the model config's.
            device: 'cpu', 'cuda', or a torch.device. On the CPU this also sets the process's glibc
                malloc thresholds (`keep_large_buffers_in_heap`): the model's activation buffers are
                then reused from call to call instead of mapped and faulted in again.
        """
        cfg = model.cfg.inference
        self.domain = domain or cfg.domain
        self.max_detections = int(max_detections or cfg.max_detections)
        self.input_size = tuple(int(v) for v in (input_size or (cfg.input_height, cfg.input_width)))
        if any(v <= 0 or v % 32 for v in self.input_size):
            raise ValueError(f'input_size must be positive multiples of 32, got {self.input_size}')
        if str(device).startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f'device {device!r} asked for, but torch sees no CUDA GPU')
        self.device = torch.device(device)
        if self.device.type == 'cpu':
            # eager inference frees and re-allocates the same multi-megabyte activations every call, and
            # default glibc maps them afresh each time: the default model on a 640x480 image (network
            # input 352x256) took about 21 000 page faults per call and a median 171 ms, against almost
            # none and 148 ms with the buffers reused (2 threads, 4 process pairs;
            # benchmarks/cpu_allocator_inference.py)
            keep_large_buffers_in_heap()
        self.class_names = list(ModelConfig.class_names(self.domain))
        self.deploy = DeployModel(model, self.domain, self.max_detections).eval().to(self.device)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = 'cpu', domain: str | None = None,
                        max_detections: int | None = None, input_size: tuple[int, int] | None = None
                        ) -> TorchBackend:
        """Load a contract-3 checkpoint (weights_only) and wrap it."""
        from occluded_ppe_ros.model.checkpoint import model_from_checkpoint

        model, _ = model_from_checkpoint(path, map_location='cpu')
        return cls(model, domain=domain, max_detections=max_detections, input_size=input_size, device=device)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Args: images float32 [B, 3, H, W] in [0, 1]. Returns contract-4 outputs as numpy arrays."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'torch backend takes images [B, 3, H, W], got {list(images.shape)}')
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
            outputs = self.deploy(tensor)
        return {name: value.cpu().numpy() for name, value in zip(OUTPUT_NAMES, outputs)}
