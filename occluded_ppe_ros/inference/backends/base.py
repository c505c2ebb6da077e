"""The backend interface of contract 4 (docs/architecture.md).

A backend runs the deployed graph (`model.deploy.DeployModel` or its ONNX / TensorRT form):
`run(images float32 [B, 3, H, W] RGB in [0, 1]) -> dict[str, np.ndarray]` keyed by OUTPUT_NAMES, with
`name`, `input_size` ((H, W) it expects; None where any multiple of 32 works) and `class_names`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

OUTPUT_NAMES: tuple[str, ...] = (
    'boxes', 'scores', 'labels', 'valid', 'masks', 'keypoints', 'keypoint_occluded')
BACKEND_NAMES: tuple[str, ...] = ('torch', 'onnxruntime', 'tensorrt', 'auto')


@runtime_checkable
class Backend(Protocol):
    """What the Predictor needs from a backend."""

    name: str
    input_size: tuple[int, int] | None

    @property
    def class_names(self) -> Sequence[str]:
        """Class names of the deployed branch, index = label."""

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the deployed graph on float32 [B, 3, H, W] images; outputs keyed by OUTPUT_NAMES."""


def check_outputs(outputs: dict[str, np.ndarray], batch: int, where: str) -> None:
    """Raise ValueError naming the backend (`where`) if outputs miss a name or have the wrong batch size."""
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        raise ValueError(f'{where} returned no {missing}; contract 4 needs {list(OUTPUT_NAMES)}')
    for name in OUTPUT_NAMES:
        if outputs[name].shape[0] != batch:
            raise ValueError(f'{where} returned {name} with batch {outputs[name].shape[0]} '
                             f'for {batch} images')
