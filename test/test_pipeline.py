"""The pretrained pipeline network (model/pipeline.py) and its torch backend, each against its own reference.

References, independent of the code under test:
- PipelineConfig: hand-written bad values; to_dict / from_dict round trip.
- box fusion and the batched NMS: a slow pure-Python greedy NMS and weighted-box-fusion written from the
  docstrings (random clustered boxes, garbage scores on invalid rows, padding, the one-detector case).
- fold_frozen_batchnorm: the unfolded MoveNet (Lightning) on a real person crop.
- the pose stage: Google's original MoveNet Thunder (models/peers/movenet_thunder.onnx, the NanoDet +
  Thunder peer's warpAffine crop) on the people the peer's own NanoDet finds in samples/000000000790.jpg.
  The crops differ (RoIAlign bin centres vs warpAffine pixel centres, 0.5 * side / 256 - 0.5 px apart),
  so joints are bounded, not matched: measured (2026-12-04, 4 people with NanoDet score > 0.5) median
  joint distance per person 0.22-0.99 px, largest distance of the joints both models score > 0.5:
  1.68 px (one low-scored joint of the person at the right edge lands 50 px away: a near-tied peak).
- the detector stage: the people in the sample photo (4 clearly visible people, NanoDet peer agrees).
- PipelineBackend: stub graphs whose outputs name their row (scatter reference by plain loops), and the
  real torch graphs with a counting pose runner.
- checkpoints: the net with its weights rounded to float16 by hand, run through the same Predictor.
Only shipped files (models/, samples/) are read; nothing from ../shared.
"""
from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from occluded_ppe_ros.inference.backends.base import OUTPUT_NAMES, check_outputs
from occluded_ppe_ros.inference.backends.pipeline_backend import PipelineBackend, pipeline_torch_backend
from occluded_ppe_ros.inference.preprocess import letterbox
from occluded_ppe_ros.model.pipeline import (PipelineConfig, batched_top_k_nms, box_iou_matrix,
                                             build_pipeline, fold_frozen_batchnorm, fuse_detections,
                                             import_pretrained_parts)
from occluded_ppe_ros.skeleton import COCO17_INDEX

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / 'samples' / '000000000790.jpg'
THUNDER_ONNX = REPO_ROOT / 'models' / 'peers' / 'movenet_thunder.onnx'
NANODET_ONNX = REPO_ROOT / 'models' / 'peers' / 'nanodet_416.onnx'

torch.set_num_threads(2)


def sample_rgb() -> np.ndarray:
    bgr = cv2.imread(str(SAMPLE))
    assert bgr is not None, SAMPLE
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.fixture(scope='module')
def thunder_net():
    """The default pipeline (NanoDet-g + YOLOX-Nano, Thunder) with the shipped imports, untrained heads."""
    net = build_pipeline(PipelineConfig())
    import_pretrained_parts(net)
    return net.eval()


@pytest.fixture(scope='module')
def network_input(thunder_net) -> torch.Tensor:
    """samples/000000000790.jpg (640 x 422) letterboxed to the default 640 x 640 input: [1, 3, 640, 640]."""
    image, geometry = letterbox(sample_rgb(), thunder_net.cfg.input_size, 0.0)
    assert (geometry.resized_height, geometry.resized_width) == (422, 640)   # scale 1: image pixels
    return torch.from_numpy(image[None])


@pytest.fixture(scope='module')
def detected(thunder_net, network_input):
    """The detector stage's outputs on the sample (boxes, scores, labels, valid)."""
    with torch.no_grad():
        return thunder_net.detector(network_input)


# ----------------------------------------------------------------------------------------------------
# 1. PipelineConfig
# ----------------------------------------------------------------------------------------------------

def test_config_round_trip_through_a_plain_dict():
    cfg = PipelineConfig(detectors=('yolox',), pose_variant='lightning', input_height=480, input_width=320,
                         max_detections=7, fusion_iou=0.5, crop_margin=1.4, extra={'note': 'x'})
    values = cfg.to_dict()
    assert values['detectors'] == ['yolox'] and values['class_names'] == ['person']   # lists, not tuples
    assert values['architecture'] == 'pretrained_pipeline'
    again = PipelineConfig.from_dict(values)
    assert again == cfg
    assert again.detectors == ('yolox',) and again.input_size == (480, 320)
    assert PipelineConfig.from_dict(PipelineConfig().to_dict()) == PipelineConfig()


@pytest.mark.parametrize('values, named', [
    ({'detectors': ('nanodet', 'ssd')}, "'ssd'"),
    ({'detectors': ()}, '()'),
    ({'input_height': 500}, '500'),
    ({'input_width': 0}, 'input_width'),
    ({'crop_margin': 0.9}, '0.9'),
    ({'pose_variant': 'lightening'}, "'lightening'"),
    ({'fusion_iou': 1.5}, '1.5'),
    ({'max_detections': 30, 'candidates_per_detector': 20}, '30'),
    ({'architecture': 'ppenet'}, "'ppenet'"),
    ({'mask_prior': 'grabcut'}, "'grabcut'"),
    ({'mask_prior': 'selfie', 'mask_prior_size': 100}, '100'),
    ({'mask_prior': 'selfie', 'mask_prior_size': 128, 'pose_variant': 'lightning'}, '192'),
    ({'mask_prior': 'selfie', 'mask_prior_size': 64, 'pose_variant': 'lightning'}, '48'),
])
def test_config_rejects_bad_values_naming_them(values, named):
    with pytest.raises(ValueError) as error:
        PipelineConfig(**values)
    assert named in str(error.value)


def test_config_from_dict_rejects_unknown_keys_naming_them_and_the_source():
    values = PipelineConfig().to_dict()
    values['crop_margn'] = 1.3
    with pytest.raises(ValueError, match=r"ckpt\.pt model_config.*crop_margn"):
        PipelineConfig.from_dict(values, source='ckpt.pt model_config')


# ----------------------------------------------------------------------------------------------------
# 2. box fusion and batched NMS against a slow plain-Python reference
# ----------------------------------------------------------------------------------------------------

def py_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    union = area_a + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def py_greedy_nms(boxes, scores, indices, threshold) -> list[int]:
    """Greedy NMS over `indices`, best first; a box goes if it overlaps a kept one by more than threshold."""
    kept = []
    for i in sorted(indices, key=lambda i: -scores[i]):
        if all(py_iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


def py_top_k_nms(boxes, scores, candidates, keep, threshold, min_score):
    """One image: top `candidates` by score, NMS among them, rows >= min_score, the best `keep`."""
    top = sorted(range(len(scores)), key=lambda i: -scores[i])[:candidates]
    kept = [i for i in py_greedy_nms(boxes, scores, top, threshold) if scores[i] >= min_score]
    return [(boxes[i], scores[i]) for i in kept[:keep]]


def py_fuse(boxes, scores, valid, source, num_sources, fusion_iou, factor, keep):
    """One image, weighted box fusion as the docstring says: the leads are the NMS of the valid rows; a
    lead's box is the score-weighted mean of every valid box overlapping it by more than fusion_iou; its
    score is its own, times `factor` when all those boxes came from one detector (num_sources > 1)."""
    rows = [i for i in range(len(scores)) if valid[i]]
    leads = py_greedy_nms(boxes, scores, rows, fusion_iou)[:keep]
    out = []
    for lead in leads:
        if num_sources == 1:
            out.append((boxes[lead], scores[lead]))
            continue
        members = [j for j in rows if py_iou(boxes[lead], boxes[j]) > fusion_iou]
        weight = sum(scores[j] for j in members)
        fused = [sum(scores[j] * boxes[j][c] for j in members) / weight for c in range(4)]
        agreeing = len({source[j] for j in members})
        out.append((fused, scores[lead] * (1.0 if agreeing >= 2 else factor)))
    return out


def random_detector_lists(rng: np.random.Generator, batch: int, detectors: int, rows: int, people: int):
    """Per image, `people` base boxes; each detector reports jittered copies of some of them (several
    copies of one person sometimes), the rest of its rows invalid with garbage boxes and scores."""
    boxes = np.zeros((batch, detectors * rows, 4), np.float32)
    scores = np.zeros((batch, detectors * rows), np.float32)
    valid = np.zeros((batch, detectors * rows), bool)
    for b in range(batch):
        centres = rng.uniform(50, 350, (people, 2))
        sizes = rng.uniform(30, 120, (people, 2))
        for d in range(detectors):
            found = int(rng.integers(1, rows))
            for r in range(rows):
                column = d * rows + r
                if r < found:
                    p = int(rng.integers(people))
                    centre = centres[p] + rng.normal(0, 0.08, 2) * sizes[p]
                    size = sizes[p] * rng.uniform(0.85, 1.15, 2)
                    boxes[b, column] = [*(centre - size / 2), *(centre + size / 2)]
                    scores[b, column] = rng.uniform(0.05, 1.0)
                    valid[b, column] = True
                else:   # an invalid row must not count, whatever it holds
                    boxes[b, column] = [*(centres[0] - 20), *(centres[0] + 25)]
                    scores[b, column] = rng.uniform(0.5, 1.0)
    source = np.repeat(np.arange(detectors), rows)
    return boxes, scores, valid, source


def assert_rows_match(out_boxes, out_scores, out_valid, reference, image):
    count = int(out_valid.sum())
    assert count == len(reference), f'image {image}: {count} valid rows, reference {len(reference)}'
    assert out_valid[:count].all(), f'image {image}: valid rows not first'
    assert (out_scores[count:] == 0).all()
    for row, (box, score) in enumerate(reference):
        np.testing.assert_allclose(out_boxes[row], box, atol=1e-3, err_msg=f'image {image} row {row}')
        assert out_scores[row] == pytest.approx(score, abs=1e-6), f'image {image} row {row}'


@pytest.mark.parametrize('seed', range(12))
def test_fuse_detections_matches_the_python_reference(seed):
    rng = np.random.default_rng(seed)
    detectors = 2 if seed % 3 else 3
    boxes, scores, valid, source = random_detector_lists(rng, batch=2, detectors=detectors, rows=6, people=4)
    keep = 5
    out = fuse_detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(valid),
                          torch.from_numpy(source), detectors, 0.55, 0.7, keep, extent=2000.0)
    out_boxes, out_scores, out_valid = (t.numpy() for t in out)
    assert out_boxes.shape == (2, keep, 4) and out_scores.shape == (2, keep) and out_valid.dtype == bool
    for b in range(2):
        reference = py_fuse(boxes[b].tolist(), scores[b].tolist(), valid[b].tolist(), source.tolist(),
                            detectors, 0.55, 0.7, keep)
        assert_rows_match(out_boxes[b], out_scores[b], out_valid[b], reference, b)


def test_fuse_detections_factor_only_where_one_detector_found_the_person():
    """Hand-made: person A found by both detectors, person B only by the second."""
    a1, a2 = [10.0, 10.0, 50.0, 110.0], [12.0, 8.0, 52.0, 112.0]
    b2 = [200.0, 20.0, 240.0, 120.0]
    boxes = torch.tensor([[a1, [0, 0, 0, 0], a2, b2]])
    scores = torch.tensor([[0.9, 0.95, 0.6, 0.8]])           # row 1 is invalid with a high score
    valid = torch.tensor([[True, False, True, True]])
    source = torch.tensor([0, 0, 1, 1])
    out_boxes, out_scores, out_valid = fuse_detections(boxes, scores, valid, source, 2, 0.55, 0.7, 4, 1000.0)
    assert out_valid[0].tolist() == [True, True, False, False]
    fused_a = (0.9 * np.array(a1) + 0.6 * np.array(a2)) / 1.5
    np.testing.assert_allclose(out_boxes[0, 0].numpy(), fused_a, atol=1e-4)
    assert out_scores[0, 0].item() == pytest.approx(0.9)
    np.testing.assert_allclose(out_boxes[0, 1].numpy(), b2, atol=1e-4)
    assert out_scores[0, 1].item() == pytest.approx(0.8 * 0.7)


def test_fuse_detections_with_one_detector_is_the_identity_on_nms_ed_rows():
    """One detector whose rows are already NMS-ed by the detector (pairwise IoU <= detector_nms_iou 0.6),
    best first: the same rows come back, unfused and unscaled, also two people whose boxes overlap by
    0.58 (above fusion_iou 0.55: a second NMS there dropped one of them); invalid rows stay out."""
    rng = np.random.default_rng(5)
    boxes = [[100.0, 100.0, 150.0, 220.0], [113.3, 100.0, 163.3, 220.0]]      # IoU 36.7 / 63.3 = 0.58
    assert 0.55 < py_iou(boxes[0], boxes[1]) < 0.6
    scores = [0.9, 0.8]
    while len(boxes) < 6:
        x, y = rng.uniform(200, 500, 2)
        box = [x, y, x + rng.uniform(20, 90), y + rng.uniform(40, 160)]
        if all(py_iou(box, other) <= 0.6 for other in boxes):
            boxes.append(box)
            scores.append(float(rng.uniform(0.05, 0.7)))
    order = np.argsort(-np.array(scores))
    boxes = np.array(boxes, np.float32)[order]
    scores = np.array(scores, np.float32)[order]
    padded_boxes = np.concatenate([boxes, boxes[:2] + 1.0])[None]
    padded_scores = np.concatenate([scores, [0.99, 0.98]]).astype(np.float32)[None]
    valid = np.array([[True] * 6 + [False] * 2])
    out_boxes, out_scores, out_valid = fuse_detections(
        torch.from_numpy(padded_boxes), torch.from_numpy(padded_scores), torch.from_numpy(valid),
        torch.zeros(8, dtype=torch.int64), 1, 0.55, 0.7, 8, 1000.0)
    assert out_valid[0].tolist() == [True] * 6 + [False] * 2
    np.testing.assert_array_equal(out_boxes[0, :6].numpy(), boxes)
    np.testing.assert_array_equal(out_scores[0, :6].numpy(), scores)
    assert (out_scores[0, 6:] == 0).all()


@pytest.mark.parametrize('seed', range(8))
def test_batched_top_k_nms_matches_the_python_reference(seed):
    rng = np.random.default_rng(100 + seed)
    batch, anchors = 3, 40
    centres = rng.uniform(0, 400, (batch, 6, 2))
    pick = rng.integers(0, 6, (batch, anchors))
    centre = np.take_along_axis(centres, pick[..., None], 1) + rng.normal(0, 6, (batch, anchors, 2))
    size = rng.uniform(20, 80, (batch, anchors, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (batch, anchors)).astype(np.float32)
    candidates, keep, iou, min_score = 25, 6, 0.5, 0.2
    out_boxes, out_scores, out_valid = (t.numpy() for t in batched_top_k_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), candidates, keep, iou, min_score, extent=4000.0))
    assert out_boxes.shape == (batch, keep, 4)
    for b in range(batch):
        reference = py_top_k_nms(boxes[b].tolist(), scores[b].tolist(), candidates, keep, iou, min_score)
        assert_rows_match(out_boxes[b], out_scores[b], out_valid[b], reference, b)


def test_batched_top_k_nms_keeps_images_apart_and_pads_short_lists():
    box = [10.0, 10.0, 60.0, 90.0]
    boxes = torch.tensor([[box, [12.0, 11.0, 61.0, 92.0], [200.0, 0.0, 220.0, 40.0]]] * 2)
    scores = torch.tensor([[0.9, 0.8, 0.01], [0.7, 0.6, 0.5]])
    # K = 5 rows from 3 anchors: rows 3 and 4 are padding
    out_boxes, out_scores, out_valid = batched_top_k_nms(boxes, scores, 10, 5, 0.5, 0.05, extent=1000.0)
    assert out_boxes.shape == (2, 5, 4)
    # image 0: the second box is suppressed, the third is below min_score; image 1 is not suppressed by
    # image 0's identical boxes
    assert out_valid.tolist() == [[True, False, False, False, False], [True, True, False, False, False]]
    np.testing.assert_allclose(out_boxes[1, 0].numpy(), box)
    np.testing.assert_allclose(out_boxes[1, 1].numpy(), [200.0, 0.0, 220.0, 40.0])
    np.testing.assert_allclose(out_scores.numpy(), [[0.9, 0, 0, 0, 0], [0.7, 0.5, 0, 0, 0]], atol=1e-7)


def test_box_iou_matrix_matches_the_python_reference_and_survives_empty_boxes():
    rng = np.random.default_rng(3)
    corner = rng.uniform(0, 100, (2, 5, 2))
    first = np.concatenate([corner, corner + rng.uniform(1, 60, (2, 5, 2))], -1)
    second = np.concatenate([first[:, :3] + rng.normal(0, 5, (2, 3, 4)),
                             np.array([[[5, 5, 5, 5]], [[7, 7, 7, 20]]])], axis=1)   # zero-area boxes
    out = box_iou_matrix(torch.tensor(first), torch.tensor(second)).numpy()
    assert out.shape == (2, 5, 4) and np.isfinite(out).all()
    for b in range(2):
        for p in range(5):
            for q in range(4):
                assert out[b, p, q] == pytest.approx(py_iou(first[b, p], second[b, q]), abs=1e-9)


# ----------------------------------------------------------------------------------------------------
# 3. fold_frozen_batchnorm
# ----------------------------------------------------------------------------------------------------

def test_fold_frozen_batchnorm_keeps_movenet_outputs_and_removes_every_batch_norm():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from occluded_ppe_ros.model.movenet import load_movenet_single_pose
    from occluded_ppe_ros.peers import square_crop_transform

    model = load_movenet_single_pose('lightning')
    before = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert before > 0
    size = model.cfg.input_size
    transform = square_crop_transform(np.array([8.0, 108.0, 206.0, 409.0]), size, 1.25)
    crop = cv2.warpAffine(sample_rgb(), transform, (size, size), flags=cv2.INTER_LINEAR)
    crops = torch.from_numpy(np.stack([crop, crop[:, ::-1]])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        reference = model.forward_features(crops)
        reference_joints = model.decode(reference)
        folded = fold_frozen_batchnorm(copy.deepcopy(model))
        assert sum(isinstance(m, FrozenBatchNorm2d) for m in folded.modules()) == 0
        outputs = folded.forward_features(crops)
        joints = folded.decode(outputs)
    assert set(outputs) == set(reference)
    for key, value in reference.items():
        np.testing.assert_allclose(outputs[key].numpy(), value.numpy(), atol=1e-4, rtol=1e-4, err_msg=key)
    np.testing.assert_allclose(joints.numpy(), reference_joints.numpy(), atol=1e-4)
    # the original is untouched (fold works in place on the copy only)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == before


def test_fold_frozen_batchnorm_by_hand_and_leaves_a_norm_without_a_conv_alone():
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)

    def frozen(channels):
        norm = FrozenBatchNorm2d(channels)
        norm.weight.uniform_(0.5, 2)
        norm.bias.normal_()
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.1, 3)
        return norm

    module = nn.Sequential(frozen(3), nn.Conv2d(3, 4, 3, bias=False), frozen(4), nn.ReLU(),
                           nn.Conv2d(4, 5, 1, bias=True), frozen(5))
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        expected = module(x)
        fold_frozen_batchnorm(module)
        got = module(x)
    assert isinstance(module[0], FrozenBatchNorm2d)          # no conv before it: kept
    assert isinstance(module[2], nn.Identity) and isinstance(module[5], nn.Identity)
    assert module[1].bias is not None
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# 4. the pose stage reproduces the original Thunder
# ----------------------------------------------------------------------------------------------------

def test_pose_stage_reproduces_the_original_thunder_on_real_crops(thunder_net, network_input):
    from occluded_ppe_ros.peers import NanoDetThunderPeer

    peer = NanoDetThunderPeer(NANODET_ONNX, THUNDER_ONNX, threads=2)
    image = sample_rgb()
    boxes, scores = peer.detect(image)
    boxes = boxes[scores > 0.5]
    assert len(boxes) >= 3
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], 1)
    with torch.no_grad():
        keypoints, occluded, masks = thunder_net.pose(network_input, rois)
    assert keypoints.shape == (len(boxes), 13, 3) and occluded.shape == (len(boxes), 13)
    medians, good_worst = [], 0.0
    for person, box in enumerate(boxes):
        reference_xy, reference_scores = peer.estimate_pose(image, box)
        reference_xy = reference_xy[list(COCO17_INDEX)]
        reference_scores = reference_scores[list(COCO17_INDEX)]
        ours = keypoints[person].numpy()
        distance = np.linalg.norm(ours[:, :2] - reference_xy, axis=1)
        medians.append(float(np.median(distance)))
        good = (reference_scores > 0.5) & (ours[:, 2] > 0.5)
        if good.any():
            good_worst = max(good_worst, float(distance[good].max()))
            np.testing.assert_allclose(ours[good, 2], reference_scores[good], atol=0.1)
    # measured: medians 0.22-0.99 px, well-scored joints within 1.68 px
    assert max(medians) < 1.5, medians
    assert good_worst < 3.0, good_worst


# ----------------------------------------------------------------------------------------------------
# 5. the detector stage finds people
# ----------------------------------------------------------------------------------------------------

def confident_people(boxes, scores, valid, threshold=0.5):
    keep = valid & (scores > threshold)
    return boxes[keep], scores[keep]


def test_detector_stage_finds_the_people_of_the_sample(detected, thunder_net):
    boxes, scores, labels, valid = (t[0] for t in detected)
    k = thunder_net.cfg.max_detections
    assert boxes.shape == (k, 4) and scores.shape == (k,) and labels.dtype == torch.int64
    assert (labels == 0).all()
    assert (scores[~valid] == 0).all()
    people, people_scores = confident_people(boxes, scores, valid)
    assert len(people) >= 3, people_scores
    # the image is 640 x 422 at scale 1 in the 640 x 640 input
    assert (people[:, 0] >= 0).all() and (people[:, 1] >= 0).all()
    assert (people[:, 2] <= 640).all() and (people[:, 3] <= 422 + 2).all()
    assert (people[:, 2] > people[:, 0] + 20).all() and (people[:, 3] > people[:, 1] + 40).all()
    # every box (valid or not) lies in the network input
    assert (boxes >= 0).all() and (boxes <= 640).all()
    # the NanoDet peer (ONNX, independent code) sees the same confident people
    from occluded_ppe_ros.peers import NanoDetThunderPeer

    peer_boxes, peer_scores = NanoDetThunderPeer(NANODET_ONNX, threads=2).detect(sample_rgb())
    peer_boxes = peer_boxes[peer_scores > 0.6]
    overlap = box_iou_matrix(torch.from_numpy(peer_boxes), people).numpy()
    assert (overlap.max(1) > 0.7).all(), overlap


def test_detector_stage_with_yolox_alone_finds_people(network_input):
    net = build_pipeline(PipelineConfig(detectors=('yolox',)))
    import_pretrained_parts(net)
    with torch.no_grad():
        boxes, scores, _, valid = (t[0] for t in net.eval().detector(network_input))
    people, _ = confident_people(boxes, scores, valid)
    assert len(people) >= 3
    assert (people >= 0).all() and (people[:, 2] <= 640).all() and (people[:, 3] <= 424).all()


def test_detector_stage_on_a_non_square_input_finds_the_same_people(detected):
    """480 x 640 input (the detectors' 416 letterbox then has padding rows): the same people as at 640 x 640
    (the sample is 640 wide: scale 1 in both inputs)."""
    net = build_pipeline(PipelineConfig(input_height=480, input_width=640))
    import_pretrained_parts(net)
    image, _ = letterbox(sample_rgb(), (480, 640), 0.0)
    with torch.no_grad():
        boxes, scores, _, valid = (t[0] for t in net.eval().detector(torch.from_numpy(image[None])))
    people, _ = confident_people(boxes, scores, valid, 0.6)
    square_people, _ = confident_people(detected[0][0], detected[1][0], detected[3][0], 0.6)
    assert len(people) == len(square_people) >= 3
    overlap = box_iou_matrix(square_people, people).numpy()
    # the detectors see their own pad colour below the image here and black letterbox rows there, so
    # boxes move a little (0.89 the lowest measured): the same people, not identical boxes
    assert (overlap.max(1) > 0.85).all(), overlap


def test_detector_stage_at_a_smaller_letterbox_finds_the_same_people(detected):
    """detector_input_size 320: both detectors read a 320 x 320 letterbox (their anchor grids follow) and
    the confident people are those found at the default 416, in network-input pixels."""
    cfg = PipelineConfig(detector_input_size=320)
    net = build_pipeline(cfg)
    import_pretrained_parts(net)
    stage = net.eval().detector
    assert stage.side == 320 and stage.resized == (320, 320)
    assert stage.detectors['nanodet'].anchor_centres.shape[0] == sum((320 // s) ** 2 for s in (8, 16, 32))
    image, _ = letterbox(sample_rgb(), cfg.input_size, 0.0)
    with torch.no_grad():
        boxes, scores, _, valid = (t[0] for t in stage(torch.from_numpy(image[None])))
    people, _ = confident_people(boxes, scores, valid, 0.6)
    default_people, _ = confident_people(detected[0][0], detected[1][0], detected[3][0], 0.6)
    assert len(people) >= 3
    overlap = box_iou_matrix(people, default_people).numpy()
    assert (overlap.max(1) > 0.7).all(), overlap
    with pytest.raises(ValueError, match='300'):
        PipelineConfig(detector_input_size=300)


# ----------------------------------------------------------------------------------------------------
# 6. PipelineBackend
# ----------------------------------------------------------------------------------------------------

class StubDetector:
    """A fixed detector graph output: B = 2 images, K = 4 rows."""

    def __init__(self) -> None:
        self.boxes = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4) + 1.0
        self.scores = np.array([[0.9, 0.4, 0.7, 0.0], [0.95, 0.2, 0.6, 0.8]], np.float32)
        self.valid = np.array([[True, True, True, False], [True, True, False, True]])

    def run(self, feeds):
        return {'boxes': self.boxes.copy(), 'scores': self.scores.copy(),
                'labels': np.zeros((2, 4), np.int64), 'valid': self.valid.copy()}


class RecordingPose:
    """A pose graph whose row n holds n + 1 everywhere; records the rois it was given."""

    def __init__(self, inner=None) -> None:
        self.inner = inner
        self.calls: list[np.ndarray] = []

    def run(self, feeds):
        self.calls.append(feeds['rois'].copy())
        if self.inner is not None:
            return self.inner.run(feeds)
        count = len(feeds['rois'])
        fill = np.arange(1, count + 1, dtype=np.float32)
        return {'keypoints': np.broadcast_to(fill[:, None, None], (count, 13, 3)).copy(),
                'keypoint_occluded': np.broadcast_to(fill[:, None], (count, 13)).copy() / 10,
                'masks': np.broadcast_to(fill[:, None, None], (count, 5, 5)).copy()}


@pytest.mark.parametrize('threshold', [0.0, 0.5, 0.9, 0.99])
def test_pipeline_backend_poses_just_the_rows_above_its_threshold(threshold):
    detector, pose = StubDetector(), RecordingPose()
    backend = PipelineBackend('stub', detector, pose, (64, 32), ['person'], 5, pose_min_score=threshold)
    outputs = backend.run(np.zeros((2, 3, 64, 32), np.float32))
    check_outputs(outputs, 2, 'stub pipeline')
    assert tuple(outputs) == OUTPUT_NAMES
    # reference by plain loops, in row-major order
    posed = [(b, k) for b in range(2) for k in range(4)
             if detector.valid[b, k] and detector.scores[b, k] >= threshold]
    assert backend.last_pose_count == len(posed)
    if not posed:
        assert pose.calls == []
    else:
        (rois,) = pose.calls
        expected = [[b, *detector.boxes[b, k]] for b, k in posed]
        np.testing.assert_array_equal(rois, np.array(expected, np.float32))
    for b in range(2):
        for k in range(4):
            n = posed.index((b, k)) + 1 if (b, k) in posed else 0
            assert outputs['valid'][b, k] == bool(n)
            assert (outputs['keypoints'][b, k] == n).all()
            assert (outputs['masks'][b, k] == n).all()
            assert outputs['keypoint_occluded'][b, k] == pytest.approx(np.full(13, n / 10))
    np.testing.assert_array_equal(outputs['boxes'], detector.boxes)
    np.testing.assert_array_equal(outputs['scores'], detector.scores)
    assert outputs['valid'].dtype == bool and outputs['labels'].dtype == np.int64
    assert outputs['masks'].shape == (2, 4, 5, 5) and outputs['keypoints'].shape == (2, 4, 13, 3)


def test_pipeline_backend_rejects_another_input_size_naming_it():
    backend = PipelineBackend('stub', StubDetector(), RecordingPose(), (64, 32), ['person'], 5)
    with pytest.raises(ValueError, match=r'\[1, 3, 32, 64\]'):
        backend.run(np.zeros((1, 3, 32, 64), np.float32))


def test_predictor_passes_its_score_threshold_to_the_pose_graph():
    from occluded_ppe_ros.inference.predictor import Predictor

    backend = PipelineBackend('stub', StubDetector(), RecordingPose(), (64, 32), ['person'], 5)
    predictor = Predictor(backend, score_threshold=0.65)
    assert backend.pose_min_score == 0.65
    predictor.set_thresholds(keypoint_threshold=0.2)
    assert backend.pose_min_score == 0.65
    predictor.set_thresholds(score_threshold=0.3)
    assert backend.pose_min_score == 0.3
    with pytest.raises(ValueError):
        predictor.set_thresholds(score_threshold=1.5)
    assert backend.pose_min_score == 0.3


class MemoDetector:
    """The real detector runner, run once per distinct input (the tests below share one image)."""

    def __init__(self, inner) -> None:
        self.inner, self.memo = inner, {}

    def run(self, feeds):
        key = feeds['images'].tobytes()
        if key not in self.memo:
            self.memo[key] = self.inner.run(feeds)
        return {name: value.copy() for name, value in self.memo[key].items()}


@pytest.fixture(scope='module')
def torch_backend(thunder_net, detected):
    backend = pipeline_torch_backend(thunder_net)
    backend.detector = MemoDetector(backend.detector)
    return backend


def test_torch_backend_pose_cost_follows_the_people(torch_backend, network_input, detected):
    pose = RecordingPose(torch_backend.pose)
    torch_backend.pose = pose
    try:
        torch_backend.pose_min_score = 0.5
        outputs = torch_backend.run(network_input.numpy())
    finally:
        torch_backend.pose = pose.inner
    check_outputs(outputs, 1, 'pipeline torch')
    k, m = detected[1].shape[1], torch_backend.mask_resolution
    assert m == 28
    shapes = {name: value.shape for name, value in outputs.items()}
    assert shapes == {'boxes': (1, k, 4), 'scores': (1, k), 'labels': (1, k), 'valid': (1, k),
                      'masks': (1, k, m, m), 'keypoints': (1, k, 13, 3), 'keypoint_occluded': (1, k, 13)}
    boxes, scores, _, valid = (t[0].numpy() for t in detected)
    above = valid & (scores >= 0.5)
    assert above.sum() >= 3
    assert torch_backend.last_pose_count == above.sum() == len(pose.calls[0])
    np.testing.assert_allclose(pose.calls[0][:, 1:], boxes[above], atol=1e-4)
    assert (pose.calls[0][:, 0] == 0).all()
    np.testing.assert_array_equal(outputs['valid'][0], above)
    assert not outputs['keypoints'][0][~above].any() and not outputs['masks'][0][~above].any()
    # each posed person's joints lie in the square crop around its box, probabilities in [0, 1]
    for row in np.flatnonzero(above):
        x1, y1, x2, y2 = boxes[row]
        half = max(x2 - x1, y2 - y1) * 1.25 / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        joints = outputs['keypoints'][0, row]
        # MoveNet's offsets may put a joint a little past the crop's edge (measured 0.8 px of 76)
        assert (np.abs(joints[:, 0] - cx) <= half * 1.1).all()
        assert (np.abs(joints[:, 1] - cy) <= half * 1.1).all()
        assert ((joints[:, 2] >= 0) & (joints[:, 2] <= 1)).all()
        assert (joints[:, 2] > 0.3).sum() >= 3        # a person MoveNet can see
    for name in ('masks', 'keypoint_occluded'):
        assert ((outputs[name] >= 0) & (outputs[name] <= 1)).all()


def test_torch_backend_with_a_high_threshold_runs_no_pose_graph(torch_backend, network_input, detected):
    pose = RecordingPose(torch_backend.pose)
    torch_backend.pose = pose
    try:
        torch_backend.pose_min_score = 0.99
        outputs = torch_backend.run(network_input.numpy())
    finally:
        torch_backend.pose = pose.inner
    assert pose.calls == [] and torch_backend.last_pose_count == 0
    assert not outputs['valid'].any()
    assert not outputs['keypoints'].any() and not outputs['masks'].any()
    np.testing.assert_allclose(outputs['scores'], detected[1].numpy())
    check_outputs(outputs, 1, 'pipeline torch')


# ----------------------------------------------------------------------------------------------------
# 7 (part). checkpoints through the Predictor
# ----------------------------------------------------------------------------------------------------

def test_checkpoint_round_trip_gives_the_same_pedestrians(tmp_path):
    from occluded_ppe_ros.inference.predictor import Predictor
    from occluded_ppe_ros.model.pipeline_checkpoint import checkpoint_is_pipeline, save_pipeline_checkpoint

    cfg = PipelineConfig(detectors=('yolox',), pose_variant='lightning', input_height=320, input_width=320,
                         max_detections=6, candidates_per_detector=50)
    net = build_pipeline(cfg)
    import_pretrained_parts(net)
    torch.manual_seed(1)
    with torch.no_grad():      # heads away from their initialisation, as trained ones would be
        for parameter in list(net.pose.mask_head.parameters()) + list(net.pose.occlusion_head.parameters()):
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = save_pipeline_checkpoint(tmp_path / 'pipe.pt', net.eval(), stage=1, iteration=7,
                                    metrics={'note': 1.0})
    raw = torch.load(path, map_location='cpu', weights_only=True)
    assert raw['format'] == 'occluded_ppe/1' and raw['stage'] == 1 and raw['iteration'] == 7
    assert raw['model_config'] == cfg.to_dict()
    assert all(v.dtype == torch.float16 for v in raw['model'].values() if v.is_floating_point())
    assert checkpoint_is_pipeline(path)

    # reference: the net's weights rounded to float16 by hand, run through the same pre/post-processing
    reference_net = copy.deepcopy(net)
    reference_net.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                                   for k, v in net.state_dict().items()})
    reference = Predictor(pipeline_torch_backend(reference_net.eval()), score_threshold=0.3)
    loaded = Predictor.from_checkpoint(path, backend='torch', score_threshold=0.3)
    assert isinstance(loaded.backend, PipelineBackend) and loaded.backend.name == 'torch'
    assert loaded.input_size == (320, 320)
    image = sample_rgb()
    expected, got = reference.predict(image), loaded.predict(image)
    assert len(expected) >= 2 and len(got) == len(expected)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(b.box, a.box, atol=1e-4)
        assert b.score == pytest.approx(a.score, abs=1e-6)
        np.testing.assert_allclose(b.keypoints, a.keypoints, atol=1e-3)
        np.testing.assert_allclose(b.keypoint_scores, a.keypoint_scores, atol=1e-5)
        np.testing.assert_array_equal(b.keypoint_occluded, a.keypoint_occluded)
        np.testing.assert_array_equal(b.mask, a.mask)
        np.testing.assert_array_equal(b.mask_origin, a.mask_origin)


def test_checkpoint_that_does_not_fit_its_config_raises_value_error_naming_the_file(tmp_path):
    """pipeline_from_checkpoint's docstring: weights that do not fit the config -> ValueError naming the file
    (a size mismatch as much as a missing key)."""
    from occluded_ppe_ros.model.pipeline_checkpoint import (checkpoint_is_pipeline, pipeline_from_checkpoint,
                                                            save_pipeline_checkpoint)

    cfg = PipelineConfig(detectors=('yolox',), pose_variant='lightning', input_height=320, input_width=320)
    path = save_pipeline_checkpoint(tmp_path / 'pipe.pt', build_pipeline(cfg))
    raw = torch.load(path, map_location='cpu', weights_only=True)
    missing = copy.deepcopy(raw)
    del missing['model']['pose.occlusion_head.joint_embedding']
    torch.save(missing, tmp_path / 'missing.pt')
    with pytest.raises(ValueError, match=r'missing\.pt.*joint_embedding'):
        pipeline_from_checkpoint(tmp_path / 'missing.pt')
    not_pipeline = copy.deepcopy(raw)
    not_pipeline['model_config'] = {'backbone': {}}
    torch.save(not_pipeline, tmp_path / 'ppenet.pt')
    assert not checkpoint_is_pipeline(tmp_path / 'ppenet.pt')
    with pytest.raises(ValueError, match=r'ppenet\.pt is not a pretrained-pipeline checkpoint'):
        pipeline_from_checkpoint(tmp_path / 'ppenet.pt')
    raw['model_config']['mask_hidden'] = 16          # the stored mask head has 48 channels
    torch.save(raw, tmp_path / 'misfit.pt')
    with pytest.raises(ValueError, match=r'misfit\.pt'):
        pipeline_from_checkpoint(tmp_path / 'misfit.pt')


def test_selfie_mask_prior_is_one_more_head_input_channel_from_the_imported_segmenter(network_input):
    """mask_prior 'selfie': the segmenter's probability on each crop, cell-averaged, is the last channel
    of the heads' input; the outputs keep their shapes; a config written before the option reads as
    'none'."""
    from occluded_ppe_ros.model.selfie import DEFAULT_CHECKPOINT, load_selfie_segmenter

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f'no imported selfie segmenter at {DEFAULT_CHECKPOINT}')
    plain = build_pipeline(PipelineConfig(pose_variant='lightning', detectors=('yolox',)))
    with_prior = build_pipeline(PipelineConfig(pose_variant='lightning', detectors=('yolox',),
                                               mask_prior='selfie'))
    import_pretrained_parts(with_prior)
    assert with_prior.pose.instance_channels == plain.pose.instance_channels + 1
    rois = torch.tensor([[0.0, 40.0, 60.0, 200.0, 400.0], [0.0, 300.0, 50.0, 420.0, 380.0]])
    with torch.no_grad():
        crops, _ = with_prior.pose.crops(network_input, rois)
        maps = with_prior.pose.crop_maps(crops)
        expected = load_selfie_segmenter()(crops)
        torch.testing.assert_close(maps['person_prior'], expected)
        instance = with_prior.pose.instance_maps(maps, crops)
        stride = crops.shape[-1] // instance.shape[-1]
        torch.testing.assert_close(instance[:, -1:], torch.nn.functional.avg_pool2d(expected, stride))
        keypoints, occluded, masks = with_prior.pose(network_input, rois)
    assert keypoints.shape == (2, 13, 3) and occluded.shape == (2, 13)
    resolution = with_prior.cfg.mask_resolution
    assert masks.shape == (2, resolution, resolution)
    old = PipelineConfig().to_dict()
    del old['mask_prior'], old['mask_prior_size']
    assert PipelineConfig.from_dict(old).mask_prior == 'none'
    assert PipelineConfig.from_dict(old).mask_prior_size == 0


def test_selfie_mask_prior_at_a_smaller_side_reads_the_average_pooled_crop(network_input):
    """mask_prior_size 96 on Lightning's 192 crops: the segmenter reads the crop pooled 2 x 2 and the
    heads get its probability pooled to MoveNet's 48 x 48 grid."""
    from occluded_ppe_ros.model.selfie import DEFAULT_CHECKPOINT, load_selfie_segmenter

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f'no imported selfie segmenter at {DEFAULT_CHECKPOINT}')
    net = build_pipeline(PipelineConfig(pose_variant='lightning', detectors=('yolox',),
                                        mask_prior='selfie', mask_prior_size=96))
    import_pretrained_parts(net)
    rois = torch.tensor([[0.0, 40.0, 60.0, 200.0, 400.0]])
    with torch.no_grad():
        crops, _ = net.pose.crops(network_input, rois)
        maps = net.pose.crop_maps(crops)
        expected = load_selfie_segmenter()(torch.nn.functional.avg_pool2d(crops, 2))
        torch.testing.assert_close(maps['person_prior'], expected)
        instance = net.pose.instance_maps(maps, crops)
        grid = instance.shape[-1]
        torch.testing.assert_close(instance[:, -1:],
                                   torch.nn.functional.avg_pool2d(expected, expected.shape[-1] // grid))
    assert maps['person_prior'].shape == (1, 1, 96, 96) and grid == 48


# ----------------------------------------------------------------------------------------------------
# 8. test-time flip augmentation (PipelineConfig.pose_flip_test)
# ----------------------------------------------------------------------------------------------------

def mirror_by_hand(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What MoveNet's maps of a mirrored crop would be, written from the docstring with plain loops:
    column c -> w - 1 - c, joint k -> its left/right twin, x offset dx -> 0.75 - dx."""
    twin = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    width = maps['heatmap'].shape[-1]
    mirrored = {name: torch.empty_like(maps[name]) for name in ('center', 'heatmap', 'offset')}
    for column in range(width):
        source = width - 1 - column
        mirrored['center'][..., column] = maps['center'][..., source]
        for joint in range(17):
            mirrored['heatmap'][:, twin[joint], :, column] = maps['heatmap'][:, joint, :, source]
            mirrored['offset'][:, 2 * twin[joint], :, column] = maps['offset'][:, 2 * joint, :, source]
            mirrored['offset'][:, 2 * twin[joint] + 1, :, column] = 0.75 - maps['offset'][:, 2 * joint + 1, :,
                                                                                          source]
    return mirrored


def test_unmirror_head_maps_undoes_a_hand_mirrored_set_of_maps():
    from occluded_ppe_ros.model.movenet import unmirror_head_maps

    generator = torch.Generator().manual_seed(3)
    maps = {'center': torch.rand(2, 1, 6, 5, generator=generator),
            'heatmap': torch.rand(2, 17, 6, 5, generator=generator),
            'offset': torch.randn(2, 34, 6, 5, generator=generator)}
    back = unmirror_head_maps(mirror_by_hand(maps))
    for name in maps:
        torch.testing.assert_close(back[name], maps[name], atol=1e-6, rtol=0)


def test_mirrored_crop_brought_back_finds_the_same_joints_on_real_people(thunder_net, network_input):
    """Thunder on the mirrored crops of the sample's people, its maps brought back, decodes to the joints
    the crops themselves give: left and right swapped back, x offsets mirrored (a mistake in either moves
    joints by tens of crop pixels); and the flip-averaged pose stage stays on those joints."""
    from occluded_ppe_ros.model.movenet import unmirror_head_maps

    boxes, scores, _, valid = (tensor[0] for tensor in thunder_net.detector(network_input))
    keep = valid & (scores > 0.5)
    rois = torch.cat([torch.zeros(int(keep.sum()), 1), boxes[keep]], 1)
    assert len(rois) >= 3
    movenet = thunder_net.pose.movenet
    with torch.no_grad():
        crops, _ = thunder_net.pose.crops(network_input, rois)
        own = movenet.forward_features(crops)
        mirrored = unmirror_head_maps(movenet.forward_features(crops.flip(-1)))
        own_joints = movenet.decode(own)
        brought_back = movenet.decode({**own, **mirrored})
        averaged = movenet.decode_mirror_averaged(own, movenet.forward_features(crops.flip(-1)))
    crop_side = crops.shape[-1]
    confident = (own_joints[..., 2] > 0.5) & (brought_back[..., 2] > 0.5)
    assert confident.sum() >= 20
    distance = (own_joints[..., :2] - brought_back[..., :2]).norm(dim=-1)[confident] * crop_side
    assert float(distance.median()) < 3.0, distance
    distance = (own_joints[..., :2] - averaged[..., :2]).norm(dim=-1)[confident] * crop_side
    assert float(distance.median()) < 2.0, distance

    flipped = copy.deepcopy(thunder_net)
    flipped.cfg = flipped.pose.cfg = PipelineConfig(pose_flip_test=True)
    with torch.no_grad():
        plain_keypoints, plain_occluded, plain_masks = thunder_net.pose(network_input, rois)
        keypoints, occluded, masks = flipped.pose(network_input, rois)
    assert keypoints.shape == plain_keypoints.shape and masks.shape == plain_masks.shape
    assert occluded.shape == plain_occluded.shape
    seen = (plain_keypoints[..., 2] > 0.5) & (keypoints[..., 2] > 0.5)
    assert float((plain_keypoints[..., :2] - keypoints[..., :2]).norm(dim=-1)[seen].median()) < 2.0
    assert not torch.equal(keypoints, plain_keypoints)      # the mirrored pass did take part


def test_pose_flip_test_is_validated_and_reads_false_from_older_checkpoints():
    with pytest.raises(ValueError, match="pose_flip_test.*'yes'"):
        PipelineConfig(pose_flip_test='yes')
    assert PipelineConfig.from_dict(PipelineConfig(pose_flip_test=True).to_dict()).pose_flip_test is True
    old = PipelineConfig().to_dict()
    del old['pose_flip_test']
    assert PipelineConfig.from_dict(old).pose_flip_test is False
