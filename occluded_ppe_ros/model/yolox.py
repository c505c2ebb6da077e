"""Megvii's YOLOX-Nano (COCO, 416 x 416) as a readable torch module, with its weights read from ONNX.

The source is the published ONNX export (`models/peers/yolox_nano_416.onnx`, PyTorch 1.10 exporter,
opset 11; see models/peers/NOTICE). Its graph is YOLOX with `depth 0.33, width 0.25, depthwise=True`:

    Focus stem      space-to-depth (2 x 2 pixels -> 12 channels), 3x3 conv to 16
    CSPDarknet      dark2 (stride 4, 32 ch), dark3 (stride 8, 64), dark4 (stride 16, 128), dark5
                    (stride 32, 256, with SPP max pools 5/9/13); each a stride-2 depthwise-separable conv
                    and a CSP layer of 1 or 3 bottlenecks
    PAFPN           top-down (nearest 2x upsampling) then bottom-up (stride-2 depthwise convs) path
                    -> P3 / P4 / P5 at strides 8 / 16 / 32 with 64 / 128 / 256 channels
    decoupled head  per level: 1x1 stem to 64, two depthwise-separable 3x3 convs for classes and two for
                    boxes, then 1x1 predictions: 80 class logits, 4 box offsets, 1 objectness logit

Every convolution is followed by SiLU. The export folded each batch norm into its convolution's bias, so
the convs here carry a bias and there is no BatchNorm (fine-tuning updates weight and bias directly).
Module names follow Megvii's `yolox/models/*.py` where they are descriptive (`stem`, `dark2`...,
`conv1`/`conv2`/`conv3`, `m` of a CSP layer, `dconv`/`pconv`, the head's `stems`, `cls_convs`,
`reg_convs`, `cls_preds`, `reg_preds`, `obj_preds`); the PAFPN's blocks are renamed after their role
(see `PAFPN`). The head's prediction weights keep the names the ONNX file gives them.

Input of the original (`forward_raw`): float [B, 3, 416, 416] BGR in 0..255, the image letterboxed at the
top-left and padded with 114, no mean/std. Output [B, 3549, 85]: one row per anchor point (52 x 52 at
stride 8, then 26 x 26 at 16, then 13 x 13 at 32; row-major within a level), with
    0:2  (x, y) offset of the box centre from the anchor point, in cells of that level
    2:4  log(w), log(h) of the box, in cells
    4    objectness probability (sigmoid applied)
    5:85 the 80 COCO class probabilities (sigmoid applied; class 0 is person)
Decoding (`decode_yolox`): centre = (offset + (column, row)) * stride, size = exp(log size) * stride, in
input pixels; score = objectness * class probability.

`yolox_state_dict_from_onnx` maps the ONNX initializers onto this module by walking the graph backwards
from its output along the architecture (which Conv feeds which Concat input, etc.), checking every
convolution's kernel, stride, padding and groups on the way: no reliance on the exporter's numbering.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import torch
from torch import nn

YOLOX_INPUT_SIZE = 416
YOLOX_STRIDES = (8, 16, 32)
YOLOX_NUM_CLASSES = 80
COCO_PERSON_CLASS = 0
YOLOX_PAD_VALUE = 114 / 255          # the letterbox fill, for callers that pad RGB images in [0, 1]
CHECKPOINT_FORMAT = 'occluded_ppe/yolox_nano/1'
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = REPO_ROOT / 'models' / 'pretrained' / 'yolox_nano_416.pt'
DEFAULT_ONNX = REPO_ROOT / 'models' / 'peers' / 'yolox_nano_416.onnx'
SOURCE_SHA256 = '695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14'
ATTRIBUTION = ('Derived from YOLOX-Nano (COCO, 80 classes, 416 x 416) by Megvii '
               '(https://github.com/Megvii-BaseDetection/YOLOX), licensed under the Apache License 2.0; '
               'ONNX export from the GitHub repository Kazuhito00/YOLOX-ONNX-TFLite-Sample (Apache License '
               '2.0), file model/yolox_nano.onnx, commit 3d4f1119d0694200671c08069ecb847aa0d8495a. Weights '
               'read from that ONNX file (batch norm already folded into the conv biases), values unchanged, '
               'by occluded_ppe_ros.model.yolox.')


# ----------------------------------------------------------------------------------------------------
# Building blocks (BN folded: conv with bias, then SiLU)
# ----------------------------------------------------------------------------------------------------

class ConvSiLU(nn.Module):
    """Conv (bias = the folded batch norm) + SiLU, 'same' padding: [B, C_in, H, W] -> [B, C_out, H/s, W/s].

    YOLOX's `BaseConv` with its batch norm folded into `conv.bias`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2,
                              groups=groups, bias=True)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k conv (stride s) + SiLU, then 1x1 conv + SiLU (YOLOX's `DWConv`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.dconv = ConvSiLU(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.pconv = ConvSiLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


class Bottleneck(nn.Module):
    """1x1 conv, depthwise-separable 3x3 conv, optional residual: [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = ConvSiLU(channels, channels, 1)
        self.conv2 = DepthwiseSeparableConv(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.shortcut else y


class CSPLayer(nn.Module):
    """Cross-stage-partial block: [B, C_in, H, W] -> [B, C_out, H, W].

    Two 1x1 branches of C_out / 2 channels; the first runs through `m` (the bottlenecks), then both are
    concatenated (bottleneck branch first) and fused by the 1x1 `conv3`.
    """

    def __init__(self, in_channels: int, out_channels: int, num_bottlenecks: int, shortcut: bool) -> None:
        super().__init__()
        hidden = out_channels // 2
        self.conv1 = ConvSiLU(in_channels, hidden, 1)
        self.conv2 = ConvSiLU(in_channels, hidden, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(num_bottlenecks)))
        self.conv3 = ConvSiLU(2 * hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat([self.m(self.conv1(x)), self.conv2(x)], dim=1))


class SPPBottleneck(nn.Module):
    """1x1 conv to C_in / 2, max pools 5 / 9 / 13 (stride 1) concatenated with their input, 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_sizes: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = ConvSiLU(in_channels, hidden, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = ConvSiLU(hidden * (len(kernel_sizes) + 1), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))


# The order in which `Focus` stacks the four pixels of each 2 x 2 block, as (row, column) offsets:
# top-left, bottom-left, top-right, bottom-right (YOLOX's order; the ONNX import checks it).
FOCUS_OFFSETS = ((0, 0), (1, 0), (0, 1), (1, 1))


class Focus(nn.Module):
    """Space-to-depth then a 3x3 conv: [B, 3, H, W] -> [B, 12, H/2, W/2] -> [B, out_channels, H/2, W/2].

    Channels of the space-to-depth tensor: the 3 input channels of each `FOCUS_OFFSETS` pixel in turn.
    """

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvSiLU(3 * len(FOCUS_OFFSETS), out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x[..., row::2, col::2] for row, col in FOCUS_OFFSETS], dim=1))


# ----------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------

class CSPDarknetNano(nn.Module):
    """YOLOX-Nano's backbone: [B, 3, H, W] -> (dark3, dark4, dark5): strides 8/16/32, 64/128/256 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Focus(16)                                                              # stride 2
        self.dark2 = nn.Sequential(DepthwiseSeparableConv(16, 32, 3, 2), CSPLayer(32, 32, 1, shortcut=True))
        self.dark3 = nn.Sequential(DepthwiseSeparableConv(32, 64, 3, 2), CSPLayer(64, 64, 3, shortcut=True))
        self.dark4 = nn.Sequential(DepthwiseSeparableConv(64, 128, 3, 2),
                                   CSPLayer(128, 128, 3, shortcut=True))
        self.dark5 = nn.Sequential(DepthwiseSeparableConv(128, 256, 3, 2), SPPBottleneck(256, 256),
                                   CSPLayer(256, 256, 1, shortcut=False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dark3 = self.dark3(self.dark2(self.stem(x)))
        dark4 = self.dark4(dark3)
        return dark3, dark4, self.dark5(dark4)


class PAFPN(nn.Module):
    """YOLOX's path-aggregation neck: (dark3, dark4, dark5) -> (P3, P4, P5), 64 / 128 / 256 channels.

    Megvii's names, for reading their code: p5_reduce = lateral_conv0, top_down_p4 = C3_p4,
    p4_reduce = reduce_conv1, top_down_p3 = C3_p3, downsample_p3 = bu_conv2, bottom_up_p4 = C3_n3,
    downsample_p4 = bu_conv1, bottom_up_p5 = C3_n4. Every concatenation puts the path's tensor first and
    the lateral (skip) tensor second.
    """

    def __init__(self) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode='nearest')
        self.p5_reduce = ConvSiLU(256, 128, 1)
        self.top_down_p4 = CSPLayer(256, 128, 1, shortcut=False)
        self.p4_reduce = ConvSiLU(128, 64, 1)
        self.top_down_p3 = CSPLayer(128, 64, 1, shortcut=False)
        self.downsample_p3 = DepthwiseSeparableConv(64, 64, 3, 2)
        self.bottom_up_p4 = CSPLayer(128, 128, 1, shortcut=False)
        self.downsample_p4 = DepthwiseSeparableConv(128, 128, 3, 2)
        self.bottom_up_p5 = CSPLayer(256, 256, 1, shortcut=False)

    def forward(self, dark3: torch.Tensor, dark4: torch.Tensor,
                dark5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p5_reduced = self.p5_reduce(dark5)                                               # 128 ch, stride 32
        p4_reduced = self.p4_reduce(self.top_down_p4(torch.cat([self.upsample(p5_reduced), dark4], 1)))
        p3 = self.top_down_p3(torch.cat([self.upsample(p4_reduced), dark3], 1))           # 64 ch, stride 8
        p4 = self.bottom_up_p4(torch.cat([self.downsample_p3(p3), p4_reduced], 1))        # 128 ch, stride 16
        p5 = self.bottom_up_p5(torch.cat([self.downsample_p4(p4), p5_reduced], 1))        # 256 ch, stride 32
        return p3, p4, p5


def _two_depthwise_convs(channels: int) -> nn.Sequential:
    """The head's class or box tower: two depthwise-separable 3x3 convs, [B, C, h, w] -> [B, C, h, w]."""
    return nn.Sequential(*(DepthwiseSeparableConv(channels, channels) for _ in range(2)))


class DecoupledHead(nn.Module):
    """YOLOX's head: per level, [B, C_k, h, w] -> [B, 85, h, w] = (4 box offsets, objectness, 80 classes).

    Objectness and classes come out through a sigmoid (as the ONNX export), box offsets raw.
    """

    def __init__(self, in_channels: tuple[int, ...] = (64, 128, 256), width: int = 64,
                 num_classes: int = YOLOX_NUM_CLASSES) -> None:
        super().__init__()
        self.stems = nn.ModuleList(ConvSiLU(c, width, 1) for c in in_channels)
        self.cls_convs = nn.ModuleList(_two_depthwise_convs(width) for _ in in_channels)
        self.reg_convs = nn.ModuleList(_two_depthwise_convs(width) for _ in in_channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(width, num_classes, 1) for _ in in_channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(width, 4, 1) for _ in in_channels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(width, 1, 1) for _ in in_channels)

    def forward(self, levels: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        outputs = []
        for k, x in enumerate(levels):
            x = self.stems[k](x)
            reg_features = self.reg_convs[k](x)
            outputs.append(torch.cat([self.reg_preds[k](reg_features),
                                      torch.sigmoid(self.obj_preds[k](reg_features)),
                                      torch.sigmoid(self.cls_preds[k](self.cls_convs[k](x)))], dim=1))
        return outputs


def yolox_anchor_points(input_size: int = YOLOX_INPUT_SIZE,
                        strides: tuple[int, ...] = YOLOX_STRIDES) -> tuple[torch.Tensor, torch.Tensor]:
    """The anchor points in the output's row order.

    Args:
        input_size: S, the square input side in pixels (a multiple of the largest stride).
        strides: the levels' strides, in output order.

    Returns:
        (points float [A, 2]: (column, row) of each cell in its level's cells, strides float [A, 1]: the
        level's stride in input pixels), A = sum over levels of (S / stride)^2 (3549 at 416).
    """
    points, point_strides = [], []
    for stride in strides:
        cells = input_size // stride
        rows, cols = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing='ij')
        points.append(torch.stack([cols, rows], dim=-1).reshape(-1, 2))
        point_strides.append(torch.full((cells * cells, 1), stride))
    return torch.cat(points).float(), torch.cat(point_strides).float()


def decode_yolox(raw: torch.Tensor, anchor_points: torch.Tensor, anchor_strides: torch.Tensor,
                 class_index: int = COCO_PERSON_CLASS) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes and one class's scores from YOLOX's raw output (batched, export-friendly).

    Args:
        raw: float [B, A, 5 + classes]: (dx, dy, log w, log h) in cells, objectness, class probabilities.
        anchor_points: float [A, 2] (column, row) in cells, from `yolox_anchor_points`.
        anchor_strides: float [A, 1] the cell size in input pixels.
        class_index: which class to score (0: person).

    Returns:
        (boxes float [B, A, 4]: x1, y1, x2, y2 in input pixels, scores float [B, A]: objectness x class
        probability, in [0, 1]).
    """
    centers = (raw[..., 0:2] + anchor_points) * anchor_strides
    half_sizes = torch.exp(raw[..., 2:4]) * anchor_strides * 0.5
    boxes = torch.cat([centers - half_sizes, centers + half_sizes], dim=-1)
    return boxes, raw[..., 4] * raw[..., 5 + class_index]


class YOLOXNano(nn.Module):
    """YOLOX-Nano: backbone, neck, head, and the decoding of one class (person).

    `forward_raw` is the original network (BGR 0..255 in, [B, A, 85] out, as the ONNX file); `forward`
    is what the project calls: RGB in [0, 1] in, decoded person boxes and scores out. The anchor grid
    is a non-persistent buffer (not in the state dict) built for `input_size`.
    """

    def __init__(self, input_size: int = YOLOX_INPUT_SIZE, num_classes: int = YOLOX_NUM_CLASSES) -> None:
        super().__init__()
        if input_size <= 0 or input_size % max(YOLOX_STRIDES):
            raise ValueError(f'input_size must be a positive multiple of {max(YOLOX_STRIDES)}, '
                             f'got {input_size}')
        self.input_size = input_size
        self.num_classes = num_classes
        self.backbone = CSPDarknetNano()
        self.neck = PAFPN()
        self.head = DecoupledHead(num_classes=num_classes)
        anchor_points, anchor_strides = yolox_anchor_points(input_size)
        self.register_buffer('anchor_points', anchor_points, persistent=False)
        self.register_buffer('anchor_strides', anchor_strides, persistent=False)

    def forward_raw(self, images_bgr255: torch.Tensor) -> torch.Tensor:
        """The original network.

        Args:
            images_bgr255: float [B, 3, H, W] BGR in 0..255 (H, W multiples of 32; 416 as trained),
                letterboxed at the top-left with 114 padding.

        Returns:
            float [B, A, 5 + classes], A = H W (1/8^2 + 1/16^2 + 1/32^2): per anchor point (dx, dy) centre
            offset and (log w, log h) in cells, objectness and class probabilities (see the module doc).
        """
        if not torch.jit.is_tracing() and (images_bgr255.dim() != 4 or images_bgr255.shape[1] != 3
                                           or images_bgr255.shape[2] % 32 or images_bgr255.shape[3] % 32):
            raise ValueError(f'YOLOX takes [B, 3, H, W] with H, W multiples of 32, got '
                             f'{tuple(images_bgr255.shape)}')
        levels = self.head(self.neck(*self.backbone(images_bgr255)))
        return torch.cat([level.flatten(2) for level in levels], dim=2).permute(0, 2, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Person detection on letterboxed images.

        Args:
            images: float [B, 3, S, S] RGB in [0, 1], S = `input_size`; letterbox at the top-left padded
                with `YOLOX_PAD_VALUE`.

        Returns:
            (boxes float [B, A, 4]: x1, y1, x2, y2 in input (S x S) pixels, person_scores float [B, A] in
            [0, 1]), one row per anchor point (A = 3549 at 416), before any threshold or NMS.
        """
        size = self.input_size
        if not torch.jit.is_tracing() and (images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size)):
            raise ValueError(f'YOLOXNano takes [B, 3, {size}, {size}] RGB in [0, 1], '
                             f'got {tuple(images.shape)}')
        # the original wants BGR 0..255: reversing the channel axis exports as one Slice
        raw = self.forward_raw(torch.flip(images, dims=[1]) * 255.0)
        return decode_yolox(raw, self.anchor_points, self.anchor_strides, COCO_PERSON_CLASS)


# ----------------------------------------------------------------------------------------------------
# ONNX -> state dict, by walking the graph along the architecture
# ----------------------------------------------------------------------------------------------------

class _OnnxGraph:
    """Tensor producers, initializers and attributes of an ONNX graph, with errors that name the file."""

    def __init__(self, path: Path) -> None:
        import onnx
        from onnx import numpy_helper

        self.source = str(path)
        model = onnx.load(str(path))
        self.initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        for node in model.graph.node:       # constants may also come as Constant nodes
            if node.op_type == 'Constant':
                self.initializers[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.producers = {output: node for node in model.graph.node for output in node.output}
        self.inputs = [value.name for value in model.graph.input if value.name not in self.initializers]
        self.outputs = [value.name for value in model.graph.output]
        self.used: set[str] = set()        # initializers mapped onto a parameter
        self.conv_initializers = {name for node in model.graph.node if node.op_type == 'Conv'
                                  for name in node.input[1:] if name in self.initializers}

    def node(self, tensor: str, op_type: str, role: str):
        """The node that produces `tensor`, which must be an `op_type` (it computes `role`)."""
        node = self.producers.get(tensor)
        if node is None or node.op_type != op_type:
            found = f'{node.op_type} node {node.name!r}' if node is not None else 'a graph input or constant'
            raise ValueError(f'{self.source}: expected tensor {tensor!r} ({role}) to come from a {op_type} '
                             f'node, found {found}: not the YOLOX-Nano graph')
        return node

    def constant(self, name: str, role: str):
        if name not in self.initializers:
            raise ValueError(f'{self.source}: {role} needs the constant tensor {name!r}, which is missing')
        return self.initializers[name]

    def attribute(self, node, name: str, default=None):
        from onnx import helper

        for attribute in node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return default

    def same(self, tensor: str, expected: str, role: str) -> None:
        """Two paths through the architecture must reach the same graph tensor."""
        if tensor != expected:
            raise ValueError(f'{self.source}: {role} reads tensor {tensor!r} but the architecture says '
                             f'{expected!r}: not the YOLOX-Nano graph')


def _match_conv(graph: _OnnxGraph, tensor: str, conv: nn.Conv2d, prefix: str,
                state: dict[str, torch.Tensor]) -> str:
    """`tensor` = Conv(x): check the attributes, take weight and bias for `prefix`; returns x."""
    node = graph.node(tensor, 'Conv', prefix)
    kernel, stride, groups = list(conv.kernel_size), list(conv.stride), conv.groups
    pads = list(conv.padding) * 2
    attributes = {'kernel_shape': (graph.attribute(node, 'kernel_shape'), kernel),
                  'strides': (graph.attribute(node, 'strides', [1, 1]), stride),
                  'pads': (graph.attribute(node, 'pads', [0, 0, 0, 0]), pads),
                  'group': (graph.attribute(node, 'group', 1), groups),
                  'dilations': (graph.attribute(node, 'dilations', [1, 1]), [1, 1])}
    for name, (found, wanted) in attributes.items():
        if found != wanted:
            raise ValueError(f'{graph.source}: Conv node {node.name!r} for {prefix} has {name} {found}, the '
                             f'module wants {wanted}')
    if len(node.input) != 3:
        raise ValueError(f'{graph.source}: Conv node {node.name!r} for {prefix} has no bias input')
    for input_name, parameter in zip(node.input[1:], ('weight', 'bias')):
        array = graph.constant(input_name, f'{prefix}.{parameter}')
        wanted = tuple(getattr(conv, parameter).shape)
        if array.shape != wanted:
            raise ValueError(f'{graph.source}: initializer {input_name!r} for {prefix}.{parameter} has shape '
                             f'{array.shape}, the module wants {wanted}')
        if input_name in graph.used:
            raise ValueError(f'{graph.source}: initializer {input_name!r} would fill two parameters '
                             f'(the second: {prefix}.{parameter})')
        graph.used.add(input_name)
        state[f'{prefix}.{parameter}'] = torch.from_numpy(array.astype('float32', copy=True))
    return node.input[0]


def _match_silu(graph: _OnnxGraph, tensor: str, role: str) -> str:
    """`tensor` = x * Sigmoid(x) (how torch 1.10 exported SiLU); returns x."""
    mul = graph.node(tensor, 'Mul', f'{role} SiLU')
    x, gate = mul.input
    sigmoid = graph.node(gate, 'Sigmoid', f'{role} SiLU gate')
    graph.same(sigmoid.input[0], x, f'{role} SiLU gate')
    return x


def _match(graph: _OnnxGraph, tensor: str, module: nn.Module, prefix: str,
           state: dict[str, torch.Tensor]) -> str:
    """`tensor` = module(x) in the graph: fill `state` under `prefix` and return x's name."""
    if isinstance(module, ConvSiLU):
        return _match_conv(graph, _match_silu(graph, tensor, prefix), module.conv, f'{prefix}.conv', state)
    if isinstance(module, nn.Conv2d):
        return _match_conv(graph, tensor, module, prefix, state)
    if isinstance(module, DepthwiseSeparableConv):
        middle = _match(graph, tensor, module.pconv, f'{prefix}.pconv', state)
        return _match(graph, middle, module.dconv, f'{prefix}.dconv', state)
    if isinstance(module, nn.Sequential):
        for index in reversed(range(len(module))):
            tensor = _match(graph, tensor, module[index], f'{prefix}.{index}', state)
        return tensor
    if isinstance(module, Bottleneck):
        if module.shortcut:
            add = graph.node(tensor, 'Add', f'{prefix} residual')
            tensor, residual = add.input
        x = _match(graph, _match(graph, tensor, module.conv2, f'{prefix}.conv2', state),
                   module.conv1, f'{prefix}.conv1', state)
        if module.shortcut:
            graph.same(residual, x, f'{prefix} residual')
        return x
    if isinstance(module, CSPLayer):
        fused = _match(graph, tensor, module.conv3, f'{prefix}.conv3', state)
        concat = _concat_inputs(graph, fused, 2, prefix)
        through_bottlenecks = _match(graph, concat[0], module.m, f'{prefix}.m', state)
        x = _match(graph, through_bottlenecks, module.conv1, f'{prefix}.conv1', state)
        graph.same(_match(graph, concat[1], module.conv2, f'{prefix}.conv2', state), x, f'{prefix}.conv2')
        return x
    if isinstance(module, SPPBottleneck):
        concat = _concat_inputs(graph, _match(graph, tensor, module.conv2, f'{prefix}.conv2', state),
                                len(module.m) + 1, prefix)
        for index, (pooled, pool) in enumerate(zip(concat[1:], module.m)):
            node = graph.node(pooled, 'MaxPool', f'{prefix}.m.{index}')
            kernel, pad = pool.kernel_size, pool.padding
            if (graph.attribute(node, 'kernel_shape') != [kernel, kernel]
                    or graph.attribute(node, 'pads') != [pad] * 4
                    or graph.attribute(node, 'strides', [1, 1]) != [1, 1]):
                raise ValueError(f'{graph.source}: MaxPool node {node.name!r} for {prefix}.m.{index} is not '
                                 f'{kernel}x{kernel} stride 1 pad {pad}')
            graph.same(node.input[0], concat[0], f'{prefix}.m.{index}')
        return _match(graph, concat[0], module.conv1, f'{prefix}.conv1', state)
    if isinstance(module, Focus):
        slices = _concat_inputs(graph, _match(graph, tensor, module.conv, f'{prefix}.conv', state),
                                len(FOCUS_OFFSETS), prefix)
        images = None
        for index, (sliced, offsets) in enumerate(zip(slices, FOCUS_OFFSETS)):
            found = {}
            for _ in range(2):      # two Slice nodes: one over the rows (axis 2), one over the columns (3)
                node = graph.node(sliced, 'Slice', f'{prefix} space-to-depth part {index}')
                start, axis, step = (int(graph.constant(node.input[k], f'{prefix} slice')[0])
                                     for k in (1, 3, 4))      # Slice(data, starts, ends, axes, steps)
                found[axis] = (start, step)
                sliced = node.input[0]
            wanted = {2: (offsets[0], 2), 3: (offsets[1], 2)}
            if found != wanted:
                raise ValueError(f'{graph.source}: part {index} of the Focus space-to-depth slices '
                                 f'(axis: (start, step)) {found}, the module wants {wanted}')
            if images is not None:
                graph.same(sliced, images, f'{prefix} space-to-depth part {index}')
            images = sliced
        return images
    raise TypeError(f'no ONNX matching rule for {type(module).__name__} at {prefix}')


def _concat_inputs(graph: _OnnxGraph, tensor: str, count: int, role: str, axis: int = 1) -> list[str]:
    node = graph.node(tensor, 'Concat', f'{role} concatenation')
    if len(node.input) != count or graph.attribute(node, 'axis') != axis:
        raise ValueError(f'{graph.source}: Concat node {node.name!r} of {role} joins {len(node.input)} '
                         f'tensors on axis {graph.attribute(node, "axis")}, expected {count} on axis {axis}')
    return list(node.input)


def _match_upsample(graph: _OnnxGraph, tensor: str, role: str) -> str:
    node = graph.node(tensor, 'Resize', role)
    scales = graph.constant(node.input[2], f'{role} scales').tolist() if len(node.input) > 2 else []
    if graph.attribute(node, 'mode') != b'nearest' or scales != [1.0, 1.0, 2.0, 2.0]:
        raise ValueError(f'{graph.source}: Resize node {node.name!r} ({role}) is not a nearest 2x upsampling')
    return node.input[0]


def _match_neck(graph: _OnnxGraph, levels: list[str], neck: PAFPN,
                state: dict[str, torch.Tensor]) -> tuple[str, str, str]:
    """(P3, P4, P5) tensors -> (dark3, dark4, dark5) tensors, along `PAFPN.forward`."""
    p3, p4, p5 = levels
    downsampled_p4, p5_reduced = _concat_inputs(
        graph, _match(graph, p5, neck.bottom_up_p5, 'neck.bottom_up_p5', state), 2, 'neck.bottom_up_p5')
    graph.same(_match(graph, downsampled_p4, neck.downsample_p4, 'neck.downsample_p4', state), p4,
               'neck.downsample_p4')
    downsampled_p3, p4_reduced = _concat_inputs(
        graph, _match(graph, p4, neck.bottom_up_p4, 'neck.bottom_up_p4', state), 2, 'neck.bottom_up_p4')
    graph.same(_match(graph, downsampled_p3, neck.downsample_p3, 'neck.downsample_p3', state), p3,
               'neck.downsample_p3')
    upsampled_p4, dark3 = _concat_inputs(
        graph, _match(graph, p3, neck.top_down_p3, 'neck.top_down_p3', state), 2, 'neck.top_down_p3')
    graph.same(_match_upsample(graph, upsampled_p4, 'neck.upsample of p4'), p4_reduced, 'neck.upsample')
    top_down_p4 = _match(graph, p4_reduced, neck.p4_reduce, 'neck.p4_reduce', state)
    upsampled_p5, dark4 = _concat_inputs(
        graph, _match(graph, top_down_p4, neck.top_down_p4, 'neck.top_down_p4', state), 2, 'neck.top_down_p4')
    graph.same(_match_upsample(graph, upsampled_p5, 'neck.upsample of p5'), p5_reduced, 'neck.upsample')
    dark5 = _match(graph, p5_reduced, neck.p5_reduce, 'neck.p5_reduce', state)
    return dark3, dark4, dark5


def _match_head_level(graph: _OnnxGraph, tensor: str, head: DecoupledHead, k: int,
                      state: dict[str, torch.Tensor]) -> str:
    """Level k's [B, 85, h, w] = Concat(reg, Sigmoid(obj), Sigmoid(cls)) -> the neck tensor it reads."""
    reg, obj, cls = _concat_inputs(graph, tensor, 3, f'head level {k}')
    reg_features = _match(graph, reg, head.reg_preds[k], f'head.reg_preds.{k}', state)
    obj_logits = graph.node(obj, 'Sigmoid', f'head.obj_preds.{k} sigmoid').input[0]
    graph.same(_match(graph, obj_logits, head.obj_preds[k], f'head.obj_preds.{k}', state), reg_features,
               f'head.obj_preds.{k}')
    cls_logits = graph.node(cls, 'Sigmoid', f'head.cls_preds.{k} sigmoid').input[0]
    cls_features = _match(graph, cls_logits, head.cls_preds[k], f'head.cls_preds.{k}', state)
    stem = _match(graph, reg_features, head.reg_convs[k], f'head.reg_convs.{k}', state)
    graph.same(_match(graph, cls_features, head.cls_convs[k], f'head.cls_convs.{k}', state), stem,
               f'head.cls_convs.{k}')
    return _match(graph, stem, head.stems[k], f'head.stems.{k}', state)


def yolox_state_dict_from_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """`YOLOXNano`'s state dict (float32) from the YOLOX-Nano ONNX export.

    The graph is walked backwards from its output along the architecture: output <- Transpose <- Concat
    of the three levels' Reshapes <- each level's head <- the neck <- the backbone <- `images`. Every
    Conv on the way is checked (kernel, stride, padding, groups, weight and bias shapes) and its
    initializers become the matching module's `weight` / `bias`.

    Args:
        path: the ONNX file (e.g. models/peers/yolox_nano_416.onnx).

    Returns:
        parameter name -> float32 tensor, exactly `YOLOXNano().state_dict()`'s keys.

    Raises:
        ValueError naming the file and the tensor / node that does not fit, or the parameters left unset
        and initializers left unused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'YOLOX ONNX file {path} does not exist')
    graph = _OnnxGraph(path)
    model = YOLOXNano()
    state: dict[str, torch.Tensor] = {}
    if len(graph.outputs) != 1:
        raise ValueError(f'{graph.source}: expected one output [1, 3549, 85], found {graph.outputs}')
    transpose = graph.node(graph.outputs[0], 'Transpose', 'the output [B, A, 85]')
    if graph.attribute(transpose, 'perm') != [0, 2, 1]:
        raise ValueError(f'{graph.source}: the output Transpose has perm '
                         f'{graph.attribute(transpose, "perm")}, expected [0, 2, 1]')
    reshaped = _concat_inputs(graph, transpose.input[0], len(YOLOX_STRIDES), 'the levels', axis=2)
    level_tensors = []          # the neck tensors P3, P4, P5 that the head's levels read
    for k, tensor in enumerate(reshaped):
        flattened = graph.node(tensor, 'Reshape', f'head level {k} flatten').input[0]
        level_tensors.append(_match_head_level(graph, flattened, model.head, k, state))
    dark3, dark4, dark5 = _match_neck(graph, level_tensors, model.neck, state)
    backbone = model.backbone
    graph.same(_match(graph, dark5, backbone.dark5, 'backbone.dark5', state), dark4, 'backbone.dark5')
    graph.same(_match(graph, dark4, backbone.dark4, 'backbone.dark4', state), dark3, 'backbone.dark4')
    stem = _match(graph, _match(graph, dark3, backbone.dark3, 'backbone.dark3', state), backbone.dark2,
                  'backbone.dark2', state)
    graph.same(_match(graph, stem, backbone.stem, 'backbone.stem', state), graph.inputs[0], 'backbone.stem')

    wanted = set(model.state_dict())
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    unused = sorted(graph.conv_initializers - graph.used)     # a Conv the architecture walk never reached
    if missing or unexpected or unused:
        raise ValueError(f'{graph.source}: parameters without an initializer {missing}, mapped names the '
                         f'module lacks {unexpected}, Conv initializers left unused {unused}')
    return state


# ----------------------------------------------------------------------------------------------------
# Checkpoint
# ----------------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_yolox_checkpoint(onnx_path: str | Path) -> dict:
    """The shipped checkpoint's content (loadable with torch.load(weights_only=True)).

    Keys: format ('occluded_ppe/yolox_nano/1'), state_dict (float32, `YOLOXNano` names), input_size,
    strides, num_classes, input ('BGR 0..255 ...' of `forward_raw`), source_sha256, licence, attribution.
    """
    onnx_path = Path(onnx_path)
    return {
        'format': CHECKPOINT_FORMAT,
        'state_dict': yolox_state_dict_from_onnx(onnx_path),
        'input_size': YOLOX_INPUT_SIZE,
        'strides': list(YOLOX_STRIDES),
        'num_classes': YOLOX_NUM_CLASSES,
        'input': 'forward_raw: BGR 0..255, letterboxed top-left, pad 114; forward: RGB in [0, 1]',
        'source_sha256': _sha256(onnx_path),
        'licence': 'Apache-2.0',
        'attribution': ATTRIBUTION,
    }


def write_yolox_checkpoint(onnx_path: str | Path, out_path: str | Path = DEFAULT_CHECKPOINT) -> Path:
    """Import the ONNX file and write the checkpoint (through a buffer: no half-written file)."""
    out_path = Path(out_path)
    buffer = io.BytesIO()
    torch.save(build_yolox_checkpoint(onnx_path), buffer)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(buffer.getvalue())
    return out_path


def load_yolox_nano(path: str | Path = DEFAULT_CHECKPOINT) -> YOLOXNano:
    """A `YOLOXNano` in eval mode, float32, from the shipped checkpoint or the ONNX file itself.

    Args:
        path: a checkpoint written by `write_yolox_checkpoint` (default models/pretrained/yolox_nano_416.pt)
            or the YOLOX-Nano .onnx file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'YOLOX-Nano weights {path} do not exist (write them with `python -m '
                                f'occluded_ppe_ros.model.yolox --onnx {DEFAULT_ONNX} '
                                f'--out {DEFAULT_CHECKPOINT}`)')
    if path.suffix == '.onnx':
        state, input_size = yolox_state_dict_from_onnx(path), YOLOX_INPUT_SIZE
    else:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        if not isinstance(checkpoint, dict) or checkpoint.get('format') != CHECKPOINT_FORMAT:
            found = checkpoint.get('format') if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ValueError(f'{path} is not a {CHECKPOINT_FORMAT} checkpoint (format: {found!r})')
        state = {name: value.float() for name, value in checkpoint['state_dict'].items()}
        input_size = int(checkpoint.get('input_size', YOLOX_INPUT_SIZE))
    model = YOLOXNano(input_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f'{path} does not fit YOLOXNano: {error}') from None
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """`python -m occluded_ppe_ros.model.yolox --onnx X.onnx --out Y.pt`: write the checkpoint."""
    parser = argparse.ArgumentParser(description='Import YOLOX-Nano from its ONNX export into a checkpoint '
                                                 'of occluded_ppe_ros.model.yolox.YOLOXNano.')
    parser.add_argument('--onnx', type=Path, default=DEFAULT_ONNX,
                        help=f'the ONNX file (default {DEFAULT_ONNX})')
    parser.add_argument('--out', type=Path, default=DEFAULT_CHECKPOINT,
                        help=f'checkpoint to write (default {DEFAULT_CHECKPOINT})')
    args = parser.parse_args(argv)
    if args.onnx.is_file() and _sha256(args.onnx) != SOURCE_SHA256:
        print(f'note: {args.onnx} is not the published file (sha256 {SOURCE_SHA256}); importing it anyway',
              file=sys.stderr)
    path = write_yolox_checkpoint(args.onnx, args.out)
    count = sum(v.numel() for v in torch.load(path, weights_only=True)['state_dict'].values())
    print(f'wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {count / 1e6:.3f} M parameters, float32)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
