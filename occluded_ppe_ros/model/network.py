"""PPENet: the two distribution-specific MTL branches (E_C / E_M with D_D and D_S) and the shared pose stage.

Figure 1 of the paper: each branch is an FPN encoder with GAP attention in front of its detection
decoder and its instance-segmentation decoder; instances are RoI-aligned back onto the branch
encoder's output, gated by their mask, and go through the shared E_Pose -> D_Pose, with D_C behind a
gradient reversal layer. See backbone.py, detection.py, mask_head.py and pose.py for each choice.

Forward (docs/architecture.md, contract 2):
- training: `model(images, targets, domain=..., stage=1|2, mask_ratio=0.0)` -> dict of `loss_*`
  (losses.LOSS_TERMS names them and their term of eq. 1). Heads are trained with ground-truth boxes
  (teacher forcing): the mask head on the ground-truth boxes, the pose stage on ground-truth boxes and
  visible masks, so stage 2 does not depend on the detector's quality at the time. Those boxes are
  jittered a little (`box_jitter`: each side moves up to 5 % of the box size) so that the heads also
  work on detected boxes, which are never exactly the annotated ones.
- inference: `model(images, domain=...)` (no targets) -> one dict per image with the valid rows of
  `predict_padded`.
"""
from __future__ import annotations

import torch
from torch import nn

from occluded_ppe_ros.model.backbone import Encoder
from occluded_ppe_ros.model.config import BRANCH_CLASS_NAMES, ModelConfig
from occluded_ppe_ros.model.detection import DetectionHead, decode_detections, detection_loss
from occluded_ppe_ros.model.losses import (domain_loss, facing_labels, facing_loss, keypoint_coordinate_loss,
                                           keypoint_heatmap_loss, keypoint_softmax_loss, mask_loss,
                                           occlusion_loss)
from occluded_ppe_ros.model.mask_head import MaskHead, mask_targets
from occluded_ppe_ros.model.ops import (dilate_gate, jitter_boxes, joint_cells, keypoint_distribution_targets,
                                        keypoint_targets, mask_gate, random_occlusion_gate, rois_from_boxes,
                                        visible_box_gate)
from occluded_ppe_ros.model.pose import PoseStage, gate_hides, soft_visible_gate


class Branch(nn.Module):
    """One distribution-specific MTL network: encoder E, detection decoder D_D, segmentation decoder D_S."""

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        self.encoder = Encoder(cfg.backbone, cfg.fpn)
        channels, stride = self.encoder.out_channels, self.encoder.stride
        self.detection = DetectionHead(channels, num_classes, stride, cfg.detection)
        self.mask = MaskHead(self.encoder.out_channels, self.encoder.stride, cfg.mask)
        self.num_classes = num_classes


class PPENet(nn.Module):
    """The whole network. `branches['citypersons']` = E_C, `branches['coco']` = E_M; `pose` is shared."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.branches = nn.ModuleDict({domain: Branch(cfg, len(names))
                                       for domain, names in BRANCH_CLASS_NAMES.items()})
        channels = self.branches[cfg.inference.domain].encoder.out_channels
        self.stride = self.branches[cfg.inference.domain].encoder.stride
        self.pose = PoseStage(channels, self.stride, cfg.pose)

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None,
                domain: str = 'citypersons', stage: int = 1, mask_ratio: float = 0.0):
        """Losses (targets given) or detections (targets None). See the module docstring.

        Args:
            images: float [B, 3, H, W] RGB in [0, 1], H and W multiples of 32.
            targets: B dicts of contract 2, in network-input pixels; None for inference.
            domain: 'citypersons' or 'coco' (the branch).
            stage: 1 (detection + segmentation) or 2 (adds domain classifier and pose losses).
            mask_ratio: share of each instance box hidden by mask-and-predict in stage 2, [0, 1).

        Returns:
            training: dict[str, Tensor] of scalar losses; inference: list of B dicts (contract 2).
        """
        self._check_inputs(images, domain)
        if targets is None:
            padded = self.predict_padded(images, domain, self.cfg.inference.max_detections)
            return unpad_detections(padded)
        if len(targets) != images.shape[0]:
            raise ValueError(f'got {len(targets)} target dicts for a batch of {images.shape[0]} images')
        if stage not in (1, 2):
            raise ValueError(f'stage must be 1 or 2, got {stage!r}')
        branch = self.branches[domain]
        features = branch.encoder(images)
        heatmap_logits, distances = branch.detection(features)
        losses = detection_loss(heatmap_logits, distances, targets, branch.num_classes,
                                self.stride, self.cfg.detection)
        image_size = (images.shape[2], images.shape[3])
        losses['loss_seg_mask'] = self._mask_loss(branch, features, targets, image_size)
        if stage == 2:
            losses.update(self._pose_losses(images, features, targets, domain, mask_ratio))
        return losses

    def _check_inputs(self, images: torch.Tensor, domain: str) -> None:
        if domain not in self.branches:
            raise ValueError(f'unknown domain {domain!r}; expected one of {tuple(self.branches)}')
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'images must be [B, 3, H, W], got {tuple(images.shape)}')
        if images.shape[2] % 32 or images.shape[3] % 32:
            raise ValueError(f'image height and width must be multiples of 32, got {tuple(images.shape[2:])}')

    def _mask_loss(self, branch: Branch, features: torch.Tensor, targets: list[dict],
                   image_size: tuple[int, int]) -> torch.Tensor:
        boxes, masks = [], []
        for target in targets:
            has_mask = target['has_mask'].to(torch.bool)
            boxes.append(jitter_boxes(target['boxes'][has_mask].to(features), self.cfg.mask.box_jitter,
                                      *image_size))
            masks.append(target['masks'][has_mask])
        rois = rois_from_boxes(boxes)
        logits = branch.mask(features, rois)
        gt = torch.cat([mask_targets(m.to(features.device), b, self.cfg.mask.resolution)
                        for m, b in zip(masks, boxes)]) if rois.shape[0] else logits.detach().clone()
        return mask_loss(logits, gt)

    def _pose_losses(self, images: torch.Tensor, features: torch.Tensor, targets: list[dict], domain: str,
                     mask_ratio: float) -> dict[str, torch.Tensor]:
        cfg = self.cfg.pose
        image_size = (images.shape[2], images.shape[3])
        is_source = domain == cfg.source_domain
        boxes, keypoints, has_keypoints, gates = [], [], [], []
        for target in targets:
            selected = _select_pose_instances(target, cfg.max_train_instances)
            selected = selected.repeat(cfg.samples_per_instance)      # each copy jittered on its own
            image_boxes = jitter_boxes(target['boxes'][selected].to(features), cfg.box_jitter, *image_size)
            has_mask = target['has_mask'][selected].to(torch.bool).to(features.device)
            visible_boxes = target.get('visible_boxes', target['boxes'])[selected].to(features)
            gate = visible_box_gate(image_boxes, visible_boxes, cfg.roi_height, cfg.roi_width)
            if bool(has_mask.any()):
                masks = target['masks'][selected].to(features.device)[has_mask]
                gate[has_mask] = soft_visible_gate(masks, image_boxes[has_mask], cfg.roi_height,
                                                   cfg.roi_width)
            boxes.append(image_boxes)
            gates.append(gate)
            count = image_boxes.shape[0]
            kps = target.get('keypoints')
            keypoints.append(kps[selected].to(features) if kps is not None
                             else features.new_zeros((count, 13, 3)))
            flags = target.get('has_keypoints')
            has_keypoints.append(flags[selected].to(torch.bool).to(features.device) if flags is not None
                                 else torch.zeros(count, dtype=torch.bool, device=features.device))
        rois = rois_from_boxes(boxes)
        gate = torch.cat(gates) if gates else features.new_zeros((0, 1, cfg.roi_height, cfg.roi_width))
        gate = dilate_gate(gate, cfg.gate_dilation)
        occlusion_gate = random_occlusion_gate(rois.shape[0], cfg.roi_height, cfg.roi_width, mask_ratio,
                                               device=features.device)
        gate = gate * occlusion_gate
        encoded, summary = self.pose.encode_with_summary(self.pose.pool(features, rois), gate)
        losses = {'loss_dc_domain': domain_loss(self.pose.domain_logits(encoded), is_source)}
        all_boxes = rois[:, 1:]
        keypoints_all = torch.cat(keypoints) if keypoints else features.new_zeros((0, 13, 3))
        labelled = torch.cat(has_keypoints) if has_keypoints else torch.zeros(0, dtype=torch.bool)
        # D_Pose sees only source-domain instances with keypoints: target inputs never update it.
        use = labelled & (keypoints_all[..., 2] > 0).any(dim=1) if is_source else torch.zeros_like(labelled)
        if not bool(use.any()):
            zero = encoded.sum() * 0.0
            losses['loss_pe_heatmap'] = zero
            losses['loss_pe_occlusion'] = zero
            if self.pose.facing is not None:
                losses['loss_pe_facing'] = zero
            if cfg.coordinate_loss_weight > 0:
                losses['loss_pe_coordinate'] = zero
            return losses
        detail = self.pose.pool_detail(images, rois[use], gate[use])
        heatmap_logits, occlusion_logits = self.pose.decode(encoded[use], detail)
        hm_h, hm_w = heatmap_logits.shape[-2:]
        if cfg.heatmap_loss == 'softmax':
            heat_targets, valid, flat_index = keypoint_distribution_targets(
                keypoints_all[use], all_boxes[use], hm_h, hm_w, cfg.heatmap_sigma)
            losses['loss_pe_heatmap'] = keypoint_softmax_loss(heatmap_logits, heat_targets, valid)
            if cfg.coordinate_loss_weight > 0:
                joint_x, joint_y, _, _, _ = joint_cells(keypoints_all[use], all_boxes[use], hm_h, hm_w)
                losses['loss_pe_coordinate'] = cfg.coordinate_loss_weight * keypoint_coordinate_loss(
                    heatmap_logits, joint_x, joint_y, valid)
        else:
            heat_targets, valid, flat_index = keypoint_targets(keypoints_all[use], all_boxes[use], hm_h, hm_w,
                                                               cfg.heatmap_sigma)
            losses['loss_pe_heatmap'] = keypoint_heatmap_loss(heatmap_logits, heat_targets, valid,
                                                              self.cfg.detection.focal_alpha,
                                                              self.cfg.detection.focal_beta)
        occluded = (keypoints_all[use][..., 2] == 1) | gate_hides(occlusion_gate[use], keypoints_all[use],
                                                                   all_boxes[use])
        occlusion_at_joint = occlusion_logits.flatten(2).gather(2, flat_index[..., None])[..., 0]
        losses['loss_pe_occlusion'] = cfg.occlusion_loss_weight * occlusion_loss(occlusion_at_joint, occluded,
                                                                                 valid)
        if self.pose.facing is not None:
            faces, has_facing = facing_labels(keypoints_all[use], all_boxes[use])
            losses['loss_pe_facing'] = cfg.facing_loss_weight * facing_loss(
                self.pose.facing(summary[use])[:, 0], faces, has_facing)
        return losses

    # ---------------------------------------------------------------- inference
    def instance_outputs(self, branch: Branch, images: torch.Tensor, features: torch.Tensor,
                         rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask and pose of given instances at inference: the predicted mask gates the pose stage.

        Args:
            branch: the branch whose mask decoder runs.
            images: float [B, 3, H, W] the network input (read by the pose stage's detail skip only).
            features: float [B, C, h, w] that branch's encoder output.
            rois: float [R, 5] (image index, x1, y1, x2, y2 network-input pixels).

        Returns:
            mask probabilities [R, M, M] over each box, keypoints [R, 13, 3] (x, y pixels, score),
            keypoint occlusion probabilities [R, 13].
        """
        pose = self.cfg.pose
        mask_probs = torch.sigmoid(branch.mask(features, rois))
        gate = dilate_gate(mask_gate(mask_probs, pose.roi_height, pose.roi_width), pose.gate_dilation)
        encoded = self.pose.encode(self.pose.pool(features, rois), gate)
        detail = self.pose.pool_detail(images, rois, gate)
        keypoints, occluded = self.pose.keypoints(encoded, rois[:, 1:], detail)
        return mask_probs, keypoints, occluded

    def predict_padded(self, images: torch.Tensor, domain: str,
                       max_detections: int) -> dict[str, torch.Tensor]:
        """Inference with fixed K = max_detections rows per image (the deployed graph, contract 4).

        Args:
            images: float [B, 3, H, W] RGB in [0, 1].
            domain: the branch.
            max_detections: K.

        Returns:
            dict of OUTPUT_NAMES: boxes [B, K, 4], scores [B, K], labels int64 [B, K], valid bool [B, K],
            masks [B, K, M, M] probabilities over each box, keypoints [B, K, 13, 3] (x, y pixels, score),
            keypoint_occluded [B, K, 13] probabilities; pixels are network-input pixels.
        """
        branch = self.branches[domain]
        features = branch.encoder(images)
        heatmap_logits, distances = branch.detection(features)
        det = self.cfg.detection
        boxes, scores, labels, valid = decode_detections(
            heatmap_logits, distances, self.stride, images.shape[2], images.shape[3],
            det.pre_nms_topk, max_detections, det.nms_iou)
        flat_boxes = boxes.reshape(-1, 4)
        batch_index = torch.arange(boxes.shape[0], device=boxes.device, dtype=boxes.dtype)[:, None]
        batch_index = batch_index.expand(-1, max_detections).reshape(-1, 1)
        rois = torch.cat([batch_index, flat_boxes], dim=1)
        mask_probs, keypoints, occluded = self.instance_outputs(branch, images, features, rois)
        resolution = mask_probs.shape[-1]
        return {
            'boxes': boxes,
            'scores': scores,
            'labels': labels,
            'valid': valid,
            'masks': mask_probs.reshape(-1, max_detections, resolution, resolution),
            'keypoints': keypoints.reshape(-1, max_detections, keypoints.shape[1], 3),
            'keypoint_occluded': occluded.reshape(-1, max_detections, occluded.shape[1]),
        }


def unpad_detections(padded: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Split padded [B, K, ...] outputs into B dicts holding only the valid rows (contract 2 names)."""
    results = []
    for index in range(padded['boxes'].shape[0]):
        keep = padded['valid'][index]
        results.append({
            'boxes': padded['boxes'][index][keep],
            'scores': padded['scores'][index][keep],
            'labels': padded['labels'][index][keep],
            'masks': padded['masks'][index][keep],
            'keypoints': padded['keypoints'][index][keep],
            'keypoint_occluded': padded['keypoint_occluded'][index][keep],
        })
    return results


def _select_pose_instances(target: dict[str, torch.Tensor], limit: int) -> torch.Tensor:
    """Indices of at most `limit` instances with a real box (>= 1 px a side), keypoint-labelled ones first."""
    boxes = target['boxes']
    sizes = boxes[:, 2:] - boxes[:, :2]
    candidates = torch.nonzero((sizes >= 1.0).all(dim=1), as_tuple=False)[:, 0]
    if candidates.numel() <= limit:
        return candidates
    order = candidates[torch.randperm(candidates.numel())]
    flags = target.get('has_keypoints')
    if flags is not None:
        labelled = flags[order].to(torch.bool)
        order = torch.cat([order[labelled], order[~labelled]])
    return order[:limit]


def build_model(cfg: ModelConfig) -> PPENet:
    """The network for `cfg` (random initialisation, plus the backbone file if the config names one)."""
    return PPENet(cfg)
