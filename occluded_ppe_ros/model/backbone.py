"""Encoders E_C / E_M: a torchvision body (ResNet / ResNeXt / MobileNetV2) plus a feature pyramid.

Choices (the paper only says "FPN style encoder", Table 5 lists ResNet-50/101 and ResNeXt-101):
- The body is built with `weights=None` (nothing is ever downloaded); `pretrained_path` loads a local
  state dict with torchvision's own key names (`conv1.*`, `layer1.*` or `features.*`), so weights
  converted elsewhere (e.g. MoveNet's MobileNetV2) load without renaming.
- The FPN fuses the stride 4/8/16/32 stages top-down (1x1 laterals, nearest upsampling, sums) into a
  single output map at `output_stride` (4 by default: pedestrians in CityPersons are often < 40 px tall
  at 640 px width, so a coarser map loses them). Every decoder (detection, mask, pose) reads that one
  map: the "last layer of encoded feature maps" of section 2.2. One level keeps the anchor-free head and
  the ONNX graph simple; the top-down path still carries the stride-32 context into it.
- The network takes RGB in [0, 1] and normalises inside (`InputNormalization`), so every backend shares
  one pre-processing: ImageNet mean/std for ResNets, x * 2 - 1 for MobileNetV2 (MoveNet's input range).
- MobileNetV2 x1.5 ends in a 480 -> 1280 conv (MoveNet MultiPose) rather than torchvision's 1920, and
  `tf_same_padding` reproduces TensorFlow's 'SAME' stride-2 padding (bottom/right only) so imported TF
  weights see the features they were trained on.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.misc import Conv2dNormActivation

from occluded_ppe_ros.model.config import BackboneConfig, FPNConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# MobileNetV2 `features` index ranges ending at strides 4, 8, 16, 32.
_MOBILENET_STAGES = ((0, 4), (4, 7), (7, 14), (14, 19))


class InputNormalization(nn.Module):
    """RGB [0, 1] -> the backbone's input range: (x - mean) / std (buffers, exported as constants)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind == 'imagenet':
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif kind == 'symmetric':
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)   # x * 2 - 1
        else:
            raise ValueError(f'unknown input normalization {kind!r}')
        self.kind = kind
        self.register_buffer('mean', torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images float [B, 3, H, W] RGB in [0, 1]. Returns the normalised tensor, same shape."""
        return (images - self.mean) / self.std


class TFSamePadConv2d(nn.Conv2d):
    """A stride-2 Conv2d padding (0, 1, 0, 1) (left, right, top, bottom) first, as TF 'SAME' on even sizes.

    Same parameter names as nn.Conv2d, so state dicts are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad bottom/right by kernel - stride, then convolve without padding."""
        extra_w = max(self.kernel_size[1] - self.stride[1], 0)
        extra_h = max(self.kernel_size[0] - self.stride[0], 0)
        x = F.pad(x, (0, extra_w, 0, extra_h))
        return self._conv_forward(x, self.weight, self.bias)


def _use_tf_same_padding(module: nn.Module) -> None:
    """Replace every stride-2 conv under `module` by a TFSamePadConv2d sharing its parameters."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and child.stride == (2, 2):
            replacement = TFSamePadConv2d(
                child.in_channels, child.out_channels, child.kernel_size, stride=child.stride, padding=0,
                groups=child.groups, bias=child.bias is not None)
            replacement.weight = child.weight
            if child.bias is not None:
                replacement.bias = child.bias
            setattr(module, name, replacement)
        else:
            _use_tf_same_padding(child)


class Body(nn.Module):
    """A torchvision classification body cut into four stages at strides 4, 8, 16, 32.

    Submodule names equal torchvision's (`conv1`, `bn1`, `layer1`... or `features`), so a torchvision
    state dict (without `fc.*` / `classifier.*`) loads as is.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.name = cfg.name
        norm_layer = FrozenBatchNorm2d if cfg.frozen_batchnorm else nn.BatchNorm2d
        if cfg.name == 'mobilenet_v2':
            net = torchvision.models.mobilenet_v2(weights=None, width_mult=cfg.width_mult,
                                                  norm_layer=norm_layer)
            if cfg.width_mult != 1.0:
                # MoveNet MultiPose's MobileNetV2 x1.5 keeps a 1280-channel head conv.
                in_channels = net.features[17].out_channels
                net.features[18] = Conv2dNormActivation(in_channels, 1280, kernel_size=1,
                                                        norm_layer=norm_layer, activation_layer=nn.ReLU6)
            self.features = net.features
            self.out_channels = tuple(self.features[end - 1].out_channels for _, end in _MOBILENET_STAGES)
        else:
            factory = getattr(torchvision.models, cfg.name)
            net = factory(weights=None, norm_layer=norm_layer)
            self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
            self.layer1, self.layer2 = net.layer1, net.layer2
            self.layer3, self.layer4 = net.layer3, net.layer4
            expansion = 1 if cfg.name == 'resnet18' else 4
            self.out_channels = tuple(c * expansion for c in (64, 128, 256, 512))
        if cfg.tf_same_padding:
            _use_tf_same_padding(self)
        if cfg.pretrained_path:
            load_body_weights(self, cfg.pretrained_path)
        for stage in range(cfg.frozen_stages):
            for parameter in self.stage_parameters(stage):
                parameter.requires_grad_(False)

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """The parameters of stage `stage` (0..3: strides 4, 8, 16, 32; stage 0 includes the stem)."""
        if self.name == 'mobilenet_v2':
            start, end = _MOBILENET_STAGES[stage]
            modules = [self.features[index] for index in range(start, end)]
        else:
            stages = [[self.conv1, self.bn1, self.layer1], [self.layer2], [self.layer3], [self.layer4]]
            modules = stages[stage]
        return [parameter for module in modules for parameter in module.parameters()]

    def forward(self, x: torch.Tensor, tap: int | None = None) -> list[torch.Tensor]:
        """Run the body.

        Args:
            x: float [B, 3, H, W] normalised.
            tap: MobileNetV2 only: also return the output of `features[tap]` (an inner block).

        Returns:
            4 maps at strides 4, 8, 16, 32, then the tapped map when `tap` is given.
        """
        if self.name == 'mobilenet_v2':
            outputs, tapped = [], []
            for start, end in _MOBILENET_STAGES:
                for index in range(start, end):
                    x = self.features[index](x)
                    if index == tap:
                        tapped.append(x)
                outputs.append(x)
            return outputs + tapped
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def load_body_weights(body: nn.Module, path: str | Path) -> None:
    """Load a local torchvision-named state dict into `body`; every body parameter must be present.

    Args:
        body: a `Body`.
        path: a file from `torch.save(state_dict)` (or a dict with the state dict under 'state_dict'
            or 'model'); classifier keys (`fc.*`, `classifier.*`) are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'backbone.pretrained_path {path} does not exist')
    state = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k: v for k, v in state.items() if not k.startswith(('fc.', 'classifier.'))}
    try:
        result = body.load_state_dict(state, strict=False)
    except RuntimeError as error:                       # shape mismatches
        raise ValueError(f'backbone weights {path} do not fit the {body.name} body: {error}') from None
    missing = [k for k in result.missing_keys if not k.endswith('num_batches_tracked')]
    if missing or result.unexpected_keys:
        raise ValueError(f'backbone weights {path} do not fit the {body.name} body: '
                         f'missing {missing[:5]} ({len(missing)}), unexpected '
                         f'{result.unexpected_keys[:5]} ({len(result.unexpected_keys)})')


class FPN(nn.Module):
    """Top-down feature pyramid fused into one map at `output_stride`.

    1x1 laterals to `channels`, nearest 2x upsampling and sums from stride 32 down to the output
    stride, then one 3x3 conv + GroupNorm + ReLU on the output map.
    """

    def __init__(self, in_channels: tuple[int, ...], cfg: FPNConfig) -> None:
        super().__init__()
        # Levels used: stride 4 (index 0) or 8 (index 1) up to 32.
        self.first_level = {4: 0, 8: 1}[cfg.output_stride]
        used = in_channels[self.first_level:]
        self.laterals = nn.ModuleList(nn.Conv2d(c, cfg.channels, 1) for c in used)
        self.output = nn.Sequential(
            nn.Conv2d(cfg.channels, cfg.channels, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(cfg.channels), cfg.channels),
            nn.ReLU(inplace=True))
        self.out_channels = cfg.channels
        self.stride = cfg.output_stride

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Args: the body's 4 maps. Returns float [B, channels, H / stride, W / stride]."""
        used = features[self.first_level:]
        top = self.laterals[-1](used[-1])
        for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(used[:-1])):
            top = lateral(feature) + F.interpolate(top, size=feature.shape[-2:], mode='nearest')
        return self.output(top)


class SeparableConv(nn.Module):
    """3x3 depthwise conv (no bias), 1x1 pointwise conv with bias, ReLU: Keras' SeparableConv2D as MoveNet."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, h, w] -> [B, out, h, w]."""
        return torch.relu(self.pointwise(self.depthwise(x)))


class MoveNetKeypointDecoder(nn.Module):
    """MoveNet's own feature pyramid and keypoint-heatmap head (`fpn.movenet_keypoint_features`).

    As in MoveNet's graph (weights from `ppe import-pretrained`,
    `pretrained_import.movenet_decoder_state_dict`):
    a 1x1 lateral on the stride-32 output, bilinear 2x upsampling (TF half-pixel centres = torch
    align_corners=False), + the 1x1 lateral of `features[10]` (Keras block_9, stride 16), separable conv
    to 32 channels; the same at stride 8 (`features[6]`, to 24 channels) and stride 4 (`features[3]`,
    24 channels). The heatmap head is a separable conv to 96 channels and a 1x1 conv to MoveNet's 17 COCO
    keypoint logits.
    """

    STRIDE16_TAP = 10          # features[10]: Keras block_9, the stride-16 map MoveNet's pyramid reads

    def __init__(self, stride4_channels: int, stride8_channels: int, stride16_channels: int,
                 stride32_channels: int) -> None:
        super().__init__()
        self.lateral32 = nn.Conv2d(stride32_channels, 64, 1)
        self.lateral16 = nn.Conv2d(stride16_channels, 64, 1)
        self.fuse16 = SeparableConv(64, 32)
        self.lateral8 = nn.Conv2d(stride8_channels, 32, 1)
        self.fuse8 = SeparableConv(32, 24)
        self.lateral4 = nn.Conv2d(stride4_channels, 24, 1)
        self.fuse4 = SeparableConv(24, 24)
        self.heatmap = nn.Sequential()
        self.heatmap.add_module('depthwise', nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False))
        self.heatmap.add_module('pointwise', nn.Conv2d(24, 96, 1))
        self.heatmap.add_module('relu', nn.ReLU())
        self.heatmap.add_module('output', nn.Conv2d(96, 17, 1))
        self.out_channels = 24 + 17

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode='bilinear', align_corners=False)

    def forward(self, stride4: torch.Tensor, stride8: torch.Tensor, stride16: torch.Tensor,
                stride32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Body maps (stride16 = `features[10]`'s) -> (features [B, 24, H/4, W/4], logits [B, 17, H/4, W/4]).

        Returns:
            (MoveNet's stride-4 features, its 17 COCO keypoint heatmap logits).
        """
        lateral16 = self.lateral16(stride16)
        top = self.fuse16(lateral16 + self._up(self.lateral32(stride32), lateral16))
        lateral8 = self.lateral8(stride8)
        top = self.fuse8(lateral8 + self._up(top, lateral8))
        lateral4 = self.lateral4(stride4)
        features = self.fuse4(lateral4 + self._up(top, lateral4))
        return features, self.heatmap(features)


def load_movenet_decoder(decoder: MoveNetKeypointDecoder, path: str | Path) -> None:
    """Load `decoder_state_dict` of a `ppe import-pretrained` checkpoint into `decoder` (all keys)."""
    from occluded_ppe_ros.model.pretrained_import import load_pretrained_checkpoint

    state = load_pretrained_checkpoint(path).get('decoder_state_dict')   # validated, float32
    if state is None:
        raise ValueError(f'{path} holds no MoveNet decoder (decoder_state_dict), which '
                         'fpn.movenet_keypoint_features needs; re-run `ppe import-pretrained`')
    try:
        decoder.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f'the MoveNet decoder in {path} does not fit this body: {error}') from None


class Encoder(nn.Module):
    """E_C or E_M: input normalisation, body, FPN. images [B, 3, H, W] in [0, 1] -> [B, C, H/s, W/s].

    With `fpn.movenet_keypoint_features` the output is [FPN output | MoveNet's 24 stride-4 features |
    its 17 keypoint heatmaps in [0, 1]] along the channels (`MoveNetKeypointDecoder`, frozen).
    """

    def __init__(self, backbone: BackboneConfig, fpn: FPNConfig) -> None:
        super().__init__()
        self.normalize = InputNormalization(backbone.resolved_normalization())
        self.body = Body(backbone)
        self.fpn = FPN(self.body.out_channels, fpn)
        self.out_channels = self.fpn.out_channels
        self.stride = self.fpn.stride
        self.keypoint_decoder = None
        if fpn.movenet_keypoint_features:
            tap_channels = self.body.features[MoveNetKeypointDecoder.STRIDE16_TAP].out_channels
            c4, c8, _, c32 = self.body.out_channels
            self.keypoint_decoder = MoveNetKeypointDecoder(c4, c8, tap_channels, c32)
            if backbone.pretrained_path:
                load_movenet_decoder(self.keypoint_decoder, backbone.pretrained_path)
            # frozen: MoveNet's maps are an input the heads learn to read, not something they retrain
            self.keypoint_decoder.requires_grad_(False)
            self.out_channels += self.keypoint_decoder.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images float [B, 3, H, W] RGB in [0, 1], H and W multiples of 32."""
        normalized = self.normalize(images)
        if self.keypoint_decoder is None:
            return self.fpn(self.body(normalized))
        c4, c8, c16, c32, tap = self.body(normalized, tap=MoveNetKeypointDecoder.STRIDE16_TAP)
        features, heatmap_logits = self.keypoint_decoder(c4, c8, tap, c32)
        return torch.cat([self.fpn([c4, c8, c16, c32]), features, torch.sigmoid(heatmap_logits)], 1)


def _groups(channels: int) -> int:
    """Group count for GroupNorm: 32 where it divides, else the largest divisor <= 32."""
    for groups in range(min(32, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1
