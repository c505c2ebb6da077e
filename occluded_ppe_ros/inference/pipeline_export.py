"""ONNX export of the pretrained pipeline: two graphs, parity-checked, moved into place only if both pass.

    <out>.onnx        detector graph: images [B, 3, H, W] -> boxes, scores, labels, valid (K rows)
    <out>.pose.onnx   pose graph: images [B, 3, H, W], rois [N, 5] -> keypoints, keypoint_occluded, masks
The detector file's metadata (`DeployMetadata.pipeline`) names the pose file, so every consumer is given
one path. Both are opset 18, traced with the TorchScript exporter (dynamo=False: ../shared EXPORT_FACTS,
RoIAlign and NMS export cleanly), with a symbolic batch and a symbolic number of people N.

Parity gate: each graph in ONNX Runtime against PyTorch on real photos (samples/, which hold people, so
the pose graph sees N > 1; `compare_graphs`), and the pose graph alone at an N other than the traced one.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from occluded_ppe_ros.inference.backends.onnxruntime_backend import DeployMetadata
from occluded_ppe_ros.inference.backends.pipeline_backend import (DETECTOR_INPUTS, DETECTOR_OUTPUTS,
                                                                  POSE_INPUTS, POSE_OUTPUTS, PipelineBackend,
                                                                  pipeline_onnxruntime_backend,
                                                                  pipeline_torch_backend)

LOG = logging.getLogger(__name__)
OPSET = 18
SAMPLES_DIR = Path(__file__).resolve().parents[2] / 'samples'


def pose_graph_name(detector_path: Path) -> str:
    """'<stem>.pose.onnx' beside '<stem>.onnx'."""
    return f'{detector_path.stem}.pose.onnx'


def gate_images(input_size: tuple[int, int], limit: int = 3) -> list[np.ndarray]:
    """Network-input images for tracing and the gate: real photos letterboxed (with people), else noise."""
    import cv2

    from occluded_ppe_ros.inference.preprocess import letterbox

    photos = sorted(SAMPLES_DIR.glob('*.jpg'))[:limit] if SAMPLES_DIR.is_dir() else []
    images = []
    for path in photos:
        bgr = cv2.imread(str(path))
        if bgr is not None:
            images.append(letterbox(np.ascontiguousarray(bgr[:, :, ::-1]), input_size, 0.0)[0])
    if not images:
        rng = np.random.default_rng(0)
        images = [rng.random((3, *input_size), dtype=np.float32) for _ in range(2)]
    return images


def _metadata(net, graph: str, pose_name: str, source: dict) -> DeployMetadata:
    cfg = net.cfg
    return DeployMetadata(domain='coco', class_names=list(cfg.class_names), input_size=cfg.input_size,
                          max_detections=cfg.max_detections, model_config=cfg.to_dict(),
                          normalisation={'input': 'RGB in [0, 1]; each imported model normalises inside'},
                          output_names=DETECTOR_OUTPUTS if graph == 'detector' else POSE_OUTPUTS,
                          source=source, pipeline={'graph': graph, 'pose_graph': pose_name})


def _export_graph(module: torch.nn.Module, example: tuple[torch.Tensor, ...], input_names: tuple[str, ...],
                  output_names: tuple[str, ...], dynamic_axes: dict, metadata: DeployMetadata,
                  path: Path) -> None:
    import onnx

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')   # tracer warnings about Python ints from fixed shapes
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    from occluded_ppe_ros.inference.export import save_with_metadata
    from occluded_ppe_ros.inference.onnx_passes import fold_pads_into_convs

    model = onnx.load(str(path))
    folded = fold_pads_into_convs(model)   # MoveNet's TF 'SAME' pads: see onnx_passes
    LOG.debug('%s: %d Pad nodes folded into their Conv', path.name, folded)
    save_with_metadata(model, metadata, path)


def compare_graphs(reference: PipelineBackend, candidate: PipelineBackend, batches: list[np.ndarray]
                   ) -> tuple[bool, str]:
    """Parity of each graph on its own, on the same inputs (export.compare_outputs' tolerances).

    The detector graphs see each batch; both pose graphs then see the *reference* detector's boxes, so
    a 1e-4 px box difference cannot move a crop and flip a near-tied heatmap peak in one of them (the
    whole chain's difference is reported separately, not gated).
    """
    from occluded_ppe_ros.inference.export import compare_outputs, format_parity_table

    ok, report = True, []
    for index, batch in enumerate(batches):
        detected = reference.detector.run({'images': batch})
        other = candidate.detector.run({'images': batch})
        valid = detected['valid'].astype(bool) & (detected['scores'] >= reference.pose_min_score)
        image_index, row_index = np.nonzero(valid)
        rois = np.concatenate([image_index[:, None].astype(np.float32),
                               detected['boxes'][image_index, row_index]], axis=1).astype(np.float32)
        outputs = []
        for backend, boxes in ((reference, detected), (candidate, other)):
            full = {name: value.copy() for name, value in boxes.items()}
            full['valid'] = full['valid'].astype(bool) & valid   # rows posed by the reference
            resolution = reference.mask_resolution
            full['keypoints'] = np.zeros((*valid.shape, 13, 3), np.float32)
            full['keypoint_occluded'] = np.zeros((*valid.shape, 13), np.float32)
            full['masks'] = np.zeros((*valid.shape, resolution, resolution), np.float32)
            if len(rois):
                posed = backend.pose.run({'images': batch, 'rois': rois})
                for name in ('keypoints', 'keypoint_occluded', 'masks'):
                    full[name][image_index, row_index] = posed[name]
            outputs.append(full)
        rows = compare_outputs(*outputs)
        ok &= all(row.ok for row in rows)
        report.append(format_parity_table(f'graph parity {index + 1}: images {list(batch.shape)}, '
                                          f'{len(rois)} people posed (same boxes in both pose graphs)', rows))
    return ok, '\n'.join(report)


def chain_difference(reference: PipelineBackend, candidate: PipelineBackend, batch: np.ndarray) -> str:
    """One line: the whole chain's largest joint and box differences (informational, not gated)."""
    first, second = reference.run(batch), candidate.run(batch)
    both = first['valid'] & second['valid']
    joints = np.abs(first['keypoints'][both][..., :2] - second['keypoints'][both][..., :2])
    boxes = np.abs(first['boxes'][both] - second['boxes'][both])
    return (f'whole chain (boxes from each runtime): boxes max |diff| {boxes.max(initial=0):.3g} px, joints '
            f'max {joints.max(initial=0):.3g} px, median {np.median(joints) if joints.size else 0:.3g} px '
            f'(a near-tied heatmap peak can flip when a crop moves by 1e-4 px)')


def export_pipeline(net, out_path: str | os.PathLike, source: dict | None = None,
                    intra_op_threads: int = 0) -> tuple[Path, Path, str]:
    """Export both graphs, gate them, and move them onto `out_path` and its '.pose.onnx' sibling.

    Returns:
        (detector path, pose path, the parity report).

    Raises:
        RuntimeError: the parity gate failed; the failed files are kept as '<name>.parity_failed.onnx'.
    """
    from occluded_ppe_ros.model.pipeline import fold_frozen_batchnorm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    # the exported graphs carry MoveNet's batch norms folded into its convs; the gate compares them with
    # the unfolded module, so it checks the folding too
    deployed = fold_frozen_batchnorm(copy.deepcopy(net))
    pose_name = pose_graph_name(out_path)
    images = gate_images(net.cfg.input_size)
    trace_images = torch.from_numpy(images[0][None])
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix='.export_') as work:
        work = Path(work)
        detector_tmp, pose_tmp = work / out_path.name, work / pose_name
        _export_graph(deployed.detector, (trace_images,), DETECTOR_INPUTS, DETECTOR_OUTPUTS,
                      {'images': {0: 'batch'}, **{name: {0: 'batch'} for name in DETECTOR_OUTPUTS}},
                      _metadata(net, 'detector', pose_name, dict(source or {})), detector_tmp)
        trace_rois = torch.tensor([[0.0, 40.0, 30.0, 200.0, 420.0]])
        _export_graph(deployed.pose, (trace_images, trace_rois), POSE_INPUTS, POSE_OUTPUTS,
                      {'images': {0: 'batch'}, 'rois': {0: 'people'},
                       **{name: {0: 'people'} for name in POSE_OUTPUTS}},
                      _metadata(net, 'pose', pose_name, dict(source or {})), pose_tmp)
        reference = pipeline_torch_backend(net)
        candidate = pipeline_onnxruntime_backend(detector_tmp, device='cpu',
                                                 intra_op_threads=intra_op_threads)
        for backend in (reference, candidate):
            backend.pose_min_score = net.cfg.min_score
        batches = [image[None] for image in images] + [np.stack(images[:2])]
        ok, report = compare_graphs(reference, candidate, batches)
        report += '\n' + chain_difference(reference, candidate, batches[-1])
        # the pose graph alone at another N than the traced one (3 people, two images)
        rois = np.array([[0, 10, 20, 120, 300], [1, 200, 50, 330, 400], [0, 300, 100, 360, 220]], np.float32)
        pose_feeds = {'images': np.stack(images[:2]) if len(images) > 1 else np.repeat(images[0][None], 2, 0),
                      'rois': rois}
        pose_ref = reference.pose.run(pose_feeds)
        pose_onnx = candidate.pose.run(pose_feeds)
        worst_xy = float(np.abs(pose_ref['keypoints'][..., :2] - pose_onnx['keypoints'][..., :2]).max())
        worst_prob = max(float(np.abs(pose_ref[name] - pose_onnx[name]).max())
                         for name in ('keypoint_occluded', 'masks'))
        from occluded_ppe_ros.inference.export import PIXEL_TOLERANCE, PROBABILITY_TOLERANCE

        pose_ok = worst_xy <= PIXEL_TOLERANCE and worst_prob <= PROBABILITY_TOLERANCE
        report += (f'\npose graph alone, N=3 over 2 images: joints max |diff| {worst_xy:.3g} px '
                   f'(tolerance {PIXEL_TOLERANCE}), occlusion/mask probabilities {worst_prob:.3g} '
                   f'(tolerance {PROBABILITY_TOLERANCE}) -> {"ok" if pose_ok else "FAILED"}')
        ok &= pose_ok
        pose_path = out_path.parent / pose_name
        if not ok:
            failed_detector = out_path.with_name(f'{out_path.stem}.parity_failed.onnx')
            failed_pose = out_path.with_name(f'{out_path.stem}.pose.parity_failed.onnx')
            os.replace(detector_tmp, failed_detector)
            os.replace(pose_tmp, failed_pose)
            raise RuntimeError(f'pipeline export failed its parity gate; kept as {failed_detector} and '
                               f'{failed_pose}\n{report}')
        os.replace(pose_tmp, pose_path)
        os.replace(detector_tmp, out_path)
    LOG.info('exported %s + %s in %.1f s', out_path, pose_path, time.perf_counter() - began)
    return out_path, pose_path, report


def cached_pipeline_onnx(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The detector-graph path of a pipeline checkpoint's export.

    The shipped one beside it when it was made from this very file, else one made once per checkpoint
    sha256 in `onnx_cache/`.
    """
    from occluded_ppe_ros.inference.export import _writable_dir, sha256_of
    from occluded_ppe_ros.model.pipeline_checkpoint import pipeline_from_checkpoint

    checkpoint = Path(checkpoint)
    full_digest = sha256_of(checkpoint)
    shipped = shipped_export_of(checkpoint, full_digest)
    if shipped is not None:
        return shipped
    digest = full_digest[:16]
    folder = Path(cache_dir) if cache_dir else checkpoint.parent / 'onnx_cache'
    if not _writable_dir(folder):
        folder = Path(tempfile.gettempdir()) / 'occluded_ppe_onnx_cache'
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f'{checkpoint.stem}-{digest}-pipeline-opset{OPSET}.onnx'
    if target.is_file() and (folder / pose_graph_name(target)).is_file():
        return target
    net, _ = pipeline_from_checkpoint(checkpoint)
    export_pipeline(net, target, source={'checkpoint': str(checkpoint), 'sha256': full_digest})
    return target


def shipped_export_of(checkpoint: Path, sha256: str) -> Path | None:
    """`<stem>.onnx` beside the checkpoint when `ppe export` made it from exactly this file, else None.

    Exactly this file: the sha256 in its metadata matches, and its pose graph is there too (a stale or
    foreign export is ignored).
    """
    from occluded_ppe_ros.inference.backends.onnxruntime_backend import read_deploy_metadata

    candidate = checkpoint.with_suffix('.onnx')
    if not candidate.is_file() or not (candidate.parent / pose_graph_name(candidate)).is_file():
        return None
    try:
        metadata = read_deploy_metadata(candidate)
    except (ValueError, OSError):
        return None
    if metadata.pipeline.get('graph') != 'detector' or metadata.source.get('sha256') != sha256:
        return None
    return candidate
