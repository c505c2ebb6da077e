"""`ppe export`: the deployed branch (DeployModel, contract 4) -> ONNX, then a parity gate against PyTorch.

Export uses the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`, opset 18): it exports
torchvision's NMS and RoIAlign directly and is reproduced exactly by ONNX Runtime (see
../shared/EXPORT_FACTS.md). H and W are fixed by `--input-size` (TensorRT wants a fixed size, and the
detection head's grids are sized from it); the batch axis is symbolic where the traced graph allows it.

The file is self-describing: `DeployMetadata` (domain, class names, input size, K, the model config,
the backbone's input normalisation, the source checkpoint's sha256) goes into `metadata_props`, so the
ONNX Runtime backend needs nothing else.

The parity gate runs ONNX Runtime on images that were NOT used for tracing (another synthetic image, and
a batch of two where the batch axis is symbolic) and compares with PyTorch eager on the same images:
boxes and keypoint x, y within 1e-2 px, scores and probabilities within 1e-4, labels and the valid rows
exactly (so the same number of detections). Any mismatch -> a non-zero exit code.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from occluded_ppe_ros.inference.backends.onnxruntime_backend import (INPUT_NAME, OUTPUT_NAMES,
                                                                      DeployMetadata)
from occluded_ppe_ros.inference.onnx_passes import fold_pads_into_convs
from occluded_ppe_ros.model.config import DOMAINS, ModelConfig

LOG = logging.getLogger('ppe.export')

DEFAULT_OPSET = 18
MIN_OPSET = 17
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Parity tolerances of the export gate (ISSUE 3): pixels for coordinates, absolute for probabilities.
PIXEL_TOLERANCE = 1e-2
PROBABILITY_TOLERANCE = 1e-4


# ---------------------------------------------------------------- loading the network

@dataclasses.dataclass
class LoadedNetwork:
    """A network ready to export.

    Attributes:
        model: PPENet in eval mode.
        config: its ModelConfig.
        source: where it came from: {'checkpoint': path, 'sha256': ...} or {'config': path}.
    """

    model: torch.nn.Module
    config: ModelConfig
    source: dict


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_network(checkpoint: str | None = None, config: str | None = None, seed: int = 0) -> LoadedNetwork:
    """Load PPENet from a checkpoint (contract 3) or, for trying export, a model YAML with random weights.

    Raises:
        ValueError: neither or both given, or the checkpoint is not an occluded_ppe checkpoint.
        FileNotFoundError: the checkpoint or config file does not exist.
    """
    from occluded_ppe_ros.model.checkpoint import model_from_checkpoint
    from occluded_ppe_ros.model.network import build_model

    if (checkpoint is None) == (config is None):
        raise ValueError('give exactly one of --checkpoint PATH or --config PATH')
    if checkpoint is not None:
        model, state = model_from_checkpoint(checkpoint)
        cfg = model.cfg
        source = {'checkpoint': str(checkpoint), 'sha256': sha256_of(checkpoint),
                  'stage': state.get('stage'), 'iteration': state.get('iteration')}
    else:
        cfg = ModelConfig.from_yaml(config)
        torch.manual_seed(seed)
        model = build_model(cfg)
        source = {'config': str(config), 'random_init_seed': seed}
    return LoadedNetwork(model.eval(), cfg, source)


def normalisation_of(cfg: ModelConfig) -> dict:
    """The input normalisation the exported graph applies inside, as metadata (documentation only)."""
    kind = cfg.backbone.resolved_normalization()
    if kind == 'imagenet':
        return {'kind': kind, 'mean': list(IMAGENET_MEAN), 'std': list(IMAGENET_STD),
                'input': 'RGB float32 in [0, 1]'}
    return {'kind': kind, 'formula': 'x * 2 - 1', 'input': 'RGB float32 in [0, 1]'}


# ---------------------------------------------------------------- images for tracing and for the gate

def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic structured test image: float32 [3, H, W] RGB in [0, 1].

    Smooth colour gradients, a few filled rectangles and some noise, so that a randomly initialised
    network produces distinct, well separated scores (pure constant images give ties).
    """
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 2 * np.pi, size=3)
    image = np.stack([0.5 + 0.25 * np.sin(4 * rows + 3 * cols + p) for p in phase]).astype(np.float32)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 16))
        x1 = min(width, x0 + int(rng.integers(8, max(9, width // 4))))
        y1 = min(height, y0 + int(rng.integers(16, max(17, height // 2))))
        image[:, y0:y1, x0:x1] = rng.uniform(0, 1, size=(3, 1, 1))
    image += rng.normal(0, 0.03, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


# ---------------------------------------------------------------- export

def build_deploy_module(network: LoadedNetwork, domain: str, max_detections: int) -> torch.nn.Module:
    """Wrap the network in DeployModel (contract 4), eval mode."""
    from occluded_ppe_ros.model.deploy import DeployModel

    return DeployModel(network.model, domain=domain, max_detections=max_detections).eval()


def deploy_metadata(network: LoadedNetwork, domain: str, input_size: tuple[int, int],
                    max_detections: int) -> DeployMetadata:
    """The metadata stored in the ONNX file (config updated to the exported domain, size and K)."""
    config = network.config.to_dict()
    config['inference'].update(domain=domain, input_height=int(input_size[0]), input_width=int(input_size[1]),
                               max_detections=int(max_detections))
    return DeployMetadata(domain=domain, class_names=list(ModelConfig.class_names(domain)),
                          input_size=(int(input_size[0]), int(input_size[1])),
                          max_detections=int(max_detections), model_config=config,
                          normalisation=normalisation_of(network.config), output_names=OUTPUT_NAMES,
                          source=network.source)


def export_onnx(deploy: torch.nn.Module, metadata: DeployMetadata, out_path: str | os.PathLike,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, trace_seed: int = 0) -> Path:
    """Trace `deploy` on one synthetic image and write the ONNX file with `metadata` inside.

    Args:
        deploy: DeployModel in eval mode.
        metadata: written into metadata_props.
        out_path: the .onnx file.
        opset: ONNX opset (>= 17).
        dynamic_batch: make the batch axis of the input and of every output symbolic ('batch').
        trace_seed: seed of the synthetic tracing image (the parity gate uses other seeds).

    Returns:
        The written path.
    """
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f'--opset must be >= {MIN_OPSET}, got {opset}')
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    height, width = metadata.input_size
    example = torch.from_numpy(synthetic_image(height, width, trace_seed))[None]
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: 'batch'} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python int taken from a shape; DeployModel's are fixed by design.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', FutureWarning)
        example_outputs = deploy(example)
        torch.onnx.export(deploy, (example,), str(out_path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    model = onnx.load(str(out_path))
    # With a symbolic batch the tracer also names every later output axis symbolically; they are fixed
    # (K rows, M x M masks, 13 joints), so write their sizes down for ONNX Runtime, TensorRT and readers.
    for graph_output, value in zip(model.graph.output, example_outputs):
        for dim, size in list(zip(graph_output.type.tensor_type.shape.dim, value.shape))[1:]:
            dim.Clear()
            dim.dim_value = int(size)
    fold_pads_into_convs(model)
    save_with_metadata(model, metadata, out_path)
    LOG.info('exported %s in %.1f s (opset %d, %s batch)', out_path, time.perf_counter() - started, opset,
             'symbolic' if dynamic_batch else 'fixed')
    return out_path


def save_with_metadata(model, metadata: DeployMetadata, path: str | os.PathLike) -> None:
    """Replace an ONNX model's metadata_props with `metadata`, check the model and save it at `path`."""
    import onnx

    del model.metadata_props[:]
    for key, value in metadata.to_metadata_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = 'occluded_ppe_ros'
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def describe_onnx_io(onnx_path: str | os.PathLike) -> list[str]:
    """One line per graph input and output: kind, name, shape (symbolic dims by name), dtype."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    lines = []
    for kind, values in (('input', model.graph.input), ('output', model.graph.output)):
        for value in values:
            tensor_type = value.type.tensor_type
            dims = [d.dim_param or str(d.dim_value) if (d.dim_param or d.HasField('dim_value')) else '?'
                    for d in tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            lines.append(f'{kind:<6} {value.name:<18} [{", ".join(dims)}] {dtype}')
    return lines


# ---------------------------------------------------------------- the parity gate

@dataclasses.dataclass
class ParityRow:
    """One compared quantity: the largest |ONNX Runtime - PyTorch| over valid rows vs its tolerance."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    max_abs_diff: float
    tolerance: float
    ok: bool


def torch_outputs(deploy: torch.nn.Module, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run DeployModel eagerly; outputs as numpy, keyed by OUTPUT_NAMES."""
    with torch.no_grad():
        outputs = deploy(torch.from_numpy(images))
    return {name: value.detach().cpu().numpy() for name, value in zip(OUTPUT_NAMES, outputs)}


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> list[ParityRow]:
    """Compare two contract-4 output dicts (reference = PyTorch).

    `valid` and `labels` must match exactly; everything else is compared over the rows valid in both,
    with PIXEL_TOLERANCE for box corners and keypoint x, y and PROBABILITY_TOLERANCE for scores, mask
    probabilities, keypoint scores and occlusion probabilities.

    Returns:
        One ParityRow per quantity, plus 'valid count' (the number of valid rows per image).
    """
    rows = []
    for name in OUTPUT_NAMES:
        if reference[name].shape != candidate[name].shape:
            rows.append(ParityRow(name, tuple(candidate[name].shape), str(candidate[name].dtype),
                                  float('inf'), 0.0, False))
            return rows
    valid_ref = reference['valid'].astype(bool)
    valid_cand = candidate['valid'].astype(bool)
    count_ref, count_cand = valid_ref.sum(axis=1), valid_cand.sum(axis=1)
    rows.append(ParityRow('valid count', tuple(count_ref.shape), 'int',
                          float(np.abs(count_ref - count_cand).max(initial=0)), 0.0,
                          bool(np.array_equal(count_ref, count_cand))))
    both = valid_ref & valid_cand
    rows.append(ParityRow('valid', tuple(valid_ref.shape), 'bool', float((valid_ref != valid_cand).sum()),
                          0.0, bool(np.array_equal(valid_ref, valid_cand))))

    def add(name: str, ref: np.ndarray, cand: np.ndarray, tolerance: float, dtype: np.dtype) -> None:
        diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
        worst = float(diff.max(initial=0.0)) if diff.size else 0.0
        if not np.isfinite(ref).all() or not np.isfinite(cand).all():
            worst = float('nan')
        rows.append(ParityRow(name, tuple(ref.shape), str(dtype), worst, tolerance,
                              bool(np.isfinite(worst) and worst <= tolerance)))

    add('boxes (px)', reference['boxes'][both], candidate['boxes'][both], PIXEL_TOLERANCE,
        reference['boxes'].dtype)
    add('scores', reference['scores'][both], candidate['scores'][both], PROBABILITY_TOLERANCE,
        reference['scores'].dtype)
    label_mismatch = int((reference['labels'][both] != candidate['labels'][both]).sum())
    rows.append(ParityRow('labels', tuple(reference['labels'][both].shape), str(reference['labels'].dtype),
                          float(label_mismatch), 0.0, label_mismatch == 0))
    add('masks (prob)', reference['masks'][both], candidate['masks'][both], PROBABILITY_TOLERANCE,
        reference['masks'].dtype)
    add('keypoints x,y (px)', reference['keypoints'][both][..., :2], candidate['keypoints'][both][..., :2],
        PIXEL_TOLERANCE, reference['keypoints'].dtype)
    add('keypoint scores', reference['keypoints'][both][..., 2], candidate['keypoints'][both][..., 2],
        PROBABILITY_TOLERANCE, reference['keypoints'].dtype)
    add('keypoint_occluded', reference['keypoint_occluded'][both], candidate['keypoint_occluded'][both],
        PROBABILITY_TOLERANCE, reference['keypoint_occluded'].dtype)
    return rows


def format_parity_table(title: str, rows: list[ParityRow]) -> str:
    """A fixed-width text table of ParityRows."""
    lines = [title, f'  {"quantity":<20} {"shape":<20} {"dtype":<8} {"max|diff|":>11} {"tolerance":>10}  ok']
    for row in rows:
        lines.append(f'  {row.name:<20} {str(list(row.shape)):<20} {row.dtype:<8} {row.max_abs_diff:>11.3g} '
                     f'{row.tolerance:>10.0e}  {"yes" if row.ok else "NO"}')
    return '\n'.join(lines)


def parity_check(deploy: torch.nn.Module, onnx_path: str | os.PathLike, batches: list[np.ndarray],
                 intra_op_threads: int = 0) -> tuple[bool, str]:
    """Run ONNX Runtime (CPU) and PyTorch eager on each batch and compare.

    Returns:
        (all rows ok, the printed report).
    """
    from occluded_ppe_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(onnx_path, device='cpu', intra_op_threads=intra_op_threads)
    all_ok, report = True, []
    for index, images in enumerate(batches):
        onnx_result = backend.run(images)
        rows = compare_outputs(torch_outputs(deploy, images), onnx_result)
        counts = onnx_result['valid'].sum(axis=1).tolist()
        all_ok &= all(row.ok for row in rows)
        title = f'parity check {index + 1}: images {list(images.shape)}, valid detections per image {counts}'
        report.append(format_parity_table(title, rows))
    return all_ok, '\n'.join(report)


def gate_batches(input_size: tuple[int, int], dynamic_batch: bool, trace_seed: int = 0) -> list[np.ndarray]:
    """Images for the parity gate, all different from the tracing image (seed `trace_seed`)."""
    height, width = input_size
    batches = [synthetic_image(height, width, trace_seed + 1)[None]]
    if dynamic_batch:
        batches.append(np.stack([synthetic_image(height, width, trace_seed + 2),
                                 synthetic_image(height, width, trace_seed + 3)]))
    return batches


# ---------------------------------------------------------------- the .pt -> .onnx cache of the backends

def cached_onnx_for_checkpoint(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                               domain: str | None = None, input_size: tuple[int, int] | None = None,
                               max_detections: int | None = None) -> Path:
    """The ONNX export of a .pt checkpoint, made once and reused (ONNX Runtime backend on a .pt file).

    The file name is keyed on the checkpoint's sha256 and the export settings (domain, H, W, K, opset),
    so a retrained checkpoint gets a fresh export. The export passes the parity gate before it is kept.

    Args:
        checkpoint: contract-3 checkpoint.
        cache_dir: where exports are kept; default `onnx_cache/` next to the checkpoint, or the system
            temp directory when that folder is not writable (an installed share/ directory).
        domain, input_size, max_detections: override the checkpoint's inference config.

    Returns:
        Path of the ONNX file.

    Raises:
        RuntimeError: the fresh export fails the parity gate.
    """
    checkpoint = Path(checkpoint)
    network = load_network(checkpoint=str(checkpoint))
    inference = network.config.inference
    domain = domain or inference.domain
    input_size = tuple(input_size or (inference.input_height, inference.input_width))
    max_detections = int(max_detections or inference.max_detections)
    key = f'{network.source["sha256"][:16]}_{domain}_{input_size[0]}x{input_size[1]}_k{max_detections}' \
          f'_op{DEFAULT_OPSET}'
    if cache_dir is None:
        cache_dir = checkpoint.resolve().parent / 'onnx_cache'
        if not _writable_dir(cache_dir):
            cache_dir = Path(tempfile.gettempdir()) / 'occluded_ppe_onnx_cache'
    cache_dir = Path(cache_dir)
    target = cache_dir / f'{checkpoint.stem}_{key}.onnx'
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    deploy = build_deploy_module(network, domain, max_detections)
    metadata = deploy_metadata(network, domain, input_size, max_detections)
    handle, temporary = tempfile.mkstemp(dir=cache_dir, suffix='.onnx.tmp')
    os.close(handle)
    try:
        export_onnx(deploy, metadata, temporary, dynamic_batch=True)
        ok, report = parity_check(deploy, temporary, gate_batches(input_size, True))
        if not ok:
            raise RuntimeError(f'ONNX export of {checkpoint} failed the parity gate:\n{report}')
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


# ---------------------------------------------------------------- CLI

def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'--input-size must be HxW, e.g. 480x640, got {text!r}') from None
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f'--input-size {text}: H and W must be positive multiples of 32')
    return height, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ppe export`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', help='trained checkpoint (.pt, contract 3)')
    source.add_argument('--config', help='model YAML: random initialisation, for trying export')
    parser.add_argument('--out', required=True, help='output ONNX file')
    parser.add_argument('--domain', choices=DOMAINS, default=None,
                        help="branch to deploy (default: the config's inference.domain)")
    parser.add_argument('--input-size', type=_parse_size, default=None,
                        help="network input HxW, multiples of 32 (default: the config's)")
    parser.add_argument('--max-detections', type=int, default=None,
                        help="K rows per image (default: the config's inference.max_detections)")
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (>= {MIN_OPSET})')
    parser.add_argument('--fixed-batch', action='store_true', help='do not make the batch axis symbolic')
    parser.add_argument('--seed', type=int, default=0, help='seed of random weights (--config) and images')
    parser.add_argument('--threads', type=int, default=2, help='torch and ONNX Runtime threads')


def run(args: argparse.Namespace) -> int:
    """`ppe export`: export, log the graph's I/O, run the parity gate; 1 on a mismatch, 2 on bad input."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    torch.set_num_threads(max(1, args.threads))
    if args.checkpoint and _is_pipeline_checkpoint(args.checkpoint):
        return _run_pipeline_export(args)
    try:
        network = load_network(args.checkpoint, args.config, seed=args.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f'ppe export: error: {error}')
        return 2
    inference = network.config.inference
    domain = args.domain or inference.domain
    input_size = args.input_size or (inference.input_height, inference.input_width)
    max_detections = args.max_detections or inference.max_detections
    if max_detections < 1:
        print(f'ppe export: error: --max-detections must be >= 1, got {max_detections}')
        return 2
    deploy = build_deploy_module(network, domain, max_detections)
    metadata = deploy_metadata(network, domain, input_size, max_detections)
    # Written under a temporary name in --out's folder and moved onto --out (atomic os.replace) only once
    # the parity gate passes, so a file at --out is always one that passed; a failed export is kept as
    # '<name>.parity_failed.onnx' for inspection, and a killed export leaves no file that looks valid.
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, staged_name = tempfile.mkstemp(prefix=f'.{out.name}.', suffix='.tmp', dir=out.parent)
    os.close(handle)
    staged = Path(staged_name)
    try:
        try:
            export_onnx(deploy, metadata, staged, opset=args.opset, dynamic_batch=not args.fixed_batch,
                        trace_seed=args.seed)
        except ValueError as error:
            print(f'ppe export: error: {error}')
            return 2
        print(f'exported {out} (kept only if the parity gate below passes): domain {domain}, classes '
              f'{metadata.class_names}, input {input_size[0]}x{input_size[1]}, K={max_detections}, opset '
              f'{args.opset}, backbone {network.config.backbone.name}')
        for line in describe_onnx_io(staged):
            print(f'  {line}')
        ok, report = parity_check(deploy, staged, gate_batches(input_size, not args.fixed_batch, args.seed),
                                  intra_op_threads=args.threads)
        print(report)
        if not ok:
            failed = out.with_name(f'{out.stem}.parity_failed{out.suffix}')
            os.replace(staged, failed)
            earlier = f'; the file already at {out} is an earlier export' if out.exists() else ''
            print(f'ppe export: PARITY FAILED: ONNX Runtime differs from PyTorch beyond the tolerances '
                  f'above; not written to {out}, kept as {failed} for inspection{earlier}')
            return 1
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    print(f'parity: ONNX Runtime matches PyTorch on images not used for export; wrote {out}')
    return 0


def _is_pipeline_checkpoint(path: str) -> bool:
    """True for a pretrained-pipeline checkpoint (two graphs); False for PPENet or an unreadable file.

    An unreadable file is left for `load_network` to report.
    """
    from occluded_ppe_ros.model.pipeline_checkpoint import checkpoint_is_pipeline

    try:
        return checkpoint_is_pipeline(path)
    except (ValueError, FileNotFoundError, RuntimeError, OSError):
        return False


def _run_pipeline_export(args: argparse.Namespace) -> int:
    """`ppe export` of a pipeline checkpoint: the detector graph at --out and the pose graph beside it."""
    from occluded_ppe_ros.inference.pipeline_export import export_pipeline
    from occluded_ppe_ros.model.pipeline_checkpoint import pipeline_from_checkpoint

    if args.domain or args.max_detections or args.input_size or args.fixed_batch:
        print('ppe export: error: --domain, --input-size, --max-detections and --fixed-batch apply to the '
              'PPENet export only; the pipeline exports its own config (symbolic batch and people)')
        return 2
    net, _ = pipeline_from_checkpoint(args.checkpoint)
    try:
        detector, pose, report = export_pipeline(
            net, args.out, source={'checkpoint': str(args.checkpoint), 'sha256': sha256_of(args.checkpoint)},
            intra_op_threads=args.threads)
    except RuntimeError as error:
        print(f'ppe export: PARITY FAILED: {error}')
        return 1
    for path in (detector, pose):
        print(f'exported {path}')
        for line in describe_onnx_io(path):
            print(f'  {line}')
    print(report)
    print(f'parity: ONNX Runtime matches PyTorch on both graphs; wrote {detector} and {pose}')
    return 0
