"""`ppe import-pretrained`: TF.js weight decoding, Keras -> torchvision mapping, the committed checkpoints.

References: hand-built byte buffers for the TF.js decoder; plain numpy convolutions over the HWIO
kernels for the layout mapping; and, for the committed MoveNet Lightning checkpoint, the original
model's own backbone feature maps (its ONNX conversion run on a crop of a CC BY COCO photo, stored in
test/data/movenet_reference/ by tools/make_import_reference.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from occluded_ppe_ros.model import pretrained_import as pi
from occluded_ppe_ros.model.backbone import Body, InputNormalization
from occluded_ppe_ros.model.config import BackboneConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PRETRAINED_DIR = REPO_ROOT / 'models' / 'pretrained'
REFERENCE = REPO_ROOT / 'test' / 'data' / 'movenet_reference' / 'lightning_features_129648.npz'
# Measured: 8.7e-4 at stride 16 (values up to 71.5), 4.3e-4 at stride 32, 8e-5 at strides 4 and 8:
# float32 summation order only (the weights are the same float16 values on both sides).
IMPORT_TOLERANCE = 5e-3

torch.set_num_threads(2)


# ------------------------------------------------------------------------------------------------
# TF.js weight decoding
# ------------------------------------------------------------------------------------------------

def test_decode_tfjs_weights_hand_built_buffer():
    halves = np.array([1.5, -2.25, 0.0, 65504.0], dtype=np.float16)
    ints = np.array([7, -3], dtype=np.int32)
    quantized = np.array([0, 128, 255], dtype=np.uint8)
    floats = np.array([[0.1, 0.2]], dtype=np.float32)
    data = halves.tobytes() + ints.tobytes() + quantized.tobytes() + floats.tobytes()
    manifest = [{'paths': ['x.bin'], 'weights': [
        {'name': 'h', 'shape': [2, 2], 'dtype': 'float32',
         'quantization': {'dtype': 'float16', 'original_dtype': 'float32'}},
        {'name': 'i', 'shape': [2], 'dtype': 'int32'},
        {'name': 'q', 'shape': [3], 'dtype': 'float32',
         'quantization': {'dtype': 'uint8', 'scale': 0.5, 'min': -1.0, 'original_dtype': 'float32'}},
        {'name': 'f', 'shape': [1, 2], 'dtype': 'float32'},
    ]}]
    arrays = pi.decode_tfjs_weights(manifest, data)
    assert arrays['h'].dtype == np.float32 and arrays['h'].shape == (2, 2)
    np.testing.assert_array_equal(arrays['h'].reshape(-1), [1.5, -2.25, 0.0, 65504.0])
    np.testing.assert_array_equal(arrays['i'], [7, -3])
    np.testing.assert_allclose(arrays['q'], [-1.0, 63.0, 126.5])   # q * scale + min
    np.testing.assert_allclose(arrays['f'], [[0.1, 0.2]], rtol=1e-7)


def test_decode_tfjs_weights_rejects_size_mismatch_and_unknown_dtype():
    manifest = [{'paths': ['x.bin'], 'weights': [{'name': 'w', 'shape': [4], 'dtype': 'int32'}]}]
    with pytest.raises(ValueError, match="'w' needs bytes 0..16"):
        pi.decode_tfjs_weights(manifest, b'\0' * 8)
    with pytest.raises(ValueError, match='covers 16 bytes but there are 20'):
        pi.decode_tfjs_weights(manifest, b'\0' * 20)
    bad = [{'paths': ['x.bin'], 'weights': [{'name': 'c', 'shape': [1], 'dtype': 'complex64'}]}]
    with pytest.raises(ValueError, match="unsupported dtype 'complex64'"):
        pi.decode_tfjs_weights(bad, b'\0' * 8)


# ------------------------------------------------------------------------------------------------
# The Keras -> torchvision mapping, on synthetic weights with MoveNet's names and shapes
# ------------------------------------------------------------------------------------------------

def synthetic_movenet_weights(width_mult: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float16-valued weights under MoveNet's TF names, HWIO shapes taken from torchvision's."""
    rng = np.random.default_rng(seed)
    shapes = pi.torchvision_reference_shapes(width_mult)
    weights = {}
    for keras_name, prefix, depthwise in pi.keras_to_torchvision_names():
        out_c, in_c, kh, kw = shapes[f'{prefix}.weight']
        hwio = (kh, kw, out_c, 1) if depthwise else (kh, kw, in_c, out_c)
        weights[f'{pi.BACKBONE_PREFIX}{keras_name}_weights'] = \
            rng.normal(0, 0.1, hwio).astype(np.float16).astype(np.float32)
        weights[f'{pi.BACKBONE_PREFIX}{keras_name}_bn_offset'] = \
            rng.normal(0, 0.1, out_c).astype(np.float16).astype(np.float32)
    weights['StatefulPartitionedCall/center_0/conv2d_4/BiasAdd/ReadVariableOp'] = np.zeros(1, np.float32)
    weights.update(synthetic_decoder_weights(width_mult, rng))
    return weights


def synthetic_decoder_weights(width_mult: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """MoveNet's FPN and keypoint-heatmap head tensors (TF names, HWIO) with random float16 values."""
    c4, c8, c16 = (24, 32, 64) if width_mult == 1.0 else (40, 48, 96)

    def value(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.2, shape).astype(np.float16).astype(np.float32)

    fpn, head = pi.FPN_PREFIX, pi.HEATMAP_HEAD_PREFIX
    weights = {}
    for keras, in_c, out_c in (('conv2d', 1280, 64), ('conv2d_1', c16, 64), ('conv2d_2', c8, 32),
                               ('conv2d_3', c4, 24)):
        weights[f'{fpn}{keras}/Conv2D/ReadVariableOp'] = value(1, 1, in_c, out_c)
        weights[f'{fpn}{keras}/BiasAdd/ReadVariableOp'] = value(out_c)
    for keras, in_c, out_c in (('separable_conv2d', 64, 32), ('separable_conv2d_1', 32, 24),
                               ('separable_conv2d_2', 24, 24)):
        weights[f'{fpn}{keras}/separable_conv2d/ReadVariableOp'] = value(3, 3, in_c, 1)
        weights[f'{fpn}{keras}/separable_conv2d_weights'] = value(1, 1, in_c, out_c)
        weights[f'{fpn}{keras}/separable_conv2d_bn_offset'] = value(out_c)
    weights[f'{head}separable_conv2d_4/separable_conv2d/ReadVariableOp'] = value(3, 3, 24, 1)
    weights[f'{head}separable_conv2d_4/separable_conv2d/ReadVariableOp_1'] = value(1, 1, 24, 96)
    weights[f'{head}separable_conv2d_4/BiasAdd/ReadVariableOp'] = value(96)
    weights[f'{head}conv2d_5/Conv2D/ReadVariableOp'] = value(1, 1, 96, 17)
    weights[f'{head}conv2d_5/BiasAdd/ReadVariableOp'] = value(17)
    return weights


def test_mapping_names_cover_torchvision_exactly():
    pairs = pi.keras_to_torchvision_names()
    assert len(pairs) == 52   # MoveNet's 52 backbone convolutions
    assert sum(depthwise for _, _, depthwise in pairs) == 17
    for width in (1.0, 1.5):
        state = pi.mobilenet_v2_state_dict(synthetic_movenet_weights(width), 'synthetic')
        pi.check_against_torchvision(state, width, 'synthetic')   # raises on any key/shape difference


def test_mapping_layouts_against_numpy_convolution():
    weights = synthetic_movenet_weights(1.0)
    state = pi.mobilenet_v2_state_dict(weights, 'synthetic')
    rng = np.random.default_rng(1)
    # 1x1 project conv: out[o] = sum_i x[i] * W_hwio[0, 0, i, o]
    hwio = weights[f'{pi.BACKBONE_PREFIX}block_3_project/Conv2D_weights']
    x = rng.normal(size=(1, hwio.shape[2], 3, 3)).astype(np.float32)
    expected = np.einsum('bihw,io->bohw', x, hwio[0, 0])
    project = torch.from_numpy(state['features.4.conv.2.weight'].astype(np.float32))
    got = F.conv2d(torch.from_numpy(x), project)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
    # 3x3 depthwise conv, valid positions only: out[c, y, x] = sum_ab x[c, y + a, x + b] * W[a, b, c, 0]
    dw = weights[f'{pi.BACKBONE_PREFIX}block_1_depthwise/depthwise_weights']
    channels = dw.shape[2]
    x = rng.normal(size=(1, channels, 5, 5)).astype(np.float32)
    expected = np.zeros((1, channels, 3, 3), np.float32)
    for a in range(3):
        for b in range(3):
            expected += x[:, :, a:a + 3, b:b + 3] * dw[a, b, :, 0][None, :, None, None]
    depthwise = torch.from_numpy(state['features.2.conv.1.0.weight'].astype(np.float32))
    got = F.conv2d(torch.from_numpy(x), depthwise, groups=channels)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
    # BN after a conv: identity with beta = the TF offset
    np.testing.assert_array_equal(state['features.2.conv.1.1.bias'].astype(np.float32),
                                  weights[f'{pi.BACKBONE_PREFIX}block_1_depthwise/depthwise_bn_offset'])
    bn = 'features.2.conv.1.1'
    assert np.all(state[f'{bn}.weight'] == 1) and np.all(state[f'{bn}.running_mean'] == 0)
    np.testing.assert_allclose(state[f'{bn}.running_var'] + pi.BATCHNORM_EPS, 1.0, rtol=0, atol=1e-7)


def test_mapping_errors_name_the_bad_tensor():
    weights = synthetic_movenet_weights(1.0)
    del weights[f'{pi.BACKBONE_PREFIX}block_7_expand/Conv2D_bn_offset']
    with pytest.raises(ValueError, match='block_7_expand/Conv2D_weights'):
        pi.mobilenet_v2_state_dict(weights, 'synthetic')
    state = pi.mobilenet_v2_state_dict(synthetic_movenet_weights(1.0), 'synthetic')
    with pytest.raises(ValueError, match=r'features\.0\.0\.weight has shape \(32, 3, 3, 3\)'):
        pi.check_against_torchvision(state, 1.5, 'lightning-as-multipose')


def write_tfjs_model(folder: Path, name: str, weights: dict[str, np.ndarray], generated_by: str) -> None:
    """A TF.js graph-model folder (json + bin) holding `weights` as float16-quantised entries."""
    entries, chunks = [], []
    for key, value in weights.items():
        entries.append({'name': key, 'shape': list(value.shape), 'dtype': 'float32',
                        'quantization': {'dtype': 'float16', 'original_dtype': 'float32'}})
        chunks.append(value.astype(np.float16).tobytes())
    (folder / f'{name}.bin').write_bytes(b''.join(chunks))
    model = {'format': 'graph-model', 'generatedBy': generated_by, 'modelTopology': {'node': []},
             'weightsManifest': [{'paths': [f'{name}.bin'], 'weights': entries}]}
    (folder / f'{name}.json').write_text(json.dumps(model))


def test_import_cli_writes_a_checkpoint_the_body_loads(tmp_path):
    from occluded_ppe_ros import cli

    weights = synthetic_movenet_weights(1.0, seed=3)
    write_tfjs_model(tmp_path, 'movenet-lightning', weights, 'https://tfhub.dev/google/movenet/singlepose/lightning/4')
    out_dir = tmp_path / 'pretrained'
    assert cli.main(['import-pretrained', '--source', str(tmp_path), '--model', 'movenet-lightning',
                     '--output-dir', str(out_dir)]) == 0
    path = out_dir / 'movenet_lightning_mobilenet_v2.pt'
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    assert checkpoint['format'] == pi.CHECKPOINT_FORMAT and checkpoint['licence'] == 'Apache-2.0'
    assert checkpoint['tf_same_padding'] is True and checkpoint['width_mult'] == 1.0
    body = Body(BackboneConfig(name='mobilenet_v2', tf_same_padding=True, frozen_batchnorm=True,
                               pretrained_path=str(path))).eval()
    # features[0] against a functional reference: TF 'SAME' stride 2 (pad bottom/right), + offset, ReLU6
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    hwio = weights[f'{pi.BACKBONE_PREFIX}Conv1/Conv2D_weights']
    kernel = torch.from_numpy(hwio.transpose(3, 2, 0, 1).copy())
    offset = torch.from_numpy(weights[f'{pi.BACKBONE_PREFIX}Conv1/Conv2D_bn_offset'])
    expected = torch.clamp(F.conv2d(F.pad(x, (0, 1, 0, 1)), kernel, offset, stride=2), 0, 6)
    with torch.no_grad():
        got = body.features[0](x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _numpy_upsample2x_half_pixel(x: np.ndarray) -> np.ndarray:
    """TF ResizeBilinear (half_pixel_centers=True, align_corners=False) to twice the size, in numpy."""
    def axis_weights(n: int) -> np.ndarray:
        source = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, n - 1)
        matrix = np.zeros((2 * n, n))
        matrix[np.arange(2 * n), low] += 1 - (source - low)
        matrix[np.arange(2 * n), high] += source - low
        return matrix

    rows, cols = axis_weights(x.shape[2]), axis_weights(x.shape[3])
    return np.einsum('yh,bchw,xw->bcyx', rows, x, cols)


def _numpy_movenet_decoder(weights: dict[str, np.ndarray], maps: list[np.ndarray]) -> tuple:
    """MoveNet's pyramid and heatmap head as its graph computes them, straight on the HWIO tensors."""
    fpn, head = pi.FPN_PREFIX, pi.HEATMAP_HEAD_PREFIX

    def conv1x1(x, kernel, bias):
        return np.einsum('bihw,io->bohw', x, kernel[0, 0]) + bias[None, :, None, None]

    def depthwise_same(x, kernel):   # 3x3, stride 1, 'SAME' = one zero row/column on every side
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        height, width = x.shape[2:]
        return sum(padded[:, :, a:a + height, b:b + width] * kernel[a, b, :, 0][None, :, None, None]
                   for a in range(3) for b in range(3))

    def separable(x, name):
        x = depthwise_same(x, weights[f'{fpn}{name}/separable_conv2d/ReadVariableOp'])
        return np.maximum(conv1x1(x, weights[f'{fpn}{name}/separable_conv2d_weights'],
                                  weights[f'{fpn}{name}/separable_conv2d_bn_offset']), 0)

    def lateral(x, name):
        return conv1x1(x, weights[f'{fpn}{name}/Conv2D/ReadVariableOp'],
                       weights[f'{fpn}{name}/BiasAdd/ReadVariableOp'])

    stride4, stride8, stride16, stride32 = maps
    top = separable(_numpy_upsample2x_half_pixel(lateral(stride32, 'conv2d')) + lateral(stride16, 'conv2d_1'),
                    'separable_conv2d')
    top = separable(_numpy_upsample2x_half_pixel(top) + lateral(stride8, 'conv2d_2'), 'separable_conv2d_1')
    features = separable(_numpy_upsample2x_half_pixel(top) + lateral(stride4, 'conv2d_3'),
                         'separable_conv2d_2')
    hidden = depthwise_same(features, weights[f'{head}separable_conv2d_4/separable_conv2d/ReadVariableOp'])
    pointwise = f'{head}separable_conv2d_4/separable_conv2d/ReadVariableOp_1'
    bias = f'{head}separable_conv2d_4/BiasAdd/ReadVariableOp'
    hidden = np.maximum(conv1x1(hidden, weights[pointwise], weights[bias]), 0)
    logits = conv1x1(hidden, weights[f'{head}conv2d_5/Conv2D/ReadVariableOp'],
                     weights[f'{head}conv2d_5/BiasAdd/ReadVariableOp'])
    return features, logits


def test_imported_decoder_matches_movenets_graph_in_numpy(tmp_path):
    from occluded_ppe_ros import cli
    from occluded_ppe_ros.model.backbone import MoveNetKeypointDecoder, load_movenet_decoder

    weights = synthetic_movenet_weights(1.0, seed=5)
    write_tfjs_model(tmp_path, 'movenet-lightning', weights, 'https://tfhub.dev/google/movenet/singlepose/lightning/4')
    assert cli.main(['import-pretrained', '--source', str(tmp_path), '--model', 'movenet-lightning',
                     '--output-dir', str(tmp_path / 'out')]) == 0
    decoder = MoveNetKeypointDecoder(24, 32, 64, 1280)
    load_movenet_decoder(decoder, tmp_path / 'out' / 'movenet_lightning_mobilenet_v2.pt')
    rng = np.random.default_rng(2)
    # body maps of a 128 x 160 input: strides 4, 8, 16 (features[10], 64 channels) and 32
    maps = [rng.normal(0, 1, (1, channels, 128 // stride, 160 // stride)).astype(np.float32)
            for channels, stride in ((24, 4), (32, 8), (64, 16), (1280, 32))]
    with torch.no_grad():
        features, logits = decoder(*(torch.from_numpy(m) for m in maps))
    expected_features, expected_logits = _numpy_movenet_decoder(weights, maps)
    assert features.shape == (1, 24, 32, 40) and logits.shape == (1, 17, 32, 40)
    np.testing.assert_allclose(features.numpy(), expected_features, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(logits.numpy(), expected_logits, rtol=1e-4, atol=1e-3)


def test_import_refuses_a_model_that_is_not_movenet(tmp_path):
    write_tfjs_model(tmp_path, 'movenet-lightning', synthetic_movenet_weights(1.0), 'https://example.org/other')
    with pytest.raises(ValueError, match='not Google MoveNet'):
        pi.import_model(tmp_path, 'movenet-lightning', tmp_path / 'out')
    with pytest.raises(FileNotFoundError, match='movenet-multipose.json'):
        pi.import_model(tmp_path, 'movenet-multipose', tmp_path / 'out')


# ------------------------------------------------------------------------------------------------
# The committed checkpoints
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('file_name, width', [('movenet_lightning_mobilenet_v2.pt', 1.0),
                                              ('movenet_multipose_mobilenet_v2_x1.5.pt', 1.5)])
def test_committed_checkpoint_loads_into_the_body(file_name, width):
    path = PRETRAINED_DIR / file_name
    if not path.is_file():
        pytest.skip(f'{path} absent (written by `ppe import-pretrained`)')
    checkpoint = pi.load_pretrained_checkpoint(path)
    assert checkpoint['width_mult'] == width and checkpoint['normalization'] == 'symmetric'
    assert 'Apache License 2.0' in checkpoint['attribution'] and 'movenet' in checkpoint['source_url']
    body = Body(BackboneConfig(name='mobilenet_v2', width_mult=width, tf_same_padding=True,
                               frozen_batchnorm=True, pretrained_path=str(path)))
    loaded = body.state_dict()
    for key, value in checkpoint['state_dict'].items():
        if key.endswith('num_batches_tracked'):
            continue
        torch.testing.assert_close(loaded[key].float(), value.float(), rtol=0, atol=0)
    assert body.out_channels == ((24, 32, 96, 1280) if width == 1.0 else (40, 48, 144, 1280))


def test_imported_lightning_backbone_matches_the_original_model():
    """The import check: torch features vs the original MoveNet Lightning's (ONNX) on a real photo crop."""
    path = PRETRAINED_DIR / 'movenet_lightning_mobilenet_v2.pt'
    if not path.is_file() or not REFERENCE.is_file():
        pytest.skip('needs models/pretrained/movenet_lightning_mobilenet_v2.pt and the reference npz')
    reference = np.load(REFERENCE)
    crop = torch.from_numpy(reference['crop_rgb']).permute(2, 0, 1)[None].float() / 255
    keys = ('stride4_features3', 'stride8_features6', 'stride16_features13', 'stride32_features18')

    def features(tf_same_padding: bool) -> list[torch.Tensor]:
        body = Body(BackboneConfig(name='mobilenet_v2', tf_same_padding=tf_same_padding,
                                   frozen_batchnorm=True, pretrained_path=str(path))).eval()
        with torch.no_grad():
            return body(InputNormalization('symmetric')(crop))

    differences = {}
    for key, got in zip(keys, features(True)):
        expected = reference[key]
        assert got.shape == expected.shape, key
        differences[key] = float(np.abs(got.numpy() - expected).max())
    print('max abs difference per level:', differences)
    assert max(differences.values()) < IMPORT_TOLERANCE, differences
    # The check is sensitive: torchvision's symmetric padding shifts every map (differences of order 1).
    symmetric = features(False)
    assert float(np.abs(symmetric[-1].numpy() - reference[keys[-1]]).max()) > 1.0


def test_committed_multipose_decoder_finds_the_joints_movenet_finds():
    """Our import of MultiPose's pyramid and heatmap head vs the original model (its ONNX conversion).

    On a real photo the original model's keypoints (its own decoding: heatmap peak refined by its offset
    head) must sit on peaks of our heatmaps: for every joint it scores >= 0.3, the peak of our heatmap
    in the 7 x 7 cells around the joint is at most one stride-4 cell away from it.
    """
    import cv2
    import onnxruntime as ort

    from occluded_ppe_ros.model.backbone import Encoder
    from occluded_ppe_ros.model.config import FPNConfig
    from occluded_ppe_ros.peers import resize_long_side

    checkpoint = PRETRAINED_DIR / 'movenet_multipose_mobilenet_v2_x1.5.pt'
    onnx_path = REPO_ROOT / 'models' / 'peers' / 'movenet_multipose.onnx'
    photo = REPO_ROOT / 'samples' / '000000129648.jpg'
    if not (checkpoint.is_file() and onnx_path.is_file() and photo.is_file()):
        pytest.skip('needs the committed MultiPose checkpoint, its ONNX peer and samples/000000129648.jpg')
    canvas, _ = resize_long_side(cv2.imread(str(photo))[:, :, ::-1].copy(), 256)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options)
    rows = session.run(None, {session.get_inputs()[0].name: canvas[None].astype(np.int32)})[0][0]
    joints = rows[np.argmax(rows[:, 55]), :51].reshape(17, 3)   # the best person: (y, x, score) normalised

    encoder = Encoder(BackboneConfig(name='mobilenet_v2', width_mult=1.5, tf_same_padding=True,
                                     frozen_batchnorm=True, pretrained_path=str(checkpoint)),
                      FPNConfig(channels=16, movenet_keypoint_features=True)).eval()
    with torch.no_grad():
        output = encoder(torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255)
    assert output.shape[1] == 16 + 24 + 17
    heatmaps = output[0, -17:].numpy()
    confident = np.flatnonzero(joints[:, 2] >= 0.3)
    assert len(confident) >= 10   # measured: 12 of 17 on this photo
    for joint in confident:
        # cell (row, col) of the joint: cell centres sit at (index + 0.5) * 4 pixels
        row = joints[joint, 0] * canvas.shape[0] / 4 - 0.5
        col = joints[joint, 1] * canvas.shape[1] / 4 - 0.5
        top, left = max(0, round(row) - 3), max(0, round(col) - 3)
        window = heatmaps[joint, top:round(row) + 4, left:round(col) + 4]
        peak_row, peak_col = np.unravel_index(np.argmax(window), window.shape)
        assert abs(top + peak_row - row) <= 1.0 and abs(left + peak_col - col) <= 1.0, joint
        assert window.max() >= 0.3, joint
