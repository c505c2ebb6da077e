"""Backends behind one interface (contract 4): torch, onnxruntime, tensorrt, and 'auto'.

`create_backend(name, model_path, ...)` picks by name; 'auto' = TensorRT where it imports and a GPU
exists, else ONNX Runtime, else torch. `model_path` may be a contract-3 checkpoint (.pt; ONNX Runtime
and TensorRT then use a cached export of it) or, for those two, an exported .onnx file.
"""
from __future__ import annotations

import os
from pathlib import Path

from occluded_ppe_ros.inference.backends.base import BACKEND_NAMES, OUTPUT_NAMES, Backend, check_outputs
from occluded_ppe_ros.inference.model_file import ModelFileError, as_model_file_error, check_model_file

__all__ = ['BACKEND_NAMES', 'OUTPUT_NAMES', 'Backend', 'check_outputs', 'create_backend']


def _onnxruntime_importable() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _onnx_for(model_path: Path, domain: str | None, input_size: tuple[int, int] | None,
              max_detections: int | None) -> Path:
    if model_path.suffix == '.onnx':
        return model_path
    from occluded_ppe_ros.inference.export import cached_onnx_for_checkpoint

    return cached_onnx_for_checkpoint(model_path, domain=domain, input_size=input_size,
                                      max_detections=max_detections)


def create_backend(name: str, model_path: str | os.PathLike, device: str = 'cpu',
                   domain: str | None = None, input_size: tuple[int, int] | None = None,
                   max_detections: int | None = None) -> Backend:
    """Open a backend.

    Args:
        name: one of BACKEND_NAMES.
        model_path: a .pt checkpoint (every backend) or a .onnx export (onnxruntime, tensorrt).
        device: 'cpu' or 'cuda' (TensorRT always runs on the GPU).
        domain: branch to deploy; default the checkpoint's inference domain (for .onnx: the exported one).
        input_size: (H, W); default the checkpoint's (for .onnx: the exported one).
        max_detections: K; default the checkpoint's (for .onnx: the exported one).

    Returns:
        A backend with `name`, `input_size`, `class_names` and `run`.

    Raises:
        ModelFileError: the model file is missing, empty, truncated, corrupt, of the wrong format, or its
            loader fails on it (one line naming the file and the problem).
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f'unknown backend {name!r}; expected one of {BACKEND_NAMES}')
    model_path = check_model_file(model_path)
    try:
        return _open_backend(name, model_path, device, domain, input_size, max_detections)
    except ModelFileError:
        raise
    except (ImportError, MemoryError):
        raise  # the environment, not the file
    except Exception as error:  # noqa: BLE001 - torch.load, ONNX Runtime, TensorRT raise many kinds
        if type(error).__name__ == 'TensorRTUnavailableError':
            raise
        raise as_model_file_error(model_path, error, f'loading it with the {name} backend') from error


def _open_backend(name: str, model_path: Path, device: str, domain: str | None,
                  input_size: tuple[int, int] | None, max_detections: int | None) -> Backend:
    """create_backend's work once the file passed its checks."""
    if name == 'auto':
        from occluded_ppe_ros.inference.tensorrt_engine import tensorrt_available

        if tensorrt_available():
            name = 'tensorrt'
        elif _onnxruntime_importable():
            name = 'onnxruntime'
        else:
            name = 'torch'
    if _is_pipeline(model_path):
        return _pipeline_backend(name, model_path, device, domain, input_size, max_detections)
    if name == 'torch':
        if model_path.suffix != '.pt':
            raise ValueError(f'the torch backend needs a .pt checkpoint, got {model_path}')
        from occluded_ppe_ros.inference.backends.torch_backend import TorchBackend

        return TorchBackend.from_checkpoint(model_path, device=device, domain=domain,
                                            max_detections=max_detections, input_size=input_size)
    onnx_path = _onnx_for(model_path, domain, input_size, max_detections)
    if name == 'onnxruntime':
        from occluded_ppe_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(onnx_path, device=device)
    from occluded_ppe_ros.inference.backends.tensorrt_backend import TensorRTBackend, engine_for_onnx

    return TensorRTBackend(engine_for_onnx(onnx_path), onnx_path)


def _is_pipeline(model_path: Path) -> bool:
    """True for a pretrained-pipeline checkpoint or its detector-graph export (model/pipeline.py)."""
    if model_path.suffix == '.onnx':
        from occluded_ppe_ros.inference.backends.pipeline_backend import is_pipeline_onnx

        try:
            return is_pipeline_onnx(model_path)
        except ValueError:
            return False   # not ours at all: the one-graph path reports it
    from occluded_ppe_ros.model.pipeline_checkpoint import checkpoint_is_pipeline

    try:
        return checkpoint_is_pipeline(model_path)
    except ValueError:
        return False


def _pipeline_backend(name: str, model_path: Path, device: str, domain: str | None,
                      input_size: tuple[int, int] | None, max_detections: int | None) -> Backend:
    """The two-graph backend; the pipeline's input size and K are fixed by its config / export."""
    fixed = {'domain': domain, 'input_size': input_size, 'max_detections': max_detections}
    overridden = [key for key, value in fixed.items() if value is not None]
    if overridden and not (domain in (None, 'coco') and overridden == ['domain']):
        raise ValueError(f'{model_path} is a pretrained-pipeline model: its {overridden} are fixed by the '
                         f'model (re-export with another config to change them)')
    from occluded_ppe_ros.inference.backends import pipeline_backend

    if name == 'torch':
        if model_path.suffix != '.pt':
            raise ValueError(f'the torch backend needs a .pt checkpoint, got {model_path}')
        from occluded_ppe_ros.model.pipeline_checkpoint import pipeline_from_checkpoint

        net, _ = pipeline_from_checkpoint(model_path)
        return pipeline_backend.pipeline_torch_backend(net, device=device)
    onnx_path = model_path
    if model_path.suffix != '.onnx':
        from occluded_ppe_ros.inference.pipeline_export import cached_pipeline_onnx

        onnx_path = cached_pipeline_onnx(model_path)
    if name == 'onnxruntime':
        return pipeline_backend.pipeline_onnxruntime_backend(onnx_path, device=device)
    return pipeline_backend.pipeline_tensorrt_backend(onnx_path)
