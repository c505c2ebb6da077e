"""TensorRT engine building: cache keys and reuse (no TensorRT needed), int8 Q/DQ graphs, clean errors.

The TensorRT build and run themselves need tensorrt and an NVIDIA GPU: those tests skip cleanly here.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from occluded_ppe_ros.inference import tensorrt_engine as te

REPO_ROOT = Path(__file__).resolve().parents[1]


def _key(**changes) -> te.EngineKey:
    """A valid key; the precision-specific field (fp16 route, int8 calibration hash) follows the precision."""
    precision = changes.get('precision', 'fp16')
    fields = {'tensorrt_version': '10.13.0', 'compute_capability': '8.7', 'precision': precision,
              'input_shape': (1, 3, 480, 640), 'onnx_sha256': 'a' * 64,
              'fp16_route': f'{te.FP16_ROUTE_AUTOCAST}/0.33.0' if precision == 'fp16' else '',
              'calibration_sha256': 'c' * 64 if precision == 'int8' else ''}
    fields.update(changes)
    return te.EngineKey(**fields)


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / 'blob.bin'
    payload = bytes(range(256)) * 5000          # many 4 KiB chunks
    path.write_bytes(payload)
    assert te.sha256_file(path, chunk_bytes=4096) == hashlib.sha256(payload).hexdigest()


def test_key_digest_changes_with_every_field_and_only_then():
    base = _key()
    assert _key().digest == base.digest                     # same fields -> same digest
    assert _key(input_shape=[1, 3, 480, 640]).digest == base.digest   # list vs tuple is the same key
    changed = [_key(tensorrt_version='11.4.0'), _key(compute_capability='9.0'), _key(precision='int8'),
               _key(input_shape=(1, 3, 512, 640)), _key(input_shape=(2, 3, 480, 640)),
               _key(onnx_sha256='b' * 64), _key(fp16_route=te.FP16_ROUTE_BUILDER_FLAG),
               _key(fp16_route=f'{te.FP16_ROUTE_AUTOCAST}/0.35.0'),
               _key(precision='int8', calibration_sha256='d' * 64)]
    digests = {k.digest for k in changed}
    assert base.digest not in digests
    assert len(digests) == len(changed)


@pytest.mark.parametrize('bad, message', [
    ({'precision': 'fp8'}, 'precision'),
    ({'input_shape': (1, 1, 480, 640)}, 'input_shape'),
    ({'input_shape': (1, 3, 0, 640)}, 'input_shape'),
    ({'onnx_sha256': 'abc'}, 'onnx_sha256'),
    ({'fp16_route': ''}, 'fp16_route'),
    ({'precision': 'fp32', 'fp16_route': te.FP16_ROUTE_BUILDER_FLAG}, 'fp16_route'),
    ({'precision': 'int8', 'calibration_sha256': ''}, 'calibration_sha256'),
    ({'precision': 'fp32', 'calibration_sha256': 'c' * 64}, 'calibration_sha256'),
])
def test_key_rejects_bad_fields_naming_them(bad, message):
    with pytest.raises(ValueError, match=message):
        _key(**bad)


def test_cache_reuses_unchanged_key_and_rebuilds_changed_key(tmp_path):
    cache = te.EngineCache(tmp_path / 'engines')
    builds = []

    def build_for(tag: bytes):
        def build() -> bytes:
            builds.append(tag)
            return b'plan:' + tag
        return build

    first, built = cache.get_or_build(_key(), build_for(b'1'))
    assert built and first.read_bytes() == b'plan:1'
    again, built = cache.get_or_build(_key(), build_for(b'2'))
    assert not built and again == first and again.read_bytes() == b'plan:1'
    other, built = cache.get_or_build(_key(precision='int8'), build_for(b'3'))
    assert built and other != first and other.read_bytes() == b'plan:3'
    assert builds == [b'1', b'3']
    sidecar = json.loads(first.with_suffix('.json').read_text())
    assert sidecar == _key().to_dict()
    assert not list((tmp_path / 'engines').glob('*.tmp'))      # atomic writes leave no temporaries


def test_cache_ignores_an_engine_whose_sidecar_names_another_key(tmp_path):
    cache = te.EngineCache(tmp_path)
    path = cache.store(_key(), b'plan')
    path.with_suffix('.json').write_text(json.dumps(_key(tensorrt_version='9.9').to_dict()))
    assert cache.lookup(_key()) is None
    path.with_suffix('.json').write_text('{not json')
    assert cache.lookup(_key()) is None
    _, built = cache.get_or_build(_key(), lambda: b'fresh')
    assert built and cache.lookup(_key()).read_bytes() == b'fresh'


def test_engine_key_hashes_the_onnx_file(tmp_path):
    onnx_file = tmp_path / 'm.onnx'
    onnx_file.write_bytes(b'graph v1')
    key1 = te.engine_key(onnx_file, 'fp32', (1, 3, 64, 96), '10.13.0', (8, 7))
    onnx_file.write_bytes(b'graph v2')
    key2 = te.engine_key(onnx_file, 'fp32', (1, 3, 64, 96), '10.13.0', (8, 7))
    assert key1.onnx_sha256 == hashlib.sha256(b'graph v1').hexdigest()
    assert key1.compute_capability == '8.7'
    assert key1.digest != key2.digest


def test_engine_key_of_int8_changes_with_the_calibration_images(tmp_path):
    """Another calibration folder, or an edited, added or renamed image in it, is another int8 engine."""
    import cv2

    onnx_file = tmp_path / 'm.onnx'
    onnx_file.write_bytes(b'graph')
    first, second = tmp_path / 'calib_a', tmp_path / 'calib_b'
    for folder, seed in ((first, 0), (second, 1)):
        folder.mkdir()
        rng = np.random.default_rng(seed)
        for index in range(3):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            assert cv2.imwrite(str(folder / f'{index}.png'), pixels)
    (first / 'notes.txt').write_text('not an image: not part of the set')

    def key(folder: Path, max_images: int = 64) -> te.EngineKey:
        return te.engine_key(onnx_file, 'int8', (1, 3, 64, 96), '10.13.0', (8, 7),
                             calibration_sha256=te.calibration_set_sha256(folder, max_images))

    base = key(first)
    assert key(first).digest == base.digest
    (first / 'notes.txt').unlink()
    assert key(first).digest == base.digest
    digests = {key(second).digest, key(first, max_images=2).digest}
    (first / '2.png').rename(first / '9.png')
    digests.add(key(first).digest)
    image = cv2.imread(str(first / '0.png'))
    image[0, 0] = 255 - image[0, 0]
    assert cv2.imwrite(str(first / '0.png'), image)
    digests.add(key(first).digest)
    assert base.digest not in digests and len(digests) == 4
    # the sidecar the cache compares on lookup names the calibration hash too
    assert len(base.to_dict()['calibration_sha256']) == 64
    with pytest.raises(ValueError, match='no .* image'):
        te.calibration_set_sha256(tmp_path, 64)
    with pytest.raises(ValueError, match='not a directory'):
        te.calibration_set_sha256(tmp_path / 'missing', 64)


def test_fp16_route_names_autocast_with_its_version_else_the_builder_flag(monkeypatch):
    """The route is part of the fp16 key: ModelOpt AutoCast (versioned) and the weakly typed builder flag
    give different engines; without either there is no fp16 build."""
    import types
    from importlib import metadata

    class FlagsWithFP16:
        FP16 = 1

    class FlagsWithoutFP16:
        pass

    monkeypatch.setitem(sys.modules, 'modelopt.onnx.autocast', None)      # ModelOpt absent
    assert te.fp16_route(FlagsWithFP16) == te.FP16_ROUTE_BUILDER_FLAG
    with pytest.raises(te.TensorRTUnavailableError, match='nvidia-modelopt'):
        te.fp16_route(FlagsWithoutFP16)
    autocast = types.ModuleType('modelopt.onnx.autocast')
    autocast.convert_to_mixed_precision = lambda **kwargs: None
    for name in ('modelopt', 'modelopt.onnx'):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, 'modelopt.onnx.autocast', autocast)
    monkeypatch.setattr(metadata, 'version', lambda name: {'nvidia-modelopt': '0.33.1'}[name])
    assert te.fp16_route(FlagsWithFP16) == f'{te.FP16_ROUTE_AUTOCAST}/0.33.1'
    assert te.fp16_route(FlagsWithoutFP16) == f'{te.FP16_ROUTE_AUTOCAST}/0.33.1'
    onnx_file = Path(__file__)
    keys = {te.engine_key(onnx_file, 'fp16', (1, 3, 64, 96), '10.13.0', (8, 7), fp16_route=route).digest
            for route in (te.FP16_ROUTE_BUILDER_FLAG, f'{te.FP16_ROUTE_AUTOCAST}/0.33.1',
                          f'{te.FP16_ROUTE_AUTOCAST}/0.35.0')}
    assert len(keys) == 3


class _TinyConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, images):
        return self.conv2(torch.relu(self.conv1(images)))


def _export_tiny(path: Path, height: int = 32, width: int = 48,
                 dynamic_batch: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    net = _TinyConvNet().eval()
    axes = {'images': {0: 'batch'}, 'out': {0: 'batch'}} if dynamic_batch else None
    torch.onnx.export(net, (torch.rand(1, 3, height, width),), str(path), dynamo=False, opset_version=18,
                      input_names=['images'], output_names=['out'], dynamic_axes=axes)
    return net


def test_onnx_input_shape_reads_fixed_hw_and_fills_symbolic_batch(tmp_path):
    path = tmp_path / 'tiny.onnx'
    _export_tiny(path)
    assert te.onnx_input_shape(path, batch=4) == (4, 3, 32, 48)
    fixed = tmp_path / 'fixed.onnx'
    _export_tiny(fixed, dynamic_batch=False)
    assert te.onnx_input_shape(fixed, batch=4) == (1, 3, 32, 48)


def test_int8_qdq_graph_is_symmetric_and_close_to_fp32(tmp_path):
    import onnx
    import onnxruntime

    fp32 = tmp_path / 'tiny.onnx'
    net = _export_tiny(fp32)
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 1, size=(8, 3, 32, 48)).astype(np.float32)
    qdq = te.quantize_onnx_int8(fp32, tmp_path / 'tiny_int8.onnx', calibration)
    graph = onnx.load(str(qdq)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count('QuantizeLinear') >= 2 and ops.count('DequantizeLinear') >= 4
    initialisers = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    conv_biases = [node.input[2] for node in graph.node if node.op_type == 'Conv']
    assert len(conv_biases) == 2   # TensorRT wants float biases, not int32 Q/DQ ones
    assert all(initialisers[name].dtype == np.float32 for name in conv_biases)
    zero_points = [initialisers[node.input[2]] for node in graph.node
                   if node.op_type in ('QuantizeLinear', 'DequantizeLinear') and len(node.input) > 2]
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)
    image = calibration[:1]
    with torch.no_grad():
        reference = net(torch.from_numpy(image)).numpy()
    session = onnxruntime.InferenceSession(str(qdq), providers=['CPUExecutionProvider'])
    quantized = session.run(None, {'images': image})[0]
    # int8 with min/max calibration on the same distribution: error a few % of the output range.
    assert np.abs(quantized - reference).max() < 0.05 * np.abs(reference).max()


def test_calibration_images_are_letterboxed_like_the_predictor(tmp_path):
    import cv2

    from occluded_ppe_ros.inference.preprocess import letterbox

    rng = np.random.default_rng(0)
    rgb_images = [rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8),
                  rng.integers(0, 256, size=(50, 20, 3), dtype=np.uint8)]
    for index, rgb in enumerate(rgb_images):
        cv2.imwrite(str(tmp_path / f'{index}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / 'notes.txt').write_text('not an image')
    batch = te.calibration_images(tmp_path, (32, 64), max_images=10)
    assert batch.shape == (2, 3, 32, 64) and batch.dtype == np.float32
    for got, rgb in zip(batch, rgb_images):
        np.testing.assert_array_equal(got, letterbox(rgb, (32, 64))[0])
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ValueError, match='no readable'):
        te.calibration_images(empty, (32, 64), 10)
    with pytest.raises(ValueError, match='is not a directory'):
        te.calibration_images(tmp_path / 'missing', (32, 64), 10)


def test_build_engine_rejects_bad_arguments_before_needing_tensorrt(tmp_path):
    with pytest.raises(ValueError, match='precision'):
        te.build_engine(tmp_path / 'x.onnx', precision='fp8')
    with pytest.raises(ValueError, match='calib-dir'):
        te.build_engine(tmp_path / 'x.onnx', precision='int8')
    with pytest.raises(ValueError, match='does not exist'):
        te.build_engine(tmp_path / 'missing.onnx', precision='fp16')


def test_cli_without_tensorrt_or_gpu_prints_one_line_and_fails(tmp_path):
    if te.tensorrt_available():
        pytest.skip('tensorrt and a GPU are present: the missing-TensorRT error path cannot be shown')
    onnx_file = tmp_path / 'tiny.onnx'
    _export_tiny(onnx_file)
    result = subprocess.run([sys.executable, '-m', 'occluded_ppe_ros.cli', 'build-engine', '--onnx',
                             str(onnx_file), '--precision', 'fp16'], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('ppe build-engine: error:')
    assert 'tensorrt' in lines[0].lower() or 'gpu' in lines[0].lower()
    assert 'Traceback' not in result.stderr


def test_require_functions_raise_the_one_line_error_when_missing():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(te.TensorRTUnavailableError, match='tensorrt is not importable'):
            te.require_tensorrt()
    if not torch.cuda.is_available():
        with pytest.raises(te.TensorRTUnavailableError, match='no CUDA GPU'):
            te.require_cuda_device()
    if not te.tensorrt_available():
        assert te.tensorrt_available() is False


@pytest.fixture
def tensorrt_gpu():
    if not te.tensorrt_available():
        pytest.skip('needs tensorrt and an NVIDIA GPU (absent on this machine)')


def test_fp32_engine_builds_once_then_is_reused(tmp_path, tensorrt_gpu):
    onnx_file = tmp_path / 'tiny.onnx'
    _export_tiny(onnx_file)
    path, built = te.build_engine(onnx_file, precision='fp32', cache_dir=tmp_path / 'cache')
    assert built and path.stat().st_size > 0
    again, built = te.build_engine(onnx_file, precision='fp32', cache_dir=tmp_path / 'cache')
    assert again == path and not built


def test_int8_qdq_of_the_deployed_graph_runs_and_keeps_post_processing_float(tmp_path):
    """The QDQ graph TensorRT would build from: runs in ONNX Runtime, same contract, metadata kept."""
    import cv2
    import onnx

    from occluded_ppe_ros.inference import export
    from occluded_ppe_ros.inference.backends.onnxruntime_backend import (OnnxRuntimeBackend,
                                                                          read_deploy_metadata)
    from occluded_ppe_ros.model.config import ModelConfig
    from occluded_ppe_ros.model.network import build_model

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({
        'backbone': {'name': 'resnet18'}, 'fpn': {'channels': 16},
        'detection': {'head_channels': 8, 'pre_nms_topk': 12}, 'mask': {'roi_size': 7, 'resolution': 14,
                                                                        'channels': 8},
        'pose': {'roi_height': 8, 'roi_width': 6, 'encoder_channels': 16, 'encoder_convs': 1,
                 'decoder_channels': 8, 'domain_hidden': 8},
        'inference': {'input_height': 64, 'input_width': 96, 'max_detections': 4}})
    network = export.LoadedNetwork(build_model(cfg).eval(), cfg, {'test': 'int8'})
    deploy = export.build_deploy_module(network, 'citypersons', 4)
    fp32 = export.export_onnx(deploy, export.deploy_metadata(network, 'citypersons', (64, 96), 4),
                              tmp_path / 'deploy.onnx')
    calib_dir = tmp_path / 'calib'
    calib_dir.mkdir()
    for seed in range(3):
        rgb = (export.synthetic_image(80, 100, seed).transpose(1, 2, 0) * 255).astype(np.uint8)
        cv2.imwrite(str(calib_dir / f'{seed}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    calibration = te.calibration_images(calib_dir, (64, 96), max_images=8)
    qdq = te.quantize_onnx_int8(fp32, tmp_path / 'deploy_int8.onnx', calibration)

    graph = onnx.load(str(qdq)).graph
    produced_by = {output: node.op_type for node in graph.node for output in node.output}
    assert sum(node.op_type == 'QuantizeLinear' for node in graph.node) > 10
    for node in graph.node:
        if node.op_type in ('RoiAlign', 'TopK', 'NonMaxSuppression'):
            assert produced_by.get(node.input[0]) != 'DequantizeLinear', node.name
    assert read_deploy_metadata(qdq) == read_deploy_metadata(fp32)
    images = calibration[:2]
    reference = OnnxRuntimeBackend(fp32, device='cpu').run(images)
    quantized = OnnxRuntimeBackend(qdq, device='cpu').run(images)
    for name, value in reference.items():
        assert quantized[name].shape == value.shape and quantized[name].dtype == value.dtype, name
    assert np.isfinite(quantized['boxes']).all() and quantized['valid'].sum() == reference['valid'].sum()
