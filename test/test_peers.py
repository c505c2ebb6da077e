"""The CPU peers: decoders on hand-made tensors, NMS against torchvision, the real ONNX models on a photo.

The real-model tests skip cleanly where models/peers/*.onnx (tools/build_peers.sh) or the sample photo
are absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

from occluded_ppe_ros import peers
from occluded_ppe_ros.inference.coco_results import pedestrians_to_coco_results
from occluded_ppe_ros.inference.nms import greedy_nms
from occluded_ppe_ros.skeleton import COCO17_INDEX

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / 'samples' / '000000129648.jpg'
# The large, fully visible person of COCO 129648 (its annotation's bbox, x1 y1 x2 y2).
SAMPLE_PERSON_BOX = np.array([36.46, 137.22, 36.46 + 210.14, 137.22 + 205.34])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two x1, y1, x2, y2 boxes, computed by hand."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_nms_matches_torchvision():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (200, 2))
    wh = rng.uniform(5, 40, (200, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, 200)
    for threshold in (0.3, 0.5, 0.7):
        expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        np.testing.assert_array_equal(greedy_nms(boxes, scores, threshold), expected)
    assert greedy_nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_resize_long_side_pads_to_multiples_of_32():
    image = np.full((427, 640, 3), 200, np.uint8)
    canvas, scale = peers.resize_long_side(image, 384)
    assert scale == pytest.approx(384 / 640)
    assert canvas.shape == (256, 384, 3)   # 427 * 0.6 = 256.2 -> 256, already a multiple of 32
    canvas, scale = peers.resize_long_side(np.full((300, 500, 3), 200, np.uint8), 256)
    assert canvas.shape == (160, 256, 3)   # 300 * 0.512 = 153.6 -> 154 rows, padded to 160
    assert np.all(canvas[:154] == 200) and np.all(canvas[154:] == 0)
    with pytest.raises(ValueError, match='empty image'):
        peers.resize_long_side(np.zeros((0, 5, 3), np.uint8), 256)


def multipose_row(box_yxyx, score, joint_yx, joint_score):
    row = np.zeros(56, np.float32)
    joints = np.zeros((17, 3), np.float32)
    joints[:, 0], joints[:, 1], joints[:, 2] = joint_yx[0], joint_yx[1], joint_score
    row[:51] = joints.reshape(-1)
    row[51:55] = box_yxyx
    row[55] = score
    return row


def test_decode_multipose_hand_made_rows():
    # canvas 256 x 384 for a 427 x 640 image: scale 0.6
    rows = np.stack([
        multipose_row((0.25, 0.5, 0.75, 0.75), 0.4, (0.5, 0.625), 0.9),
        multipose_row((0.0, 0.0, 0.1, 0.1), 0.01, (0.0, 0.0), 0.9),    # below min_score
        multipose_row((0.0, 0.0, 0.5, 0.5), 0.8, (0.25, 0.25), 0.1),
    ])
    people = peers.decode_multipose(rows, (256, 384), 0.6, (427, 640), min_score=0.05, occluded_below=0.3)
    assert [round(p.score, 2) for p in people] == [0.8, 0.4]
    first, second = people[1], people[0]
    # x = 0.5 * 384 / 0.6 = 320, y = 0.25 * 256 / 0.6 = 106.67
    np.testing.assert_allclose(first.box, [320, 106.6667, 480, 320], rtol=1e-5)
    np.testing.assert_allclose(first.keypoints, np.tile([[400, 213.3333]], (13, 1)), rtol=1e-5)
    assert not first.keypoint_occluded.any() and second.keypoint_occluded.all()
    assert first.mask.shape == (0, 0) and first.class_name == 'person'


def nanodet_outputs(cells: dict[int, list[tuple[int, float, tuple[int, int, int, int]]]]):
    """Per-stride (scores [G*G, 80], distributions [G*G, 44]) with given cells set.

    cells: stride -> [(cell index, person score, (l, t, r, b) bins)]: each side's distribution is a
    near one-hot at that bin.
    """
    outputs = {}
    for stride in peers.NANODET_STRIDES:
        grid = 416 // stride
        scores = np.zeros((grid * grid, 80), np.float32)
        distributions = np.zeros((grid * grid, 44), np.float32)
        for index, score, bins in cells.get(stride, []):
            scores[index, 0] = score
            scores[index, 1] = 0.99   # another class: must be ignored
            logits = np.full((4, 11), -30.0, np.float32)
            logits[np.arange(4), list(bins)] = 30.0
            distributions[index] = logits.reshape(-1)
        outputs[stride] = (scores, distributions)
    return outputs


def test_decode_nanodet_centres_distances_and_nms():
    grid8 = 52
    cell = 10 * grid8 + 20            # row 10, column 20 at stride 8: centre (164, 84)
    overlapping = 10 * grid8 + 21     # next cell, same distances: IoU high, lower score
    far = 5 * 13 + 6                  # stride 32, row 5, column 6: centre (208, 176)
    outputs = nanodet_outputs({8: [(cell, 0.9, (2, 3, 4, 5)), (overlapping, 0.5, (2, 3, 4, 5))],
                               32: [(far, 0.7, (1, 1, 2, 2))]})
    boxes, scores = peers.decode_nanodet(outputs, 416, class_index=0, score_threshold=0.05, nms_iou=0.6,
                                         max_detections=10)
    np.testing.assert_allclose(scores, [0.9, 0.7])
    np.testing.assert_allclose(boxes[0], [164 - 16, 84 - 24, 164 + 32, 84 + 40], atol=1e-3)
    np.testing.assert_allclose(boxes[1], [208 - 32, 176 - 32, 208 + 64, 176 + 64], atol=1e-3)
    empty_boxes, empty_scores = peers.decode_nanodet(nanodet_outputs({}), 416, 0, 0.05, 0.6, 10)
    assert empty_boxes.shape == (0, 4) and empty_scores.shape == (0,)


def test_square_crop_transform_maps_box_to_centred_square():
    box = np.array([100.0, 50.0, 140.0, 150.0])   # 40 x 100, centre (120, 100)
    transform = peers.square_crop_transform(box, size=256, margin=1.25)
    def apply(x, y):
        return transform @ np.array([x, y, 1.0])
    np.testing.assert_allclose(apply(120, 100), [128, 128])
    # the long side (100 px) spans 256 / 1.25 crop pixels
    np.testing.assert_allclose(apply(120, 150) - apply(120, 50), [0, 256 / 1.25])


def test_make_pedestrian_drops_eyes_and_ears():
    keypoints17 = np.arange(34, dtype=np.float32).reshape(17, 2)
    scores17 = np.linspace(0, 1, 17).astype(np.float32)
    person = peers.make_pedestrian(np.array([0, 0, 10, 10]), 0.5, keypoints17, scores17, occluded_below=0.5)
    np.testing.assert_array_equal(person.keypoints, keypoints17[list(COCO17_INDEX)])
    np.testing.assert_array_equal(person.keypoint_scores, scores17[list(COCO17_INDEX)])
    np.testing.assert_array_equal(person.keypoint_occluded, scores17[list(COCO17_INDEX)] < 0.5)


def test_create_peer_errors():
    with pytest.raises(ValueError, match="unknown peer 'yolo'"):
        peers.create_peer('yolo')
    with pytest.raises(FileNotFoundError, match='build_peers.sh'):
        peers.create_peer('movenet_multipose', peer_dir=Path('/nonexistent'))


# ------------------------------------------------------------------------------------------------
# The real models (skip where the ONNX files or the photo are absent)
# ------------------------------------------------------------------------------------------------

def sample_image() -> np.ndarray:
    if not SAMPLE.is_file():
        pytest.skip(f'{SAMPLE} absent')
    return np.ascontiguousarray(cv2.imread(str(SAMPLE))[:, :, ::-1])


def require_peer(name: str) -> None:
    if name not in peers.available_peers():
        pytest.skip(f'peer {name} needs ONNX files in {peers.DEFAULT_PEER_DIR} (tools/build_peers.sh)')


def check_finds_sample_person(people) -> None:
    best = max(people, key=lambda p: box_iou(p.box, SAMPLE_PERSON_BOX))
    assert box_iou(best.box, SAMPLE_PERSON_BOX) > 0.6
    confident = best.keypoint_scores > 0.3
    assert confident.sum() >= 6
    x1, y1, x2, y2 = SAMPLE_PERSON_BOX + np.array([-10, -10, 10, 10])
    xs, ys = best.keypoints[:, 0], best.keypoints[:, 1]
    inside = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
    assert inside[confident].all()


def test_multipose_finds_the_person_in_a_real_photo():
    require_peer('movenet_multipose')
    image = sample_image()
    people = peers.create_peer('movenet_multipose', long_side=256).predict(image)
    assert 1 <= len(people) <= 6
    assert all(a.score >= b.score for a, b in zip(people, people[1:]))
    check_finds_sample_person(people)
    results = pedestrians_to_coco_results(129648, people, image.shape[:2])
    keypoints = np.array(results[0]['keypoints']).reshape(17, 3)
    assert np.all(keypoints[1:5] == 0)   # eyes and ears are empty slots


def test_nanodet_thunder_finds_the_person_in_a_real_photo():
    require_peer('nanodet_thunder')
    image = sample_image()
    peer = peers.create_peer('nanodet_thunder', settings=peers.PeerSettings(min_score=0.4))
    people = peer.predict(image)
    assert 1 <= len(people) <= peer.settings.max_detections
    check_finds_sample_person(people)
    # spin_wait=False (like-for-like timing with our backends) changes the sessions, not the people
    quiet = peers.create_peer('nanodet_thunder', settings=peers.PeerSettings(min_score=0.4, spin_wait=False))
    for session in (quiet.detector, quiet.pose):
        options = session.get_session_options()
        assert options.get_session_config_entry('session.intra_op.allow_spinning') == '0'
    quiet_people = quiet.predict(image)
    assert len(quiet_people) == len(people)
    np.testing.assert_allclose(quiet_people[0].keypoints, people[0].keypoints, atol=1e-4)


def test_peer_cli_writes_coco_results(tmp_path):
    require_peer('nanodet')
    image = sample_image()
    record = {'id': 129648, 'file_name': SAMPLE.name, 'height': image.shape[0], 'width': image.shape[1]}
    gt = {'images': [record],
          'annotations': [], 'categories': [{'id': 1, 'name': 'person'}]}
    gt_path = tmp_path / 'gt.json'
    gt_path.write_text(json.dumps(gt))
    output = tmp_path / 'results.json'
    assert peers.main(['--peer', 'nanodet', '--gt', str(gt_path), '--images', str(SAMPLE.parent),
                       '--output', str(output)]) == 0
    results = json.loads(output.read_text())
    assert results and all(r['image_id'] == 129648 and r['category_id'] == 1 for r in results)
    best = max(results, key=lambda r: box_iou(np.array(r['bbox'][:2] + [r['bbox'][0] + r['bbox'][2],
                                                                          r['bbox'][1] + r['bbox'][3]]),
                                              SAMPLE_PERSON_BOX))
    assert best['score'] > 0.3
