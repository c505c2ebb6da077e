"""The pretrained pipeline's two graphs behind contract 4's one-graph backend interface.

    detector graph   images [B, 3, H, W] -> boxes [B, K, 4], scores [B, K], labels [B, K], valid [B, K]
    pose graph       images [B, 3, H, W], rois [N, 5] -> keypoints [N, 13, 3], keypoint_occluded [N, 13],
                     masks [N, M, M]
`PipelineBackend.run` runs the detector, gives the pose graph only the N boxes scoring at least
`pose_min_score` (the Predictor sets it to its score threshold, so the pose cost follows the people in
view, not K), and scatters the pose rows back into contract 4's K-row outputs (rows without a pose pass
are valid = False). Then the model's score calibration (inference/score_calibration.py, when its config
has one) replaces the posed rows' detector scores by the person probability. Each graph runs in one of
three runners with the same `run(feeds) -> dict` shape:
PyTorch (the modules), ONNX Runtime (the exported files), TensorRT (engines built from them).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from occluded_ppe_ros.inference.backends.base import OUTPUT_NAMES
from occluded_ppe_ros.inference.score_calibration import calibrate_scores, check_calibration

DETECTOR_INPUTS = ('images',)
DETECTOR_OUTPUTS = ('boxes', 'scores', 'labels', 'valid')
POSE_INPUTS = ('images', 'rois')
POSE_OUTPUTS = ('keypoints', 'keypoint_occluded', 'masks')


class GraphRunner(Protocol):
    """One graph: named numpy inputs -> named numpy outputs."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on `feeds` (keyed by input name)."""


class TorchGraphRunner:
    """A torch module (DetectorStage or PoseStage) as a graph runner, under inference_mode."""

    def __init__(self, module, input_names: tuple[str, ...], output_names: tuple[str, ...],
                 device: str = 'cpu') -> None:
        import torch

        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self.input_names, self.output_names = input_names, output_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See GraphRunner."""
        import torch

        with torch.inference_mode():
            inputs = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device)
                      for name in self.input_names]
            outputs = self.module(*inputs)
        return {name: value.cpu().numpy() for name, value in zip(self.output_names, outputs)}


class OnnxGraphRunner:
    """An exported graph in ONNX Runtime."""

    def __init__(self, onnx_path: str | os.PathLike, output_names: tuple[str, ...], device: str = 'auto',
                 intra_op_threads: int = 0, spin_wait: bool = False) -> None:
        import onnxruntime

        from occluded_ppe_ros.inference.backends.onnxruntime_backend import (choose_providers,
                                                                             cpu_session_options)

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f'ONNX file {self.path} does not exist')
        options = cpu_session_options(onnxruntime, intra_op_threads, spin_wait)
        self.session = onnxruntime.InferenceSession(str(self.path), sess_options=options,
                                                    providers=choose_providers(device))
        self.output_names = output_names
        missing = set(output_names) - {o.name for o in self.session.get_outputs()}
        if missing:
            raise ValueError(f'{self.path} lacks outputs {sorted(missing)}; expected {list(output_names)}')
        self.input_names = tuple(i.name for i in self.session.get_inputs())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See GraphRunner."""
        arrays = self.session.run(list(self.output_names), {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, arrays))


class PipelineBackend:
    """Detector graph + pose graph as one contract-4 backend.

    Attributes:
        name: 'torch', 'onnxruntime' or 'tensorrt' (the runners' kind).
        input_size: (H, W) network input.
        class_names: ('person',).
        pose_min_score: boxes scoring below it get no pose pass (and come back valid = False).
        mask_resolution: M of the masks output.
        mask_threshold: the model's own mask probability cut (its config's), the Predictor's default.
        score_calibration: the model's score calibration (its config's; empty = detector scores).
        last_pose_count: N of the last run (how many crops the pose graph saw).
    """

    def __init__(self, name: str, detector: GraphRunner, pose: GraphRunner, input_size: tuple[int, int],
                 class_names: list[str], mask_resolution: int, pose_min_score: float = 0.05,
                 mask_threshold: float = 0.5, score_calibration: dict | None = None) -> None:
        check_calibration(score_calibration or {}, f'{name} pipeline score_calibration')
        self.name = name
        self.detector = detector
        self.pose = pose
        self.input_size = tuple(int(v) for v in input_size)
        self._class_names = list(class_names)
        self.mask_resolution = int(mask_resolution)
        self.pose_min_score = float(pose_min_score)
        self.mask_threshold = float(mask_threshold)
        self.score_calibration = dict(score_calibration or {})
        self.last_pose_count = 0

    @property
    def class_names(self) -> list[str]:
        """Class names, index = label."""
        return self._class_names

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Args: images float32 [B, 3, H, W] RGB in [0, 1]. Returns contract 4's outputs (K rows each)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.input_size:
            raise ValueError(f'pipeline ({self.name}) takes images [B, 3, {self.input_size[0]}, '
                             f'{self.input_size[1]}], got {list(images.shape)}')
        detected = self.detector.run({'images': images})
        valid = detected['valid'].astype(bool) & (detected['scores'] >= self.pose_min_score)
        batch, rows = valid.shape
        keypoints = np.zeros((batch, rows, 13, 3), np.float32)
        occluded = np.zeros((batch, rows, 13), np.float32)
        masks = np.zeros((batch, rows, self.mask_resolution, self.mask_resolution), np.float32)
        image_index, row_index = np.nonzero(valid)
        self.last_pose_count = len(image_index)
        if len(image_index):
            rois = np.concatenate([image_index[:, None].astype(np.float32),
                                   detected['boxes'][image_index, row_index].astype(np.float32)], axis=1)
            posed = self.pose.run({'images': images, 'rois': np.ascontiguousarray(rois)})
            keypoints[image_index, row_index] = posed['keypoints']
            occluded[image_index, row_index] = posed['keypoint_occluded']
            masks[image_index, row_index] = posed['masks']
        outputs = {'boxes': detected['boxes'].astype(np.float32),
                   'scores': detected['scores'].astype(np.float32),
                   'labels': detected['labels'].astype(np.int64), 'valid': valid, 'masks': masks,
                   'keypoints': keypoints, 'keypoint_occluded': occluded}
        outputs = calibrate_scores(outputs, self.score_calibration, self.mask_threshold)
        return {name: outputs[name] for name in OUTPUT_NAMES}


def pipeline_torch_backend(net, device: str = 'cpu') -> PipelineBackend:
    """A PipelineNet run eagerly in PyTorch (on the CPU with the heap tuning of the torch backend)."""
    if str(device) == 'cpu':
        from occluded_ppe_ros.cpu_allocator import keep_large_buffers_in_heap

        keep_large_buffers_in_heap()
    elif str(device).startswith('cuda'):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f'device {device!r} asked for, but torch sees no CUDA GPU')
    cfg = net.cfg
    return PipelineBackend('torch', TorchGraphRunner(net.detector, DETECTOR_INPUTS, DETECTOR_OUTPUTS, device),
                           TorchGraphRunner(net.pose, POSE_INPUTS, POSE_OUTPUTS, device),
                           cfg.input_size, list(cfg.class_names), cfg.mask_resolution,
                           mask_threshold=cfg.mask_threshold, score_calibration=cfg.score_calibration)


def pose_graph_path(detector_onnx: str | os.PathLike) -> Path:
    """The pose graph file named in a detector graph's metadata (beside it)."""
    from occluded_ppe_ros.inference.backends.onnxruntime_backend import read_deploy_metadata

    detector_onnx = Path(detector_onnx)
    metadata = read_deploy_metadata(detector_onnx)
    if metadata.pipeline.get('graph') != 'detector':
        raise ValueError(f'{detector_onnx} is not the detector graph of a pipeline export')
    path = detector_onnx.parent / metadata.pipeline['pose_graph']
    if not path.is_file():
        raise FileNotFoundError(f'{detector_onnx} names its pose graph {path.name}, which is not beside it '
                                f'({path} does not exist)')
    return path


def pipeline_onnxruntime_backend(detector_onnx: str | os.PathLike, device: str = 'auto',
                                 intra_op_threads: int = 0, spin_wait: bool = False) -> PipelineBackend:
    """The two exported graphs in ONNX Runtime (the detector file's metadata names the pose file).

    `spin_wait` True restores ONNX Runtime's default spin-waiting (see cpu_session_options); for timing.
    """
    from occluded_ppe_ros.inference.backends.onnxruntime_backend import read_deploy_metadata

    metadata = read_deploy_metadata(detector_onnx)
    pose_path = pose_graph_path(detector_onnx)
    detector = OnnxGraphRunner(detector_onnx, DETECTOR_OUTPUTS, device, intra_op_threads, spin_wait)
    pose = OnnxGraphRunner(pose_path, POSE_OUTPUTS, device, intra_op_threads, spin_wait)
    return PipelineBackend('onnxruntime', detector, pose,
                           metadata.input_size, metadata.class_names,
                           int(metadata.model_config['mask_resolution']),
                           mask_threshold=float(metadata.model_config.get('mask_threshold', 0.5)),
                           score_calibration=metadata.model_config.get('score_calibration') or {})


def is_pipeline_onnx(onnx_path: str | os.PathLike) -> bool:
    """True for a detector graph written by the pipeline export."""
    from occluded_ppe_ros.inference.backends.onnxruntime_backend import read_deploy_metadata

    return bool(read_deploy_metadata(onnx_path).pipeline)


class TensorRTGraphRunner:
    """A serialized TensorRT engine with named inputs of any shape its profile allows.

    Name-based API: get_tensor_name / set_input_shape / set_tensor_address / execute_async_v3.
    """

    def __init__(self, engine_path: str | os.PathLike, output_names: tuple[str, ...]) -> None:
        import torch

        from occluded_ppe_ros.inference.tensorrt_engine import require_cuda_device, require_tensorrt

        self._trt = trt = require_tensorrt()
        require_cuda_device()
        self.path = Path(engine_path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f'TensorRT {trt.__version__} could not deserialize {self.path}; rebuild it')
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = output_names
        missing = set(output_names) - set(names)
        if missing:
            raise ValueError(f'{self.path} lacks outputs {sorted(missing)}')
        self._device = torch.device('cuda', 0)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See GraphRunner."""
        import torch

        from occluded_ppe_ros.inference.backends.tensorrt_backend import _torch_dtype

        trt = self._trt
        keep_alive = []
        for name in self.input_names:
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self._device, dtype=dtype)
            tensor = tensor.contiguous()
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f'{self.path} does not accept {name} of shape {tuple(tensor.shape)}')
            self.context.set_tensor_address(name, tensor.data_ptr())
            keep_alive.append(tensor)
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name)),
                                        device=self._device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self._device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f'TensorRT execute_async_v3 failed on {self.path}')
        stream.synchronize()
        return {name: value.cpu().numpy() for name, value in outputs.items()}


def pipeline_engine_profiles(detector_onnx: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], ...]]:
    """The pose graph's `rois` profile: 1 to K people (K = the detector graph's rows), optimised for 4."""
    from occluded_ppe_ros.inference.backends.onnxruntime_backend import read_deploy_metadata

    rows = int(read_deploy_metadata(detector_onnx).max_detections)
    return {'rois': ((1, 5), (min(4, rows), 5), (rows, 5))}


def pipeline_tensorrt_backend(detector_onnx: str | os.PathLike, precision: str = 'fp16') -> PipelineBackend:
    """Both graphs as cached TensorRT engines (built on first use; batch 1, the node's case)."""
    from occluded_ppe_ros.inference.backends.onnxruntime_backend import read_deploy_metadata
    from occluded_ppe_ros.inference.tensorrt_engine import build_engine

    metadata = read_deploy_metadata(detector_onnx)
    pose_path = pose_graph_path(detector_onnx)
    detector_engine, _ = build_engine(detector_onnx, precision=precision)
    pose_engine, _ = build_engine(pose_path, precision=precision,
                                  extra_profiles=pipeline_engine_profiles(detector_onnx))
    return PipelineBackend('tensorrt', TensorRTGraphRunner(detector_engine, DETECTOR_OUTPUTS),
                           TensorRTGraphRunner(pose_engine, POSE_OUTPUTS), metadata.input_size,
                           metadata.class_names, int(metadata.model_config['mask_resolution']),
                           mask_threshold=float(metadata.model_config.get('mask_threshold', 0.5)),
                           score_calibration=metadata.model_config.get('score_calibration') or {})
