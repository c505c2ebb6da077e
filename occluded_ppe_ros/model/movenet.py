"""Google's MoveNet SinglePose (Thunder, Lightning) as a readable torch module with all its weights.

MoveNet single-pose is a CenterNet over one person crop: a MobileNetV2 body (TF 'SAME' padding, folded
batch norm), a feature pyramid fused at stride 4, and four heads on that stride-4 map (each a 3x3
depthwise + 1x1 conv to 96 channels + ReLU, then a 1x1 conv):
    center    1 channel, sigmoid: where the person's centre is
    regress   34 channels: per joint (dy, dx) from the centre cell to the joint, in stride-4 cells
    heatmap   17 channels, sigmoid: per-joint heatmaps
    offset    34 channels: per joint (dy, dx) from a heatmap cell to the joint, in cells
The body, pyramid and heatmap head reuse `backbone.Body` and `backbone.MoveNetKeypointDecoder`; the
weights come from `ppe import-pretrained` (`models/pretrained/movenet_{thunder,lightning}.pt`, read
from the TF.js graph models by `pretrained_import`).

`MoveNetSinglePose.decode` is MoveNet's own decoding as its TF graph computes it (graph node names in
`pretrained_import._DECODING_NODES`), batched and with export-friendly ops only (argmax over a
flattened map, gather, arithmetic):
    1. centre cell = argmax(center * center_weight), center_weight = 1 / (distance to the frame centre
       cell + 1.8), the graph's float16 constant;
    2. joint_j = centre cell + regress_j at the centre cell;
    3. peak_j = argmax over cells of heatmap_j / (|cell - joint_j| + 1.7998) (float16(1.8));
    4. output_j = ((peak_j + offset_j at peak_j) * output_scale, heatmap_j at peak_j), with output_scale =
       float16(4 / S): (y, x) normalised to [0, 1] over the S x S input, score in [0, 1].
Cell (r, c) of the stride-4 map sits at input pixel (4 r, 4 c) in this normalisation (MoveNet's
convention: y = (r + dy) / (S / 4), not the half-cell-centred one).

Variants (read from the TF.js manifests):
    thunder    256 x 256 input, MobileNetV2 width 1.75 (Conv1 56 channels), 64 x 64 heads, 12.5 MB
    lightning  192 x 192 input, MobileNetV2 width 1.0, 48 x 48 heads, 4.6 MB
Both end their body in a 1280-channel conv, and both pyramids give 24 channels at stride 4.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from occluded_ppe_ros.model.backbone import Body, MoveNetKeypointDecoder
from occluded_ppe_ros.model.config import BackboneConfig
from occluded_ppe_ros.skeleton import COCO17_FLIP_PERMUTATION

NUM_KEYPOINTS = 17            # COCO order: nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles
FEATURE_CHANNELS = 24         # MoveNet's stride-4 pyramid output, the map all four heads read
HEAD_HIDDEN_CHANNELS = 96
PIXEL_SCALE = 257 / 32768     # float16(1 / 127.5) = 0.007843017578125, the graph's input scale
PRETRAINED_DIR = Path(__file__).resolve().parents[2] / 'models' / 'pretrained'
OUTPUT_STRIDE = 4             # input pixels per heads' cell


@dataclass(frozen=True)
class MoveNetSinglePoseConfig:
    """One single-pose MoveNet variant; the scalar constants are the graph's (float16 values).

    Attributes:
        variant: 'thunder' or 'lightning'.
        input_size: S, the square input side in pixels (256 or 192).
        width_mult: MobileNetV2 width (1.75 or 1.0).
        pixel_scale: the graph's input scaling: normalised = pixel (0..255) * pixel_scale - 1.
        joint_distance_offset: added to the cell-to-joint distance (in cells) before the keypoint heatmap
            is divided by it (float16(1.8)).
        output_scale: normalised coordinate per stride-4 cell (float16(4 / S)).
    """

    variant: str
    input_size: int
    width_mult: float
    pixel_scale: float = PIXEL_SCALE
    joint_distance_offset: float = 1.7998046875
    output_scale: float = 0.015625

    @property
    def heatmap_size(self) -> int:
        """Side of the stride-4 head maps (S / 4)."""
        return self.input_size // 4

    def to_dict(self) -> dict:
        """Plain dict (what a checkpoint's `single_pose_config` holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = 'config') -> MoveNetSinglePoseConfig:
        """The inverse of `to_dict`; unknown or missing keys raise ValueError naming `source`."""
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - fields)
        missing = sorted({'variant', 'input_size', 'width_mult'} - set(values))
        if unknown or missing:
            raise ValueError(f'{source}: single_pose_config has unknown keys {unknown}, lacks {missing}')
        cfg = cls(**values)
        if cfg.input_size % 32 != 0:
            raise ValueError(f'{source}: input_size {cfg.input_size} is not a multiple of 32')
        return cfg


# float16(4 / S) as the graphs store it (4 / 192 = 0.0208333 -> 0.0208282): what `ppe import-pretrained`
# reads and writes into the checkpoints; listed here so the variants can be built without one.
MOVENET_SINGLE_POSE_VARIANTS: dict[str, MoveNetSinglePoseConfig] = {
    'thunder': MoveNetSinglePoseConfig('thunder', 256, 1.75, output_scale=0.015625),
    'lightning': MoveNetSinglePoseConfig('lightning', 192, 1.0, output_scale=0.0208282470703125),
}


class MoveNetHead(nn.Sequential):
    """A CenterNet head: 3x3 depthwise (no bias), 1x1 conv to 96 + ReLU, 1x1 conv to `out_channels`.

    Same module names as `MoveNetKeypointDecoder.heatmap` (depthwise, pointwise, relu, output), so one
    import mapping fills both. [B, 24, h, w] -> [B, out_channels, h, w] (raw logits / regressions).
    """

    def __init__(self, out_channels: int, in_channels: int = FEATURE_CHANNELS,
                 hidden_channels: int = HEAD_HIDDEN_CHANNELS) -> None:
        super().__init__()
        self.add_module('depthwise', nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels,
                                               bias=False))
        self.add_module('pointwise', nn.Conv2d(in_channels, hidden_channels, 1))
        self.add_module('relu', nn.ReLU())
        self.add_module('output', nn.Conv2d(hidden_channels, out_channels, 1))


def center_weight_map(size: int, distance_offset: float = 1.8) -> torch.Tensor:
    """The centre prior: 1 / (distance to cell (size / 2, size / 2) + `distance_offset`), [size, size].

    The graph stores this map as a float16 constant (`truediv_2_recip`), which the imported checkpoints
    carry; this formula reproduces it to float16 rounding and serves models built without a checkpoint.
    """
    cells = torch.arange(size, dtype=torch.float32) - size // 2
    distance = torch.sqrt(cells[:, None] ** 2 + cells[None, :] ** 2)
    return 1.0 / (distance + distance_offset)


def decode_single_pose(center: torch.Tensor, regress: torch.Tensor, heatmap: torch.Tensor,
                       offset: torch.Tensor, center_weight: torch.Tensor, joint_distance_offset: float,
                       output_scale: float) -> torch.Tensor:
    """Single-pose MoveNet's decoding of the four head maps (see the module docstring), batched.

    Args:
        center: float [N, 1, h, w] centre probabilities (after the sigmoid).
        regress: float [N, 34, h, w] per joint (dy, dx) from a centre cell to the joint, in cells.
        heatmap: float [N, 17, h, w] keypoint probabilities (after the sigmoid).
        offset: float [N, 34, h, w] per joint (dy, dx) from a heatmap cell to the joint, in cells.
        center_weight: float [h, w] weight of the centre map (the graph's `truediv_2_recip`).
        joint_distance_offset: added to the cell-to-joint distance before dividing the heatmap by it.
        output_scale: normalised coordinate per cell (float16(4 / S) for an S x S input).

    Returns:
        float [N, 17, 3]: (y, x) normalised to [0, 1] over the input (y = row / h as MoveNet), score.
    """
    batch, _, height, width = heatmap.shape
    # 1. the centre: argmax of the weighted centre map (first maximum on ties, as TF and ONNX ArgMax)
    center_index = (center[:, 0] * center_weight).flatten(1).argmax(dim=1)           # [N]
    # indices are >= 0, so truncating division is the graph's FloorDiv (and exports as a plain Div)
    center_row = torch.div(center_index, width, rounding_mode='trunc')
    center_col = center_index - center_row * width
    # 2. the regressed joints: the regression vector at the centre cell, (dy, dx) interleaved per joint
    regress_at_center = regress.flatten(2).gather(
        2, center_index.view(-1, 1, 1).expand(-1, regress.shape[1], 1))[..., 0]      # [N, 34]
    regress_at_center = regress_at_center.view(batch, NUM_KEYPOINTS, 2)
    joint_row = center_row.to(regress.dtype)[:, None] + regress_at_center[..., 0]     # [N, 17] in cells
    joint_col = center_col.to(regress.dtype)[:, None] + regress_at_center[..., 1]
    # 3. per joint, the heatmap cell that is strong and near the regressed joint. Same operation order
    # as the graph (SquaredDifference, Sqrt, + offset, RealDiv) so that near-ties resolve the same way.
    rows = torch.arange(height, dtype=heatmap.dtype, device=heatmap.device).view(1, 1, height, 1)
    cols = torch.arange(width, dtype=heatmap.dtype, device=heatmap.device).view(1, 1, 1, width)
    row_difference = rows - joint_row[..., None, None]
    col_difference = cols - joint_col[..., None, None]
    distance = torch.sqrt(row_difference * row_difference + col_difference * col_difference)
    peak_index = (heatmap / (distance + joint_distance_offset)).flatten(2).argmax(dim=2)   # [N, 17]
    peak_row = torch.div(peak_index, width, rounding_mode='trunc')
    peak_col = peak_index - peak_row * width
    # 4. refine by the offset head at the peak and read the (unweighted) heatmap score there
    offset_at_peak = offset.view(batch, NUM_KEYPOINTS, 2, height * width).gather(
        3, peak_index.view(batch, NUM_KEYPOINTS, 1, 1).expand(-1, -1, 2, 1))[..., 0]   # [N, 17, 2]
    score = heatmap.flatten(2).gather(2, peak_index[..., None])[..., 0]               # [N, 17]
    y = (peak_row.to(offset.dtype) + offset_at_peak[..., 0]) * output_scale
    x = (peak_col.to(offset.dtype) + offset_at_peak[..., 1]) * output_scale
    return torch.stack([y, x, score], dim=-1)


def unmirror_head_maps(mirrored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The head maps of a left-right mirrored crop, brought back to the original crop's frame.

    Args:
        mirrored: `MoveNetSinglePose.forward_features` of `crops.flip(-1)` ('center' [N, 1, h, w],
            'heatmap' [N, 17, h, w], 'offset' [N, 34, h, w]).

    Returns:
        'center', 'heatmap' and 'offset' of the same shapes, indexed as the original crop's maps: the
        columns reversed, left and right joints swapped (skeleton.COCO17_FLIP_PERMUTATION), and the x offsets
        mirrored. Cell c of the mirrored map is cell w - 1 - c of the original; with cell c at input pixel
        4 c (MoveNet's convention, module docstring) and pixel i mirrored to S - 1 - i, a joint at
        (c' + dx') cells in the mirrored crop is at (c + 1 - 1/4 - dx') cells in the original, i.e.
        dx = 0.75 - dx' (on the training split's photos 0.75 also scored best of 0, 0.75 and 1).
    """
    batch, _, height, width = mirrored['offset'].shape
    permutation = list(COCO17_FLIP_PERMUTATION)
    offset = mirrored['offset'].flip(-1).view(batch, NUM_KEYPOINTS, 2, height, width)[:, permutation]
    offset_y, offset_x = offset.unbind(2)
    offset_x = (1.0 - 1.0 / OUTPUT_STRIDE) - offset_x
    return {
        'center': mirrored['center'].flip(-1),
        'heatmap': mirrored['heatmap'].flip(-1)[:, permutation],
        'offset': torch.stack([offset_y, offset_x], dim=2).view(batch, 2 * NUM_KEYPOINTS, height, width),
    }


class MoveNetSinglePose(nn.Module):
    """MoveNet SinglePose: body, pyramid, the four CenterNet heads and MoveNet's own decoding.

    Input: float [N, 3, S, S] RGB in [0, 1] (S = `cfg.input_size`: a square person crop, resized); the
    module normalises as MoveNet does. Output of `forward`: float [N, 17, 3] (y, x, score) with y, x
    normalised to [0, 1] over the crop, as the original model's output [1, 1, 17, 3].
    Submodules: `body` (`backbone.Body`, torchvision `features.*` names), `decoder` (pyramid + keypoint
    heatmap head, `backbone.MoveNetKeypointDecoder`), `center_head`, `regress_head`, `offset_head`.
    The folded batch norms are FrozenBatchNorm2d (train mode must not replace their statistics).
    """

    def __init__(self, cfg: MoveNetSinglePoseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = Body(BackboneConfig(name='mobilenet_v2', width_mult=cfg.width_mult, tf_same_padding=True,
                                        frozen_batchnorm=True))
        stride4, stride8, _, stride32 = self.body.out_channels
        stride16 = self.body.features[MoveNetKeypointDecoder.STRIDE16_TAP].out_channels
        self.decoder = MoveNetKeypointDecoder(stride4, stride8, stride16, stride32)
        self.center_head = MoveNetHead(1)
        self.regress_head = MoveNetHead(2 * NUM_KEYPOINTS)
        self.offset_head = MoveNetHead(2 * NUM_KEYPOINTS)
        self.register_buffer('center_weight', center_weight_map(cfg.heatmap_size, 1.8))
        # float64 product of two float16-exact numbers: exact in float32 (65535 / 32768 for MoveNet)
        self.input_scale = 255.0 * cfg.pixel_scale
        self.feature_channels = FEATURE_CHANNELS

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Body, pyramid and the four heads.

        Args:
            images: float [N, 3, S, S] RGB in [0, 1].

        Returns:
            dict of float tensors, h = w = S / 4 (stride-4 cells):
                'body_stride8' [N, C8, h/2, w/2]: the body's stride-8 map (C8 = 32 x width, rounded to 8:
                    56 Thunder, 32 Lightning), read by the pipeline's mask head
                'features' [N, 24, h, w]: the pyramid's stride-4 map that every head reads
                'center'   [N, 1, h, w]: person-centre probability (sigmoid applied)
                'regress'  [N, 34, h, w]: joint j's (dy, dx) from this cell as a centre (channels 2j, 2j+1)
                'heatmap'  [N, 17, h, w]: keypoint probabilities (sigmoid applied)
                'offset'   [N, 34, h, w]: joint j's (dy, dx) sub-cell offset from this cell
        """
        size = self.cfg.input_size
        # (skipped while tracing for ONNX export, where the shape is fixed by the example input anyway)
        if not torch.jit.is_tracing() and (images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size)):
            raise ValueError(f'MoveNet {self.cfg.variant} takes [N, 3, {size}, {size}] RGB in [0, 1], '
                             f'got {tuple(images.shape)}')
        # MoveNet: pixel * float16(1 / 127.5) - 1, i.e. x * 2 - 1 up to 1.5e-5 (the graph's constant)
        normalized = images * self.input_scale - 1.0
        maps = self.body(normalized, tap=MoveNetKeypointDecoder.STRIDE16_TAP)
        stride4, stride8, _, stride32, stride16 = maps   # the tap (block_9, stride 16) comes last
        features, heatmap_logits = self.decoder(stride4, stride8, stride16, stride32)
        return {
            'body_stride8': stride8,
            'features': features,
            'center': torch.sigmoid(self.center_head(features)),
            'regress': self.regress_head(features),
            'heatmap': torch.sigmoid(heatmap_logits),
            'offset': self.offset_head(features),
        }

    def decode(self, heads: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decode `forward_features`' maps as MoveNet does -> float [N, 17, 3] (y, x normalised, score)."""
        return decode_single_pose(heads['center'], heads['regress'], heads['heatmap'], heads['offset'],
                                  self.center_weight, self.cfg.joint_distance_offset, self.cfg.output_scale)

    def decode_mirror_averaged(self, heads: dict[str, torch.Tensor], mirrored: dict[str, torch.Tensor]
                               ) -> torch.Tensor:
        """Decode the average of the crop's maps and its mirror image's (test-time flip augmentation).

        Args:
            heads: `forward_features` of crops [N, 3, S, S].
            mirrored: `forward_features` of the same crops mirrored left-right (`crops.flip(-1)`).

        Returns:
            float [N, 17, 3] as `decode`. The centre, heatmap and offset maps are averaged (the mirrored
            ones brought back by `unmirror_head_maps`); the centre-to-joint regression is the crop's own.
            On the training split's photos (ppe_default, keypoint AP 0.452 without): 0.470; averaging the
            regression as well 0.458 (with dx = 1 - dx'), averaging the two decoded poses instead 0.456.
        """
        unmirrored = unmirror_head_maps(mirrored)
        center, heatmap, offset = ((heads[name] + unmirrored[name]) * 0.5 for name in ('center', 'heatmap',
                                                                                    'offset'))
        return decode_single_pose(center, heads['regress'], heatmap, offset, self.center_weight,
                                  self.cfg.joint_distance_offset, self.cfg.output_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images float [N, 3, S, S] RGB in [0, 1] -> keypoints float [N, 17, 3] (y, x in [0, 1], score)."""
        return self.decode(self.forward_features(images))


def single_pose_state_dict(checkpoint: dict, source: str = 'checkpoint') -> dict[str, torch.Tensor]:
    """A `MoveNetSinglePose` state dict from a single-pose checkpoint of `ppe import-pretrained`.

    The checkpoint keeps the body (`state_dict`) and pyramid + heatmap head (`decoder_state_dict`) in
    the layout of the backbone files, so that it also serves as `BackboneConfig.pretrained_path`.
    """
    parts = {'body.': 'state_dict', 'decoder.': 'decoder_state_dict', '': 'heads_state_dict'}
    state: dict[str, torch.Tensor] = {}
    for prefix, key in parts.items():
        if key not in checkpoint:
            raise ValueError(f'{source} has no {key}: not a single-pose MoveNet checkpoint (re-run '
                             '`ppe import-pretrained`)')
        state.update({prefix + name: value for name, value in checkpoint[key].items()})
    if 'center_weight' not in checkpoint.get('decoding_state_dict', {}):
        raise ValueError(f'{source} has no decoding_state_dict.center_weight')
    state['center_weight'] = checkpoint['decoding_state_dict']['center_weight']
    return state


def resolve_checkpoint(variant_or_path: str | Path) -> Path:
    """The checkpoint path: 'thunder' / 'lightning' -> models/pretrained/movenet_<variant>.pt.

    Looked up in the source tree, else the venv's share/occluded_ppe_ros; anything else is a path.
    """
    name = str(variant_or_path)
    if name not in MOVENET_SINGLE_POSE_VARIANTS:
        return Path(variant_or_path)
    file_name = f'movenet_{name}.pt'
    share = Path(sys.prefix) / 'share' / 'occluded_ppe_ros' / 'models' / 'pretrained'
    for folder in (PRETRAINED_DIR, share):
        if (folder / file_name).is_file():
            return folder / file_name
    return PRETRAINED_DIR / file_name


def load_movenet_single_pose(variant_or_path: str | Path = 'thunder') -> MoveNetSinglePose:
    """Build a `MoveNetSinglePose` from a shipped checkpoint, in eval mode, float32.

    Args:
        variant_or_path: 'thunder' (models/pretrained/movenet_thunder.pt), 'lightning'
            (models/pretrained/movenet_lightning.pt), or the path of a single-pose checkpoint written by
            `ppe import-pretrained`.

    Returns:
        the model with every parameter and buffer loaded (strict), in eval mode.
    """
    from occluded_ppe_ros.model.pretrained_import import load_pretrained_checkpoint

    path = resolve_checkpoint(variant_or_path)
    checkpoint = load_pretrained_checkpoint(path)          # validates the format; floats -> float32
    if 'single_pose_config' not in checkpoint:
        raise ValueError(f'{path} is a MoveNet backbone checkpoint without the single-pose heads '
                         f'(single_pose_config); use models/pretrained/movenet_{{thunder,lightning}}.pt')
    cfg = MoveNetSinglePoseConfig.from_dict(checkpoint['single_pose_config'], str(path))
    model = MoveNetSinglePose(cfg)
    state = single_pose_state_dict(checkpoint, str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f'{path} does not fit MoveNetSinglePose({cfg}): {error}') from None
    if not math.isclose(float(model.center_weight[0, 0]), float(center_weight_map(cfg.heatmap_size)[0, 0]),
                        rel_tol=2e-3):
        raise ValueError(f'{path}: center_weight[0, 0] = {float(model.center_weight[0, 0])} is not '
                         f'MoveNet\'s 1 / (distance to the centre + 1.8)')
    return model.eval()
