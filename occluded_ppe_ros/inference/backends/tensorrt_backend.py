"""TensorRT backend: runs an engine from `ppe build-engine` through the name-based tensor API only.

I/O goes through torch CUDA tensors (their `data_ptr()` is the device address handed to
`set_tensor_address`), so there is no pycuda dependency; the engine runs on torch's current CUDA stream.
Outputs whose shape TensorRT can only know at run time (a -1 after `set_input_shape`) are served by an
IOutputAllocator that also allocates torch CUDA tensors.

The class names, domain and input size come from the ONNX file the engine was built from (its
DeployMetadata), found next to the engine cache as `--onnx` or given explicitly.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from occluded_ppe_ros.inference.backends.onnxruntime_backend import (INPUT_NAME, OUTPUT_NAMES,
                                                                      read_deploy_metadata)
from occluded_ppe_ros.inference.tensorrt_engine import (TensorRTUnavailableError, require_cuda_device,
                                                         require_tensorrt)

LOG = logging.getLogger('ppe.tensorrt')


def _torch_dtype(trt, data_type):
    """The torch dtype of a tensorrt.DataType."""
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    for name, dtype in (('INT64', torch.int64), ('UINT8', torch.uint8), ('BF16', torch.bfloat16)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = dtype
    if data_type not in table:
        raise TypeError(f'TensorRT data type {data_type} has no torch equivalent here')
    return table[data_type]


def _make_output_allocator(trt):
    """An IOutputAllocator subclass backed by torch CUDA byte tensors (for data-dependent shapes)."""
    import torch

    class TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, torch.Tensor] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name, memory, size, alignment):
            buffer = self.buffers.get(tensor_name)
            if buffer is None or buffer.numel() < size:
                buffer = torch.empty(max(int(size), 1), dtype=torch.uint8, device='cuda')
                self.buffers[tensor_name] = buffer
            return buffer.data_ptr()

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

    return TorchOutputAllocator()


class TensorRTBackend:
    """Runs a serialized TensorRT engine; `run` follows contract 4.

    Attributes:
        name: 'tensorrt'.
        input_size: (H, W) of the engine's `images` input.
        metadata: DeployMetadata of the ONNX the engine was built from (class names, domain, ...).
    """

    name = 'tensorrt'

    def __init__(self, engine_path: str | os.PathLike, onnx_path: str | os.PathLike) -> None:
        """Deserialize the engine on CUDA device 0.

        Args:
            engine_path: file from `ppe build-engine` (the engine cache).
            onnx_path: the ONNX it was built from (for its metadata).

        Raises:
            TensorRTUnavailableError: tensorrt or a GPU is missing (one-line message).
        """
        import torch

        self._trt = trt = require_tensorrt()
        require_cuda_device()
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise FileNotFoundError(f'TensorRT engine {self.path} does not exist; run `ppe build-engine`')
        self.metadata = read_deploy_metadata(onnx_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f'TensorRT {trt.__version__} could not deserialize {self.path} (built by '
                               'another TensorRT version or for another GPU? rebuild it)')
        self.context = self.engine.create_execution_context()
        self.inputs, self.outputs = [], []
        for index in range(self.engine.num_io_tensors):
            tensor_name = self.engine.get_tensor_name(index)
            if self.engine.get_tensor_mode(tensor_name) == trt.TensorIOMode.INPUT:
                self.inputs.append(tensor_name)
            else:
                self.outputs.append(tensor_name)
        if self.inputs != [INPUT_NAME] or set(OUTPUT_NAMES) - set(self.outputs):
            raise ValueError(f'{self.path}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}, got '
                             f'{self.inputs} and {self.outputs}')
        input_shape = tuple(self.engine.get_tensor_shape(INPUT_NAME))
        self.input_size = (int(input_shape[2]), int(input_shape[3]))
        # Engines from `ppe build-engine` have one fixed batch (min = opt = max in the profile).
        self.engine_batch = int(self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0])
        self._input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(INPUT_NAME))
        self._allocator = _make_output_allocator(trt)
        self._device = torch.device('cuda', 0)

    @property
    def class_names(self) -> list[str]:
        """Class names of the deployed branch, index = label."""
        return self.metadata.class_names

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the engine, in chunks of the engine's batch when B differs from it.

        Args:
            images: float32 [B, 3, H, W] RGB in [0, 1], (H, W) = input_size.

        Returns:
            Contract 4's outputs keyed by OUTPUT_NAMES, as numpy arrays on the host.
        """
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.input_size:
            raise ValueError(f'{self.path} takes images [B, 3, {self.input_size[0]}, {self.input_size[1]}], '
                             f'got {list(images.shape)}')
        if len(images) == self.engine_batch:
            return self._run_batch(images)
        if len(images) % self.engine_batch:
            raise ValueError(f'{self.path} was built for batch {self.engine_batch}; {len(images)} images '
                             'are not a multiple of it (rebuild with `ppe build-engine --batch`)')
        chunks = [self._run_batch(images[start:start + self.engine_batch])
                  for start in range(0, len(images), self.engine_batch)]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in OUTPUT_NAMES}

    def _run_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        trt = self._trt
        device_images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(
            self._device, dtype=self._input_dtype).contiguous()
        if not self.context.set_input_shape(INPUT_NAME, tuple(device_images.shape)):
            raise ValueError(f'{self.path} does not accept input shape {tuple(device_images.shape)}')
        self.context.set_tensor_address(INPUT_NAME, device_images.data_ptr())
        static_outputs: dict[str, torch.Tensor] = {}
        for tensor_name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(tensor_name))
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(tensor_name))
            if min(shape, default=0) < 0:
                self.context.set_output_allocator(tensor_name, self._allocator)
            else:
                static_outputs[tensor_name] = torch.empty(shape, dtype=dtype, device=self._device)
                self.context.set_tensor_address(tensor_name, static_outputs[tensor_name].data_ptr())
        stream = torch.cuda.current_stream(self._device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f'TensorRT execute_async_v3 failed on {self.path}')
        stream.synchronize()
        results = {}
        for tensor_name in OUTPUT_NAMES:
            if tensor_name in static_outputs:
                results[tensor_name] = static_outputs[tensor_name].cpu().numpy()
                continue
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(tensor_name))
            shape = self._allocator.shapes[tensor_name]
            count = int(np.prod(shape))
            raw = self._allocator.buffers[tensor_name][:count * torch.empty((), dtype=dtype).element_size()]
            results[tensor_name] = raw.view(dtype)[:count].reshape(shape).cpu().numpy()
        return results


def engine_for_onnx(onnx_path: str | os.PathLike, precision: str = 'fp16',
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached engine of an ONNX file (built on first use), for `create_backend('tensorrt', ...)`.

    fp16 falls back to fp32 (with a warning) where neither ModelOpt nor a TensorRT 10 FP16 flag can
    make an fp16 engine, so 'auto' still gets a working TensorRT backend.
    """
    from occluded_ppe_ros.inference.tensorrt_engine import build_engine

    try:
        path, _ = build_engine(onnx_path, precision=precision, cache_dir=cache_dir)
    except TensorRTUnavailableError as error:
        if precision != 'fp16' or 'modelopt' not in str(error).lower():
            raise
        LOG.warning('%s; building an fp32 engine instead', error)
        path, _ = build_engine(onnx_path, precision='fp32', cache_dir=cache_dir)
    return path


__all__ = ['TensorRTBackend', 'TensorRTUnavailableError', 'engine_for_onnx']
