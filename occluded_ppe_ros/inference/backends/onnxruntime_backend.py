"""ONNX Runtime backend: runs the ONNX file written by `ppe export` (contract 4 in docs/architecture.md).

The ONNX file is self-describing: `ppe export` stores the deploy metadata (model config, domain, class
names, input size, max detections, backbone normalisation, output names) in the model's
`metadata_props`, read back here by `read_deploy_metadata`, so a Predictor can be built from the .onnx
file alone. This module imports onnxruntime and numpy only (no torch).

Execution providers: CUDA (and TensorRT when asked for explicitly) where the installed onnxruntime has
them, always ending with CPUExecutionProvider.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OUTPUT_NAMES = ('boxes', 'scores', 'labels', 'valid', 'masks', 'keypoints', 'keypoint_occluded')
INPUT_NAME = 'images'
METADATA_FORMAT = 'occluded_ppe_onnx/1'
# GPU providers tried in this order when the installed onnxruntime has them. The TensorRT EP is left
# out of the default: it builds an engine on every session start; `ppe build-engine` caches one instead.
DEFAULT_PROVIDER_ORDER = ('CUDAExecutionProvider', 'CPUExecutionProvider')


@dataclass
class DeployMetadata:
    """What an exported ONNX file says about itself (all of it written by `ppe export`).

    Attributes:
        domain: branch that was exported, 'citypersons' or 'coco'.
        class_names: class names of that branch, index = label.
        input_size: (H, W) network-input pixels the graph was exported for.
        max_detections: K, the fixed number of rows per image.
        model_config: `ModelConfig.to_dict()` of the exported network.
        normalisation: how the graph normalises its [0, 1] input inside, e.g. {'mean': [...], 'std': [...]}.
        output_names: the graph's output names (= OUTPUT_NAMES).
        source: the checkpoint (or config) the graph came from, and its sha256 where known.
        pipeline: for the two graphs of the pretrained pipeline (model/pipeline.py): {'graph': 'detector'
            or 'pose', 'pose_graph': file name of the pose graph beside the detector graph}; {} for a
            one-graph export.
    """

    domain: str
    class_names: list[str]
    input_size: tuple[int, int]
    max_detections: int
    model_config: dict
    normalisation: dict = field(default_factory=dict)
    output_names: tuple[str, ...] = OUTPUT_NAMES
    source: dict = field(default_factory=dict)
    pipeline: dict = field(default_factory=dict)

    def to_metadata_props(self) -> dict[str, str]:
        """String key -> string value pairs for onnx `metadata_props` (JSON where not a plain string)."""
        return {
            'ppe_format': METADATA_FORMAT,
            'domain': self.domain,
            'class_names': json.dumps(list(self.class_names)),
            'input_size': json.dumps(list(self.input_size)),
            'max_detections': str(int(self.max_detections)),
            'model_config': json.dumps(self.model_config, sort_keys=True),
            'normalisation': json.dumps(self.normalisation, sort_keys=True),
            'output_names': json.dumps(list(self.output_names)),
            'source': json.dumps(self.source, sort_keys=True),
            **({'pipeline': json.dumps(self.pipeline, sort_keys=True)} if self.pipeline else {}),
        }

    @classmethod
    def from_metadata_props(cls, props: dict[str, str], where: str) -> DeployMetadata:
        """Parse what `to_metadata_props` wrote; `where` names the file in errors."""
        if props.get('ppe_format') != METADATA_FORMAT:
            raise ValueError(f'{where} has no occluded_ppe deploy metadata (ppe_format='
                             f'{props.get("ppe_format")!r}, expected {METADATA_FORMAT!r}); '
                             'export it with `ppe export`')
        try:
            return cls(domain=props['domain'],
                       class_names=list(json.loads(props['class_names'])),
                       input_size=tuple(int(v) for v in json.loads(props['input_size'])),
                       max_detections=int(props['max_detections']),
                       model_config=json.loads(props['model_config']),
                       normalisation=json.loads(props.get('normalisation', '{}')),
                       output_names=tuple(json.loads(props.get('output_names', json.dumps(OUTPUT_NAMES)))),
                       source=json.loads(props.get('source', '{}')),
                       pipeline=json.loads(props.get('pipeline', '{}')))
        except (KeyError, ValueError) as error:
            raise ValueError(f'{where}: broken occluded_ppe deploy metadata ({error!r})') from None


def read_deploy_metadata(onnx_path: str | os.PathLike) -> DeployMetadata:
    """The DeployMetadata stored in an ONNX file's metadata_props (weights are not loaded)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {entry.key: entry.value for entry in model.metadata_props}
    return DeployMetadata.from_metadata_props(props, str(onnx_path))


def cpu_session_options(onnxruntime, intra_op_threads: int = 0, spin_wait: bool = False):
    """Return ONNX Runtime session options for our graphs: `intra_op_threads` threads, all optimisations.

    Spin-waiting is off unless asked for. ONNX Runtime's default keeps a session's pool threads spinning
    for a while after each run; the pipeline runs its detector and pose sessions back to back, so the
    detector's spinning threads took the cores from the pose graph (held-out photos, 2 threads, median
    whole Predictor: ppe_default 75.0 ms spinning, 45.5 ms not; ppe_fast 34.1 and 22.1 ms;
    benchmarks/latency_interleaved.py --our-spin default), and on a vehicle computer they would take them
    from every other node as well.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(intra_op_threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if spin_wait else '0')
    return options


def choose_providers(device: str = 'auto') -> list[str]:
    """Execution providers for `device` ('cpu', 'cuda' or 'auto'), among those installed.

    Raises:
        ValueError: `device` is 'cuda' but this onnxruntime has no CUDAExecutionProvider.
    """
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == 'cpu':
        return ['CPUExecutionProvider']
    if device == 'cuda' and 'CUDAExecutionProvider' not in available:
        raise ValueError(f'device cuda asked for, but this onnxruntime has only {available} '
                         '(install onnxruntime-gpu)')
    if device not in ('auto', 'cuda'):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    return [name for name in DEFAULT_PROVIDER_ORDER if name in available]


class OnnxRuntimeBackend:
    """Runs a `ppe export` ONNX file in ONNX Runtime; `run` follows contract 4.

    Attributes:
        name: 'onnxruntime'.
        input_size: (H, W) the graph was exported for.
        metadata: the file's DeployMetadata (class names, domain, model config, ...).
        providers: execution providers the session actually uses.
    """

    name = 'onnxruntime'

    def __init__(self, onnx_path: str | os.PathLike, device: str = 'auto', intra_op_threads: int = 0,
                 providers: list[str] | None = None) -> None:
        """Open a session.

        Args:
            onnx_path: file written by `ppe export`.
            device: 'cpu', 'cuda' or 'auto' (GPU provider where installed, else CPU).
            intra_op_threads: threads inside one op; 0 lets ONNX Runtime choose (one per core).
            providers: explicit provider list, overriding `device`.
        """
        import onnxruntime

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f'ONNX file {self.path} does not exist')
        if intra_op_threads < 0:
            raise ValueError(f'intra_op_threads must be >= 0, got {intra_op_threads}')
        self.metadata = read_deploy_metadata(self.path)
        self.input_size = self.metadata.input_size
        options = cpu_session_options(onnxruntime, intra_op_threads)
        self.session = onnxruntime.InferenceSession(str(self.path), sess_options=options,
                                                    providers=providers or choose_providers(device))
        self.providers = self.session.get_providers()
        missing = set(OUTPUT_NAMES) - {o.name for o in self.session.get_outputs()}
        if missing:
            raise ValueError(f'{self.path} lacks outputs {sorted(missing)} of contract 4')

    @property
    def class_names(self) -> list[str]:
        """Class names of the exported branch, index = label."""
        return self.metadata.class_names

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph.

        Args:
            images: float32 [B, 3, H, W] RGB in [0, 1], (H, W) = input_size.

        Returns:
            Contract 4's outputs keyed by OUTPUT_NAMES (K = max_detections rows per image).
        """
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != tuple(self.input_size):
            raise ValueError(f'{self.path} takes images [B, 3, {self.input_size[0]}, {self.input_size[1]}], '
                             f'got {list(images.shape)}')
        arrays = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return dict(zip(OUTPUT_NAMES, arrays))
