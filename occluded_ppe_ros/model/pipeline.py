"""The shipped network: pretrained detectors and MoveNet imported whole, in the paper's two-stage structure.

    images [B, 3, H, W] RGB in [0, 1] (network input, the Predictor's letterbox)
      -> DetectorStage: each imported detector (NanoDet-g 416, YOLOX-Nano 416) on its own 416 x 416
         letterbox of the input, per-detector NMS, then weighted box fusion across detectors
         -> boxes [B, K, 4], scores [B, K], valid [B, K]                 (graph 1: `detector`)
      -> each kept box's square region (ROI) cut from the input image by RoIAlign at MoveNet's size
      -> PoseStage: MoveNet SinglePose (Thunder or Lightning, imported whole: body, pyramid, four heads,
         its own decoding) is the pose encoder/decoder; on its stride-4 map three trained heads:
           MaskHead        the person's visible-instance mask over the crop  (paper: D_S)
           OcclusionHead   per joint, the probability that it is hidden       (paper: L_pe's flag)
           DomainClassifier on the mask-gated instance features, through gradient reversal
                           (paper: D_C; used while fine-tuning only, not exported)
         -> keypoints [N, 13, 3], keypoint_occluded [N, 13], masks [N, M, M] (graph 2: `pose`)

Why this shape and not the paper's feature-space ROI pooling: on 2 CPU cores and ~90 real photos, heads
trained from scratch stayed ~60x behind public models (docs/training.md); every part a pretrained model
already does well is imported with its weights, training is kept for what none gives (visible masks,
occlusion flags, domain adaptation, mask-and-predict fine-tuning). The paper's PPENet stays available
(`model/network.py`, `config/train_stage*.yaml`) for training on GPUs with full COCO + CityPersons.

Cost follows the people in view: the pose graph runs on N crops, N = the boxes above the score
threshold, not on a fixed K (the detector graph's K rows are only padded box lists).

Frames: boxes and joints in network-input pixels (the Predictor's letterbox), continuous convention
(pixel (r, c) covers [c, c + 1) x [r, r + 1)). Crop frame: the square ROI resampled to S x S (S = 256
Thunder, 192 Lightning); crop coordinate u <-> input x1 + u * side / S.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms, roi_align

from occluded_ppe_ros.inference.score_calibration import check_calibration
from occluded_ppe_ros.model.movenet import (MOVENET_SINGLE_POSE_VARIANTS, MoveNetSinglePose,
                                            MoveNetSinglePoseConfig)
from occluded_ppe_ros.model.ops import grad_reverse
from occluded_ppe_ros.skeleton import COCO17_INDEX, FLIP_PERMUTATION, NUM_KEYPOINTS

ARCHITECTURE = 'pretrained_pipeline'
DETECTOR_NAMES = ('nanodet', 'yolox')
DETECTOR_INPUT_SIZE = 416   # both imported detectors were trained and exported at 416 x 416: the default
MASK_PRIORS = ('none', 'selfie')


@dataclass
class PipelineConfig:
    """Every setting of the pipeline network (stored in checkpoints as `model_config`).

    Attributes:
        architecture: always 'pretrained_pipeline' (tells checkpoint readers which network to build).
        detectors: imported detectors to run and fuse, from DETECTOR_NAMES. The default is NanoDet alone:
            fusing YOLOX-Nano's boxes raised keypoint AP on the training split (0.457 -> 0.486) but costs
            YOLOX's 11 ms on every frame, which put the whole Predictor past 1.2 x the NanoDet -> Thunder
            peer's latency (81 against 56 ms median, both with ONNX Runtime's spin-waiting on), and on the
            held-out photos it scored keypoint AP 0.370 against 0.377 (earlier heads); ('nanodet', 'yolox')
            is the accuracy setting.
        pose_variant: 'thunder' (default) or 'lightning' (the fast preset).
        detector_input_size: side in pixels of the square letterbox the detectors read (a multiple of
            32). Both were trained at 416; both are fully convolutional, so a smaller side trades small
            people for time (the detector's cost falls with its square).
        input_height: network input height in pixels (the Predictor letterboxes every image into it).
        input_width: network input width in pixels.
        class_names: ('person',): the detectors' COCO person class.
        candidates_per_detector: top-scoring anchor points each detector keeps before its NMS. Large: a
            detector fires on 10-20 anchors per person, so 100 candidates covered only the best few
            people of a crowded photo (box AP50 on the training split 0.577 with 100, the NanoDet peer,
            which keeps every candidate, 0.587).
        detector_nms_iou: per-detector NMS IoU. 0.5: with the score calibration it gave box AP50 0.602
            against 0.588 at 0.6 (two-fold cross-validation over the training split's photos, ppe_default);
            the duplicates it leaves, the calibration's overlap cues rank down.
        fusion_iou: boxes of different detectors overlapping more than this are one person (weighted
            box fusion); also the IoU of the NMS over the fused list.
        single_detector_factor: score multiplier for a box only one of several detectors found (0.7 was
            chosen on the training split: agreement is evidence).
        max_detections: K rows of the detector graph's output.
        min_score: candidates below this score are dropped before NMS.
        crop_margin: square ROI side / the box's longer side.
        pose_flip_test: test-time flip augmentation. Each crop is also run mirrored left-right: the
            keypoints come from MoveNet's maps averaged over both (`MoveNetSinglePose.
            decode_mirror_averaged`), the mask and occlusion logits are the trained heads' on each, averaged.
            Costs a second MoveNet pass per person (the pose graph's time about doubles); on the training
            split's photos (ppe_default) keypoint AP 0.452 -> 0.470, mask AP 0.169 -> 0.181, occlusion flag
            balanced accuracy 0.778 -> 0.792. Off in the shipped models: on 2 CPU cores it takes the
            default past 1.2 x the NanoDet -> Thunder peer's latency (models/README.md); on a GPU, where
            the mirrored crops ride in the same batch, it is the accuracy setting.
        crop_sampling_ratio: RoIAlign samples per crop pixel and axis (1 = one bilinear sample, as the
            MoveNet peers' warpAffine crops).
        mask_resolution: M, the side of the box-relative mask output.
        mask_threshold: the mask probability a Predictor cuts at unless told otherwise: 0.3 gave the best
            mask AP on the training split, with 0.25 within noise (shipped default heads: 0.157 against
            0.160 at 0.25 and 0.137 at 0.4; 0.105 at 0.5 with earlier heads; the head's probabilities are
            cautious at person boundaries).
        mask_hidden: channels of the mask head.
        mask_prior: 'none', or 'selfie': MediaPipe's selfie person segmenter (imported,
            occluded_ppe_ros.model.selfie) runs on each crop and its person probability is one more
            channel of the heads' input. Alone, on the training split's ground-truth boxes, it scored
            segm AP 0.17-0.20 against 0.08 for the filled box (benchmarks/selfie_mask_prior.py); it does
            not separate people, which MoveNet's maps do.
        mask_prior_size: side in pixels of the crop the selfie segmenter reads; 0 = the pose crop itself
            (256 for Thunder). A smaller side (a divisor of the crop side, multiple of 32 and of the crop
            side / 4) is the crop average-pooled: the heads read the prior at MoveNet's stride-4 grid
            (64 x 64 for Thunder) anyway, and the segmenter's cost falls with the square of the side. 128
            on Thunder lowered the validation fifth's mask IoU to 0.52 (0.61 at 256, 0.53 without the
            prior): the segmenter needs its own resolution.
        occlusion_hidden: hidden units of the occlusion head.
        domain_hidden: hidden units of the domain classifier.
        score_calibration: the logistic model that turns the detector score, the pose pass's joint scores,
            the mask coverage and the overlap with better boxes into the reported person score
            (occluded_ppe_ros.inference.score_calibration; fitted by occluded_ppe_training.score_calibration);
            empty = the detector score is reported.
    """

    architecture: str = ARCHITECTURE
    detectors: tuple[str, ...] = ('nanodet',)
    pose_variant: str = 'thunder'
    detector_input_size: int = DETECTOR_INPUT_SIZE
    input_height: int = 640
    input_width: int = 640
    class_names: tuple[str, ...] = ('person',)
    candidates_per_detector: int = 1000
    detector_nms_iou: float = 0.5
    fusion_iou: float = 0.55
    single_detector_factor: float = 0.7
    max_detections: int = 20
    min_score: float = 0.05
    crop_margin: float = 1.25
    pose_flip_test: bool = False
    crop_sampling_ratio: int = 1
    mask_resolution: int = 28
    mask_threshold: float = 0.3
    mask_hidden: int = 32
    mask_prior: str = 'none'
    mask_prior_size: int = 0
    occlusion_hidden: int = 32
    domain_hidden: int = 64
    score_calibration: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.detectors = tuple(self.detectors)
        self.class_names = tuple(self.class_names)
        if self.architecture != ARCHITECTURE:
            raise ValueError(f'architecture must be {ARCHITECTURE!r}, got {self.architecture!r}')
        if not self.detectors or any(name not in DETECTOR_NAMES for name in self.detectors):
            raise ValueError(f'detectors must be a non-empty subset of {DETECTOR_NAMES}, '
                             f'got {self.detectors}')
        if self.pose_variant not in MOVENET_SINGLE_POSE_VARIANTS:
            raise ValueError(f'pose_variant must be one of {tuple(MOVENET_SINGLE_POSE_VARIANTS)}, '
                             f'got {self.pose_variant!r}')
        for name in ('input_height', 'input_width', 'detector_input_size'):
            value = getattr(self, name)
            if value <= 0 or value % 32:
                raise ValueError(f'{name} must be a positive multiple of 32, got {value}')
        for name in ('detector_nms_iou', 'fusion_iou', 'single_detector_factor', 'min_score',
                     'mask_threshold'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {value}')
        if self.max_detections < 1 or self.candidates_per_detector < self.max_detections:
            raise ValueError(f'need 1 <= max_detections ({self.max_detections}) <= candidates_per_detector '
                             f'({self.candidates_per_detector})')
        if self.mask_prior not in MASK_PRIORS:
            raise ValueError(f'mask_prior must be one of {MASK_PRIORS}, got {self.mask_prior!r}')
        crop_side = self.pose_config.input_size
        grid_side = crop_side // 4        # MoveNet's output stride: the heads' grid
        if self.mask_prior_size and (self.mask_prior_size % 32 or crop_side % self.mask_prior_size
                                     or self.mask_prior_size % grid_side):
            raise ValueError(f'mask_prior_size must be 0 or a multiple of 32 and of {grid_side} (the heads\' '
                             f'grid) that divides the {self.pose_variant} crop side {crop_side}, '
                             f'got {self.mask_prior_size}')
        check_calibration(self.score_calibration, 'PipelineConfig.score_calibration')
        if not isinstance(self.pose_flip_test, bool):
            raise ValueError(f'pose_flip_test must be true or false, got {self.pose_flip_test!r}')
        if self.crop_margin < 1.0:
            raise ValueError(f'crop_margin must be >= 1 (the crop must hold the box), got {self.crop_margin}')

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) network input."""
        return self.input_height, self.input_width

    @property
    def pose_config(self) -> MoveNetSinglePoseConfig:
        """The MoveNet variant's config."""
        return MOVENET_SINGLE_POSE_VARIANTS[self.pose_variant]

    def to_dict(self) -> dict:
        """Plain dict for checkpoints (tuples as lists)."""
        values = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}

    @classmethod
    def from_dict(cls, values: dict, source: str = 'model_config') -> PipelineConfig:
        """Inverse of to_dict; unknown keys raise ValueError naming them and `source`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'{source}: unknown pipeline settings {unknown}; known: {sorted(known)}')
        return cls(**values)


def is_pipeline_config(model_config: dict) -> bool:
    """True for a checkpoint `model_config` of this network (PPENet configs have no 'architecture')."""
    return isinstance(model_config, dict) and model_config.get('architecture') == ARCHITECTURE


# ----------------------------------------------------------------------------------------------------
# Detection: imported detectors + fusion
# ----------------------------------------------------------------------------------------------------

def _build_detector(name: str, input_size: int) -> tuple[nn.Module, tuple[float, float, float]]:
    """An imported detector for a square input of `input_size` pixels, and its pad colour (RGB, [0, 1]).

    The weights are loaded later (import_pretrained_parts).
    """
    if name == 'nanodet':
        from occluded_ppe_ros.model.nanodet import NANODET_PAD_VALUE_RGB, NanoDet, NanoDetConfig

        return NanoDet(NanoDetConfig(input_size=input_size)), tuple(float(v) for v in NANODET_PAD_VALUE_RGB)
    from occluded_ppe_ros.model.yolox import YOLOX_PAD_VALUE, YOLOXNano

    return YOLOXNano(input_size=input_size), (float(YOLOX_PAD_VALUE),) * 3


def box_iou_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The IoU of every pair: first [..., P, 4], second [..., Q, 4] (x1, y1, x2, y2) -> [..., P, Q]."""
    area1 = ((first[..., 2] - first[..., 0]).clamp(min=0) * (first[..., 3] - first[..., 1]).clamp(min=0))
    area2 = ((second[..., 2] - second[..., 0]).clamp(min=0) * (second[..., 3] - second[..., 1]).clamp(min=0))
    top_left = torch.maximum(first[..., :, None, :2], second[..., None, :, :2])
    bottom_right = torch.minimum(first[..., :, None, 2:], second[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[..., :, None] + area2[..., None, :] - inter).clamp(min=1e-9)


def batched_top_k_nms(boxes: torch.Tensor, scores: torch.Tensor, candidates: int, keep: int, iou: float,
                      min_score: float, extent: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: top `candidates` by score, NMS, top `keep` rows (export-friendly: fixed shapes).

    Args:
        boxes: float [B, A, 4] x1, y1, x2, y2 pixels. scores: float [B, A].
        candidates: rows kept before NMS (<= A). keep: K rows returned.
        iou: NMS IoU threshold. min_score: rows below it are invalid.
        extent: larger than any coordinate: images are moved apart by it so one NMS call serves the
            batch (what torchvision's batched_nms does inside, without its scripted `If`, which TensorRT
            handles poorly).

    Returns:
        boxes float [B, K, 4], scores float [B, K] (0 on invalid rows), valid bool [B, K], best first.
    """
    candidates = min(candidates, scores.shape[1])
    top_scores, index = scores.topk(candidates, dim=1)
    top_boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
    batch = torch.arange(boxes.shape[0], device=boxes.device)[:, None].expand_as(top_scores)
    shifted = top_boxes + (batch.to(boxes.dtype) * extent)[..., None]
    kept_index = nms(shifted.reshape(-1, 4), top_scores.reshape(-1), iou)
    kept = torch.zeros_like(top_scores.reshape(-1), dtype=torch.bool)
    kept[kept_index] = True
    kept = kept.reshape(top_scores.shape) & (top_scores >= min_score)
    ranked = torch.where(kept, top_scores, torch.full_like(top_scores, -1.0))
    order = ranked.topk(min(keep, candidates), dim=1).indices
    valid = kept.gather(1, order)
    out_scores = torch.where(valid, top_scores.gather(1, order), torch.zeros_like(ranked[:, :1]))
    out_boxes = top_boxes.gather(1, order[..., None].expand(-1, -1, 4))
    if out_boxes.shape[1] < keep:          # fewer candidates than K (tiny inputs): pad invalid rows
        pad = keep - out_boxes.shape[1]
        out_boxes = F.pad(out_boxes, (0, 0, 0, pad))
        out_scores = F.pad(out_scores, (0, pad))
        valid = F.pad(valid, (0, pad))
    return out_boxes, out_scores, valid


def fuse_detections(boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, source: torch.Tensor,
                    num_sources: int, fusion_iou: float, single_source_factor: float, keep: int, extent: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted box fusion of several detectors' lists (Solovyev et al. 2021, simplified).

    The best box of every group of boxes overlapping more than `fusion_iou` leads its group (NMS over
    the union); the group's box is the score-weighted mean of its members; its score is the best
    member's, times `single_source_factor` when only one detector found the person.

    Args:
        boxes: float [B, P, 4] the detectors' NMS-ed boxes, concatenated. scores: float [B, P].
        valid: bool [B, P]. source: int64 [P] which detector each column came from.
        num_sources: number of detectors; with one, this is the identity on the valid rows.
        fusion_iou, single_source_factor, keep, extent: see above and `batched_top_k_nms`.

    Returns:
        boxes float [B, K, 4], scores float [B, K], valid bool [B, K].
    """
    masked_scores = torch.where(valid, scores, torch.zeros_like(scores))
    if num_sources == 1:
        # the detector's own NMS (detector_nms_iou) already ran: a second one at fusion_iou would drop
        # people standing close together whose boxes overlap between the two thresholds
        return boxes[:, :keep], masked_scores[:, :keep], valid[:, :keep]
    lead_boxes, lead_scores, lead_valid = batched_top_k_nms(boxes, masked_scores, boxes.shape[1], keep,
                                                            fusion_iou, 1e-6, extent)
    overlap = box_iou_matrix(lead_boxes, boxes)                                 # [B, K, P]
    member = (overlap > fusion_iou) & valid[:, None, :] & lead_valid[..., None]
    weights = torch.where(member, masked_scores[:, None, :], torch.zeros_like(overlap))
    fused = (weights[..., None] * boxes[:, None]).sum(2) / weights.sum(2).clamp(min=1e-9)[..., None]
    fused = torch.where(lead_valid[..., None], fused, lead_boxes)
    one_hot = F.one_hot(source, num_sources).to(boxes.dtype)                     # [P, D]
    sources_present = ((member.to(boxes.dtype) @ one_hot) > 0).sum(-1)          # [B, K]
    factor = torch.where(sources_present >= 2, torch.ones_like(lead_scores),
                         torch.full_like(lead_scores, single_source_factor))
    return fused, lead_scores * factor, lead_valid


class DetectorStage(nn.Module):
    """Imported detectors on a square letterbox of the network input, fused: graph 1 of the pipeline.

    The letterbox side is cfg.detector_input_size (416 by default).
    """

    def __init__(self, cfg: PipelineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.detectors = nn.ModuleDict()
        self.pad_colours: dict[str, tuple[float, float, float]] = {}
        for name in cfg.detectors:
            module, pad = _build_detector(name, cfg.detector_input_size)
            self.detectors[name] = module
            self.pad_colours[name] = pad
        height, width = cfg.input_size
        self.side = cfg.detector_input_size
        self.scale = self.side / max(height, width)
        self.resized = (max(1, round(height * self.scale)), max(1, round(width * self.scale)))

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> the detectors' scale (bilinear, half-pixel centres as cv2's INTER_LINEAR)."""
        return F.interpolate(images, size=self.resized, mode='bilinear', align_corners=False)

    def letterbox(self, resized: torch.Tensor, pad: tuple[float, float, float]) -> torch.Tensor:
        """The resized images [B, 3, h, w] at the top-left of a side x side canvas, the rest `pad` (RGB)."""
        pad_h = self.side - self.resized[0]
        pad_w = self.side - self.resized[1]
        canvas = F.pad(resized, (0, pad_w, 0, pad_h), value=0.0)
        if pad_h or pad_w:
            colour = torch.tensor(pad, dtype=resized.dtype, device=resized.device).view(1, 3, 1, 1)
            inside = torch.zeros(1, 1, self.side, self.side, dtype=resized.dtype,
                                 device=resized.device)
            inside[..., :self.resized[0], :self.resized[1]] = 1.0
            canvas = canvas + (1.0 - inside) * colour
        return canvas

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: images float [B, 3, H, W] RGB in [0, 1] at cfg.input_size.

        Returns:
            boxes float [B, K, 4] x1, y1, x2, y2 network-input pixels; scores float [B, K] (0 on padded
            rows); labels int64 [B, K] (0 = person); valid bool [B, K]; best first.
        """
        cfg = self.cfg
        height, width = images.shape[-2:]
        extent = float(self.side * 4)
        lists, sources = [], []
        resized = self.resize(images)          # once, shared by the detectors
        for index, (name, detector) in enumerate(self.detectors.items()):
            boxes, scores = detector(self.letterbox(resized, self.pad_colours[name]))
            kept = batched_top_k_nms(boxes, scores, cfg.candidates_per_detector, cfg.max_detections,
                                     cfg.detector_nms_iou, cfg.min_score, extent)
            lists.append(kept)
            sources.append(torch.full((cfg.max_detections,), index, dtype=torch.int64, device=images.device))
        boxes = torch.cat([item[0] for item in lists], 1)
        scores = torch.cat([item[1] for item in lists], 1)
        valid = torch.cat([item[2] for item in lists], 1)
        boxes, scores, valid = fuse_detections(boxes, scores, valid, torch.cat(sources), len(lists),
                                               cfg.fusion_iou, cfg.single_detector_factor, cfg.max_detections,
                                               extent)
        # the single-detector factor can reorder rows: best first again
        order = torch.where(valid, scores, torch.full_like(scores, -1.0)).argsort(dim=1, descending=True)
        boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        scores, valid = scores.gather(1, order), valid.gather(1, order)
        limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum((boxes / self.scale).clamp(min=0), limits)
        labels = torch.zeros_like(scores, dtype=torch.int64)
        return boxes, scores, labels, valid


# ----------------------------------------------------------------------------------------------------
# Pose: ROI crops -> MoveNet -> trained heads
# ----------------------------------------------------------------------------------------------------

def square_rois(rois: torch.Tensor, margin: float) -> torch.Tensor:
    """Square rois [N, 5] (batch index, x1, y1, x2, y2): side = margin x longer side, same centre."""
    cx = (rois[:, 1] + rois[:, 3]) * 0.5
    cy = (rois[:, 2] + rois[:, 4]) * 0.5
    side = torch.maximum(rois[:, 3] - rois[:, 1], rois[:, 4] - rois[:, 2]).clamp(min=1.0) * margin
    half = side * 0.5
    return torch.stack([rois[:, 0], cx - half, cy - half, cx + half, cy + half], dim=1)


class MaskHead(nn.Module):
    """Visible-instance mask of the crop's person from MoveNet's stride-4 maps (paper: D_S).

    Input: features [N, 24, h, w], keypoint heatmaps [N, 17, h, w] and centre map [N, 1, h, w] (the
    person MoveNet chose is the one to segment). Output: mask logits [N, 1, h, w] over the crop.
    """

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        # a 1x1 reduction first: a 3x3 conv over the ~100 input channels cost as much per person as a
        # third of MoveNet Thunder (pose graph 26 ms per crop against Thunder's 17, ONNX Runtime, 2 threads)
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=4, dilation=4), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Map maps [N, C, h, w] -> logits [N, 1, h, w]."""
        return self.layers(maps)


class OcclusionHead(nn.Module):
    """Per joint, the logit that it is hidden (COCO v=1 / synthetic truth) from what is seen at it.

    Per joint j of person n: the instance maps at the joint (PoseStage.instance_maps), its heatmap score,
    the visible-mask probability at the joint, the heatmap's peak value, and a learned joint embedding;
    one small MLP shared by all joints.
    """

    def __init__(self, feature_channels: int, hidden: int, embedding: int = 8) -> None:
        super().__init__()
        self.joint_embedding = nn.Parameter(torch.zeros(NUM_KEYPOINTS, embedding))
        self.mlp = nn.Sequential(nn.Linear(feature_channels + 3 + embedding, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 1))

    def forward(self, joint_features: torch.Tensor, joint_scores: torch.Tensor, mask_at_joint: torch.Tensor,
                peak_values: torch.Tensor) -> torch.Tensor:
        """joint_features [N, 13, C]; joint_scores, mask_at_joint, peak_values [N, 13] -> logits [N, 13]."""
        count = joint_features.shape[0]
        embedding = self.joint_embedding[None].expand(count, -1, -1)
        inputs = torch.cat([joint_features, joint_scores[..., None], mask_at_joint[..., None],
                            peak_values[..., None], embedding], dim=-1)
        return self.mlp(inputs).squeeze(-1)


class DomainClassifier(nn.Module):
    """Source (COCO) vs target (street) from mask-gated instance features, behind gradient reversal (D_C)."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, mask_probs: torch.Tensor,
                reversal_scale: float) -> torch.Tensor:
        """Map features [N, C, h, w], mask_probs [N, 1, h, w] -> domain logits [N] (1 = target domain)."""
        gated = features * mask_probs
        pooled = gated.sum((2, 3)) / mask_probs.sum((2, 3)).clamp(min=1.0)
        return self.mlp(grad_reverse(pooled, reversal_scale)).squeeze(-1)


def sample_at_points(maps: torch.Tensor, points_cells: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of maps [N, C, h, w] at points_cells [N, J, 2] -> [N, J, C].

    points_cells holds x, y in MoveNet cell units: cell (r, c) is at (c, r).
    """
    height, width = maps.shape[-2:]
    grid_x = (points_cells[..., 0] + 0.5) / width * 2.0 - 1.0
    grid_y = (points_cells[..., 1] + 0.5) / height * 2.0 - 1.0
    grid = torch.stack([grid_x, grid_y], dim=-1)[:, :, None, :]                # [N, J, 1, 2]
    sampled = F.grid_sample(maps, grid, mode='bilinear', padding_mode='border', align_corners=False)
    return sampled[..., 0].permute(0, 2, 1)


class PoseStage(nn.Module):
    """ROI crops -> MoveNet SinglePose (imported) -> joints, occlusion flags, visible masks: graph 2."""

    def __init__(self, cfg: PipelineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        pose_cfg = cfg.pose_config
        self.movenet = MoveNetSinglePose(pose_cfg)
        features = self.movenet.feature_channels
        body_stride8 = self.movenet.body.out_channels[1]
        # what the trained heads read, per crop, at the stride-4 grid: MoveNet's pyramid features (24),
        # keypoint heatmaps (17) and person-centre map (1) say which person the crop is about; the body's
        # stride-8 map (people-trained, 56 / 32 channels) says what is a person; the crop's own colours
        # (3, averaged over each cell) give the boundaries; with mask_prior 'selfie', the segmenter's
        # person probability (1, averaged over each cell) says which pixels are a person's
        self.selfie = None
        if cfg.mask_prior == 'selfie':
            from occluded_ppe_ros.model.selfie import SelfieSegmenter

            self.selfie = SelfieSegmenter()
        self.instance_channels = features + 17 + 1 + body_stride8 + 3 + (self.selfie is not None)
        self.mask_head = MaskHead(self.instance_channels, cfg.mask_hidden)
        self.occlusion_head = OcclusionHead(self.instance_channels, cfg.occlusion_hidden)
        self.domain_classifier = DomainClassifier(features, cfg.domain_hidden)
        self.register_buffer('joint_index', torch.tensor(COCO17_INDEX, dtype=torch.int64), persistent=False)

    def crops(self, images: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The square ROIs resampled to S x S: (crops float [N, 3, S, S] in [0, 1], squares [N, 5])."""
        size = self.cfg.pose_config.input_size
        squares = square_rois(rois, self.cfg.crop_margin)
        crops = roi_align(images, squares, (size, size), spatial_scale=1.0,
                          sampling_ratio=self.cfg.crop_sampling_ratio, aligned=True)
        return crops, squares

    def crop_maps(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the frozen imported models on crops [N, 3, S, S] in [0, 1].

        Returns:
            MoveNet's `forward_features` dict, plus 'person_prior' [N, 1, P, P] (the selfie segmenter's
            probability; P = cfg.mask_prior_size, or S when that is 0) with mask_prior 'selfie'.
        """
        maps = self.movenet.forward_features(crops)
        if self.selfie is not None:
            prior_side = self.cfg.mask_prior_size or crops.shape[-1]
            pooling = crops.shape[-1] // prior_side
            prior_input = crops if pooling == 1 else F.avg_pool2d(crops, pooling)
            maps['person_prior'] = self.selfie(prior_input)
        return maps

    @staticmethod
    def instance_maps(heads: dict[str, torch.Tensor], crops: torch.Tensor) -> torch.Tensor:
        """The trained heads' input: [N, instance_channels, h, w] (see __init__ for the channels)."""
        size = heads['features'].shape[-2:]
        body = F.interpolate(heads['body_stride8'], size=size, mode='bilinear', align_corners=False)
        stride = crops.shape[-1] // size[-1]
        parts = [heads['features'], heads['heatmap'], heads['center'], body, F.avg_pool2d(crops, stride)]
        if 'person_prior' in heads:
            prior = heads['person_prior']
            parts.append(F.avg_pool2d(prior, prior.shape[-1] // size[-1]))
        return torch.cat(parts, 1)

    def head_outputs(self, instance_maps: torch.Tensor, keypoints17: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained heads on `instance_maps` [N, C, h, w] and MoveNet's joints [N, 17, 3].

        Returns:
            mask logits [N, 1, h, w] over the crop; occlusion logits [N, 13], read where MoveNet puts
            each joint.
        """
        mask_logits = self.mask_head(instance_maps)
        heat_size = instance_maps.shape[-1]
        joints = keypoints17.index_select(1, self.joint_index)                     # [N, 13, 3]
        joints_cells = torch.stack([joints[..., 1], joints[..., 0]], dim=-1) * heat_size
        joint_features = sample_at_points(instance_maps, joints_cells)             # [N, 13, C]
        mask_at_joint = sample_at_points(torch.sigmoid(mask_logits), joints_cells)[..., 0]
        heatmaps = instance_maps[:, self.movenet.feature_channels:self.movenet.feature_channels + 17]
        peaks = heatmaps.flatten(2).amax(-1).index_select(1, self.joint_index)
        return mask_logits, self.occlusion_head(joint_features, joints[..., 2], mask_at_joint, peaks)

    def heads(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return MoveNet's maps plus the trained heads' on crops [N, 3, S, S].

        Returns:
            MoveNet's `forward_features` dict plus 'keypoints17' [N, 17, 3] (y, x normalised over the
            crop, score: the crop's own pass, which the heads read), 'mask_logits' [N, 1, h, w],
            'occlusion_logits' [N, 13] and 'reported_keypoints17' [N, 17, 3] (the joints the network
            outputs: the mirror-averaged pass with cfg.pose_flip_test, else 'keypoints17').
        """
        maps = self.crop_maps(crops)
        maps['keypoints17'] = self.movenet.decode(maps)
        maps['mask_logits'], maps['occlusion_logits'] = self.head_outputs(self.instance_maps(maps, crops),
                                                                          maps['keypoints17'])
        maps['reported_keypoints17'] = maps['keypoints17']
        if self.cfg.pose_flip_test:
            mirrored_crops = crops.flip(-1)
            mirrored = self.movenet.forward_features(mirrored_crops)
            maps['reported_keypoints17'] = self.movenet.decode_mirror_averaged(maps, mirrored)
            # The trained heads on the mirrored crop as well, their logits averaged with the crop's own.
            # The segmenter's prior is mirrored rather than recomputed (it does not tell left from right).
            if 'person_prior' in maps:
                mirrored['person_prior'] = maps['person_prior'].flip(-1)
            mirrored_mask, mirrored_occlusion = self.head_outputs(
                self.instance_maps(mirrored, mirrored_crops), self.movenet.decode(mirrored))
            maps['mask_logits'] = (maps['mask_logits'] + mirrored_mask.flip(-1)) * 0.5
            maps['occlusion_logits'] = (maps['occlusion_logits']
                                        + mirrored_occlusion[:, list(FLIP_PERMUTATION)]) * 0.5
        return maps

    def forward(self, images: torch.Tensor, rois: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run graph 2: ROI crops -> joints, occlusion flags and visible masks.

        Args:
            images: float [B, 3, H, W] RGB in [0, 1] (network input).
            rois: float [N, 5] (batch index, x1, y1, x2, y2 network-input pixels), N >= 1.

        Returns:
            keypoints float [N, 13, 3] (x, y network-input pixels, score in [0, 1]);
            keypoint_occluded float [N, 13] (probability the joint is hidden);
            masks float [N, M, M] (visible-mask probability over each box, M = cfg.mask_resolution).
        """
        crops, squares = self.crops(images, rois)
        maps = self.heads(crops)
        side = (squares[:, 3] - squares[:, 1])[:, None]
        joints = maps['reported_keypoints17'].index_select(1, self.joint_index)
        x = squares[:, 1:2] + joints[..., 1] * side
        y = squares[:, 2:3] + joints[..., 0] * side
        keypoints = torch.stack([x, y, joints[..., 2]], dim=-1)
        # the box in mask-map cells (one cell = side / h input pixels; cell c covers [c, c + 1))
        heat_size = maps['mask_logits'].shape[-1]
        cells_per_pixel = heat_size / side
        box_cells = torch.cat([
            torch.arange(rois.shape[0], device=rois.device, dtype=rois.dtype)[:, None],
            (rois[:, 1:2] - squares[:, 1:2]) * cells_per_pixel,
            (rois[:, 2:3] - squares[:, 2:3]) * cells_per_pixel,
            (rois[:, 3:4] - squares[:, 1:2]) * cells_per_pixel,
            (rois[:, 4:5] - squares[:, 2:3]) * cells_per_pixel,
        ], dim=1)
        resolution = self.cfg.mask_resolution
        masks = roi_align(torch.sigmoid(maps['mask_logits']), box_cells, (resolution, resolution),
                          spatial_scale=1.0, sampling_ratio=2, aligned=True)[:, 0]
        return keypoints, torch.sigmoid(maps['occlusion_logits']), masks


class PipelineNet(nn.Module):
    """The whole network: `detector` (graph 1) and `pose` (graph 2); see the module docstring."""

    def __init__(self, cfg: PipelineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.detector = DetectorStage(cfg)
        self.pose = PoseStage(cfg)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, min_score: float = 0.0) -> dict[str, torch.Tensor]:
        """Both graphs on a batch, padded to K rows (rows below min_score get no pose pass, valid False).

        Returns a dict keyed as contract 4's OUTPUT_NAMES, shapes [B, K, ...].
        """
        boxes, scores, labels, valid = self.detector(images)
        valid = valid & (scores >= min_score)
        batch, rows = scores.shape
        resolution = self.cfg.mask_resolution
        keypoints = boxes.new_zeros(batch, rows, NUM_KEYPOINTS, 3)
        occluded = boxes.new_zeros(batch, rows, NUM_KEYPOINTS)
        masks = boxes.new_zeros(batch, rows, resolution, resolution)
        chosen = valid.nonzero()
        if chosen.shape[0]:
            rois = torch.cat([chosen[:, :1].to(boxes.dtype), boxes[chosen[:, 0], chosen[:, 1]]], 1)
            out_keypoints, out_occluded, out_masks = self.pose(images, rois)
            keypoints[chosen[:, 0], chosen[:, 1]] = out_keypoints
            occluded[chosen[:, 0], chosen[:, 1]] = out_occluded
            masks[chosen[:, 0], chosen[:, 1]] = out_masks
        return {'boxes': boxes, 'scores': scores, 'labels': labels, 'valid': valid, 'masks': masks,
                'keypoints': keypoints, 'keypoint_occluded': occluded}


def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every FrozenBatchNorm2d that directly follows a Conv2d (same container) into the conv, in place.

    MoveNet's imported body keeps its folded TF batch norms as FrozenBatchNorm2d (a multiply and an add
    after each conv), which ONNX Runtime runs as separate ops between the convolutions; folded, the
    exported body is conv + clip only. Outputs are unchanged up to float rounding.

    Returns:
        `module` (changed in place: use a copy where the unfolded model is still needed).
    """
    from torchvision.ops.misc import FrozenBatchNorm2d

    for parent in module.modules():
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = parent._modules[first], parent._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, FrozenBatchNorm2d):
                scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
                shift = norm.bias - norm.running_mean * scale
                with torch.no_grad():
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                    if conv.bias is None:
                        conv.bias = nn.Parameter(shift.clone())
                    else:
                        conv.bias.mul_(scale).add_(shift)
                parent._modules[second] = nn.Identity()
    return module


def build_pipeline(cfg: PipelineConfig) -> PipelineNet:
    """A PipelineNet with untrained heads and unloaded imports (use `import_pretrained_parts` next)."""
    return PipelineNet(cfg)


def import_pretrained_parts(net: PipelineNet, detector_paths: dict[str, str] | None = None,
                            pose_path: str | None = None) -> None:
    """Load the imported weights: each detector's and MoveNet's (shipped files unless paths are given)."""
    from occluded_ppe_ros.model.movenet import load_movenet_single_pose

    for name, module in net.detector.detectors.items():
        path = (detector_paths or {}).get(name)
        if name == 'nanodet':
            from occluded_ppe_ros.model.nanodet import load_nanodet

            loaded = load_nanodet(path) if path else load_nanodet()
        else:
            from occluded_ppe_ros.model.yolox import load_yolox_nano

            loaded = load_yolox_nano(path) if path else load_yolox_nano()
        module.load_state_dict(loaded.state_dict())
    movenet = load_movenet_single_pose(pose_path or net.cfg.pose_variant)
    net.pose.movenet.load_state_dict(movenet.state_dict())
    if net.pose.selfie is not None:
        from occluded_ppe_ros.model.selfie import load_selfie_segmenter

        net.pose.selfie.load_state_dict(load_selfie_segmenter().state_dict())
