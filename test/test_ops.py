"""Op-level pieces of the network against slow plain-Python references and hand-computed cases."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from occluded_ppe_ros.model.config import DetectionConfig, PoseConfig
from occluded_ppe_ros.model.detection import decode_detections, detection_targets
from occluded_ppe_ros.model.losses import (gaussian_focal_loss, giou_loss, keypoint_coordinate_loss,
                                           keypoint_heatmap_loss, keypoint_softmax_loss)
from occluded_ppe_ros.model.ops import (ChannelAttention, SpatialAttention, build_attention, cells_to_pixels,
                                        decode_heatmaps, dilate_gate, gaussian_2d, grad_reverse, jitter_boxes,
                                        keypoint_distribution_targets, keypoint_targets, mask_gate,
                                        random_occlusion_gate, roi_align_separable, target_window_mass,
                                        trainable_roi_align, visible_box_gate)
from occluded_ppe_ros.model.pose import PoseStage, gate_hides

torch.set_num_threads(2)


# ----------------------------------------------------------------- slow references
def bilinear_clamped(grid: list[list[float]], y: float, x: float) -> float:
    """Bilinear read with edge clamping (F.interpolate's align_corners=False behaviour)."""
    h, w = len(grid), len(grid[0])
    y = min(max(y, 0.0), h - 1.0)
    x = min(max(x, 0.0), w - 1.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    fy, fx = y - y0, x - x0
    return ((1 - fy) * ((1 - fx) * grid[y0][x0] + fx * grid[y0][x1])
            + fy * ((1 - fx) * grid[y1][x0] + fx * grid[y1][x1]))


def bilinear_roi_sample(grid: list[list[float]], y: float, x: float) -> float:
    """RoIAlign's sample: 0 beyond one cell outside the map, coordinates clamped at >= 0 and the last cell."""
    h, w = len(grid), len(grid[0])
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    fy, fx = y - y0, x - x0
    return ((1 - fy) * ((1 - fx) * grid[y0][x0] + fx * grid[y0][x1])
            + fy * ((1 - fx) * grid[y1][x0] + fx * grid[y1][x1]))


def roi_align_reference(grid: list[list[float]], box: tuple[float, float, float, float], out_h: int,
                        out_w: int, scale: float, sampling: int = 2) -> list[list[float]]:
    """aligned=True RoIAlign of one channel: bins averaged over sampling x sampling bilinear reads."""
    x1, y1, x2, y2 = (v * scale - 0.5 for v in box)
    bin_h, bin_w = (y2 - y1) / out_h, (x2 - x1) / out_w
    out = []
    for r in range(out_h):
        row = []
        for c in range(out_w):
            total = 0.0
            for iy in range(sampling):
                for ix in range(sampling):
                    y = y1 + r * bin_h + (iy + 0.5) * bin_h / sampling
                    x = x1 + c * bin_w + (ix + 0.5) * bin_w / sampling
                    total += bilinear_roi_sample(grid, y, x)
            row.append(total / sampling ** 2)
        out.append(row)
    return out


def decode_reference(heatmap: list[list[float]]) -> tuple[float, float, float]:
    """argmax (first in row-major order) + quarter step toward the higher neighbour (clamped indices)."""
    h, w = len(heatmap), len(heatmap[0])
    best, br, bc = -math.inf, 0, 0
    for r in range(h):
        for c in range(w):
            if heatmap[r][c] > best:
                best, br, bc = heatmap[r][c], r, c
    left, right = heatmap[br][max(bc - 1, 0)], heatmap[br][min(bc + 1, w - 1)]
    up, down = heatmap[max(br - 1, 0)][bc], heatmap[min(br + 1, h - 1)][bc]
    dx = 0.25 if right > left else (-0.25 if right < left else 0.0)
    dy = 0.25 if down > up else (-0.25 if down < up else 0.0)
    return bc + 0.5 + dx, br + 0.5 + dy, 1.0 / (1.0 + math.exp(-best))


# ----------------------------------------------------------------- tests
def test_gradient_reversal_is_identity_forward_and_reverses_scaled_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    weights = torch.randn(4, 3)
    y = grad_reverse(x, 0.3)
    assert torch.equal(y, x)
    (y * weights).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * weights)


def test_decode_heatmaps_matches_slow_reference_on_hand_made_maps():
    maps = torch.full((2, 3, 6, 5), -4.0)
    maps[0, 0, 2, 3] = 3.0                       # interior peak, right and lower neighbours higher
    maps[0, 0, 2, 4], maps[0, 0, 2, 2] = 1.0, 0.0
    maps[0, 0, 3, 3], maps[0, 0, 1, 3] = 0.5, 0.7
    maps[0, 1, 0, 0] = 2.0                       # corner peak
    maps[0, 1, 0, 1] = 1.0
    maps[0, 2, 5, 4] = 1.5                       # opposite corner, equal neighbours
    maps[1] = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(1))
    xy, scores, flat_index = decode_heatmaps(maps, heatmap_loss='focal')
    for n in range(2):
        for j in range(3):
            ref_x, ref_y, ref_score = decode_reference(maps[n, j].tolist())
            assert xy[n, j].tolist() == pytest.approx([ref_x, ref_y], abs=1e-6)
            assert float(scores[n, j]) == pytest.approx(ref_score, abs=1e-6)
    # Hand-computed: peak (row 2, col 3) -> x 3.5 + 0.25 (right 1.0 > left 0.0),
    # y 2.5 - 0.25 (up 0.7 > down 0.5).
    assert xy[0, 0].tolist() == pytest.approx([3.75, 2.25])
    assert int(flat_index[0, 0]) == 2 * 5 + 3
    # Corner (0, 0): clamped left/up are the peak itself (2.0) > right 1.0 / down -4: moves to the border.
    assert xy[0, 1].tolist() == pytest.approx([0.25, 0.25])


def test_decode_heatmaps_softmax_score_is_the_mass_around_the_peak_relative_to_the_target():
    generator = torch.Generator().manual_seed(2)
    maps = torch.randn(2, 4, 12, 10, generator=generator)
    maps[0, 0, 6, 4] = 14.0                      # one sharp interior peak: nearly all mass in its window
    maps[0, 1, 0, 9] = 6.0                       # corner peak: its window is cut by the map border
    xy_soft, scores, flat_index = decode_heatmaps(maps, heatmap_loss='softmax', sigma=1.5)
    xy_sigmoid, _, flat_sigmoid = decode_heatmaps(maps, heatmap_loss='focal')
    assert torch.equal(xy_soft, xy_sigmoid) and torch.equal(flat_index, flat_sigmoid)
    probabilities = torch.softmax(maps.flatten(2), dim=2).reshape(maps.shape)
    ideal = target_window_mass(1.5, 2)             # sigma 1.5 -> a 5 x 5 window
    for n in range(2):
        for j in range(4):
            row, col = divmod(int(flat_index[n, j]), 10)
            mass = probabilities[n, j, max(row - 2, 0):row + 3, max(col - 2, 0):col + 3].sum()
            assert float(scores[n, j]) == pytest.approx(min(float(mass) / ideal, 1.0), abs=1e-5)
    assert float(scores[0, 0]) == 1.0              # sharper than the target: clamped
    # the trained target itself (log of a cell-centred Gaussian) scores 1
    sigma = torch.tensor([1.5])
    target = gaussian_2d(torch.tensor([4.5]), torch.tensor([6.5]), sigma, sigma, 12, 10)
    _, target_score, _ = decode_heatmaps(torch.log(target)[None], heatmap_loss='softmax', sigma=1.5)
    assert float(target_score[0, 0]) == pytest.approx(1.0, abs=1e-3)
    assert 0.8 < ideal < 0.85
    with pytest.raises(ValueError, match='heatmap_loss'):
        decode_heatmaps(maps, heatmap_loss='softmax2')


def test_decode_heatmaps_window_mean_is_the_probability_weighted_position_around_the_peak():
    generator = torch.Generator().manual_seed(4)
    maps = torch.randn(2, 3, 12, 10, generator=generator)
    maps[0, 0, 6, 4] = 9.0                       # main mode ...
    maps[0, 0, 6, 5] = 8.0                       # ... leaning right
    maps[0, 0, 1, 1] = 8.5                       # a second mode outside the window: ignored
    maps[0, 1, 0, 9] = 7.0                       # corner peak: the window keeps the cells that exist
    xy, scores, flat_index = decode_heatmaps(maps, heatmap_loss='softmax', sigma=1.5, subcell='window_mean')
    _, quarter_scores, quarter_index = decode_heatmaps(maps, heatmap_loss='softmax', sigma=1.5)
    assert torch.equal(flat_index, quarter_index) and torch.allclose(scores, quarter_scores)
    probabilities = torch.softmax(maps.flatten(2), dim=2).reshape(maps.shape)
    for n in range(2):
        for j in range(3):
            row, col = divmod(int(flat_index[n, j]), 10)
            rows, cols = slice(max(row - 2, 0), row + 3), slice(max(col - 2, 0), col + 3)
            window = probabilities[n, j, rows, cols]
            centres_y = torch.arange(12, dtype=torch.float32)[rows, None] + 0.5
            centres_x = torch.arange(10, dtype=torch.float32)[None, cols] + 0.5
            expected = [float((window * centres_x).sum() / window.sum()),
                        float((window * centres_y).sum() / window.sum())]
            assert xy[n, j].tolist() == pytest.approx(expected, abs=1e-4)
    assert 4.5 < float(xy[0, 0, 0]) < 5.5 and float(xy[0, 0, 1]) == pytest.approx(6.5, abs=0.05)
    # a Gaussian target off its cell centre (4.5, 6.5) decodes most of the way to its position; the
    # window cuts the far tail, which leaves about a third of the offset
    sigma = torch.tensor([1.5])
    target = gaussian_2d(torch.tensor([4.2]), torch.tensor([6.9]), sigma, sigma, 12, 10)
    xy_target, _, _ = decode_heatmaps(torch.log(target)[None], heatmap_loss='softmax', sigma=1.5,
                                      subcell='window_mean')
    x, y = xy_target[0, 0].tolist()
    assert 4.2 < x < 4.5 - 0.5 * 0.3 and 6.5 + 0.5 * 0.4 < y < 6.9
    with pytest.raises(ValueError, match='subcell must be one of'):
        decode_heatmaps(maps, subcell='centroid')
    with pytest.raises(ValueError, match="'window_mean' reads softmax"):
        decode_heatmaps(maps, heatmap_loss='focal', subcell='window_mean')


def test_keypoint_distribution_targets_are_normalised_gaussians_at_the_exact_joint():
    boxes = torch.tensor([[10.0, 20.0, 34.0, 84.0]])           # 24 x 64 px, 16 x 12 map: 2 x 4 px cells
    keypoints = torch.zeros(1, 13, 3)
    keypoints[0, 0] = torch.tensor([23.0, 54.0, 2.0])        # cell (row 8, col 6), at (6.5, 8.5) cells
    keypoints[0, 1] = torch.tensor([40.0, 30.0, 2.0])        # outside the box: not valid
    keypoints[0, 2] = torch.tensor([20.0, 40.0, 0.0])        # unlabelled
    targets, valid, flat_index = keypoint_distribution_targets(keypoints, boxes, 16, 12, sigma=1.0)
    assert valid[0].tolist()[:3] == [True, False, False]
    assert float(targets[0, 0].sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(targets[0, 1:].abs().sum()) == 0.0
    assert int(flat_index[0, 0]) == 8 * 12 + 6
    # the joint sits on the centre of its cell, far from the border: the distribution's mean is there
    rows = torch.arange(16, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(12, dtype=torch.float32)[None, :] + 0.5
    assert float((targets[0, 0] * cols).sum()) == pytest.approx(6.5, abs=1e-3)
    assert float((targets[0, 0] * rows).sum()) == pytest.approx(8.5, abs=1e-3)


def test_keypoint_softmax_loss_is_cross_entropy_over_labelled_joints():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 13, 6, 4, generator=generator)
    targets = torch.rand(2, 13, 6, 4, generator=generator)
    targets = targets / targets.sum(dim=(2, 3), keepdim=True)
    valid = torch.zeros(2, 13, dtype=torch.bool)
    valid[0, 1] = valid[1, 7] = True
    expected = 0.0
    for n, j in ((0, 1), (1, 7)):
        log_p = torch.log_softmax(logits[n, j].flatten(), dim=0)
        expected += float(-(targets[n, j].flatten() * log_p).sum()) / 2
    assert float(keypoint_softmax_loss(logits, targets, valid)) == pytest.approx(expected, rel=1e-5)
    changed = logits.clone()
    changed[0, 5:] += torch.randn(8, 6, 4, generator=generator)   # unlabelled joints change freely
    assert torch.equal(keypoint_softmax_loss(logits, targets, valid),
                       keypoint_softmax_loss(changed, targets, valid))
    # a map matching the target's log-probabilities has the lowest loss: the target's entropy
    optimal = torch.log(targets)
    optimal_loss = keypoint_softmax_loss(optimal, targets, valid)
    assert float(optimal_loss) < float(keypoint_softmax_loss(logits, targets, valid))


def test_keypoint_coordinate_loss_is_the_l1_distance_of_the_softmax_expectation():
    logits = torch.full((1, 13, 8, 6), -1e4)
    logits[0, 0, 2, 3] = 0.0                   # all of joint 0's mass on row 2, col 3: centre (3.5, 2.5)
    logits[0, 1, 5, [1, 4]] = 0.0              # joint 1 split between two cells of row 5: expectation x 3.0
    x = torch.zeros(1, 13)
    y = torch.zeros(1, 13)
    x[0, 0], y[0, 0] = 3.5, 2.5                # joint 0 exactly at its mass
    x[0, 1], y[0, 1] = 1.5, 4.5                # joint 1 on one of its modes: |3.0 - 1.5| + |5.5 - 4.5|
    valid = torch.zeros(1, 13, dtype=torch.bool)
    valid[0, :2] = True
    assert float(keypoint_coordinate_loss(logits, x, y, valid)) == pytest.approx((0.0 + 2.5) / 2, abs=1e-5)
    # unlabelled joints give nothing; a soft map gets a gradient that moves mass toward the joint
    soft = torch.zeros(1, 13, 8, 6, requires_grad=True)
    loss = keypoint_coordinate_loss(soft, x, y, valid)
    loss.backward()
    assert float(soft.grad[0, 2:].abs().sum()) == 0.0
    assert float(soft.grad[0, 0, 2, 3]) < 0.0 < float(soft.grad[0, 0, 7, 0])   # raise the joint's cell


def test_cells_to_pixels_maps_heatmap_cells_onto_the_box():
    boxes = torch.tensor([[10.0, 20.0, 34.0, 84.0]])          # a 24 x 64 px box under a 16 x 12 cell map
    xy = torch.tensor([[[0.0, 0.0], [12.0, 16.0], [6.0, 8.0]]])
    pixels = cells_to_pixels(xy, boxes, height=16, width=12)
    expected = torch.tensor([[[10.0, 20.0], [34.0, 84.0], [22.0, 52.0]]])
    torch.testing.assert_close(pixels, expected)


def test_roi_gating_matches_slow_roi_align_times_resampled_mask():
    """Mask-and-predict: pooled instance features x the mask resampled onto the RoI grid."""
    generator = torch.Generator().manual_seed(0)
    stride = 4
    features = torch.randn(1, 2, 12, 10, generator=generator)
    cfg = PoseConfig(roi_height=4, roi_width=3, encoder_channels=8, encoder_convs=1, decoder_channels=8,
                     decoder_deconvs=1, domain_hidden=8)
    stage = PoseStage(2, stride, cfg)
    box = (5.0, 3.0, 29.0, 41.0)
    rois = torch.tensor([[0.0, *box]])
    mask = torch.rand(1, 6, 6, generator=generator)
    pooled = stage.pool(features, rois)
    gated = pooled * mask_gate(mask, cfg.roi_height, cfg.roi_width)
    grid_mask = mask[0].tolist()
    for channel in range(2):
        ref_pooled = roi_align_reference(features[0, channel].tolist(), box, 4, 3, 1.0 / stride)
        for r in range(4):
            for c in range(3):
                # RoI cell centre at box fraction ((c + 0.5) / 3, (r + 0.5) / 4) reads the 6 x 6 mask there.
                ref_gate = bilinear_clamped(grid_mask, (r + 0.5) / 4 * 6 - 0.5, (c + 0.5) / 3 * 6 - 0.5)
                assert float(gated[0, channel, r, c]) == pytest.approx(ref_pooled[r][c] * ref_gate, abs=1e-5)


def test_visible_box_gate_opens_only_cells_whose_centre_is_visible():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 80.0]])
    visible = torch.tensor([[0.0, 0.0, 40.0, 40.0]])            # upper half visible
    gate = visible_box_gate(boxes, visible, height=4, width=2)
    assert gate[0, 0].tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]


def test_random_occlusion_gate_hides_about_the_ratio_and_is_seeded():
    gate = random_occlusion_gate(50, 16, 12, 0.3, generator=torch.Generator().manual_seed(3))
    hidden = 1.0 - gate.mean(dim=(1, 2, 3))
    assert gate.shape == (50, 1, 16, 12)
    assert float(hidden.mean()) == pytest.approx(0.3, abs=0.05)
    again = random_occlusion_gate(50, 16, 12, 0.3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(gate, again)
    assert torch.equal(random_occlusion_gate(2, 4, 4, 0.0), torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match='mask_ratio'):
        random_occlusion_gate(1, 4, 4, 1.0)


def test_gate_hides_reads_the_gate_cell_of_each_joint():
    gate = torch.ones(1, 1, 4, 2)
    gate[0, 0, 3, 1] = 0.0                                      # bottom-right cell hidden
    boxes = torch.tensor([[0.0, 0.0, 20.0, 40.0]])
    keypoints = torch.tensor([[[15.0, 35.0, 2.0], [5.0, 35.0, 2.0], [25.0, 35.0, 2.0]]])
    assert gate_hides(gate, keypoints, boxes).tolist() == [[True, False, False]]


def test_keypoint_targets_peak_at_the_joint_cell_and_mark_invalid_joints():
    boxes = torch.tensor([[0.0, 0.0, 24.0, 32.0]])
    keypoints = torch.zeros(1, 13, 3)
    keypoints[0, 0] = torch.tensor([7.0, 9.0, 2.0])             # cell (row 4, col 3): 2 px cells
    keypoints[0, 1] = torch.tensor([30.0, 9.0, 1.0])            # outside the box
    keypoints[0, 2] = torch.tensor([7.0, 9.0, 0.0])             # unlabelled
    targets, valid, flat = keypoint_targets(keypoints, boxes, 16, 12, sigma=2.0)
    assert valid[0, :3].tolist() == [True, False, False]
    assert float(targets[0, 0, 4, 3]) == 1.0
    assert int(flat[0, 0]) == 4 * 12 + 3
    assert float(targets[0, 0, 4, 5]) == pytest.approx(math.exp(-4 / 8))
    assert float(targets[0, 1].abs().sum()) == 0.0


def test_gaussian_focal_loss_matches_elementwise_formula():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, generator=generator)
    targets = torch.tensor([[1.0, 0.5, 0.0, 0.2, 1.0], [0.0, 0.9, 1.0, 0.1, 0.3]])
    weight = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 1.0]])
    total, positives = gaussian_focal_loss(logits, targets, weight)
    expected = 0.0
    for n in range(2):
        for i in range(5):
            p = 1 / (1 + math.exp(-float(logits[n, i])))
            t = float(targets[n, i])
            if t == 1.0:
                expected += -((1 - p) ** 2) * math.log(p)
            else:
                expected += -float(weight[n, i]) * (1 - t) ** 4 * p ** 2 * math.log(1 - p)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert float(positives) == 3.0


def test_keypoint_heatmap_loss_ignores_unlabelled_joints():
    logits = torch.randn(1, 13, 8, 6)
    targets = torch.zeros(1, 13, 8, 6)
    targets[0, :, 3, 2] = 1.0
    valid = torch.zeros(1, 13, dtype=torch.bool)
    valid[0, 0] = True
    changed = logits.clone()
    changed[0, 5:] += 10.0                                       # joints that are not labelled
    assert torch.equal(keypoint_heatmap_loss(logits, targets, valid),
                       keypoint_heatmap_loss(changed, targets, valid))


def test_giou_loss_matches_torchvision():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(20, 2, generator=generator) * 50
    b = torch.rand(20, 2, generator=generator) * 50
    boxes_a = torch.cat([a, a + torch.rand(20, 2, generator=generator) * 30 + 1], 1)
    boxes_b = torch.cat([b, b + torch.rand(20, 2, generator=generator) * 30 + 1], 1)
    expected = torchvision.ops.generalized_box_iou_loss(boxes_a, boxes_b, reduction='none')
    torch.testing.assert_close(giou_loss(boxes_a, boxes_b), expected, atol=1e-5, rtol=1e-5)


def test_channel_attention_scales_each_channel_by_a_gap_driven_factor():
    attention = ChannelAttention(8, reduction=2)
    x = torch.rand(2, 8, 5, 4)
    with torch.no_grad():
        y = attention(x)
    ratio = y / x
    # One factor per (image, channel), in (0, 1), constant over the map.
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)
    assert float(ratio.min()) > 0 and float(ratio.max()) < 1


def test_spatial_attention_is_the_papers_gap_vector_times_the_same_map():
    """Paper 2.1: GAP gives a vector, multiplied with the same feature map it marks the most attentive
    area. By hand: cosine of the GAP vector with each position's feature vector, through the sigmoid."""
    attention = SpatialAttention()
    with torch.no_grad():
        attention.gain.fill_(3.0)
        attention.bias.fill_(-0.5)
    x = torch.randn(2, 8, 5, 4)
    with torch.no_grad():
        y = attention(x)
    for image in range(2):
        vector = x[image].mean(dim=(1, 2))
        for row in range(5):
            for col in range(4):
                feature = x[image, :, row, col]
                cosine = float(vector @ feature) / float(vector.norm() * feature.norm())
                weight = 1.0 / (1.0 + math.exp(-(3.0 * cosine - 0.5)))
                torch.testing.assert_close(y[image, :, row, col], feature * weight, atol=1e-5, rtol=1e-5)
    # One factor per (image, position), shared by every channel: it weights where, not what.
    ratio = y / x
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    assert float(ratio[:, 0].std()) > 0.05
    # scale-free: the same weights for a map 1000 times larger
    torch.testing.assert_close(attention(1000 * x) / (1000 * x), ratio, atol=1e-5, rtol=1e-4)


def test_attention_kind_is_a_config_option_with_channel_the_default():
    """'channel' stays the default (state-dict keys fc1/fc2, as every shipped checkpoint has); 'spatial'
    is the paper configs' choice (gain/bias); anything else is refused naming it."""
    import yaml

    from occluded_ppe_ros.model.config import ModelConfig

    assert isinstance(build_attention('channel', 16, 4), ChannelAttention)
    assert isinstance(build_attention('spatial', 16, 4), SpatialAttention)
    assert ModelConfig().detection.attention == ModelConfig().mask.attention == 'channel'
    with pytest.raises(ValueError, match="detection.attention 'pixel' is not one of"):
        ModelConfig.from_dict({'detection': {'attention': 'pixel'}})
    # the heads build it and train it (a gradient reaches its two scalars)
    from occluded_ppe_ros.model.config import MaskConfig
    from occluded_ppe_ros.model.detection import DetectionHead
    from occluded_ppe_ros.model.mask_head import MaskHead

    head = DetectionHead(16, 2, 8, DetectionConfig(attention='spatial', head_channels=8))
    assert {'attention.gain', 'attention.bias'} <= set(head.state_dict())
    assert not any(key.startswith('attention.fc') for key in head.state_dict())
    heatmap, distances = head(torch.randn(2, 16, 6, 5))
    (heatmap.sum() + distances.sum()).backward()
    assert float(head.attention.gain.grad.abs()) > 0
    assert isinstance(MaskHead(16, 8, MaskConfig(attention='spatial')).attention, SpatialAttention)
    repo = Path(__file__).resolve().parents[1]
    for name in ('train_stage1.yaml', 'train_stage2.yaml'):
        model = yaml.safe_load((repo / 'config' / name).read_text())['model']
        assert model['detection']['attention'] == model['mask']['attention'] == 'spatial', name
    for path in sorted((repo / 'config').glob('*.yaml')):
        if path.name.startswith(('train_tiny', 'train_default', 'model_')):
            model = yaml.safe_load(path.read_text()).get('model') or yaml.safe_load(path.read_text())
            for section in ('detection', 'mask'):
                assert (model.get(section) or {}).get('attention', 'channel') == 'channel', path.name


def test_a_checkpoint_written_before_the_attention_option_keeps_its_keys_and_channel_attention(tmp_path):
    """A PPENet checkpoint whose config has no `attention` key (written before the option existed, as the
    PPENet default model of 2026-11-25 was) builds channel attention and loads strictly."""
    from occluded_ppe_ros.model.checkpoint import model_from_checkpoint, save_checkpoint
    from occluded_ppe_ros.model.config import ModelConfig
    from occluded_ppe_ros.model.network import build_model

    config = ModelConfig.from_dict({'backbone': {'name': 'resnet18', 'pretrained_path': ''}}).to_dict()
    for section in ('detection', 'mask'):
        config[section].pop('attention', None)
    model = build_model(ModelConfig.from_dict(config))
    path = save_checkpoint(tmp_path / 'old.pt', model)
    stored = torch.load(path, map_location='cpu', weights_only=True)
    stored['model_config'] = config
    torch.save(stored, path)
    loaded, _ = model_from_checkpoint(path)
    assert set(loaded.state_dict()) == set(stored['model'])
    attentions = [m for name, m in loaded.named_modules() if name.endswith('.attention')]
    assert attentions and all(isinstance(m, ChannelAttention) for m in attentions)


def test_spatial_attention_exports_to_onnx_and_matches(tmp_path):
    import onnxruntime

    attention = SpatialAttention().eval()
    with torch.no_grad():
        attention.gain.fill_(2.0)
    x = torch.randn(1, 16, 12, 10)
    path = tmp_path / 'spatial.onnx'
    torch.onnx.export(attention, (x,), str(path), dynamo=False, opset_version=18, input_names=['x'],
                      output_names=['y'])
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    other = torch.randn(1, 16, 12, 10)
    (got,) = session.run(None, {'x': other.numpy()})
    np.testing.assert_allclose(got, attention(other).detach().numpy(), atol=1e-5, rtol=1e-4)


def test_detection_targets_hand_computed_centre_ignore_and_ownership():
    cfg = DetectionConfig()
    boxes = torch.tensor([[8.0, 8.0, 24.0, 40.0], [10.0, 10.0, 14.0, 14.0]])   # big, and small inside it
    labels = torch.tensor([0, 1])
    ignore = torch.tensor([[40.0, 0.0, 64.0, 20.0]])
    built = detection_targets(boxes, labels, ignore, 2, height=12, width=16, stride=4, cfg=cfg)
    # Big box centre (16, 24) -> cell (row 6, col 4); small box centre (12, 12) -> cell (3, 3).
    assert float(built['heatmap'][0, 6, 4]) == 1.0 and float(built['heatmap'][1, 3, 3]) == 1.0
    assert float(built['heatmap'][0].max()) == 1.0 and int((built['heatmap'] == 1.0).sum()) == 2
    # Ignore region: cell centres x in [40, 64], y in [0, 20] -> cols 10..15, rows 0..4 get no negative loss.
    weight = built['negative_weight'][0]
    assert float(weight[:5, 10:].sum()) == 0.0 and float(weight[5:, :].min()) == 1.0
    assert float(weight[:5, :10].min()) == 1.0
    # The small box's centre cell regresses the small box (the smaller object owns shared cells).
    assert built['box_target'][3, 3].tolist() == [10.0, 10.0, 14.0, 14.0]
    assert built['box_target'][6, 4].tolist() == [8.0, 8.0, 24.0, 40.0]
    # Weights sum to 1 per object.
    assert float(built['box_weight'].sum()) == pytest.approx(2.0, abs=1e-5)


def test_decode_detections_peaks_boxes_nms_and_padding():
    stride, h, w = 4, 8, 8
    logits = torch.full((2, 2, h, w), -10.0)
    distances = torch.zeros(2, 4, h, w)
    logits[0, 0, 2, 3] = 2.0                                 # peak -> centre (14, 10)
    distances[0, :, 2, 3] = torch.tensor([4.0, 6.0, 2.0, 8.0])
    logits[0, 0, 2, 4] = 1.0                                 # neighbour, not a local max -> dropped
    logits[0, 1, 6, 6] = 0.0                                 # class 1 peak, box clipped to the image
    distances[0, :, 6, 6] = torch.tensor([10.0, 10.0, 40.0, 40.0])
    boxes, scores, labels, valid = decode_detections(logits, distances, stride, 32, 32, pre_nms_topk=10,
                                                     max_detections=5, nms_iou=0.5)
    assert boxes.shape == (2, 5, 4) and scores.shape == (2, 5) and labels.dtype == torch.int64
    assert valid.dtype == torch.bool
    assert boxes[0, 0].tolist() == pytest.approx([10.0, 4.0, 16.0, 18.0])
    assert float(scores[0, 0]) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert int(labels[0, 1]) == 1 and boxes[0, 1].tolist() == pytest.approx([16.0, 16.0, 32.0, 32.0])
    assert float(scores[0, 1]) == pytest.approx(0.5)
    # Everything after the real peaks is a tiny-score peak or padding; padded rows have score 0.
    assert bool((scores[~valid] == 0).all())
    assert bool(((scores[0, 1:] <= scores[0, :-1]) | ~valid[0, 1:]).all())


def test_decode_detections_nms_suppresses_overlapping_same_class_boxes():
    logits = torch.full((1, 1, 8, 8), -10.0)
    distances = torch.full((1, 4, 8, 8), 8.0)
    logits[0, 0, 2, 2] = 2.0
    logits[0, 0, 2, 4] = 1.5                                 # 8 px right: IoU of 16 px boxes = 1/3
    logits[0, 0, 2, 3] = -10.0
    _, scores_low, _, _ = decode_detections(logits, distances, 4, 32, 32, 10, 3, nms_iou=0.3)
    _, scores_high, _, _ = decode_detections(logits, distances, 4, 32, 32, 10, 3, nms_iou=0.5)
    assert float(scores_low[0, 1]) < 0.01
    assert float(scores_high[0, 1]) == pytest.approx(1 / (1 + math.exp(-1.5)))


def test_jitter_boxes_moves_each_side_within_the_fraction_and_stays_in_the_image():
    torch.manual_seed(0)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]]).repeat(200, 1)
    moved = jitter_boxes(boxes, 0.1, image_height=100, image_width=100)
    limit = torch.tensor([2.0, 4.0, 2.0, 4.0])                  # 10 % of width 20 / height 40
    assert bool(((moved - boxes).abs() <= limit + 1e-5).all())
    assert float((moved - boxes).abs().max()) > 1.0             # it does move
    edge = jitter_boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]).repeat(50, 1), 0.2, 100, 100)
    assert float(edge.min()) >= 0 and float(edge[:, 2:].max()) <= 100
    assert torch.equal(jitter_boxes(boxes, 0.0, 100, 100), boxes)


def test_dilate_gate_grows_by_whole_cells_and_zero_is_identity():
    gate = torch.zeros(1, 1, 7, 5)
    gate[0, 0, 3, 2] = 0.8
    assert torch.equal(dilate_gate(gate, 0), gate)
    grown = dilate_gate(gate, 1)
    expected = torch.zeros(1, 1, 7, 5)
    expected[0, 0, 2:5, 1:4] = 0.8
    assert torch.equal(grown, expected)
    assert float(dilate_gate(gate, 10).min()) == pytest.approx(0.8)


# ----------------------------------------------------------------- separable RoIAlign
def _rois_in_and_around(count: int, seed: int) -> torch.Tensor:
    """[count, 5] RoIs over a 2-image batch of 128 x 160 inputs: inside, across the edges, beyond them,
    a few pixels wide, and one wholly outside the image."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([200.0, 170.0])
    corner = corner - torch.tensor([30.0, 25.0])
    size = torch.rand(count, 2, generator=generator) * torch.tensor([80.0, 120.0]) + 0.5
    image = torch.randint(0, 2, (count, 1), generator=generator).float()
    rois = torch.cat([image, corner, corner + size], dim=1)
    rois[0, 1:] = torch.tensor([170.0, 140.0, 200.0, 190.0])     # wholly beyond the bottom-right corner
    rois[1, 1:] = torch.tensor([10.0, 10.0, 10.5, 10.7])         # under one map cell
    return rois


@pytest.mark.parametrize('output_size, spatial_scale', [((16, 12), 0.25), ((10, 10), 0.25), ((64, 48), 1.0)])
def test_separable_roi_align_equals_torchvision_in_values_and_gradients(output_size, spatial_scale):
    height, width = (128, 160) if spatial_scale == 1.0 else (32, 40)
    features = torch.randn(2, 5, height, width, generator=torch.Generator().manual_seed(3))
    features.requires_grad_(True)
    rois = _rois_in_and_around(24, seed=4)
    expected = torchvision.ops.roi_align(features, rois, output_size, spatial_scale, 2, True)
    separable = roi_align_separable(features, rois, output_size, spatial_scale, 2)
    assert separable.shape == expected.shape
    # float32 rounding of the sample positions (~1e-5 of a 160-pixel coordinate) is all that differs
    torch.testing.assert_close(separable, expected, atol=2e-4, rtol=1e-4)
    assert float(expected[0].abs().max()) == 0.0          # the RoI beyond the image reads zeros
    upstream = torch.randn(expected.shape, generator=torch.Generator().manual_seed(5))
    expected_grad, = torch.autograd.grad((expected * upstream).sum(), features)
    separable_grad, = torch.autograd.grad((separable * upstream).sum(), features)
    torch.testing.assert_close(separable_grad, expected_grad, atol=5e-4, rtol=1e-4)


def test_trainable_roi_align_takes_torchvision_where_no_gradient_flows():
    features = torch.randn(2, 4, 32, 40)
    rois = _rois_in_and_around(6, seed=6)
    expected = torchvision.ops.roi_align(features, rois, (16, 12), 0.25, 2, True)
    # no gradient: torchvision's op itself (bit-exact), as inference and ONNX export run it
    assert torch.equal(trainable_roi_align(features, rois, (16, 12), 0.25), expected)
    trainable = features.clone().requires_grad_(True)
    pooled = trainable_roi_align(trainable, rois, (16, 12), 0.25)
    assert pooled.requires_grad
    torch.testing.assert_close(pooled.detach(), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert torch.equal(trainable_roi_align(trainable, rois, (16, 12), 0.25), expected)
