"""`ppe build-engine`: ONNX -> TensorRT engine, through a cache keyed on everything that changes an engine.

Precision lives in the ONNX graph, not in builder flags, so one build path serves TensorRT 10.12+ and 11.x
(TensorRT 11 removed `BuilderFlag.FP16/INT8` and the INT8 calibrators; every network is strongly typed):
- fp32: the exported ONNX as it is.
- fp16: the ONNX converted to mixed precision with NVIDIA ModelOpt AutoCast (`nvidia-modelopt`,
  installed next to tensorrt on the GPU machine), inputs and outputs kept float32. Where ModelOpt is
  absent but the TensorRT is a 10.x with `BuilderFlag.FP16`, the fp32 ONNX is built weakly typed with
  that flag instead (Jetson / JetPack ships TensorRT 10).
- int8: explicit quantization: Q/DQ nodes inserted by ONNX Runtime's static QDQ quantizer from
  calibration images (letterboxed exactly as the Predictor does), symmetric int8 (TensorRT requires zero
  points of 0), per-channel weights, float biases, only on Conv/ConvTranspose/MatMul/Gemm so NMS, TopK
  and RoIAlign stay float.

The engine cache directory holds `<key digest>.engine` plus `<key digest>.json` naming the key fields:
TensorRT version, GPU compute capability, precision, input shape [B, 3, H, W], the sha256 of the
fp32 ONNX file, and what else decides the engine's numbers: for fp16 the conversion route (ModelOpt
AutoCast and its version, or the weakly typed builder flag), for int8 the sha256 of the calibration
image set (the names and bytes of the files `calibration_images` reads). An unchanged key reuses the
engine file; any changed field gives a new digest, so a build (a new calibration folder, or ModelOpt
installed where the builder flag was used before, no longer reuses a stale engine).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

LOG = logging.getLogger('ppe.build_engine')

PRECISIONS = ('fp32', 'fp16', 'int8')
INPUT_NAME = 'images'
# Engines are built for a fixed batch; several cameras at once use a matching --batch.
DEFAULT_BATCH = 1
CALIBRATION_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
# Q/DQ only where TensorRT fuses it into int8 kernels; detection post-processing stays float.
INT8_OP_TYPES = ('Conv', 'ConvTranspose', 'MatMul', 'Gemm')
# The two ways fp16 gets into an engine (EngineKey.fp16_route): they give different engines.
FP16_ROUTE_AUTOCAST = 'modelopt_autocast'           # + '/<nvidia-modelopt version>'
FP16_ROUTE_BUILDER_FLAG = 'tensorrt_builder_flag_fp16'  # weakly typed build, TensorRT 10 only


class TensorRTUnavailableError(RuntimeError):
    """tensorrt, a CUDA GPU or a precision tool is missing; the message is one line saying which."""


def require_tensorrt():
    """Import and return the `tensorrt` module, or raise a one-line TensorRTUnavailableError."""
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTUnavailableError(
            f'tensorrt is not importable ({error}); install it on a machine with an NVIDIA GPU '
            '(pip install tensorrt, or JetPack on Jetson)') from None
    return tensorrt


def require_cuda_device() -> tuple[int, int]:
    """The compute capability (major, minor) of CUDA device 0, or a one-line TensorRTUnavailableError."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError('no CUDA GPU is visible to torch (torch.cuda.is_available() is '
                                       'False); TensorRT engines need an NVIDIA GPU')
    return tuple(torch.cuda.get_device_capability(0))


def tensorrt_available() -> bool:
    """True where tensorrt imports and a CUDA GPU is visible (what `create_backend('auto')` asks)."""
    try:
        require_tensorrt()
        require_cuda_device()
    except TensorRTUnavailableError:
        return False
    return True


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class EngineKey:
    """Everything that makes a serialized engine valid or not.

    Attributes:
        tensorrt_version: `tensorrt.__version__` (engines do not load across versions).
        compute_capability: GPU compute capability as 'major.minor', e.g. '8.7' (engines are per GPU arch).
        precision: one of PRECISIONS.
        input_shape: (B, 3, H, W) of the `images` input the engine is built for.
        onnx_sha256: sha256 of the fp32 ONNX file the engine comes from.
        fp16_route: fp16 only (else ''): how fp16 got into the engine, `fp16_route()`.
        calibration_sha256: int8 only (else ''): `calibration_set_sha256()` of the calibration images.
        extra_profiles: JSON of the optimisation profiles of inputs other than `images` ('' for none).
    """

    tensorrt_version: str
    compute_capability: str
    precision: str
    input_shape: tuple[int, int, int, int]
    onnx_sha256: str
    fp16_route: str = ''
    calibration_sha256: str = ''
    extra_profiles: str = ''

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        shape = tuple(int(v) for v in self.input_shape)
        if len(shape) != 4 or min(shape) <= 0 or shape[1] != 3:
            raise ValueError(f'input_shape must be a positive (B, 3, H, W), got {self.input_shape!r}')
        object.__setattr__(self, 'input_shape', shape)
        if len(self.onnx_sha256) != 64:
            raise ValueError(f'onnx_sha256 must be 64 hex digits, got {self.onnx_sha256!r}')
        # A field that does not apply must be empty, so one engine has exactly one key.
        if (self.precision == 'fp16') != bool(self.fp16_route):
            raise ValueError(f'fp16_route must be given for precision fp16 and only then; got '
                             f'{self.fp16_route!r} for {self.precision}')
        if self.precision == 'int8' and len(self.calibration_sha256) != 64:
            raise ValueError(f'calibration_sha256 must be 64 hex digits for precision int8, got '
                             f'{self.calibration_sha256!r}')
        if self.precision != 'int8' and self.calibration_sha256:
            raise ValueError(f'calibration_sha256 applies to int8 only, got {self.calibration_sha256!r} '
                             f'for {self.precision}')

    def to_dict(self) -> dict:
        """The key as a JSON-ready dict."""
        return {**dataclasses.asdict(self), 'input_shape': list(self.input_shape)}

    @property
    def digest(self) -> str:
        """sha256 (first 24 hex digits) of the canonical JSON of all fields: the cache file name."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(',', ':'))
        return hashlib.sha256(text.encode()).hexdigest()[:24]


class EngineCache:
    """A directory of serialized engines named by `EngineKey.digest`, each with a JSON sidecar."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def engine_path(self, key: EngineKey) -> Path:
        """Where the engine for `key` lives (whether or not it exists yet)."""
        return self.root / f'{key.digest}.engine'

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached engine for `key`, or None when absent or when its sidecar names another key."""
        engine = self.engine_path(key)
        sidecar = engine.with_suffix('.json')
        if not (engine.is_file() and sidecar.is_file()):
            return None
        try:
            stored = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            return None
        return engine if stored == key.to_dict() else None

    def store(self, key: EngineKey, serialized_engine: bytes) -> Path:
        """Write the engine and its sidecar atomically (rename), so a killed build leaves no half file."""
        self.root.mkdir(parents=True, exist_ok=True)
        engine = self.engine_path(key)
        for target, payload in ((engine, bytes(serialized_engine)),
                                (engine.with_suffix('.json'),
                                 json.dumps(key.to_dict(), indent=2, sort_keys=True).encode())):
            handle, temporary = tempfile.mkstemp(dir=self.root, prefix=target.name, suffix='.tmp')
            with os.fdopen(handle, 'wb') as stream:
                stream.write(payload)
            os.replace(temporary, target)
        return engine

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes]) -> tuple[Path, bool]:
        """The engine for `key`: reused when cached, else `build()` is called and stored.

        Returns:
            (engine path, True when `build` ran).
        """
        cached = self.lookup(key)
        if cached is not None:
            return cached, False
        return self.store(key, build()), True


def onnx_input_shape(onnx_path: str | os.PathLike, batch: int = DEFAULT_BATCH) -> tuple[int, int, int, int]:
    """(B, 3, H, W) of the ONNX `images` input; a symbolic batch axis takes `batch`.

    Raises:
        ValueError: no `images` input, or its H / W are not fixed (export with a fixed --input-size).
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for graph_input in model.graph.input:
        if graph_input.name != INPUT_NAME:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        sizes = [d.dim_value if d.HasField('dim_value') else None for d in dims]
        if len(sizes) != 4 or sizes[2] is None or sizes[3] is None:
            raise ValueError(f'{onnx_path}: input {INPUT_NAME!r} must be [B, 3, H, W] with fixed H and W, '
                             f'got {[d.dim_param or d.dim_value for d in dims]}')
        if sizes[0] is not None and sizes[0] != batch:
            LOG.warning('%s has a fixed batch of %d; building for that, not %d', onnx_path, sizes[0], batch)
            batch = sizes[0]
        return (batch, 3, sizes[2], sizes[3])
    raise ValueError(f'{onnx_path} has no input named {INPUT_NAME!r} '
                     f'(inputs: {[i.name for i in model.graph.input]})')


# ---------------------------------------------------------------- precision: fp16 and int8 ONNX graphs

def convert_onnx_fp16(onnx_path: Path, out_path: Path) -> Path:
    """Mixed-precision fp16 ONNX via ModelOpt AutoCast (float32 inputs and outputs kept).

    Raises:
        TensorRTUnavailableError: nvidia-modelopt is not installed.
    """
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        raise TensorRTUnavailableError(
            'fp16 needs NVIDIA ModelOpt to put fp16 into the ONNX (pip install "nvidia-modelopt[onnx]"); '
            'TensorRT 11 has no FP16 builder flag') from None
    import onnx

    converted = convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type='fp16',
                                           keep_io_types=True)
    onnx.save(converted, str(out_path))
    return out_path


def calibration_files(calib_dir: str | os.PathLike, max_images: int) -> list[Path]:
    """The calibration image files of a folder that int8 calibration reads: by name, the first `max_images`.

    Raises:
        ValueError: `calib_dir` is not a directory.
    """
    folder = Path(calib_dir)
    if not folder.is_dir():
        raise ValueError(f'--calib-dir {folder} is not a directory')
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in CALIBRATION_EXTENSIONS)[:max_images]


def calibration_set_sha256(calib_dir: str | os.PathLike, max_images: int) -> str:
    """sha256 over the name and bytes of each file `calibration_files` selects, in that order.

    Any change to the images that calibrate an int8 engine (another folder, an added, removed, renamed or
    edited image, another --max-calib-images that selects other files) changes the engine cache key.

    Raises:
        ValueError: `calib_dir` is not a directory, or holds no calibration image.
    """
    files = calibration_files(calib_dir, max_images)
    if not files:
        raise ValueError(f'no {"/".join(CALIBRATION_EXTENSIONS)} image in --calib-dir {calib_dir}')
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b'\0' + sha256_file(path).encode() + b'\n')
    return digest.hexdigest()


def fp16_route(builder_flags: object) -> str:
    """How an fp16 engine would be built here.

    FP16_ROUTE_AUTOCAST/<ModelOpt version> where ModelOpt AutoCast imports, else FP16_ROUTE_BUILDER_FLAG
    where `builder_flags` (tensorrt.BuilderFlag) has FP16.

    Raises:
        TensorRTUnavailableError: neither route exists (TensorRT 11 without nvidia-modelopt).
    """
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision  # noqa: F401 - availability probe
    except ImportError:
        if hasattr(builder_flags, 'FP16'):
            return FP16_ROUTE_BUILDER_FLAG
        raise TensorRTUnavailableError(
            'fp16 needs NVIDIA ModelOpt to put fp16 into the ONNX (pip install "nvidia-modelopt[onnx]"); '
            'TensorRT 11 has no FP16 builder flag') from None
    from importlib import metadata

    try:
        version = metadata.version('nvidia-modelopt')
    except metadata.PackageNotFoundError:
        version = 'unknown'
    return f'{FP16_ROUTE_AUTOCAST}/{version}'


def calibration_images(calib_dir: str | os.PathLike, input_size: tuple[int, int],
                       max_images: int) -> np.ndarray:
    """Calibration batch float32 [N, 3, H, W] in [0, 1] from the images in a folder.

    Each image is letterboxed to `input_size` (H, W) with the same pre-processing the Predictor uses, so
    the int8 ranges match what the engine sees at run time.

    Raises:
        ValueError: the folder holds no readable image.
    """
    import cv2

    from occluded_ppe_ros.inference.preprocess import letterbox

    folder = Path(calib_dir)
    batch = []
    for path in calibration_files(folder, max_images):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            LOG.warning('skipping unreadable calibration image %s', path)
            continue
        batch.append(letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), input_size)[0])
    if not batch:
        raise ValueError(f'no readable {"/".join(CALIBRATION_EXTENSIONS)} image in --calib-dir {folder}')
    return np.stack(batch).astype(np.float32)


def quantize_onnx_int8(onnx_path: Path, out_path: Path, calibration: np.ndarray) -> Path:
    """Insert symmetric int8 Q/DQ nodes (ONNX Runtime static QDQ quantizer) calibrated on `calibration`.

    Args:
        onnx_path: fp32 ONNX with input `images`.
        out_path: where the QDQ ONNX goes.
        calibration: float32 [N, 3, H, W] in [0, 1], fed one image at a time (min/max ranges).

    Returns:
        out_path.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._items, None)
            return None if image is None else {INPUT_NAME: image[None]}

    quantize_static(str(onnx_path), str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(INT8_OP_TYPES), per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True,
                                   # TensorRT fuses float biases into its int8 kernels itself.
                                   'QuantizeBias': False})
    return out_path


# ---------------------------------------------------------------- the TensorRT build itself

def build_serialized_engine(onnx_path: Path, input_shape: tuple[int, int, int, int],
                            weak_fp16: bool = False, workspace_bytes: int = 2 << 30,
                            extra_profiles: dict[str, tuple[tuple[int, ...], ...]] | None = None) -> bytes:
    """Parse an ONNX file and build a serialized engine for one fixed input shape.

    Args:
        onnx_path: the ONNX (precision already inside it: fp32, fp16 mixed or QDQ int8).
        input_shape: (B, 3, H, W) for the `images` optimisation profile (min = opt = max).
        weak_fp16: TensorRT 10 fallback: a weakly typed build with BuilderFlag.FP16.
        workspace_bytes: builder workspace memory pool limit.
        extra_profiles: further inputs with a (min, opt, max) shape each, e.g. the pipeline pose graph's
            `rois` [N, 5] with N from 1 to K.

    Returns:
        The serialized engine (plan) bytes.
    """
    trt = require_tensorrt()
    require_cuda_device()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if not weak_fp16 and hasattr(trt.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED'):
        # Required for strong typing on 10.12+, accepted and ignored on 11 (always strongly typed).
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f'TensorRT could not parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, input_shape, input_shape, input_shape)
    for name, (minimum, optimum, maximum) in (extra_profiles or {}).items():
        profile.set_shape(name, minimum, optimum, maximum)
    config.add_optimization_profile(profile)
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        LOG.info('engine input  %-18s %s %s', tensor.name, tuple(tensor.shape), tensor.dtype)
    for index in range(network.num_outputs):
        tensor = network.get_output(index)
        LOG.info('engine output %-18s %s %s', tensor.name, tuple(tensor.shape), tensor.dtype)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f'TensorRT failed to build an engine from {onnx_path} (see its log above)')
    return bytes(serialized)


def engine_key(onnx_path: str | os.PathLike, precision: str, input_shape: tuple[int, int, int, int],
               tensorrt_version: str, compute_capability: tuple[int, int], fp16_route: str = '',
               calibration_sha256: str = '', extra_profiles: dict | None = None) -> EngineKey:
    """The cache key of an engine built from `onnx_path` (hashes the file).

    Args:
        onnx_path: the ONNX file the engine is built from (hashed).
        precision: the engine's precision.
        input_shape: the shape of the `images` input.
        tensorrt_version: the TensorRT version building the engine.
        compute_capability: the GPU's (major, minor) compute capability.
        fp16_route: for fp16, `fp16_route()`.
        calibration_sha256: for int8, `calibration_set_sha256()`.
        extra_profiles: (min, opt, max) shapes of inputs other than `images`, if any.
    """
    return EngineKey(tensorrt_version=str(tensorrt_version),
                     compute_capability=f'{compute_capability[0]}.{compute_capability[1]}',
                     precision=precision, input_shape=tuple(input_shape),
                     onnx_sha256=sha256_file(onnx_path), fp16_route=fp16_route,
                     calibration_sha256=calibration_sha256,
                     extra_profiles=json.dumps(extra_profiles, sort_keys=True) if extra_profiles else '')


def default_cache_dir(onnx_path: str | os.PathLike) -> Path:
    """`trt_engines/` next to the ONNX file (engines travel with the model, not with a home directory)."""
    return Path(onnx_path).resolve().parent / 'trt_engines'


def build_engine(onnx_path: str | os.PathLike, precision: str = 'fp16', cache_dir: str | None = None,
                 calib_dir: str | None = None, batch: int = DEFAULT_BATCH,
                 max_calibration_images: int = 64,
                 extra_profiles: dict[str, tuple[tuple[int, ...], ...]] | None = None) -> tuple[Path, bool]:
    """Return the cached engine for (ONNX, precision, shape, TensorRT, GPU), building it if needed.

    `extra_profiles`: (min, opt, max) shapes of inputs other than `images` (the pipeline pose graph's
    `rois`); int8 is not offered for such graphs (its calibration feeds images only).

    Returns:
        (engine path, True when it was built now, False when reused).

    Raises:
        TensorRTUnavailableError: tensorrt, a GPU or the fp16 tool is missing (one-line message).
        ValueError: bad precision, ONNX input, or calibration folder.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'--precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'int8' and extra_profiles:
        raise ValueError(f'--precision int8 is not supported for {onnx_path}: its inputs '
                         f'{sorted(extra_profiles)} besides images cannot be calibrated; use fp16')
    if precision == 'int8' and not calib_dir:
        raise ValueError('--precision int8 needs --calib-dir (a folder of calibration images)')
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ValueError(f'--onnx {onnx_path} does not exist')
    # a bad calibration folder is reported before TensorRT or a GPU is needed
    calibration_sha256 = ''
    if precision == 'int8':
        calibration_sha256 = calibration_set_sha256(calib_dir, max_calibration_images)
    trt = require_tensorrt()
    capability = require_cuda_device()
    input_shape = onnx_input_shape(onnx_path, batch)
    route = fp16_route(trt.BuilderFlag) if precision == 'fp16' else ''
    key = engine_key(onnx_path, precision, input_shape, trt.__version__, capability, fp16_route=route,
                     calibration_sha256=calibration_sha256, extra_profiles=extra_profiles)
    cache = EngineCache(cache_dir or default_cache_dir(onnx_path))

    def build() -> bytes:
        with tempfile.TemporaryDirectory(prefix='ppe_trt_') as work:
            graph, weak_fp16 = onnx_path, False
            if route == FP16_ROUTE_BUILDER_FLAG:
                LOG.warning('nvidia-modelopt missing: weakly typed fp16 build (TensorRT %s)',
                            trt.__version__)
                weak_fp16 = True
            elif route:
                graph = convert_onnx_fp16(onnx_path, Path(work) / 'model_fp16.onnx')
            elif precision == 'int8':
                calibration = calibration_images(calib_dir, input_shape[2:], max_calibration_images)
                LOG.info('int8 calibration on %d images from %s', len(calibration), calib_dir)
                graph = quantize_onnx_int8(onnx_path, Path(work) / 'model_int8_qdq.onnx', calibration)
            LOG.info('building %s engine for %s %s (TensorRT %s, sm %s)', precision, onnx_path,
                     input_shape, trt.__version__, key.compute_capability)
            return build_serialized_engine(graph, input_shape, weak_fp16=weak_fp16,
                                           extra_profiles=extra_profiles)

    return cache.get_or_build(key, build)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ppe build-engine`."""
    parser.add_argument('--onnx', required=True, help='ONNX file from `ppe export` (fixed H, W)')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp16', help='engine precision')
    parser.add_argument('--calib-dir', default=None, help='folder of calibration images (int8 only)')
    parser.add_argument('--max-calib-images', type=int, default=64, help='calibration images used (int8)')
    parser.add_argument('--batch', type=int, default=DEFAULT_BATCH, help='batch size the engine takes')
    parser.add_argument('--cache-dir', default=None,
                        help='engine cache directory (default: trt_engines/ next to the ONNX file)')


def run(args: argparse.Namespace) -> int:
    """`ppe build-engine`: prints the engine path; exit code 1 with one line on a missing tool or GPU."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        path, built = build_engine(args.onnx, args.precision, args.cache_dir, args.calib_dir, args.batch,
                                   args.max_calib_images)
        print(f'{"built" if built else "reused cached"} engine: {path}')
        from occluded_ppe_ros.inference.backends.pipeline_backend import (is_pipeline_onnx,
                                                                          pipeline_engine_profiles,
                                                                          pose_graph_path)

        if is_pipeline_onnx(args.onnx):
            # the pretrained pipeline's second graph, named in the detector graph's metadata
            pose_path, built = build_engine(pose_graph_path(args.onnx), args.precision, args.cache_dir,
                                            batch=args.batch,
                                            extra_profiles=pipeline_engine_profiles(args.onnx))
            print(f'{"built" if built else "reused cached"} pose-graph engine: {pose_path}')
    except (TensorRTUnavailableError, ValueError, FileNotFoundError) as error:
        print(f'ppe build-engine: error: {error}')
        return 1
    return 0
