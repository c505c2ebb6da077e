"""`ppe bench`: CPU latency of our network against torchvision baselines, as JSON and a markdown table.

One run measures everything on the same machine, the same image (640x480 by default), the same thread
count (2), random weights everywhere, with the number of detections forced equal on every side:
- ours: DeployModel (detection + masks + pose) with K = --detections rows, all of them valid (the
  deployed graph keeps the K best peaks after NMS; random weights give more than K peaks).
- keypointrcnn_resnet50_fpn, and keypointrcnn + maskrcnn_resnet50_fpn back to back (what a user runs to
  get boxes, masks and poses): box_score_thresh=0 and box_detections_per_img=K so that exactly K boxes go
  through the mask and keypoint heads; min_size/max_size set to the image so nothing is resized.
- the floor: our own encoder (backbone + FPN) alone.
- ours in ONNX Runtime (CPU, same threads) against ours in PyTorch eager.
- FLOPs (torch.utils.flop_counter, convolutions and matmuls) and utilisation = FLOPs / (latency x the
  machine's measured matmul peak on the same threads).

Each row is one function `row_*(ctx) -> RowSpec` listed in ROWS, so further rows (the default model on each
backend, the ROS node's overhead) are one function and one list entry each. Latency = median of --runs
timed calls after --warmup untimed ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

LOG = logging.getLogger('ppe.bench')
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class BenchSettings:
    """What every row shares.

    Attributes:
        height, width: image and network input size in pixels (multiples of 32).
        threads: torch intra-op threads and ONNX Runtime intra_op_num_threads.
        warmup: untimed calls before timing.
        runs: timed calls; the row reports their median.
        detections: K, detections forced through every head on every side.
        backbone: our backbone (resnet50 to match the torchvision baselines).
        seed: seed of random weights and of the synthetic image.
    """

    height: int = 480
    width: int = 640
    threads: int = 2
    warmup: int = 2
    runs: int = 7
    detections: int = 10
    backbone: str = 'resnet50'
    seed: int = 0


@dataclasses.dataclass
class RowSpec:
    """What a row function returns: the call to time and what is known about it.

    Attributes:
        key: stable identifier (used by RATIOS and in the JSON).
        label: human-readable name for the table.
        call: one inference on the bench image (the thing timed).
        detections: detections the call produces (checks that K went through every head).
        flops: floating point operations of one call (None where not counted).
        note: anything the reader needs (settings of the baseline, provider, ...).
    """

    key: str
    label: str
    call: Callable[[], object]
    detections: int | None = None
    flops: float | None = None
    note: str = ''


@dataclasses.dataclass
class Row:
    """One measured benchmark row.

    Attributes:
        key, label, detections, flops, note: as in RowSpec.
        times_ms: wall-clock milliseconds of every timed call.
        cpu_ms: process CPU milliseconds (all threads) of every timed call: less sensitive than wall
            time to other processes competing for the cores.
    """

    key: str
    label: str
    times_ms: list[float]
    cpu_ms: list[float]
    detections: int | None = None
    flops: float | None = None
    note: str = ''

    @property
    def median_ms(self) -> float:
        """Median latency in milliseconds."""
        return float(statistics.median(self.times_ms))

    @property
    def min_ms(self) -> float:
        """Fastest call in milliseconds."""
        return float(min(self.times_ms))


class BenchContext:
    """Shared state of one bench run: settings, the image, lazily built models, the matmul peak."""

    def __init__(self, settings: BenchSettings, workdir: Path) -> None:
        from occluded_ppe_ros.inference.export import synthetic_image

        self.settings = settings
        self.workdir = workdir
        # One image for every row: float32 [3, H, W] RGB in [0, 1].
        self.image = torch.from_numpy(synthetic_image(settings.height, settings.width, settings.seed))
        self._ours = None
        self.domain = 'citypersons'   # the deployed branch of ours (CityPersons: the automotive target)
        self.config_source = ''
        self.matmul_peak_flops: float | None = None

    def ours(self):
        """(PPENet, DeployModel) with random weights, built once: `settings.backbone`, K = detections."""
        if self._ours is None:
            from occluded_ppe_ros.model.network import build_model
            from occluded_ppe_ros.model.config import ModelConfig
            from occluded_ppe_ros.model.deploy import DeployModel

            s = self.settings
            from occluded_ppe_ros.offline.default_model import find_shipped_file

            relative = Path('config') / f'model_{s.backbone}.yaml'
            shipped = find_shipped_file(relative)
            if shipped is not None:
                data = ModelConfig.from_yaml(shipped).to_dict()
                self.config_source = str(relative)
            else:
                data = ModelConfig.from_dict({'backbone': {'name': s.backbone}}).to_dict()
                self.config_source = f'ModelConfig defaults with backbone {s.backbone}'
            data['backbone']['pretrained_path'] = ''          # random weights, as the baselines
            data['inference'].update(domain=self.domain, input_height=s.height, input_width=s.width,
                                     max_detections=s.detections)
            data['detection']['pre_nms_topk'] = max(data['detection']['pre_nms_topk'], s.detections)
            cfg = ModelConfig.from_dict(data)
            torch.manual_seed(s.seed)
            model = build_model(cfg).eval()
            deploy = DeployModel(model, domain=self.domain, max_detections=s.detections).eval()
            self._ours = (model, deploy)
        return self._ours


def time_calls(call: Callable[[], object], warmup: int, runs: int) -> list[float]:
    """Wall-clock milliseconds of `runs` calls after `warmup` untimed calls (inference mode)."""
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1e3)
    return times


def time_interleaved(specs: list[RowSpec], warmup: int, runs: int
                     ) -> dict[str, tuple[list[float], list[float]]]:
    """Time every spec's call round-robin: run r of every row, then run r + 1 of every row, ...

    Interleaving spreads a shared machine's load changes over all rows alike, so their ratios stay
    meaningful even when the absolute times drift.

    Returns:
        key -> (wall-clock ms per run, process CPU ms per run).
    """
    results = {spec.key: ([], []) for spec in specs}
    with torch.inference_mode():
        for spec in specs:
            for _ in range(warmup):
                spec.call()
        for _ in range(runs):
            for spec in specs:
                cpu_started, started = time.process_time(), time.perf_counter()
                spec.call()
                results[spec.key][0].append((time.perf_counter() - started) * 1e3)
                results[spec.key][1].append((time.process_time() - cpu_started) * 1e3)
    return results


def count_flops(call: Callable[[], object]) -> float:
    """Count the FLOPs of one call (convolutions, matmuls; 2 per multiply-add) by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        call()
    return float(counter.get_total_flops())


def measure_matmul_peak(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matmul throughput (FLOP/s) on `threads` threads: best of `repeats`."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    torch.matmul(a, b)
    best = min(time_calls(lambda: torch.matmul(a, b), warmup=1, runs=repeats))
    return 2.0 * size ** 3 / (best / 1e3)


# ---------------------------------------------------------------- rows (one function each)

def _count_valid(outputs) -> int:
    return int(outputs[3].sum())   # OUTPUT_NAMES[3] = 'valid'


def row_ours_torch(ctx: BenchContext) -> RowSpec:
    """Ours, PyTorch eager: detection + masks + pose in one DeployModel call."""
    _, deploy = ctx.ours()
    batch = ctx.image[None]
    with torch.inference_mode():
        detections = _count_valid(deploy(batch))
    s = ctx.settings
    return RowSpec('ours_torch', f'ours {s.backbone}-FPN, det+masks+pose (PyTorch eager)',
                   lambda: deploy(batch), detections, count_flops(lambda: deploy(batch)),
                   note=f'{ctx.config_source}; K={s.detections} rows, valid = rows kept after NMS')


def row_ours_floor(ctx: BenchContext) -> RowSpec:
    """Our own encoder (input normalisation + backbone + FPN) alone: the floor of the full network."""
    model, _ = ctx.ours()
    encoder = model.branches[ctx.domain].encoder
    batch = ctx.image[None]
    return RowSpec('ours_floor', f'ours {ctx.settings.backbone}-FPN encoder alone (floor)',
                   lambda: encoder(batch), None, count_flops(lambda: encoder(batch)))


def row_ours_onnxruntime(ctx: BenchContext) -> RowSpec:
    """Ours exported to ONNX (`ppe export` path) and run by the ONNX Runtime backend on the CPU."""
    from occluded_ppe_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
    from occluded_ppe_ros.inference.export import LoadedNetwork, deploy_metadata, export_onnx

    model, deploy = ctx.ours()
    s = ctx.settings
    path = ctx.workdir / 'ours.onnx'
    network = LoadedNetwork(model, model.cfg, {'bench': 'random weights', 'seed': s.seed})
    export_onnx(deploy, deploy_metadata(network, ctx.domain, (s.height, s.width), s.detections), path)
    backend = OnnxRuntimeBackend(path, device='cpu', intra_op_threads=s.threads)
    images = ctx.image[None].numpy()
    detections = int(backend.run(images)['valid'].sum())
    return RowSpec('ours_onnxruntime', f'ours {s.backbone}-FPN, det+masks+pose (ONNX Runtime CPU)',
                   lambda: backend.run(images), detections,
                   note=f'onnxruntime {_version("onnxruntime")}, intra_op_num_threads={s.threads}, '
                        'ORT_ENABLE_ALL')


def _torchvision_model(factory_name: str, ctx: BenchContext) -> torch.nn.Module:
    import torchvision.models.detection as detection

    s = ctx.settings
    torch.manual_seed(s.seed)
    factory = getattr(detection, factory_name)
    return factory(weights=None, weights_backbone=None, min_size=s.height, max_size=s.width,
                   box_score_thresh=0.0, box_detections_per_img=s.detections).eval()


_BASELINE_NOTE = 'weights=None, box_score_thresh=0, box_detections_per_img=K, min_size=H, max_size=W'


def row_keypointrcnn(ctx: BenchContext) -> RowSpec:
    """The torchvision keypointrcnn_resnet50_fpn alone (boxes + 17 keypoints, no masks)."""
    model = _torchvision_model('keypointrcnn_resnet50_fpn', ctx)
    images = [ctx.image]
    with torch.inference_mode():
        detections = len(model(images)[0]['boxes'])
    return RowSpec('keypointrcnn', 'torchvision keypointrcnn_resnet50_fpn (det+pose)', lambda: model(images),
                   detections, count_flops(lambda: model(images)), note=_BASELINE_NOTE)


def row_keypointrcnn_plus_maskrcnn(ctx: BenchContext) -> RowSpec:
    """keypointrcnn_resnet50_fpn then maskrcnn_resnet50_fpn on the same image (det+masks+pose)."""
    keypoint_model = _torchvision_model('keypointrcnn_resnet50_fpn', ctx)
    mask_model = _torchvision_model('maskrcnn_resnet50_fpn', ctx)
    images = [ctx.image]

    def both():
        return keypoint_model(images), mask_model(images)

    with torch.inference_mode():
        keypoint_out, mask_out = both()
    detections = min(len(keypoint_out[0]['boxes']), len(mask_out[0]['boxes']))
    return RowSpec('keypointrcnn_maskrcnn',
                   'torchvision keypointrcnn + maskrcnn back to back (det+masks+pose)',
                   both, detections, count_flops(both), note=_BASELINE_NOTE)


def profile_ours(ctx: BenchContext, runs: int) -> list[dict]:
    """Where ours spends its time: wall milliseconds per stage (forward hooks), median of `runs` calls.

    Stages are the branch's encoder body and FPN, its detection and mask decoders and the pose stage's
    submodules; 'rest' is everything between them (peak picking, NMS, RoIAlign, keypoint decoding).

    Returns:
        [{'stage': name, 'median_ms': ..., 'share': fraction of the full call}], largest first.
    """
    model, deploy = ctx.ours()
    branch = model.branches[ctx.domain]
    stages = {'encoder.body': branch.encoder.body, 'encoder.fpn': branch.encoder.fpn}
    stages.update({f'branch.{name}': module for name, module in branch.named_children() if name != 'encoder'})
    stages.update({f'pose.{name}': module for name, module in model.pose.named_children()})
    spent: dict[str, float] = {}
    started: dict[str, float] = {}
    handles = []
    for name, module in stages.items():
        handles.append(module.register_forward_pre_hook(
            lambda _m, _i, name=name: started.__setitem__(name, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda _m, _i, _o, name=name: spent.__setitem__(
                name, spent.get(name, 0.0) + time.perf_counter() - started[name])))
    per_run: dict[str, list[float]] = {name: [] for name in [*stages, 'rest', 'total']}
    batch = ctx.image[None]
    try:
        with torch.inference_mode():
            deploy(batch)
            for _ in range(runs):
                spent.clear()
                begin = time.perf_counter()
                deploy(batch)
                total = time.perf_counter() - begin
                for name in stages:
                    per_run[name].append(spent.get(name, 0.0) * 1e3)
                per_run['rest'].append((total - sum(spent.values())) * 1e3)
                per_run['total'].append(total * 1e3)
    finally:
        for handle in handles:
            handle.remove()
    total_ms = statistics.median(per_run['total'])
    table = [{'stage': name, 'median_ms': round(statistics.median(times), 2),
              'share': round(statistics.median(times) / total_ms, 3)}
             for name, times in per_run.items() if name != 'total' and max(times) > 0]
    return sorted(table, key=lambda row: -row['median_ms'])


# Rows in table order. Append (key, function) to add a row; a function may raise RuntimeError to be
# skipped with its message (e.g. a backend missing on this machine).
# ---------------------------------------------------------------- the shipped default model

# Relative to the checkout, or to share/occluded_ppe_ros/ where the package is installed (`ppe` of a venv).
DEFAULT_MODEL = Path('models') / 'ppe_default.pt'
DEFAULT_MODEL_ONNX = Path('models') / 'ppe_default.onnx'
DEFAULT_MODEL_PHOTO = Path('samples') / '000000000790.jpg'   # a held-out real photo with people


def _default_model_row(ctx: BenchContext, backend_name: str) -> RowSpec:
    """The shipped default model through the whole Predictor (letterbox, backend, decoding) on a sample photo.

    Raises:
        RuntimeError: the model, its ONNX export or the backend is not available (the row is skipped).
    """
    import cv2

    from occluded_ppe_ros.inference.predictor import Predictor

    from occluded_ppe_ros.offline.default_model import find_shipped_file

    relative = DEFAULT_MODEL if backend_name == 'torch' else DEFAULT_MODEL_ONNX
    model_file = find_shipped_file(relative)
    if model_file is None:
        raise RuntimeError(f'{relative} is absent (scripts/train_default.sh makes it)')
    photo = find_shipped_file(DEFAULT_MODEL_PHOTO)
    bgr = cv2.imread(str(photo)) if photo is not None else None
    if bgr is None:
        raise RuntimeError(f'cannot read {DEFAULT_MODEL_PHOTO} (shipped sample photo)')
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    s = ctx.settings
    if backend_name == 'tensorrt':
        from occluded_ppe_ros.inference.tensorrt_engine import tensorrt_available

        if not tensorrt_available():
            raise RuntimeError('TensorRT needs the tensorrt package and an NVIDIA GPU; '
                               'this machine lacks them')
    from occluded_ppe_ros.inference.backends import create_backend

    # create_backend opens either network (the pretrained pipeline's two graphs or a PPENet graph)
    device = 'cuda' if backend_name == 'tensorrt' else 'cpu'
    backend = create_backend(backend_name, model_file, device=device)
    notes = {'torch': f'PyTorch eager, {s.threads} threads',
             'onnxruntime': f'onnxruntime {_version("onnxruntime")} CPU, {s.threads} threads',
             'tensorrt': 'TensorRT engines built from the ONNX export'}
    note = notes[backend_name]
    from occluded_ppe_ros.ros.parameters import PARAMETERS_BY_NAME   # plain table, no rclpy

    # The node's default thresholds: what a user of the default model gets.
    predictor = Predictor(backend, score_threshold=PARAMETERS_BY_NAME['score_threshold'].default,
                          keypoint_threshold=PARAMETERS_BY_NAME['keypoint_threshold'].default)
    people = predictor.predict(rgb)
    height, width = backend.input_size
    return RowSpec(f'default_{backend_name}',
                   f'default model (models/ppe_default.pt) on {backend_name}, {DEFAULT_MODEL_PHOTO.name} '
                   f'{rgb.shape[1]}x{rgb.shape[0]} -> {width}x{height}',
                   lambda: predictor.predict(rgb), len(people),
                   note=f'{note}; whole Predictor (letterbox + network + decoding), trained weights, '
                        f'detections at the score threshold {predictor.score_threshold}')


def row_default_torch(ctx: BenchContext) -> RowSpec:
    """The shipped default model, PyTorch backend (Predictor end to end)."""
    return _default_model_row(ctx, 'torch')


def row_default_onnxruntime(ctx: BenchContext) -> RowSpec:
    """The shipped default model, ONNX Runtime backend on its ONNX export (Predictor end to end)."""
    return _default_model_row(ctx, 'onnxruntime')


def row_default_tensorrt(ctx: BenchContext) -> RowSpec:
    """The shipped default model, TensorRT backend (skipped without TensorRT and a GPU)."""
    return _default_model_row(ctx, 'tensorrt')


ROWS: list[tuple[str, Callable[[BenchContext], RowSpec]]] = [
    ('ours_torch', row_ours_torch),
    ('ours_floor', row_ours_floor),
    ('ours_onnxruntime', row_ours_onnxruntime),
    ('keypointrcnn', row_keypointrcnn),
    ('keypointrcnn_maskrcnn', row_keypointrcnn_plus_maskrcnn),
    ('default_torch', row_default_torch),
    ('default_onnxruntime', row_default_onnxruntime),
    ('default_tensorrt', row_default_tensorrt),
]

# (label, numerator row, denominator row, target: ratio must be <= this)
RATIOS: list[tuple[str, str, str, float]] = [
    ('ours / keypointrcnn alone', 'ours_torch', 'keypointrcnn', 0.5),
    ('ours / (keypointrcnn + maskrcnn)', 'ours_torch', 'keypointrcnn_maskrcnn', 0.5),
    ('ours full / encoder floor', 'ours_torch', 'ours_floor', 1.5),
    ('ours ONNX Runtime / PyTorch eager', 'ours_onnxruntime', 'ours_torch', 0.8),
]


# ---------------------------------------------------------------- report

def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return 'not installed'


def machine_info(threads: int) -> dict:
    """CPU model, cores, load, threads used and library versions."""
    cpu_model = platform.processor() or 'unknown'
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu_model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return {'cpu_model': cpu_model, 'logical_cpus': os.cpu_count(), 'threads_used': threads,
            'load_average_1min_at_start': round(os.getloadavg()[0], 2), 'python': platform.python_version(),
            'torch': torch.__version__, 'torchvision': _version('torchvision'),
            'onnxruntime': _version('onnxruntime'), 'numpy': np.__version__,
            'platform': platform.platform()}


def machine_after_run(threads: int) -> dict:
    """`machine_info` for a benchmark script's summary, taken after its run.

    The load average is the one at the end, and the float32 matmul peak (GFLOP/s, `threads` threads)
    is measured now.

    The sandbox's CPU has differed between sessions (Intel Xeon, 374 GFLOP/s on 2026-11-25; AMD EPYC,
    120-160 on 2026-12-03), and a time budget buys iterations in proportion, so each result names it.
    """
    info = machine_info(threads)
    info.pop('load_average_1min_at_start')
    info['load_average_1min_at_end'] = round(os.getloadavg()[0], 2)
    info['matmul_peak_gflops'] = round(measure_matmul_peak(threads) / 1e9, 1)
    return info


def ratios_of(rows: dict[str, Row]) -> list[dict]:
    """Each RATIOS entry whose rows both ran, with its target and whether the median meets it.

    'value' is on median wall time (judged against the target), 'min_value' on the fastest runs (least
    disturbed by other processes), 'cpu_value' on median process CPU time.
    """
    out = []
    for label, numerator, denominator, target in RATIOS:
        if numerator in rows and denominator in rows:
            value = rows[numerator].median_ms / rows[denominator].median_ms
            cpu_value = (statistics.median(rows[numerator].cpu_ms)
                         / statistics.median(rows[denominator].cpu_ms))
            min_value = rows[numerator].min_ms / rows[denominator].min_ms
            out.append({'ratio': label, 'value': round(value, 3), 'min_value': round(min_value, 3),
                        'cpu_value': round(cpu_value, 3), 'target': f'<= {target}',
                        'met': bool(value <= target)})
    return out


def to_markdown(report: dict) -> str:
    """The docs/benchmarks.md page of a report."""
    s, m = report['settings'], report['machine']
    lines = ['# Benchmarks', '',
             f'Generated by `{report["command"]}` on {report["date"]}. Do not edit by hand: rerun it.', '',
             f'Image {s["width"]}x{s["height"]} (the same synthetic image for every row), '
             f'{s["threads"]} threads, random weights everywhere, our backbone {s["backbone"]}, '
             f'K = {s["detections"]} detections through every head, median of {s["runs"]} runs after '
             f'{s["warmup"]} warm-up runs, rows timed '
             'round-robin (interleaved) so that load from other processes hits every row alike.', '',
             '## Machine', '', '| | |', '|---|---|']
    lines += [f'| {key} | {value} |' for key, value in m.items()]
    lines += [f'| load average (1 min) at end | {report["load_average_1min_at_end"]} |',
              f'| float32 matmul peak ({s["threads"]} threads, 2048^3), before / after | '
              f'{report["matmul_peak_gflops"]:.1f} / {report["matmul_peak_gflops_after"]:.1f} GFLOP/s |', '',
              '## Latency', '',
              '| row | median ms | CPU ms | min ms | detections | GFLOPs | utilisation | note |',
              '|---|---:|---:|---:|---:|---:|---:|---|']
    for row in report['rows']:
        gflops = f'{row["flops"] / 1e9:.1f}' if row['flops'] else ''
        utilisation = f'{row["utilisation"]:.0%}' if row.get('utilisation') is not None else ''
        detections = '' if row['detections'] is None else str(row['detections'])
        lines.append(f'| {row["label"]} | {row["median_ms"]:.1f} | {row["median_cpu_ms"]:.1f} | '
                     f'{row["min_ms"]:.1f} | {detections} | {gflops} | {utilisation} | {row["note"]} |')
    lines += ['', '## Targets', '',
              '| ratio | median wall | fastest runs | median CPU | target | met (median) |',
              '|---|---:|---:|---:|---:|---|']
    for ratio in report['ratios']:
        lines.append(f'| {ratio["ratio"]} | {ratio["value"]:.2f} | {ratio["min_value"]:.2f} | '
                     f'{ratio["cpu_value"]:.2f} | {ratio["target"]} | {"yes" if ratio["met"] else "NO"} |')
    if report.get('profile_ours'):
        lines += ['', '## Where ours spends its time (PyTorch eager, forward hooks)', '',
                  '| stage | median ms | share |', '|---|---:|---:|']
        lines += [f'| {row["stage"]} | {row["median_ms"]:.1f} | {row["share"]:.0%} |'
                  for row in report['profile_ours']]
    if report.get('node_overhead'):
        lines += node_overhead_lines(report['node_overhead'])
    if report['skipped']:
        lines += ['', '## Skipped rows', '']
        lines += [f'- {key}: {why}' for key, why in report['skipped'].items()]
    lines += ['', 'CPU ms = process CPU time of the call summed over its threads. Utilisation = FLOPs / '
              '(median latency x matmul peak before the run). FLOPs count convolutions and matmuls '
              '(torch.utils.flop_counter), 2 per multiply-add; NMS, RoIAlign and element-wise ops are not '
              'counted.', '']
    return '\n'.join(lines)


def node_overhead_lines(node_overhead: dict) -> list[str]:
    """Markdown lines of a benchmarks/node_overhead.py JSON (`--node-overhead`): e2e, model, overhead.

    Args:
        node_overhead: {'source': path, 'command': how it was made, 'results': node_overhead.py's list}.
    """
    lines = ['', '## ROS node overhead', '',
             f'From `{node_overhead["command"]}` ({node_overhead["source"]}): a fresh `ppe_node` per image '
             'size and output set, frames sent one at a time over loopback shared-memory DDS; overhead = '
             'end-to-end (publish -> last output received) - the model (pre-processing + inference + '
             'post-processing, from the node\'s /diagnostics).', '',
             '| image | outputs | e2e mean ms | model mean ms | overhead ms | overhead / e2e | decode ms | '
             'publish ms |', '|---|---|---:|---:|---:|---:|---:|---:|']
    for r in node_overhead['results']:
        stages = r['node_stages_ms_mean']
        lines.append(f'| {r["size"]} | {r["outputs"]} | {r["e2e_ms_mean"]:.1f} | {r["model_ms_mean"]:.1f} | '
                     f'{r["overhead_ms"]:.1f} | {r["overhead_percent_of_e2e"]:.1f} % | '
                     f'{stages["decode"]:.1f} | {stages["publish"]:.1f} |')
    return lines


def run_bench(settings: BenchSettings, only: list[str] | None = None, command: str = 'ppe bench',
              profile: bool = False) -> dict:
    """Run the selected ROWS (all by default), optionally the stage profile, and return the JSON report."""
    torch.set_num_threads(settings.threads)
    # The torch backend sets glibc's thresholds when it opens (row default_torch), and the setting is
    # process-wide: set it before the first row so that every row, ours and torchvision's, is timed
    # under the same allocator, whichever rows are selected.
    from occluded_ppe_ros.cpu_allocator import keep_large_buffers_in_heap

    large_buffers_in_heap = keep_large_buffers_in_heap()
    specs: list[RowSpec] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix='ppe_bench_') as workdir:
        ctx = BenchContext(settings, Path(workdir))
        peak = measure_matmul_peak(settings.threads)
        for key, function in ROWS:
            if only and key not in only:
                continue
            LOG.info('preparing row %s ...', key)
            try:
                specs.append(function(ctx))
            except RuntimeError as error:
                skipped[key] = str(error).splitlines()[0]
                LOG.warning('row %s skipped: %s', key, skipped[key])
        LOG.info('timing %d rows interleaved: %d warm-up + %d runs each', len(specs), settings.warmup,
                 settings.runs)
        timings = time_interleaved(specs, settings.warmup, settings.runs)
        peak_after = measure_matmul_peak(settings.threads)
        stage_profile = profile_ours(ctx, settings.runs) if profile else []
    rows = {spec.key: Row(spec.key, spec.label, *timings[spec.key], spec.detections, spec.flops, spec.note)
            for spec in specs}
    for row in rows.values():
        LOG.info('  %-24s median %8.1f ms wall, %8.1f ms CPU', row.key, row.median_ms,
                 statistics.median(row.cpu_ms))
    row_dicts = []
    for row in rows.values():
        data = dataclasses.asdict(row)
        data.update(median_ms=round(row.median_ms, 2), min_ms=round(row.min_ms, 2),
                    median_cpu_ms=round(statistics.median(row.cpu_ms), 2),
                    times_ms=[round(t, 2) for t in row.times_ms], cpu_ms=[round(t, 2) for t in row.cpu_ms])
        data['utilisation'] = None if row.flops is None else row.flops / (row.median_ms / 1e3 * peak)
        row_dicts.append(data)
    return {'command': command, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
            'settings': dataclasses.asdict(settings),
            'machine': {**machine_info(settings.threads),
                        'glibc_keeps_large_buffers_in_heap (cpu_allocator.py)': large_buffers_in_heap},
            'matmul_peak_gflops': round(peak / 1e9, 2),
            'matmul_peak_gflops_after': round(peak_after / 1e9, 2),
            'load_average_1min_at_end': round(os.getloadavg()[0], 2), 'rows': row_dicts,
            'ratios': ratios_of(rows), 'skipped': skipped, 'profile_ours': stage_profile}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ppe bench`."""
    defaults = BenchSettings()
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: 256x320, ResNet-18, 1 warm-up, 2 runs; writes to a temp dir unless '
                             '--json/--markdown are given')
    parser.add_argument('--height', type=int, default=None, help=f'image height (default {defaults.height})')
    parser.add_argument('--width', type=int, default=None, help=f'image width (default {defaults.width})')
    parser.add_argument('--threads', type=int, default=defaults.threads, help='torch / ORT threads')
    parser.add_argument('--runs', type=int, default=None, help=f'timed runs (default {defaults.runs})')
    parser.add_argument('--warmup', type=int, default=None, help=f'warm-up runs (default {defaults.warmup})')
    parser.add_argument('--detections', type=int, default=defaults.detections, help='K detections per head')
    parser.add_argument('--backbone', default=None, help=f'our backbone (default {defaults.backbone})')
    parser.add_argument('--rows', nargs='*', default=None, choices=[key for key, _ in ROWS],
                        help='run only these rows')
    parser.add_argument('--profile', action='store_true', help='also time the stages of ours (forward hooks)')
    parser.add_argument('--json', default=None, help='JSON report path (default docs/benchmarks.json)')
    parser.add_argument('--markdown', default=None, help='markdown table path (default docs/benchmarks.md)')
    parser.add_argument('--node-overhead', default=None, metavar='JSON',
                        help='include the node overhead measured by benchmarks/node_overhead.py --json JSON')


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The BenchSettings of the CLI arguments, --quick changing the defaults."""
    base = BenchSettings(height=256, width=320, warmup=1, runs=2, backbone='resnet18') if args.quick \
        else BenchSettings()
    settings = dataclasses.replace(
        base, threads=args.threads, detections=args.detections,
        **{name: getattr(args, name) for name in ('height', 'width', 'runs', 'warmup', 'backbone')
           if getattr(args, name) is not None})
    for name in ('height', 'width'):
        value = getattr(settings, name)
        if value <= 0 or value % 32:
            raise ValueError(f'--{name} must be a positive multiple of 32, got {value}')
    if settings.runs < 1 or settings.detections < 1 or settings.threads < 1:
        raise ValueError(f'--runs, --detections and --threads must be >= 1, got {settings.runs}, '
                         f'{settings.detections}, {settings.threads}')
    return settings


def node_overhead_command(results: list[dict], source: Path) -> str:
    """The benchmarks/node_overhead.py command that wrote `results`, read back from its rows.

    Sizes, output sets and the score threshold come from the rows themselves, so the report says what was
    measured (20 people per frame at threshold 0, the shipped operating point at 0.3 are different cases).
    """
    def distinct(key: str) -> list:
        return list(dict.fromkeys(row[key] for row in results if key in row))

    command = 'benchmarks/node_overhead.py --checkpoint models/ppe_default.pt'
    if distinct('size'):
        command += ' --sizes ' + ','.join(distinct('size'))
    if distinct('outputs'):
        command += ' --outputs ' + ','.join(distinct('outputs'))
    thresholds = distinct('score_threshold')
    if len(thresholds) == 1:
        command += f' --score-threshold {thresholds[0]:g}'
    return command + f' --json {source}'


def run(args: argparse.Namespace) -> int:
    """`ppe bench`: run, print the markdown table, write JSON and markdown."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        print(f'ppe bench: error: {error}')
        return 2
    command = 'ppe bench' + (' --quick' if args.quick else '')
    command += ' --profile' if args.profile else ''
    report = run_bench(settings, args.rows, command, profile=args.profile)
    if getattr(args, 'node_overhead', None):
        source = Path(args.node_overhead)
        if not source.is_file():
            print(f'ppe bench: error: --node-overhead {source}: no such file')
            return 2
        results = json.loads(source.read_text())
        report['node_overhead'] = {'source': str(source), 'results': results,
                                   'command': node_overhead_command(results, source)}
        command += f' --node-overhead {source}'
        report['command'] = command
    markdown = to_markdown(report)
    print(markdown)
    # the checkout's docs/ (the committed report); an installed package writes under the working directory
    docs = REPO_ROOT / 'docs' if (REPO_ROOT / 'package.xml').is_file() else Path.cwd() / 'outputs' / 'bench'
    out_dir = Path(tempfile.gettempdir()) / 'ppe_bench_quick' if args.quick else docs
    json_path = Path(args.json) if args.json else out_dir / 'benchmarks.json'
    markdown_path = Path(args.markdown) if args.markdown else out_dir / 'benchmarks.md'
    json_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + '\n')
    markdown_path.write_text(markdown)
    print(f'wrote {json_path} and {markdown_path}')
    return 0
