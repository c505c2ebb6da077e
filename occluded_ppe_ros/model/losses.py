"""Loss functions of every head, as plain functions (the heads build their targets and call these).

Loss names returned by `PPENet.forward` in training, and the paper's term (eq. 1) each belongs to:

| key                     | term    | what                                                          |
|-------------------------|---------|---------------------------------------------------------------|
| loss_det_heatmap        | L_det   | centre-heatmap focal loss (CenterNet's penalty-reduced form)  |
| loss_det_box            | L_det   | GIoU loss of the box sides, already x `box_loss_weight`       |
| loss_seg_mask           | L_seg   | per-pixel binary cross-entropy of the instance masks          |
| loss_dc_domain          | L_dc    | domain classifier BCE (instance level, behind the GRL)        |
| loss_pe_heatmap         | L_pe    | keypoint-heatmap loss (source instances, v > 0 joints)        |
| loss_pe_occlusion       | L_pe    | occluded-joint BCE, already x `occlusion_loss_weight`         |
| loss_pe_facing          | L_pe    | faces-the-camera BCE x `facing_loss_weight` (only when > 0)   |

`LOSS_TERMS` maps each key to its term so a trainer applies the paper's alpha / beta / gamma with
`loss_term(key)`. The paper adopts L_det from Dasgupta et al. 2022 and L_pe from ClueNet without giving
the formulas; we use the standard losses of the anchor-free head and heatmap decoder we chose.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TERMS: dict[str, str] = {
    'loss_det_heatmap': 'det',
    'loss_det_box': 'det',
    'loss_seg_mask': 'seg',
    'loss_dc_domain': 'dc',
    'loss_pe_heatmap': 'pe',
    'loss_pe_occlusion': 'pe',
    'loss_pe_facing': 'pe',
    'loss_pe_coordinate': 'pe',
}


def loss_term(key: str) -> str:
    """The paper's term ('det', 'seg', 'dc', 'pe') of a loss key."""
    if key not in LOSS_TERMS:
        raise KeyError(f'unknown loss key {key!r}; known: {sorted(LOSS_TERMS)}')
    return LOSS_TERMS[key]


def gaussian_focal_loss(logits: torch.Tensor, targets: torch.Tensor,
                        negative_weight: torch.Tensor | None = None, alpha: float = 2.0,
                        beta: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The penalty-reduced (CenterNet) focal loss, summed (the caller divides by the number of positives).

    Positives are cells where the target is 1: -(1 - p)^alpha log p. Every other cell is a negative
    damped near a centre: -(1 - t)^beta p^alpha log(1 - p), times `negative_weight` (0 = ignored).

    Args:
        logits: float [...] heatmap logits.
        targets: float [...] Gaussian targets in [0, 1], 1 exactly at centres.
        negative_weight: float, broadcastable to logits; None = 1 everywhere.
        alpha: focusing exponent.
        beta: penalty-reduction exponent.

    Returns:
        (loss sum, number of positives as a float tensor).
    """
    positive = targets >= 1.0 - 1e-4
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    positive_loss = -((1 - p) ** alpha) * log_p
    negative_loss = -((1 - targets) ** beta) * (p ** alpha) * log_not_p
    if negative_weight is not None:
        negative_loss = negative_loss * negative_weight
    loss = torch.where(positive, positive_loss, negative_loss)
    return loss.sum(), positive.sum().to(logits.dtype)


def giou_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU per pair of boxes.

    Args:
        predicted: float [N, 4] x1, y1, x2, y2.
        target: float [N, 4].

    Returns:
        float [N] in [0, 2].
    """
    x1 = torch.maximum(predicted[:, 0], target[:, 0])
    y1 = torch.maximum(predicted[:, 1], target[:, 1])
    x2 = torch.minimum(predicted[:, 2], target[:, 2])
    y2 = torch.minimum(predicted[:, 3], target[:, 3])
    intersection = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area_p = ((predicted[:, 2] - predicted[:, 0]).clamp(min=0)
              * (predicted[:, 3] - predicted[:, 1]).clamp(min=0))
    area_t = (target[:, 2] - target[:, 0]).clamp(min=0) * (target[:, 3] - target[:, 1]).clamp(min=0)
    union = area_p + area_t - intersection
    iou = intersection / union.clamp(min=1e-6)
    hull_w = torch.maximum(predicted[:, 2], target[:, 2]) - torch.minimum(predicted[:, 0], target[:, 0])
    hull_h = torch.maximum(predicted[:, 3], target[:, 3]) - torch.minimum(predicted[:, 1], target[:, 1])
    hull = (hull_w * hull_h).clamp(min=1e-6)
    return 1.0 - (iou - (hull - union) / hull)


def mask_loss(mask_logits: torch.Tensor, mask_targets: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel BCE over instances with a known mask; 0 (kept in the graph) when there are none.

    Args:
        mask_logits: float [N, M, M].
        mask_targets: float [N, M, M] of 0 / 1.
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(mask_logits, mask_targets)


def domain_loss(domain_logits: torch.Tensor, is_source: bool) -> torch.Tensor:
    """Mean BCE of the domain classifier (label 1 = source domain); 0 in the graph for no instances.

    Args:
        domain_logits: float [N].
        is_source: whether these instances come from the source (pose-labelled) domain.
    """
    if domain_logits.numel() == 0:
        return domain_logits.sum() * 0.0
    labels = torch.full_like(domain_logits, 1.0 if is_source else 0.0)
    return F.binary_cross_entropy_with_logits(domain_logits, labels)


def keypoint_heatmap_loss(heatmap_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                          alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """Focal loss of keypoint heatmaps over labelled joints, divided by the number of labelled joints.

    Args:
        heatmap_logits: float [N, J, H, W].
        targets: float [N, J, H, W] Gaussians (1 at the joint's cell).
        valid: bool [N, J]; unlabelled joints (v = 0 or outside the box) give no loss at all.
        alpha: focusing exponent.
        beta: penalty-reduction exponent.
    """
    weight = valid[..., None, None].to(heatmap_logits.dtype)
    total, _ = gaussian_focal_loss(heatmap_logits, targets * weight, negative_weight=weight,
                                   alpha=alpha, beta=beta)
    count = valid.sum().to(heatmap_logits.dtype)
    return total / count.clamp(min=1.0)


def keypoint_softmax_loss(heatmap_logits: torch.Tensor, target_distributions: torch.Tensor,
                          valid: torch.Tensor) -> torch.Tensor:
    """Spatial softmax cross-entropy of keypoint heatmaps, averaged over labelled joints.

    Each joint's H x W logits are one softmax over the map, and the loss is the cross-entropy to its
    target distribution (Mask R-CNN's keypoint loss with a Gaussian instead of a one-hot target). Every
    cell gets a gradient at every step, unlike a per-cell focal loss with one positive in thousands of
    cells, so a freshly initialised decoder finds the joints in hundreds rather than many thousands of
    iterations.

    Args:
        heatmap_logits: float [N, J, H, W].
        target_distributions: float [N, J, H, W], each valid joint's map summing to 1.
        valid: bool [N, J]; unlabelled joints (v = 0 or outside the box) give no loss at all.
    """
    log_probabilities = F.log_softmax(heatmap_logits.flatten(2), dim=2)
    per_joint = -(target_distributions.flatten(2) * log_probabilities).sum(dim=2)
    weight = valid.to(heatmap_logits.dtype)
    return (per_joint * weight).sum() / weight.sum().clamp(min=1.0)


def keypoint_coordinate_loss(heatmap_logits: torch.Tensor, joint_x: torch.Tensor, joint_y: torch.Tensor,
                             valid: torch.Tensor) -> torch.Tensor:
    """L1 distance between each joint and the expectation of its spatial-softmax heatmap, in cells.

    The expectation is differentiable in every cell's logit (DSNT, Nibali et al. 2018; integral
    regression, Sun et al. 2018), so this trains the sub-cell position directly, and mass far from the
    joint (a second mode on the other arm) costs in proportion to its distance.

    Args:
        heatmap_logits: float [N, J, H, W].
        joint_x, joint_y: float [N, J] exact joint positions in cell coordinates (cell (r, c) centre =
            (c + 0.5, r + 0.5)), as `ops.joint_cells` gives them.
        valid: bool [N, J]; unlabelled joints (v = 0 or outside the box) give no loss.

    Returns:
        scalar: mean over valid joints of |E[x] - x| + |E[y] - y| (cells).
    """
    n, j, h, w = heatmap_logits.shape
    probabilities = F.softmax(heatmap_logits.flatten(2), dim=2).reshape(n, j, h, w)
    columns = torch.arange(w, dtype=heatmap_logits.dtype, device=heatmap_logits.device) + 0.5
    rows = torch.arange(h, dtype=heatmap_logits.dtype, device=heatmap_logits.device) + 0.5
    expected_x = (probabilities.sum(dim=2) * columns).sum(dim=2)
    expected_y = (probabilities.sum(dim=3) * rows).sum(dim=2)
    per_joint = (expected_x - joint_x).abs() + (expected_y - joint_y).abs()
    weight = valid.to(heatmap_logits.dtype)
    return (per_joint * weight).sum() / weight.sum().clamp(min=1.0)


def occlusion_loss(occlusion_logits: torch.Tensor, occluded: torch.Tensor,
                   valid: torch.Tensor) -> torch.Tensor:
    """Mean BCE of the per-joint occlusion logits over labelled joints.

    Args:
        occlusion_logits: float [N, J], read at each joint's ground-truth cell.
        occluded: bool [N, J] target (True = hidden).
        valid: bool [N, J] labelled joints.
    """
    weight = valid.to(occlusion_logits.dtype)
    losses = F.binary_cross_entropy_with_logits(occlusion_logits, occluded.to(occlusion_logits.dtype),
                                                reduction='none')
    return (losses * weight).sum() / weight.sum().clamp(min=1.0)


def facing_labels(keypoints: torch.Tensor, boxes: torch.Tensor, min_separation: float = 0.1
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each person faces the camera, read from the left/right order of their shoulders or hips.

    Facing the camera, a person's left shoulder is drawn to the right of the right one (larger x); seen
    from behind, to its left. The shoulders decide when both are labelled and at least `min_separation`
    x the box width apart; otherwise the hips, under the same rule; otherwise the person has no label
    (a side view, or joints missing).

    Args:
        keypoints: float [R, 13, 3] x, y pixels, v (0 = not labelled), skeleton.KEYPOINT_NAMES order.
        boxes: float [R, 4] x1, y1, x2, y2 pixels.
        min_separation: the smallest |x_left - x_right| / box width that counts.

    Returns:
        (faces float [R] 1 = faces the camera, labelled bool [R]).
    """
    width = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    faces = keypoints.new_zeros(keypoints.shape[0])
    labelled = torch.zeros(keypoints.shape[0], dtype=torch.bool, device=keypoints.device)
    for left, right in ((7, 8), (1, 2)):  # hips first, so the shoulders overwrite where they decide
        separation = (keypoints[:, left, 0] - keypoints[:, right, 0]) / width
        both_labelled = (keypoints[:, left, 2] > 0) & (keypoints[:, right, 2] > 0)
        decides = both_labelled & (separation.abs() >= min_separation)
        faces = torch.where(decides, (separation > 0).to(faces.dtype), faces)
        labelled = labelled | decides
    return faces, labelled


def facing_loss(logits: torch.Tensor, faces: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Mean BCE of the faces-the-camera logits [R] over labelled instances; 0 in the graph when none."""
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[labelled], faces[labelled])
