"""Occlusion rectangles (seeded coverage), instance selection, and PCK split by occluded / visible joints."""
from __future__ import annotations

import json

import numpy as np
import pytest

from occluded_ppe_training.evaluation.occlusion import (OCCLUDER_RGB, OCCLUSION_LEVELS, box_pixel_region,
                                                        evaluate_pck, fully_labelled_annotations,
                                                        instance_rng, occlude_image, occlusion_ground_truth,
                                                        occlusion_rectangles)

KEPT_SLOTS = [0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]


@pytest.mark.parametrize('fraction', OCCLUSION_LEVELS)
@pytest.mark.parametrize('size', [(90, 30), (40, 41), (200, 75)])
def test_rectangles_cover_the_requested_fraction(fraction, size):
    height, width = size
    for seed in range(3):
        rectangles, covered = occlusion_rectangles(height, width, fraction, np.random.default_rng(seed))
        target = round(fraction * height * width)
        assert target - 0.01 * height * width <= covered.sum() <= target
        # the coverage is exactly the union of the returned rectangles
        union = np.zeros_like(covered)
        for col0, row0, col1, row1 in rectangles:
            assert 0 <= col0 < col1 <= width and 0 <= row0 < row1 <= height
            union[row0:row1, col0:col1] = True
        np.testing.assert_array_equal(union, covered)


def test_rectangles_are_seeded_per_instance():
    first = occlusion_rectangles(80, 30, 0.4, instance_rng(0, 0.4, 17))[0]
    assert first == occlusion_rectangles(80, 30, 0.4, instance_rng(0, 0.4, 17))[0]
    assert first != occlusion_rectangles(80, 30, 0.4, instance_rng(0, 0.4, 18))[0]
    assert first != occlusion_rectangles(80, 30, 0.4, instance_rng(1, 0.4, 17))[0]


def test_box_pixel_region_covers_touched_pixels():
    assert box_pixel_region([10.5, 3.2, 5.0, 4.0], 100, 100) == (10, 3, 16, 8)
    assert box_pixel_region([-5, -5, 20, 20], 10, 12) == (0, 0, 12, 10)


def _keypoints(labelled: list[int], box) -> list[float]:
    x, y, w, h = box
    values = []
    for slot in range(17):
        v = 2 if slot in labelled else 0
        values += [x + w / 2 if v else 0, y + h * (slot + 1) / 18 if v else 0, v]
    return values


def _dataset() -> dict:
    boxes = {1: [10, 10, 30, 80], 2: [60, 5, 40, 90], 3: [5, 5, 50, 100], 4: [70, 10, 20, 60]}
    annotations = [
        {'id': 1, 'image_id': 1, 'bbox': boxes[1], 'iscrowd': 0,
         'keypoints': _keypoints(KEPT_SLOTS, boxes[1])},
        # eyes and ears missing do not matter: the 13 joints are all labelled
        {'id': 2, 'image_id': 1, 'bbox': boxes[2], 'iscrowd': 0,
         'keypoints': _keypoints(KEPT_SLOTS[:-1], boxes[2])},
        {'id': 3, 'image_id': 2, 'bbox': boxes[3], 'iscrowd': 0,
         'keypoints': _keypoints(list(range(17)), boxes[3])},
        {'id': 4, 'image_id': 3, 'bbox': boxes[4], 'iscrowd': 1,
         'keypoints': _keypoints(KEPT_SLOTS, boxes[4])},
    ]
    for ann in annotations:
        ann.update(category_id=1, area=ann['bbox'][2] * ann['bbox'][3],
                   num_keypoints=sum(v > 0 for v in ann['keypoints'][2::3]))
    return {'images': [{'id': i, 'file_name': f'{i}.png', 'height': 120, 'width': 120} for i in (1, 2, 3)],
            'annotations': annotations, 'categories': [{'id': 1, 'name': 'person', 'keypoints': ['k'] * 17}]}


def test_selection_keeps_fully_labelled_non_crowd_instances():
    assert [a['id'] for a in fully_labelled_annotations(_dataset())] == [1, 3]
    subset, per_image = occlusion_ground_truth(_dataset())
    assert sorted(per_image) == [1, 2]
    assert [im['id'] for im in subset['images']] == [1, 2]
    crowd = {a['id']: a['iscrowd'] for a in subset['annotations']}
    assert crowd == {1: 0, 2: 1, 3: 0}      # annotation 2 stays as a region no detection is penalised on


def test_occlude_image_paints_only_inside_the_boxes():
    image = np.full((120, 120, 3), 255, dtype=np.uint8)
    anns = [a for a in _dataset()['annotations'] if a['id'] in (1, 2)]
    out = occlude_image(image, anns, 0.5, seed=3)
    painted = np.all(out == OCCLUDER_RGB, axis=2)
    inside = np.zeros((120, 120), dtype=bool)
    for ann in anns:
        col0, row0, col1, row1 = box_pixel_region(ann['bbox'], 120, 120)
        inside[row0:row1, col0:col1] = True
        share = painted[row0:row1, col0:col1].mean()
        assert 0.49 <= share <= 0.5 + 1e-9
    assert not painted[~inside].any()
    np.testing.assert_array_equal(out, occlude_image(image, anns, 0.5, seed=3))
    assert (image == 255).all()                # the input is not modified


def _synthetic() -> dict:
    """Two instances with 13-joint keypoints; instance 1's joints 0-3 are occluded, instance 2's 0-5."""
    anns = []
    for ann_id, box, hidden in ((1, [0, 0, 50, 100], 4), (2, [200, 0, 40, 80], 6)):
        joints = np.zeros((13, 3))
        joints[:, 0] = box[0] + 10
        joints[:, 1] = box[1] + 5 * np.arange(13)
        joints[:, 2] = 2
        joints[12, 2] = 0                         # the last joint is not labelled at all
        flags = [1] * hidden + [0] * (13 - hidden)
        anns.append({'id': ann_id, 'image_id': 1, 'category_id': 1, 'iscrowd': 0, 'bbox': box,
                     'area': box[2] * box[3], 'keypoints': joints.reshape(-1).tolist(), 'num_keypoints': 12,
                     'keypoints_occluded': flags})
    return {'images': [{'id': 1, 'file_name': '1.png', 'height': 100, 'width': 300}],
            'annotations': anns, 'categories': [{'id': 1, 'name': 'person', 'keypoints': ['k'] * 13}]}


def test_pck_split_by_occlusion_by_hand():
    """Instance 1 (box 50 x 100, threshold 0.1 * 100 = 10 px) is found: joints 0-3 (occluded) are off by
    (6, 8) = 10 px (correct, the bound is inclusive), joint 4 by 11 px (wrong), joints 5-11 exact, joint 12
    unlabelled. Instance 2 is not found (its only prediction has box IoU < 0.5): its 12 labelled joints
    (6 occluded, 6 visible) are wrong. Occluded: 4 / (4 + 6); visible: (8 - 1) / (8 + 6); all 11 / 24."""
    gt = _synthetic()
    truth = np.array(gt['annotations'][0]['keypoints']).reshape(13, 3)
    predicted = truth.copy()
    predicted[:4, 0] += 6
    predicted[:4, 1] += 8
    predicted[4, 0] += 11
    predicted17 = np.zeros((17, 3))
    predicted17[KEPT_SLOTS] = predicted
    results = [{'image_id': 1, 'category_id': 1, 'bbox': [2, 1, 50, 100], 'score': 0.9,
                'keypoints': predicted17.reshape(-1).tolist()},
               {'image_id': 1, 'category_id': 1, 'bbox': [230, 0, 40, 80], 'score': 0.8,
                'keypoints': gt['annotations'][1]['keypoints']}]
    pck = evaluate_pck(gt, results, alpha=0.1)
    assert (pck.num_occluded, pck.num_visible) == (10, 14)
    assert pck.occluded == pytest.approx(4 / 10)
    assert pck.visible == pytest.approx(7 / 14)
    assert pck.all == pytest.approx(11 / 24)
    assert (pck.num_instances, pck.num_unmatched_instances) == (2, 1)


def test_pck_rejects_malformed_truth_flags():
    gt = _synthetic()
    gt['annotations'][0]['keypoints_occluded'] = [1, 0, 2]
    with pytest.raises(ValueError, match='keypoints_occluded'):
        evaluate_pck(gt, [])


def test_ppe_eval_synthetic_cli_from_results(tmp_path):
    from occluded_ppe_ros.cli import main

    gt = _synthetic()
    results = [{'image_id': 1, 'category_id': 1, 'bbox': a['bbox'], 'score': 0.9, 'keypoints': a['keypoints']}
               for a in gt['annotations']]
    (tmp_path / 'gt.json').write_text(json.dumps(gt))
    (tmp_path / 'res.json').write_text(json.dumps(results))
    assert main(['eval', 'synthetic', '--gt', str(tmp_path / 'gt.json'),
                 '--results', str(tmp_path / 'res.json'), '--out', str(tmp_path / 'out')]) == 0
    written = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert written['pck']['occluded'] == 1.0 and written['pck']['visible'] == 1.0
    assert written['coco']['keypoints']['metrics']['AP'] == pytest.approx(1.0)


def test_pck_on_the_synthetic_generator_output(tmp_path):
    """`ppe synth` output scored with results built from its truth: every occluded joint moved beyond the
    threshold, every visible joint kept -> PCK 0 for occluded joints and 1 for visible ones."""
    from occluded_ppe_ros.cli import main

    assert main(['synth', '--out', str(tmp_path / 'syn'), '--num-images', '6', '--size', '160x120',
                 '--seed', '4']) == 0
    gt = json.loads((tmp_path / 'syn' / 'annotations.json').read_text())
    results = []
    for ann in gt['annotations']:
        joints = np.array(ann['keypoints'], dtype=float).reshape(17, 3)
        hidden = np.zeros(17, bool)
        hidden[KEPT_SLOTS] = np.array(ann['keypoints_occluded'], bool)
        joints[hidden, 0] += 0.11 * max(ann['bbox'][2], ann['bbox'][3])
        results.append({'image_id': ann['image_id'], 'category_id': 1, 'bbox': ann['bbox'], 'score': 0.9,
                        'keypoints': joints.reshape(-1).tolist()})
    pck = evaluate_pck(gt, results)
    assert pck.num_occluded > 0 and pck.num_visible > 0
    assert pck.occluded == 0.0 and pck.visible == 1.0
    assert pck.num_unmatched_instances == 0
