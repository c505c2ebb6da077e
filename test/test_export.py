"""ONNX export: ONNX Runtime parity with PyTorch on images and image sizes not used for the export.

A tiny random ResNet-18 network keeps every export to a few seconds.
"""
from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import TINY_STRIDE4, tiny_model_config
import torch
import yaml

from occluded_ppe_ros.inference import export
from occluded_ppe_ros.inference.backends.onnxruntime_backend import (OUTPUT_NAMES, OnnxRuntimeBackend,
                                                                      read_deploy_metadata)
from occluded_ppe_ros.model.config import ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL = tiny_model_config(TINY_STRIDE4, 'citypersons', 96, 128, max_detections=5)


@pytest.fixture(scope='module')
def tiny_network() -> export.LoadedNetwork:
    from occluded_ppe_ros.model.network import build_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(TINY_MODEL)
    return export.LoadedNetwork(build_model(cfg).eval(), cfg, {'test': 'tiny random'})


def _export(network: export.LoadedNetwork, path: Path, size: tuple[int, int], domain: str = 'citypersons',
            dynamic_batch: bool = True):
    deploy = export.build_deploy_module(network, domain, 5)
    metadata = export.deploy_metadata(network, domain, size, 5)
    export.export_onnx(deploy, metadata, path, dynamic_batch=dynamic_batch)
    return deploy


def test_onnx_runtime_matches_pytorch_at_two_input_sizes(tiny_network, tmp_path):
    """Export at 96x128, re-export at 128x96: each graph matches PyTorch on images it was not traced on."""
    for size in ((96, 128), (128, 96)):
        path = tmp_path / f'tiny_{size[0]}x{size[1]}.onnx'
        deploy = _export(tiny_network, path, size)
        batches = export.gate_batches(size, dynamic_batch=True)
        assert [b.shape for b in batches] == [(1, 3, *size), (2, 3, *size)]
        ok, report = export.parity_check(deploy, path, batches, intra_op_threads=2)
        assert ok, report
        # The gate is not vacuous: detections exist and every contract-4 output was compared.
        outputs = OnnxRuntimeBackend(path, device='cpu', intra_op_threads=2).run(batches[1])
        assert outputs['valid'].sum() > 0
        assert outputs['boxes'].shape == (2, 5, 4) and outputs['masks'].shape == (2, 5, 14, 14)
        assert outputs['keypoints'].shape == (2, 5, 13, 3) and outputs['labels'].dtype == np.int64
        for name in ('boxes', 'scores', 'labels', 'masks', 'keypoints', 'keypoint_occluded'):
            assert name.split('_')[0] in report


def _pose_variant_exports_with_parity(tmp_path, seed: int, name: str, **pose) -> export.LoadedNetwork:
    """Export TINY_MODEL with these pose keys changed at 96 x 128 and assert ONNX Runtime = PyTorch.

    Returns the exported network, for checks of the variant's own structure.
    """
    from occluded_ppe_ros.model.network import build_model

    config = copy.deepcopy(TINY_MODEL)
    config['pose'].update(pose)
    torch.manual_seed(seed)
    cfg = ModelConfig.from_dict(config)
    network = export.LoadedNetwork(build_model(cfg).eval(), cfg, {'test': f'tiny {name}'})
    path = tmp_path / f'{name.replace(" ", "_")}.onnx'
    deploy = _export(network, path, (96, 128))
    ok, report = export.parity_check(deploy, path, export.gate_batches((96, 128), dynamic_batch=True),
                                     intra_op_threads=2)
    assert ok, report
    return network


def test_dilated_pose_encoder_with_global_context_exports_with_parity(tmp_path):
    """pose.encoder_dilations and pose.global_context keep the ONNX graph equal to PyTorch."""
    network = _pose_variant_exports_with_parity(tmp_path, 1, 'dilated', encoder_dilations=[1, 2],
                                                global_context=True)
    assert network.model.pose.encoder[3].dilation == (2, 2) and network.model.pose.context is not None


def test_window_mean_subcell_decoding_exports_with_parity(tmp_path):
    """pose.subcell_decoding 'window_mean' (window sums by average pooling, a 4-d gather) in ONNX."""
    _pose_variant_exports_with_parity(tmp_path, 3, 'window mean', subcell_decoding='window_mean')


def test_pose_detail_skip_exports_with_parity(tmp_path):
    """pose.detail_channels (image RoIAlign at the heatmap grid, bilinear gate resampling) in ONNX."""
    network = _pose_variant_exports_with_parity(tmp_path, 4, 'detail skip', detail_channels=8)
    assert network.model.pose.detail is not None and network.model.pose.fuse is not None


def test_movenet_keypoint_features_export_with_parity(tmp_path):
    """fpn.movenet_keypoint_features (MoveNet's pyramid and heatmap head, bilinear upsampling) in ONNX."""
    from occluded_ppe_ros.model.network import build_model

    config = copy.deepcopy(TINY_MODEL)
    config['backbone'] = {'name': 'mobilenet_v2', 'tf_same_padding': True, 'frozen_batchnorm': True}
    config['fpn'] = {'channels': 16, 'movenet_keypoint_features': True}
    torch.manual_seed(2)
    cfg = ModelConfig.from_dict(config)
    network = export.LoadedNetwork(build_model(cfg).eval(), cfg, {'test': 'tiny movenet decoder'})
    encoder = network.model.branches['citypersons'].encoder
    assert encoder.out_channels == 16 + 41
    assert not any(p.requires_grad for p in encoder.keypoint_decoder.parameters())
    path = tmp_path / 'movenet_features.onnx'
    deploy = _export(network, path, (96, 128))
    ok, report = export.parity_check(deploy, path, export.gate_batches((96, 128), dynamic_batch=True),
                                     intra_op_threads=2)
    assert ok, report


def test_fixed_size_graph_rejects_another_size_with_a_clear_error(tiny_network, tmp_path):
    path = tmp_path / 'tiny.onnx'
    _export(tiny_network, path, (96, 128))
    backend = OnnxRuntimeBackend(path, device='cpu', intra_op_threads=1)
    with pytest.raises(ValueError, match=r'takes images \[B, 3, 96, 128\], got \[1, 3, 128, 96\]'):
        backend.run(np.zeros((1, 3, 128, 96), np.float32))


def test_fixed_batch_export_and_onnx_io_description(tiny_network, tmp_path):
    path = tmp_path / 'fixed.onnx'
    deploy = _export(tiny_network, path, (96, 128), domain='coco', dynamic_batch=False)
    lines = export.describe_onnx_io(path)
    assert lines[0].split() == ['input', 'images', '[1,', '3,', '96,', '128]', 'float32']
    assert [line.split()[1] for line in lines[1:]] == list(OUTPUT_NAMES)
    assert 'output keypoints          [1, 5, 13, 3] float32' in lines
    ok, report = export.parity_check(deploy, path, export.gate_batches((96, 128), dynamic_batch=False))
    assert ok, report


def test_metadata_makes_the_onnx_file_self_describing(tiny_network, tmp_path):
    path = tmp_path / 'tiny.onnx'
    _export(tiny_network, path, (128, 96), domain='coco')
    meta = read_deploy_metadata(path)
    assert meta.domain == 'coco' and meta.class_names == ['person']
    assert meta.input_size == (128, 96) and meta.max_detections == 5
    assert meta.output_names == OUTPUT_NAMES
    assert meta.normalisation['kind'] == 'imagenet' and meta.normalisation['mean'] == [0.485, 0.456, 0.406]
    restored = ModelConfig.from_dict(meta.model_config)
    assert restored.backbone == tiny_network.config.backbone
    assert (restored.inference.input_height, restored.inference.input_width) == (128, 96)


def test_deploy_output_names_match_the_backend_contract():
    from occluded_ppe_ros.model.deploy import OUTPUT_NAMES as MODEL_OUTPUT_NAMES

    assert MODEL_OUTPUT_NAMES == OUTPUT_NAMES


def _outputs(k: int = 3, valid_count: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    valid = np.zeros((1, k), bool)
    valid[0, :valid_count] = True
    return {'boxes': rng.uniform(0, 100, (1, k, 4)).astype(np.float32),
            'scores': rng.uniform(0, 1, (1, k)).astype(np.float32),
            'labels': np.zeros((1, k), np.int64), 'valid': valid,
            'masks': rng.uniform(0, 1, (1, k, 4, 4)).astype(np.float32),
            'keypoints': rng.uniform(0, 100, (1, k, 13, 3)).astype(np.float32),
            'keypoint_occluded': rng.uniform(0, 1, (1, k, 13)).astype(np.float32)}


def _failed(rows) -> set[str]:
    return {row.name for row in rows if not row.ok}


@pytest.mark.parametrize('change, expected', [
    (lambda o: o['boxes'].__setitem__((0, 1, 2), o['boxes'][0, 1, 2] + 0.02), {'boxes (px)'}),
    (lambda o: o['keypoints'].__setitem__((0, 0, 5, 1), o['keypoints'][0, 0, 5, 1] - 0.02),
     {'keypoints x,y (px)'}),
    (lambda o: o['scores'].__setitem__((0, 0), o['scores'][0, 0] + 2e-4), {'scores'}),
    (lambda o: o['keypoints'].__setitem__((0, 0, 5, 2), o['keypoints'][0, 0, 5, 2] + 2e-4),
     {'keypoint scores'}),
    (lambda o: o['masks'].__setitem__((0, 1, 0, 0), 2.0), {'masks (prob)'}),
    (lambda o: o['labels'].__setitem__((0, 0), 1), {'labels'}),
    (lambda o: o['valid'].__setitem__((0, 2), True), {'valid', 'valid count'}),
    (lambda o: o['scores'].__setitem__((0, 0), np.nan), {'scores'}),
])
def test_compare_outputs_flags_each_kind_of_mismatch(change, expected):
    reference = _outputs()
    candidate = {name: value.copy() for name, value in reference.items()}
    change(candidate)
    assert _failed(export.compare_outputs(reference, candidate)) == expected


def test_compare_outputs_accepts_within_tolerance_and_ignores_padded_rows():
    reference = _outputs()
    candidate = {name: value.copy() for name, value in reference.items()}
    candidate['boxes'][0, :2] += 0.009                 # < 1e-2 px
    candidate['scores'][0, :2] += 9e-5                 # < 1e-4
    candidate['boxes'][0, 2] += 50.0                   # padded row (valid False): not compared
    candidate['scores'][0, 2] = -3.0
    rows = export.compare_outputs(reference, candidate)
    assert not _failed(rows)
    boxes_row = next(row for row in rows if row.name == 'boxes (px)')
    assert boxes_row.shape == (2, 4) and boxes_row.max_abs_diff == pytest.approx(0.009, abs=1e-5)


def test_synthetic_images_are_deterministic_and_distinct():
    a = export.synthetic_image(64, 96, seed=1)
    assert a.shape == (3, 64, 96) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, export.synthetic_image(64, 96, seed=1))
    assert np.abs(a - export.synthetic_image(64, 96, seed=2)).mean() > 0.05


def test_checkpoint_export_cache_reuses_and_rekeys(tmp_path):
    from occluded_ppe_ros.model.checkpoint import save_checkpoint
    from occluded_ppe_ros.model.network import build_model

    torch.manual_seed(1)
    cfg = ModelConfig.from_dict(TINY_MODEL)
    checkpoint = save_checkpoint(tmp_path / 'tiny.pt', build_model(cfg))
    cache = tmp_path / 'cache'
    first = export.cached_onnx_for_checkpoint(checkpoint, cache_dir=cache, input_size=(64, 96))
    stamp = first.stat().st_mtime_ns
    again = export.cached_onnx_for_checkpoint(checkpoint, cache_dir=cache, input_size=(64, 96))
    assert again == first and again.stat().st_mtime_ns == stamp            # reused, not re-exported
    meta = read_deploy_metadata(first)
    assert meta.source['sha256'] == export.sha256_of(checkpoint) and meta.input_size == (64, 96)
    torch.manual_seed(2)
    save_checkpoint(checkpoint, build_model(cfg))                          # retrained: new bytes, new key
    retrained = export.cached_onnx_for_checkpoint(checkpoint, cache_dir=cache, input_size=(64, 96))
    assert retrained != first and first.exists()
    assert read_deploy_metadata(retrained).source['sha256'] == export.sha256_of(checkpoint)
    assert not list(cache.glob('*.tmp'))


def test_cli_export_from_a_config_runs_from_the_repo(tmp_path):
    config = tmp_path / 'model_tiny.yaml'
    config.write_text(yaml.safe_dump({'model': TINY_MODEL}))
    out = tmp_path / 'cli.onnx'
    result = subprocess.run([sys.executable, '-m', 'occluded_ppe_ros.cli', 'export', '--config', str(config),
                             '--out', str(out), '--input-size', '64x96', '--threads', '1'],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'input  images             [batch, 3, 64, 96] float32' in result.stdout
    assert 'parity check 2: images [2, 3, 64, 96]' in result.stdout
    assert 'parity: ONNX Runtime matches PyTorch' in result.stdout
    assert read_deploy_metadata(out).input_size == (64, 96)


@pytest.mark.parametrize('gate_passes', [True, False], ids=['passes', 'fails'])
def test_cli_export_writes_out_only_after_the_parity_gate(tmp_path, monkeypatch, capsys, gate_passes):
    """While the gate runs nothing is at --out; a failing export ends up under a name saying so."""
    config = tmp_path / 'model_tiny.yaml'
    config.write_text(yaml.safe_dump({'model': TINY_MODEL}))
    out = tmp_path / 'exports' / 'model.onnx'
    seen_by_gate = []
    real_parity_check = export.parity_check

    def recording_gate(deploy, onnx_path, batches, intra_op_threads=0):
        seen_by_gate.append((Path(onnx_path), out.exists()))
        ok, report = real_parity_check(deploy, onnx_path, batches, intra_op_threads)
        return ok and gate_passes, report

    monkeypatch.setattr(export, 'parity_check', recording_gate)
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    args = parser.parse_args(['--config', str(config), '--out', str(out), '--input-size', '64x96',
                              '--threads', '1', '--fixed-batch'])
    code = export.run(args)
    printed = capsys.readouterr().out
    ((gated_file, out_existed_during_gate),) = seen_by_gate
    assert not out_existed_during_gate and gated_file.parent == out.parent and gated_file != out
    failed = out.parent / 'model.parity_failed.onnx'
    if gate_passes:
        assert code == 0 and out.is_file() and not failed.exists()
        assert read_deploy_metadata(out).input_size == (64, 96)
    else:
        assert code == 1 and not out.exists() and failed.is_file()
        (line,) = [line for line in printed.splitlines() if 'PARITY FAILED' in line]
        assert f'not written to {out}' in line and str(failed) in line
    assert sorted(p.name for p in out.parent.iterdir()) == [(out if gate_passes else failed).name]


def test_cli_export_errors_name_the_bad_value(tmp_path, capsys):
    missing = tmp_path / 'nope.yaml'
    result = subprocess.run([sys.executable, '-m', 'occluded_ppe_ros.cli', 'export', '--config', str(missing),
                             '--out', str(tmp_path / 'x.onnx')], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and str(missing) in result.stdout
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(['--config', 'x.yaml', '--out', 'x.onnx', '--input-size', '100x96'])
    assert '100x96: H and W must be positive multiples of 32' in capsys.readouterr().err
