"""Predictor: RGB uint8 images -> `Pedestrian`s (contract 1), over any backend (contract 4). No ROS.

    predictor = Predictor.from_checkpoint('models/ppe_default.pt', backend='torch', score_threshold=0.4)
    pedestrians = predictor.predict(image)            # image: uint8 [H, W, 3] RGB
    predictor.last_timings                            # {'preprocess_ms': ..., 'inference_ms': ..., ...}

Pre-processing is `preprocess.letterbox` to the backend's fixed input size; post-processing is
`postprocess.to_pedestrians` (threshold, map back to image pixels, paste masks, flag occluded joints).
Thresholds can be changed between calls with `set_thresholds` (the node's runtime parameters).
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from occluded_ppe_ros.inference.backends import Backend, check_outputs, create_backend
from occluded_ppe_ros.inference.postprocess import to_pedestrians
from occluded_ppe_ros.inference.preprocess import check_image, letterbox
from occluded_ppe_ros.inference.results import Pedestrian

_UNIT_THRESHOLDS = ('score_threshold', 'keypoint_threshold', 'mask_threshold', 'occlusion_threshold')


class Predictor:
    """Pre-processing + backend + post-processing.

    Attributes:
        backend: the backend (`name`, `input_size`, `class_names`, `run`).
        input_size: (H, W) network input every image is letterboxed to.
        class_names: names by label of the deployed branch.
        score_threshold: minimum detection score in [0, 1].
        keypoint_threshold: joints scoring below it count as not found for consumers (the node publishes
            them as not present, drawing skips them); the Pedestrian keeps every joint and its score.
        mask_threshold: mask probability cut in [0, 1].
        occlusion_threshold: occlusion probability above which a joint is flagged occluded, [0, 1].
        nms_threshold: extra class-wise NMS IoU in (0, 1], or None for the graph's NMS only.
        last_timings: milliseconds of the last predict / predict_batch call: preprocess_ms, inference_ms,
            postprocess_ms, total_ms (for the whole batch) and batch_size.
    """

    def __init__(self, model_or_backend, *, domain: str | None = None,
                 input_size: tuple[int, int] | None = None, max_detections: int | None = None,
                 device: str = 'cpu', score_threshold: float = 0.5, keypoint_threshold: float = 0.3,
                 mask_threshold: float | None = None, occlusion_threshold: float = 0.5,
                 nms_threshold: float | None = None, pad_value: float = 0.0) -> None:
        """Wrap a backend, or a PPENet (run by the torch backend).

        Args:
            model_or_backend: a `PPENet` or an object with the Backend interface.
            domain: branch (PPENet only; default the model config's inference domain).
            input_size: (H, W) (PPENet only; default the model config's).
            max_detections: K (PPENet only; default the model config's).
            device: torch device (PPENet only).
            score_threshold: see the class attributes (likewise the other thresholds).
            keypoint_threshold: see the class attributes.
            mask_threshold: see the class attributes.
            occlusion_threshold: see the class attributes.
            nms_threshold: see the class attributes.
            pad_value: letterbox padding value in [0, 1].
        """
        # A PPENet can only exist if its module was imported: checking sys.modules keeps torch out of
        # the ONNX Runtime / TensorRT paths.
        network_module = sys.modules.get('occluded_ppe_ros.model.network')
        if network_module is not None and isinstance(model_or_backend, network_module.PPENet):
            from occluded_ppe_ros.inference.backends.torch_backend import TorchBackend

            model_or_backend = TorchBackend(model_or_backend, domain=domain, max_detections=max_detections,
                                            input_size=input_size, device=device)
        elif any(v is not None for v in (domain, input_size, max_detections)):
            raise ValueError('domain, input_size and max_detections are fixed by a backend; pass them to '
                             'create_backend / Predictor.from_checkpoint instead')
        if not isinstance(model_or_backend, Backend):
            raise ValueError(f'expected a PPENet or a backend with name, input_size, class_names and run; '
                             f'got {type(model_or_backend).__name__}')
        if model_or_backend.input_size is None:
            raise ValueError(f'backend {model_or_backend.name!r} has no fixed input_size')
        self.backend = model_or_backend
        self.input_size = tuple(int(v) for v in model_or_backend.input_size)
        self.class_names = list(model_or_backend.class_names)
        if not 0.0 <= pad_value <= 1.0:
            raise ValueError(f'pad_value must be in [0, 1], got {pad_value}')
        self.pad_value = float(pad_value)
        self.score_threshold = self.keypoint_threshold = self.mask_threshold = self.occlusion_threshold = 0.5
        self.nms_threshold: float | None = None
        if mask_threshold is None:
            # the model's own cut where it states one (the pretrained pipeline's config), else 0.5
            mask_threshold = float(getattr(model_or_backend, 'mask_threshold', 0.5))
        self.set_thresholds(score_threshold=score_threshold, keypoint_threshold=keypoint_threshold,
                            mask_threshold=mask_threshold, occlusion_threshold=occlusion_threshold,
                            nms_threshold=nms_threshold)
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, backend: str = 'auto', device: str = 'cpu', *,
                        domain: str | None = None, input_size: tuple[int, int] | None = None,
                        max_detections: int | None = None, **thresholds) -> Predictor:
        """Open `path` (a .pt checkpoint, or a .onnx export for onnxruntime/tensorrt) with a backend.

        Args:
            path: model file.
            backend: 'auto', 'torch', 'onnxruntime' or 'tensorrt'.
            device: 'cpu' or 'cuda'.
            domain: branch; default the checkpoint's inference domain.
            input_size: (H, W); default the checkpoint's.
            max_detections: K; default the checkpoint's.
            **thresholds: score_threshold, keypoint_threshold, mask_threshold, occlusion_threshold,
                nms_threshold, pad_value.
        """
        opened = create_backend(backend, path, device=device, domain=domain, input_size=input_size,
                                max_detections=max_detections)
        return cls(opened, **thresholds)

    def set_thresholds(self, **values: float | None) -> None:
        """Change thresholds (names as in __init__); raises ValueError naming a bad one, changing nothing."""
        checked = {}
        for name, value in values.items():
            if name in _UNIT_THRESHOLDS:
                if value is None or not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f'{name} must be in [0, 1], got {value!r}')
                checked[name] = float(value)
            elif name == 'nms_threshold':
                if value is not None and not 0.0 < float(value) <= 1.0:
                    raise ValueError(f'nms_threshold must be in (0, 1] or None, got {value!r}')
                checked[name] = None if value is None else float(value)
            else:
                known = [*_UNIT_THRESHOLDS, 'nms_threshold']
                raise ValueError(f'unknown threshold {name!r}; known: {known}')
        for name, value in checked.items():
            setattr(self, name, value)
        if 'score_threshold' in checked and hasattr(self.backend, 'pose_min_score'):
            # a two-graph backend (the pretrained pipeline) then runs its pose graph on just the boxes
            # this threshold keeps: the pose cost follows the people reported, not the K box rows
            self.backend.pose_min_score = checked['score_threshold']

    def predict(self, image: np.ndarray) -> list[Pedestrian]:
        """Pedestrians in one uint8 [H, W, 3] RGB image, in its pixels, best score first."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[list[Pedestrian]]:
        """One backend run for several images (e.g. cameras); each may have its own size."""
        if len(images) == 0:
            raise ValueError('predict_batch needs at least one image')
        start = time.perf_counter()
        tensors, geometries = [], []
        for index, image in enumerate(images):
            check_image(image, where=f'image {index}')
            tensor, geometry = letterbox(image, self.input_size, self.pad_value)
            tensors.append(tensor)
            geometries.append(geometry)
        batch = np.stack(tensors)
        prepared = time.perf_counter()
        outputs = self.backend.run(batch)
        inferred = time.perf_counter()
        check_outputs(outputs, len(images), f'backend {self.backend.name!r}')
        results = []
        for index, geometry in enumerate(geometries):
            row = {name: value[index] for name, value in outputs.items()}
            results.append(to_pedestrians(row, geometry, self.class_names, self.score_threshold,
                                          self.mask_threshold, self.occlusion_threshold, self.nms_threshold))
        done = time.perf_counter()
        self.last_timings = {
            'preprocess_ms': (prepared - start) * 1e3,
            'inference_ms': (inferred - prepared) * 1e3,
            'postprocess_ms': (done - inferred) * 1e3,
            'total_ms': (done - start) * 1e3,
            'batch_size': float(len(images)),
        }
        return results
