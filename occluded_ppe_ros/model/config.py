"""Typed configuration of the network: one dataclass per component, loaded from plain YAML.

`ModelConfig` nests `BackboneConfig` (encoder), `FPNConfig`, `DetectionConfig` (D_D), `MaskConfig`
(D_S), `PoseConfig` (E_Pose, D_Pose, D_C) and `InferenceConfig` (the deployed branch and the fixed
input size). `to_dict()` / `from_dict()` round-trip exactly; a checkpoint stores `to_dict()`.

A model YAML file (config/model_*.yaml) holds these keys at its top level or under a `model:` key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The two distribution-specific branches of the paper (section 2.1) and their class names.
# citypersons = E_C (the target domain: no pose labels), coco = E_M (the source domain: pose labels).
BRANCH_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    'citypersons': ('pedestrian', 'rider'),
    'coco': ('person',),
}
DOMAINS: tuple[str, ...] = tuple(BRANCH_CLASS_NAMES)

# The attention between an encoder and a task decoder (DetectionConfig / MaskConfig .attention; ops.py):
# 'channel' scales each channel (squeeze-and-excitation form; the default, what every shipped model uses),
# 'spatial' scales each position (the paper's section 2.1 form; config/train_stage*.yaml).
ATTENTION_KINDS: tuple[str, ...] = ('channel', 'spatial')
# Keypoint heatmap losses of the pose stage (PoseConfig.heatmap_loss).
HEATMAP_LOSSES: tuple[str, ...] = ('softmax', 'focal')
# How a keypoint is placed inside its heatmap peak cell (ops.decode_heatmaps).
SUBCELL_DECODINGS: tuple[str, ...] = ('quarter', 'window_mean')
BACKBONE_NAMES: tuple[str, ...] = (
    'resnet18', 'resnet50', 'resnet101', 'resnext101_32x8d', 'mobilenet_v2')
NORMALIZATIONS: tuple[str, ...] = ('imagenet', 'symmetric')


@dataclass
class BackboneConfig:
    """The encoder's body (torchvision, never downloaded).

    Attributes:
        name: one of BACKBONE_NAMES.
        width_mult: MobileNetV2 width (1.0 or 1.5; 1.5 ends in a 480 -> 1280 conv as MoveNet MultiPose).
        pretrained_path: optional local state dict with torchvision key names for the body
            (`conv1.*`, `layer1.*`... or `features.*`); '' = random initialisation.
        frozen_batchnorm: use FrozenBatchNorm2d (statistics and affine fixed) in the body; sensible with
            pretrained weights and tiny batches.
        tf_same_padding: pad (0, 1, 0, 1) before stride-2 convolutions instead of symmetric padding, as
            TensorFlow's 'SAME' does (weights imported from TF models need it).
        normalization: '' = the backbone's own ('imagenet' mean/std for ResNets, 'symmetric' x * 2 - 1
            for MobileNetV2 as MoveNet), or force one of NORMALIZATIONS.
        frozen_stages: how many of the body's four stages (strides 4, 8, 16, 32, from the input on) keep
            their weights fixed in training (0: all trained, 4: the whole body). With pretrained weights
            and little data, freezing keeps the features learned from many images from drifting toward
            the few at hand, and a frozen stage needs no backward pass (faster iterations).
    """

    name: str = 'resnet18'
    width_mult: float = 1.0
    pretrained_path: str = ''
    frozen_batchnorm: bool = False
    tf_same_padding: bool = False
    normalization: str = ''
    frozen_stages: int = 0

    def resolved_normalization(self) -> str:
        """The input normalisation the body expects ('imagenet' or 'symmetric')."""
        if self.normalization:
            return self.normalization
        return 'symmetric' if self.name == 'mobilenet_v2' else 'imagenet'


@dataclass
class FPNConfig:
    """Feature pyramid on the body's stride 4/8/16/32 stages, fused top-down to one output level.

    Attributes:
        channels: channels of every pyramid level and of the output map.
        output_stride: stride of the single output map every decoder reads (4 or 8).
        movenet_keypoint_features: also run MoveNet's own feature pyramid and keypoint-heatmap head
            (`backbone.MoveNetKeypointDecoder`, frozen; loaded from `backbone.pretrained_path` where set,
            which must then come from `ppe import-pretrained`, else from the model checkpoint) and
            append its 24 stride-4 features and 17 COCO keypoint heatmaps (sigmoid) to the output map:
            every decoder then reads `channels + 41` channels. MoveNet was trained to find joints on COCO
            people; its maps say which joint is where, and left from right, which our heads otherwise
            learn from scratch. Needs a MobileNetV2 body with MoveNet weights and `output_stride` 4.
    """

    channels: int = 128
    output_stride: int = 4
    movenet_keypoint_features: bool = False


@dataclass
class DetectionConfig:
    """Anchor-free detection decoder D_D (centre heatmap + box side distances).

    Attributes:
        head_channels: channels of the 3x3 conv of each head tower.
        attention: the attention in front of the decoder, one of ATTENTION_KINDS ('channel': per-channel
            GAP attention, ops.ChannelAttention; 'spatial': the paper's, ops.SpatialAttention).
        attention_reduction: channel reduction of the 'channel' attention's bottleneck.
        gaussian_alpha: heatmap Gaussian sigma = alpha * box side / 6 (TTFNet's elliptical kernel).
        regression_beta: cells whose box-Gaussian (beta * side / 6) exceeds `regression_min_weight`
            regress the box, weighted by that Gaussian.
        regression_min_weight: see `regression_beta`.
        box_loss_weight: weight of the GIoU term inside L_det (the heatmap term has weight 1).
        focal_alpha: CenterNet focal exponent on (1 - p) for positives and p for negatives.
        focal_beta: CenterNet exponent on (1 - target) damping negatives near a centre.
        pre_nms_topk: heatmap peaks kept per image before NMS.
        nms_iou: IoU above which NMS suppresses a box of the same class.
    """

    head_channels: int = 64
    attention: str = 'channel'
    attention_reduction: int = 4
    gaussian_alpha: float = 0.54
    regression_beta: float = 0.54
    regression_min_weight: float = 0.05
    box_loss_weight: float = 5.0
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    pre_nms_topk: int = 100
    nms_iou: float = 0.6


@dataclass
class MaskConfig:
    """Instance segmentation decoder D_S (per box: RoIAlign -> convs -> deconvolution -> M x M logits).

    Attributes:
        roi_size: RoIAlign output size (square) on the encoder map.
        channels: conv/deconv channels.
        num_convs: 3x3 convs before the deconvolution.
        resolution: M, the mask side after the 2x deconvolution (= 2 * roi_size).
        attention: the attention in front of the decoder, one of ATTENTION_KINDS (see DetectionConfig).
        attention_reduction: channel reduction of the 'channel' attention's bottleneck.
        box_jitter: in training, each side of a ground-truth box is moved by up to this fraction of the
            box's width/height (uniform) before the mask target is cut from it.
    """

    roi_size: int = 14
    channels: int = 64
    num_convs: int = 2
    resolution: int = 28
    attention: str = 'channel'
    attention_reduction: int = 4
    box_jitter: float = 0.05


@dataclass
class PoseConfig:
    """Pose stage: RoIAlign onto the encoder map, mask gating, E_Pose, D_Pose, D_C behind a GRL.

    Attributes:
        roi_height: RoIAlign output height (cells) of an instance box.
        roi_width: RoIAlign output width.
        encoder_channels: channels of E_Pose's convs.
        encoder_convs: number of 3x3 convs in E_Pose.
        encoder_dilations: dilation of each of E_Pose's convs (empty = all 1). Dilations such as
            [1, 2, 4] let each RoI cell see the whole 16 x 12 instance (receptive field 15 cells instead
            of 7) at the same cost, so a wrist's cell can see the face that says which side is left.
        global_context: add to every cell of E_Pose's output a learned projection of the instance's
            summary (the per-channel max over its cells, then ReLU): one instance-wide summary, such as
            which way the person faces, reaches every joint's heatmap.
        decoder_channels: channels of D_Pose's deconvolutions.
        decoder_deconvs: number of 2x deconvolutions in D_Pose (heatmap = roi * 2 ** this).
        heatmap_loss: 'softmax' (spatial softmax cross-entropy to a normalised Gaussian around the joint;
            learns in hundreds of iterations) or 'focal' (per-cell penalty-reduced focal loss, CenterNet
            style; the form of checkpoints written before the softmax form existed). It also sets how a
            joint's score is read at inference (ops.decode_heatmaps).
        heatmap_sigma: Gaussian sigma of the keypoint targets, in heatmap cells.
        subcell_decoding: how a joint is placed inside its heatmap peak at inference
            (ops.decode_heatmaps): 'quarter' (a quarter cell toward the larger neighbour, Simple
            Baselines) or 'window_mean' (the softmax-weighted mean position of the cells around the peak;
            'softmax' heatmaps only).
        domain_hidden: hidden width of the domain classifier D_C.
        grl_lambda: gradient reversal scale (the gradient reaching E_Pose from D_C is -lambda x).
        source_domain: the domain whose instances carry pose labels (D_Pose learns only from it).
        max_train_instances: instances per image sent through the pose stage in training (random subset).
        gate_dilation: the visible-mask gate is grown by this many RoI cells before it multiplies the
            instance features (in training and at inference), so that the features just beside a thin
            limb, which help to locate it, are not blanked; 0 = the paper's plain mask. On the tiny
            synthetic preset 2 cells measured no better than 0 (keypoint AP 0.081 vs 0.116, one run each).
        samples_per_instance: in training, each selected instance goes through the pose stage this many
            times, each copy with its own box jitter and mask-and-predict rectangle (as Mask R-CNN trains
            its keypoint head on every positive proposal of an object). The pose stage is cheap next to
            the encoder, so this multiplies the pose examples an iteration gives at little cost.
        occlusion_loss_weight: weight of the learned occluded-joint BCE inside L_pe.
        facing_loss_weight: weight inside L_pe of an auxiliary per-instance 'faces the camera' BCE, read
            from E_Pose's per-channel max (the summary `global_context` broadcasts). Its label comes from the
            keypoints themselves: a person facing the camera has the left shoulder (else hip) on the image
            right. Which way a person faces decides every left/right assignment, and the heatmap loss
            alone teaches it slowly; 0 = off (the paper's L_pe).
        coordinate_loss_weight: weight inside L_pe of an L1 loss (in heatmap cells) between each labelled
            joint's position and the expectation of its spatial-softmax heatmap (DSNT / integral
            regression): it trains the sub-cell position directly and penalises probability mass far
            from the joint, which the cross-entropy to a Gaussian weighs no more than mass next to it.
            'softmax' heatmaps only; 0 = off (the paper's L_pe).
        box_jitter: in training, each side of a ground-truth box is moved by up to this fraction of the
            box's width/height (uniform), so the stage learns from boxes as loose as detected ones.
        detail_channels: > 0 adds a high-resolution skip to D_Pose: the input image, RoI-aligned over each
            box at the heatmap's own resolution (about one pixel a cell for a pedestrian of the tiny
            preset) and gated like the features, goes through two 3x3 convs of this width and joins the
            last deconvolution's output in one more 3x3 conv before the heatmap logits. The stride-4
            encoder map alone placed a wrist about 3 heatmap cells off (OKS error 0.86, docs/training.md):
            the skip brings the pixels that show where a limb ends (U-Net / HRNet's high-resolution path).
            0 = off (the paper's D_Pose).
    """

    roi_height: int = 16
    roi_width: int = 12
    encoder_channels: int = 128
    encoder_convs: int = 4
    encoder_dilations: list[int] = field(default_factory=list)
    global_context: bool = False
    decoder_channels: int = 64
    decoder_deconvs: int = 2
    heatmap_loss: str = 'softmax'
    heatmap_sigma: float = 2.0
    subcell_decoding: str = 'quarter'
    domain_hidden: int = 128
    grl_lambda: float = 1.0
    source_domain: str = 'coco'
    max_train_instances: int = 16
    samples_per_instance: int = 1
    gate_dilation: int = 0
    occlusion_loss_weight: float = 0.5
    facing_loss_weight: float = 0.0
    coordinate_loss_weight: float = 0.0
    box_jitter: float = 0.05
    detail_channels: int = 0


@dataclass
class InferenceConfig:
    """What is deployed: one branch at a fixed input size.

    Attributes:
        domain: the branch used at inference ('citypersons' or 'coco').
        input_height: network input height in pixels (multiple of 32).
        input_width: network input width in pixels (multiple of 32).
        max_detections: K, fixed number of detection rows per image of the deployed graph.
    """

    domain: str = 'citypersons'
    input_height: int = 480
    input_width: int = 640
    max_detections: int = 20


@dataclass
class ModelConfig:
    """The whole network: both branches share these settings (each has its own weights)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        self.validate()

    @staticmethod
    def class_names(domain: str) -> tuple[str, ...]:
        """Class names of a branch ('citypersons' -> pedestrian, rider; 'coco' -> person)."""
        if domain not in BRANCH_CLASS_NAMES:
            raise ValueError(f'unknown domain {domain!r}; expected one of {DOMAINS}')
        return BRANCH_CLASS_NAMES[domain]

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent value."""
        b = self.backbone
        if b.name not in BACKBONE_NAMES:
            raise ValueError(f'backbone.name {b.name!r} is not one of {BACKBONE_NAMES}')
        if b.name == 'mobilenet_v2' and b.width_mult not in (1.0, 1.5):
            raise ValueError(f'backbone.width_mult must be 1.0 or 1.5 for mobilenet_v2, got {b.width_mult}')
        if b.normalization and b.normalization not in NORMALIZATIONS:
            raise ValueError(f'backbone.normalization {b.normalization!r} is not one of {NORMALIZATIONS}')
        if not 0 <= b.frozen_stages <= 4:
            raise ValueError(f'backbone.frozen_stages must be in 0..4, got {b.frozen_stages}')
        if self.fpn.output_stride not in (4, 8):
            raise ValueError(f'fpn.output_stride must be 4 or 8, got {self.fpn.output_stride}')
        if self.fpn.movenet_keypoint_features and (b.name != 'mobilenet_v2' or self.fpn.output_stride != 4):
            raise ValueError('fpn.movenet_keypoint_features needs backbone.name mobilenet_v2 and '
                             f'fpn.output_stride 4; got {b.name!r} and {self.fpn.output_stride}')
        if self.mask.resolution != 2 * self.mask.roi_size:
            raise ValueError(f'mask.resolution ({self.mask.resolution}) must be 2 * mask.roi_size '
                             f'({self.mask.roi_size}): the decoder has one 2x deconvolution')
        jitters = (('mask.box_jitter', self.mask.box_jitter), ('pose.box_jitter', self.pose.box_jitter))
        for name, value in jitters:
            if not 0.0 <= value < 0.5:
                raise ValueError(f'{name} must be in [0, 0.5), got {value}')
        if self.pose.source_domain not in BRANCH_CLASS_NAMES:
            raise ValueError(f'pose.source_domain {self.pose.source_domain!r} is not one of {DOMAINS}')
        if self.pose.gate_dilation < 0:
            raise ValueError(f'pose.gate_dilation must be >= 0, got {self.pose.gate_dilation}')
        dilations = self.pose.encoder_dilations
        if dilations and (len(dilations) != self.pose.encoder_convs or min(dilations) < 1):
            raise ValueError(f'pose.encoder_dilations must be empty or {self.pose.encoder_convs} values >= 1 '
                             f'(one per E_Pose conv), got {dilations}')
        if self.pose.facing_loss_weight < 0:
            raise ValueError(f'pose.facing_loss_weight must be >= 0, got {self.pose.facing_loss_weight}')
        if self.pose.detail_channels < 0:
            raise ValueError(f'pose.detail_channels must be >= 0, got {self.pose.detail_channels}')
        if self.pose.coordinate_loss_weight < 0:
            raise ValueError('pose.coordinate_loss_weight must be >= 0, got '
                             f'{self.pose.coordinate_loss_weight}')
        if self.pose.coordinate_loss_weight > 0 and self.pose.heatmap_loss != 'softmax':
            raise ValueError('pose.coordinate_loss_weight needs pose.heatmap_loss softmax (it reads the '
                             f'softmax expectation), got heatmap_loss {self.pose.heatmap_loss!r}')
        if self.pose.samples_per_instance < 1:
            raise ValueError(f'pose.samples_per_instance must be >= 1, got {self.pose.samples_per_instance}')
        for name, kind in (('detection', self.detection.attention), ('mask', self.mask.attention)):
            if kind not in ATTENTION_KINDS:
                raise ValueError(f'{name}.attention {kind!r} is not one of {ATTENTION_KINDS}')
        if self.pose.heatmap_loss not in HEATMAP_LOSSES:
            raise ValueError(f'pose.heatmap_loss {self.pose.heatmap_loss!r} is not one of {HEATMAP_LOSSES}')
        if self.pose.subcell_decoding not in SUBCELL_DECODINGS:
            raise ValueError(f'pose.subcell_decoding {self.pose.subcell_decoding!r} is not one of '
                             f'{SUBCELL_DECODINGS}')
        if self.pose.subcell_decoding == 'window_mean' and self.pose.heatmap_loss != 'softmax':
            raise ValueError("pose.subcell_decoding 'window_mean' needs pose.heatmap_loss softmax, got "
                             f'{self.pose.heatmap_loss!r}')
        if self.inference.domain not in BRANCH_CLASS_NAMES:
            raise ValueError(f'inference.domain {self.inference.domain!r} is not one of {DOMAINS}')
        for name in ('input_height', 'input_width'):
            value = getattr(self.inference, name)
            if value <= 0 or value % 32:
                raise ValueError(f'inference.{name} must be a positive multiple of 32, got {value}')
        if self.inference.max_detections < 1:
            raise ValueError(f'inference.max_detections must be >= 1, got {self.inference.max_detections}')
        if self.detection.pre_nms_topk < self.inference.max_detections:
            raise ValueError(f'detection.pre_nms_topk ({self.detection.pre_nms_topk}) must be >= '
                             f'inference.max_detections ({self.inference.max_detections})')

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/checkpoint friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = 'dict') -> ModelConfig:
        """Build from a nested dict; unknown keys raise ValueError naming them and `source`."""
        if not isinstance(data, dict):
            raise ValueError(f'model config from {source} must be a mapping, got {type(data).__name__}')
        kwargs = {}
        for section in dataclasses.fields(cls):
            section_type = _SECTION_TYPES[section.name]
            values = data.get(section.name, {}) or {}
            if not isinstance(values, dict):
                raise ValueError(f'{section.name} in {source} must be a mapping, got {values!r}')
            known = {f.name for f in dataclasses.fields(section_type)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f'unknown keys {unknown} in section {section.name!r} of {source}; '
                                 f'known: {sorted(known)}')
            kwargs[section.name] = section_type(**values)
        unknown_sections = sorted(set(data) - set(_SECTION_TYPES))
        if unknown_sections:
            raise ValueError(f'unknown sections {unknown_sections} in {source}; '
                             f'known: {sorted(_SECTION_TYPES)}')
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        """Load a model YAML file (keys at the top level or under `model:`)."""
        path = Path(path)
        with path.open() as stream:
            data = yaml.safe_load(stream) or {}
        if isinstance(data, dict) and 'model' in data and isinstance(data['model'], dict):
            data = data['model']
        return cls.from_dict(data, source=str(path))


_SECTION_TYPES = {
    'backbone': BackboneConfig,
    'fpn': FPNConfig,
    'detection': DetectionConfig,
    'mask': MaskConfig,
    'pose': PoseConfig,
    'inference': InferenceConfig,
}
