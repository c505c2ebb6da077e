"""MoveNet SinglePose imported into `MoveNetSinglePose`, checked numerically against the original model.

References, each independent of the torch module under test:
- Thunder: the ONNX conversion of Google's TF.js graph (models/peers/movenet_thunder.onnx, float16
  weights, float32 compute) in ONNX Runtime, on square crops around the people of the five CC BY sample
  photos: the decoded joints, and the pyramid output and the four head maps (exposed as extra graph
  outputs).
- Lightning (no ONNX conversion ships): the original graph's output on two such crops, stored in
  test/data/movenet_reference/lightning_single_pose.npz by tools/make_single_pose_reference.py (Google's
  graph run node by node by tools/tfjs_graph_reference.py), and the original's backbone features
  (lightning_features_129648.npz, as test_pretrained_import.py). Where the npm package is at hand
  (PPE_HUMAN_MODELS or /tmp/human-models), that graph interpreter is itself checked against ONNX Runtime
  on Thunder, and run live on Lightning.
- Our ONNX export (opset 18, dynamic batch): exported at N = 1, run at N = 3 in ONNX Runtime.
Measured (2026-12-04): Thunder's decoded joints within 3.1e-5 px of the original (256 px crops), scores
within 1.7e-6; features, centre and heatmap maps within 8e-6, regression and offset maps (in cells)
within 1.3e-4. Lightning's joints within 2.3e-5 px (192 px crops).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from occluded_ppe_ros.model import pretrained_import as pi
from occluded_ppe_ros.model.movenet import (MOVENET_SINGLE_POSE_VARIANTS, MoveNetSinglePose,
                                            center_weight_map, decode_single_pose,
                                            load_movenet_single_pose)

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / 'tools'))   # the person crops and the TF.js graph interpreter

from make_single_pose_reference import PERSON_BOXES_XYWH, person_crop  # noqa: E402

PRETRAINED_DIR = REPO_ROOT / 'models' / 'pretrained'
THUNDER_ONNX = REPO_ROOT / 'models' / 'peers' / 'movenet_thunder.onnx'
REFERENCE_DIR = REPO_ROOT / 'test' / 'data' / 'movenet_reference'
HUMAN_MODELS = Path(os.environ.get('PPE_HUMAN_MODELS', '/tmp/human-models/package/models'))
# Both sides use the same float16 weight values in float32; what differs is summation order. Measured
# 3.1e-5 px = 1.2e-7 normalised on the joints; 1e-4 normalised (0.026 px) leaves room for other CPUs'
# kernels while still failing on any wrong weight, layout or decoding step (those move joints by cells).
JOINT_TOLERANCE = 1e-4        # normalised coordinates and scores
HEAD_TOLERANCE = 2e-3         # head maps and features (measured ~1e-5; values up to ~10)

torch.set_num_threads(2)


def require(*paths: Path) -> None:
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        pytest.skip(f'needs {missing}')


def crops_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] RGB -> float [N, 3, S, S] in [0, 1] (the module's input)."""
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255


def thunder_session(with_heads: bool):
    """ONNX Runtime session of the original Thunder; with_heads adds the pyramid output and head maps.

    tf2onnx names tensors after the TF nodes plus a generated suffix; they are found by pattern, in
    NCHW (tf2onnx transposes the convolutions' NHWC outputs).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(THUNDER_ONNX))
    names = {}
    if with_heads:
        patterns = {
            'features': r'model_1/re_lu_2/Relu_Relu__\d+:0',
            'center': r'StatefulPartitionedCall/Sigmoid_1:0',
            'heatmap': r'StatefulPartitionedCall/Sigmoid:0',
            'regress': r'kpt_regress_0/conv2d_6/BiasAdd_BiasAdd__\d+:0',
            'offset': r'kpt_offset_0/conv2d_7/BiasAdd_BiasAdd__\d+:0',
        }
        tensors = [output for node in model.graph.node for output in node.output]
        for key, pattern in patterns.items():
            found = [name for name in tensors if re.search(pattern + '$', name)]
            assert len(found) == 1, (key, found)
            names[key] = found[0]
            model.graph.output.append(onnx.ValueInfoProto(name=found[0]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options), names


@pytest.fixture(scope='module')
def thunder() -> MoveNetSinglePose:
    require(PRETRAINED_DIR / 'movenet_thunder.pt')
    return load_movenet_single_pose('thunder')


@pytest.fixture(scope='module')
def thunder_crops() -> np.ndarray:
    return np.stack([person_crop(photo, 256) for photo in PERSON_BOXES_XYWH])


# ------------------------------------------------------------------------------------------------
# Thunder against the original (ONNX Runtime)
# ------------------------------------------------------------------------------------------------

def test_thunder_matches_the_original_on_person_crops(thunder, thunder_crops):
    require(THUNDER_ONNX)
    session, head_names = thunder_session(with_heads=True)
    with torch.no_grad():                       # all five crops in one batch: N = 5
        heads = thunder.forward_features(crops_tensor(thunder_crops))
        joints = thunder.decode(heads).numpy()
    assert joints.shape == (5, 17, 3) and heads['features'].shape == (5, 24, 64, 64)
    joint_diff, score_diff, head_diff = 0.0, 0.0, dict.fromkeys(head_names, 0.0)
    for index, crop in enumerate(thunder_crops):
        outputs = session.run(['Identity:0', *head_names.values()], {'input:0': crop[None].astype(np.int32)})
        reference = outputs[0].reshape(17, 3)
        assert reference[:, 2].mean() > 0.3     # a person is there: the original is confident
        joint_diff = max(joint_diff, float(np.abs(joints[index, :, :2] - reference[:, :2]).max()))
        score_diff = max(score_diff, float(np.abs(joints[index, :, 2] - reference[:, 2]).max()))
        for key, value in zip(head_names, outputs[1:]):
            head_diff[key] = max(head_diff[key], float(np.abs(heads[key][index].numpy() - value[0]).max()))
    print(f'Thunder vs original: joints {joint_diff * 256:.2e} px, scores {score_diff:.2e}, '
          f'heads {head_diff}')
    assert joint_diff < JOINT_TOLERANCE and score_diff < JOINT_TOLERANCE
    assert max(head_diff.values()) < HEAD_TOLERANCE, head_diff


def test_exported_thunder_runs_at_another_batch_in_onnxruntime(thunder, thunder_crops, tmp_path):
    import onnxruntime as ort

    require(THUNDER_ONNX)
    path = tmp_path / 'movenet_thunder.onnx'
    torch.onnx.export(thunder, (crops_tensor(thunder_crops[:1]),), str(path), dynamo=False, opset_version=18,
                      input_names=['images'], output_names=['keypoints'],
                      dynamic_axes={'images': {0: 'batch'}, 'keypoints': {0: 'batch'}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options)
    batch = thunder_crops[1:4]                  # N = 3, other crops than the export's
    got = session.run(None, {'images': crops_tensor(batch).numpy()})[0]
    with torch.no_grad():
        expected = thunder(crops_tensor(batch)).numpy()
    assert got.shape == (3, 17, 3)
    assert float(np.abs(got - expected).max()) < JOINT_TOLERANCE
    original, _ = thunder_session(with_heads=False)
    for index, crop in enumerate(batch):
        reference = original.run(None, {'input:0': crop[None].astype(np.int32)})[0].reshape(17, 3)
        assert float(np.abs(got[index] - reference).max()) < JOINT_TOLERANCE


# ------------------------------------------------------------------------------------------------
# Lightning against the original (stored outputs of its graph; its backbone features)
# ------------------------------------------------------------------------------------------------

def test_lightning_matches_the_originals_stored_output():
    reference_path = REFERENCE_DIR / 'lightning_single_pose.npz'
    require(PRETRAINED_DIR / 'movenet_lightning.pt', reference_path)
    reference = np.load(reference_path)
    model = load_movenet_single_pose('lightning')
    with torch.no_grad():
        got = model(crops_tensor(reference['crops_rgb'])).numpy()
    expected = reference['keypoints_yxs']
    assert got.shape == expected.shape == (2, 17, 3)
    difference = np.abs(got - expected)
    print(f'Lightning vs original: joints {difference[..., :2].max() * 192:.2e} px, '
          f'scores {difference[..., 2].max():.2e}')
    assert difference.max() < JOINT_TOLERANCE


def test_lightning_body_matches_the_originals_features_and_the_backbone_file():
    features_path = REFERENCE_DIR / 'lightning_features_129648.npz'
    backbone_path = PRETRAINED_DIR / 'movenet_lightning_mobilenet_v2.pt'
    require(PRETRAINED_DIR / 'movenet_lightning.pt', features_path, backbone_path)
    model = load_movenet_single_pose('lightning')
    reference = np.load(features_path)
    crop = torch.from_numpy(reference['crop_rgb']).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        maps = model.body(crop * model.input_scale - 1.0)
    keys = ('stride4_features3', 'stride8_features6', 'stride16_features13', 'stride32_features18')
    for key, got in zip(keys, maps):
        assert float(np.abs(got.numpy() - reference[key]).max()) < 5e-3, key   # as test_pretrained_import
    # the whole-model file carries exactly the backbone file's body and pyramid tensors
    backbone = pi.load_pretrained_checkpoint(backbone_path)
    whole = pi.load_pretrained_checkpoint(PRETRAINED_DIR / 'movenet_lightning.pt')
    for part in ('state_dict', 'decoder_state_dict'):
        assert backbone[part].keys() == whole[part].keys()
        for key in backbone[part]:
            torch.testing.assert_close(whole[part][key], backbone[part][key], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# The checkpoints, the configuration and the decoding on its own
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('variant, size, width, stride4_channels', [('thunder', 256, 1.75, 40),
                                                                     ('lightning', 192, 1.0, 24)])
def test_shipped_checkpoint_describes_the_variant(variant, size, width, stride4_channels):
    path = PRETRAINED_DIR / f'movenet_{variant}.pt'
    require(path)
    checkpoint = pi.load_pretrained_checkpoint(path)
    assert checkpoint['licence'] == 'Apache-2.0' and 'Apache License 2.0' in checkpoint['attribution']
    assert f'singlepose/{variant}' in checkpoint['source_url']
    assert checkpoint['single_pose_config'] == MOVENET_SINGLE_POSE_VARIANTS[variant].to_dict()
    raw = torch.load(path, map_location='cpu', weights_only=True)
    assert raw['heads_state_dict']['center_head.output.weight'].dtype == torch.float16   # stored float16
    model = load_movenet_single_pose(path)
    assert model.cfg.input_size == size and model.cfg.width_mult == width
    assert model.body.out_channels[0] == stride4_channels and model.feature_channels == 24
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the graph's centre weighting is 1 / (distance to the centre cell + 1.8), stored as float16
    torch.testing.assert_close(model.center_weight, center_weight_map(size // 4), rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match=rf'\[N, 3, {size}, {size}\].*\(1, 3, 64, 64\)'):
        model(torch.zeros(1, 3, 64, 64))


def test_loader_rejects_a_backbone_only_checkpoint():
    path = PRETRAINED_DIR / 'movenet_lightning_mobilenet_v2.pt'
    require(path)
    with pytest.raises(ValueError, match='without the single-pose heads'):
        load_movenet_single_pose(path)
    with pytest.raises(FileNotFoundError, match='nothing.pt'):
        load_movenet_single_pose(REPO_ROOT / 'nothing.pt')


def _loop_decode(center, regress, heatmap, offset, center_weight, distance_offset, scale) -> np.ndarray:
    """The decoding with Python loops over cells, one image: the slow reference for `decode_single_pose`."""
    height, width = heatmap.shape[1:]
    best, center_cell = -1.0, (0, 0)
    for row in range(height):
        for col in range(width):
            if center[0, row, col] * center_weight[row, col] > best:
                best, center_cell = center[0, row, col] * center_weight[row, col], (row, col)
    out = np.zeros((17, 3), np.float32)
    for joint in range(17):
        joint_row = center_cell[0] + regress[2 * joint, center_cell[0], center_cell[1]]
        joint_col = center_cell[1] + regress[2 * joint + 1, center_cell[0], center_cell[1]]
        best, peak = -1.0, (0, 0)
        for row in range(height):
            for col in range(width):
                distance = np.hypot(row - joint_row, col - joint_col)
                value = heatmap[joint, row, col] / (distance + distance_offset)
                if value > best:
                    best, peak = value, (row, col)
        out[joint] = ((peak[0] + offset[2 * joint, peak[0], peak[1]]) * scale,
                      (peak[1] + offset[2 * joint + 1, peak[0], peak[1]]) * scale,
                      heatmap[joint, peak[0], peak[1]])
    return out


def test_decode_against_a_loop_reference_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    batch, size = 2, 12
    center = torch.rand(batch, 1, size, size, generator=generator)
    regress = torch.randn(batch, 34, size, size, generator=generator) * 3
    heatmap = torch.rand(batch, 17, size, size, generator=generator)
    offset = torch.rand(batch, 34, size, size, generator=generator) - 0.5
    weight = center_weight_map(size)
    got = decode_single_pose(center, regress, heatmap, offset, weight, 1.8, 1 / size)
    for index in range(batch):
        expected = _loop_decode(*(t[index].numpy() for t in (center, regress, heatmap, offset)),
                                weight.numpy(), 1.8, 1 / size)
        np.testing.assert_allclose(got[index].numpy(), expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# With the npm package at hand: the graph interpreter vs ONNX Runtime, and live on Lightning
# ------------------------------------------------------------------------------------------------

def test_graph_interpreter_matches_onnxruntime_and_our_lightning(thunder_crops):
    from tfjs_graph_reference import run_tfjs_graph

    require(HUMAN_MODELS / 'movenet-thunder.json', HUMAN_MODELS / 'movenet-lightning.json', THUNDER_ONNX,
            PRETRAINED_DIR / 'movenet_lightning.pt')
    crop = thunder_crops[3]
    model_json, weights = pi.read_tfjs_model(HUMAN_MODELS, 'movenet-thunder')
    interpreted = run_tfjs_graph(model_json, weights, {'input': crop[None].astype(np.int32)}, ['Identity'])[0]
    session, _ = thunder_session(with_heads=False)
    reference = session.run(None, {'input:0': crop[None].astype(np.int32)})[0]
    assert float(np.abs(interpreted - reference).max()) < JOINT_TOLERANCE
    model_json, weights = pi.read_tfjs_model(HUMAN_MODELS, 'movenet-lightning')
    crop = person_crop('000000412151', 192)
    interpreted = run_tfjs_graph(model_json, weights, {'input': crop[None].astype(np.int32)}, ['Identity'])[0]
    with torch.no_grad():
        got = load_movenet_single_pose('lightning')(crops_tensor(crop[None])).numpy()
    assert float(np.abs(got - interpreted.reshape(1, 17, 3)).max()) < JOINT_TOLERANCE
