"""Backends behind contract 4: torch and ONNX Runtime give the same outputs and the same Pedestrians.

TensorRT cases live at the end and skip cleanly without tensorrt and a GPU.
"""
from __future__ import annotations

import numpy as np
import pytest
from tiny_models import TINY_STRIDE4, tiny_model_config
import torch

from occluded_ppe_ros.inference import export
from occluded_ppe_ros.inference.backends import Backend, create_backend
from occluded_ppe_ros.inference.backends.onnxruntime_backend import (OUTPUT_NAMES, OnnxRuntimeBackend,
                                                                      choose_providers)
from occluded_ppe_ros.inference.tensorrt_engine import tensorrt_available
from occluded_ppe_ros.model.config import ModelConfig

TINY_MODEL = tiny_model_config(TINY_STRIDE4, 'citypersons', 64, 96, max_detections=4)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    """A random tiny checkpoint and its ONNX export (through the backends' .pt -> .onnx cache)."""
    from occluded_ppe_ros.model.checkpoint import save_checkpoint
    from occluded_ppe_ros.model.network import build_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp('backends')
    checkpoint = save_checkpoint(folder / 'tiny.pt', build_model(ModelConfig.from_dict(TINY_MODEL)))
    return checkpoint, export.cached_onnx_for_checkpoint(checkpoint)


def _images(batch: int, height: int = 64, width: int = 96) -> np.ndarray:
    return np.stack([export.synthetic_image(height, width, seed=10 + i) for i in range(batch)])


def test_torch_and_onnxruntime_backends_give_the_same_outputs(tiny_checkpoint):
    checkpoint, _ = tiny_checkpoint
    torch_backend = create_backend('torch', checkpoint)
    ort_backend = create_backend('onnxruntime', checkpoint)          # .pt -> cached export
    for backend in (torch_backend, ort_backend):
        assert isinstance(backend, Backend)
        assert backend.input_size == (64, 96)
        assert list(backend.class_names) == ['pedestrian', 'rider']
    assert (torch_backend.name, ort_backend.name) == ('torch', 'onnxruntime')
    images = _images(3)                                              # a batch size never traced
    reference, candidate = torch_backend.run(images), ort_backend.run(images)
    assert set(candidate) == set(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        assert candidate[name].dtype == reference[name].dtype, name
        assert candidate[name].shape == reference[name].shape, name
    rows = export.compare_outputs(reference, candidate)
    assert all(row.ok for row in rows), export.format_parity_table('torch vs onnxruntime', rows)
    assert reference['valid'].sum() > 0


def test_predictor_on_an_onnx_file_matches_the_torch_predictor(tiny_checkpoint):
    from occluded_ppe_ros.inference.predictor import Predictor

    checkpoint, onnx_path = tiny_checkpoint
    by_torch = Predictor.from_checkpoint(checkpoint, backend='torch', score_threshold=0.0)
    by_onnx = Predictor.from_checkpoint(onnx_path, backend='onnxruntime', score_threshold=0.0)
    assert by_onnx.backend.name == 'onnxruntime' and by_onnx.input_size == (64, 96)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(100, 150, 3), dtype=np.uint8),
              rng.integers(0, 256, size=(70, 60, 3), dtype=np.uint8)]
    for expected, got in zip(by_torch.predict_batch(images), by_onnx.predict_batch(images)):
        assert len(got) == len(expected) > 0
        for a, b in zip(expected, got):
            assert (a.class_id, a.class_name) == (b.class_id, b.class_name)
            assert abs(a.score - b.score) < 1e-4
            np.testing.assert_allclose(b.box, a.box, atol=2e-2)       # image pixels (scaled up from input)
            np.testing.assert_allclose(b.keypoints, a.keypoints, atol=2e-2)
            np.testing.assert_allclose(b.keypoint_scores, a.keypoint_scores, atol=1e-4)
            assert b.mask.shape == a.mask.shape
            assert (b.mask == a.mask).mean() > 0.99


def test_auto_picks_onnxruntime_without_tensorrt(tiny_checkpoint):
    if tensorrt_available():
        pytest.skip('tensorrt and a GPU are present: auto picks TensorRT here')
    _, onnx_path = tiny_checkpoint
    assert create_backend('auto', onnx_path).name == 'onnxruntime'


def test_onnxruntime_backend_threads_and_providers(tiny_checkpoint):
    _, onnx_path = tiny_checkpoint
    backend = OnnxRuntimeBackend(onnx_path, device='cpu', intra_op_threads=1)
    assert backend.providers == ['CPUExecutionProvider']
    assert backend.session.get_session_options().intra_op_num_threads == 1
    assert backend.session.get_session_options().get_session_config_entry(
        'session.intra_op.allow_spinning') == '0'
    assert backend.metadata.source['sha256'] == export.sha256_of(tiny_checkpoint[0])
    with pytest.raises(ValueError, match='intra_op_threads'):
        OnnxRuntimeBackend(onnx_path, intra_op_threads=-1)


def test_cuda_device_without_a_cuda_provider_is_a_clear_error():
    import onnxruntime

    if 'CUDAExecutionProvider' in onnxruntime.get_available_providers():
        pytest.skip('this onnxruntime has CUDA')
    with pytest.raises(ValueError, match='onnxruntime-gpu'):
        choose_providers('cuda')
    assert choose_providers('auto') == ['CPUExecutionProvider']


def test_onnx_without_deploy_metadata_is_rejected_naming_the_file(tmp_path):
    conv = torch.nn.Conv2d(3, 1, 1)
    path = tmp_path / 'plain.onnx'
    torch.onnx.export(conv, (torch.rand(1, 3, 8, 8),), str(path), dynamo=False, opset_version=18,
                      input_names=['images'], output_names=['out'])
    with pytest.raises(ValueError, match=f'{path}.*ppe export'):
        OnnxRuntimeBackend(path)


def test_torch_backend_rejects_an_onnx_file(tiny_checkpoint):
    with pytest.raises(ValueError, match='needs a .pt checkpoint'):
        create_backend('torch', tiny_checkpoint[1])


@pytest.fixture
def tensorrt_gpu():
    if not tensorrt_available():
        pytest.skip('needs tensorrt and an NVIDIA GPU (absent on this machine)')


def test_tensorrt_backend_matches_onnxruntime(tiny_checkpoint, tensorrt_gpu, tmp_path):
    from occluded_ppe_ros.inference.backends.tensorrt_backend import TensorRTBackend
    from occluded_ppe_ros.inference.tensorrt_engine import build_engine

    _, onnx_path = tiny_checkpoint
    engine, _ = build_engine(onnx_path, precision='fp32', cache_dir=tmp_path)
    backend = TensorRTBackend(engine, onnx_path)
    assert backend.input_size == (64, 96) and backend.class_names == ['pedestrian', 'rider']
    images = _images(2)                                     # two chunks of the batch-1 engine
    reference = OnnxRuntimeBackend(onnx_path, device='cpu').run(images)
    rows = export.compare_outputs(reference, backend.run(images))
    # TF32 / kernel choice on the GPU: looser than the CPU gate, still well inside a pixel.
    assert all(row.ok or row.max_abs_diff < 0.05 for row in rows if row.name not in ('valid', 'valid count'))
    assert create_backend('auto', onnx_path).name == 'tensorrt'
