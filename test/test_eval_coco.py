"""COCO evaluation (13-joint keypoint AP, bbox, segm) against pycocotools run directly on the same inputs.

The reference path never touches our code: it writes the 13-joint ground truth and results to files
with its own index list, loads them with `COCO(path)` / `COCO.loadRes(path)` and runs `COCOeval`.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from occluded_ppe_ros.inference.coco_results import pedestrians_to_coco_results
from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_training.evaluation.coco_eval import evaluate_coco

# Written out by hand (not taken from skeleton.py): COCO-17 slots kept for the 13 joints, and their sigmas.
KEPT_SLOTS = [0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
SIGMAS_13 = np.array([.26, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
IMAGE_SIZE = (120, 160)   # height, width


def _person(ann_id: int, image_id: int, box: tuple[float, float, float, float], rng: np.random.Generator,
            labelled: int = 17) -> dict:
    x, y, w, h = box
    keypoints = []
    for slot in range(17):
        if slot < labelled:
            keypoints += [float(x + rng.uniform(0.1, 0.9) * w), float(y + rng.uniform(0.1, 0.9) * h),
                          int(rng.integers(1, 3))]
        else:
            keypoints += [0, 0, 0]
    polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {'id': ann_id, 'image_id': image_id, 'category_id': 1, 'bbox': [x, y, w, h], 'area': w * h,
            'iscrowd': 0, 'segmentation': [polygon], 'keypoints': keypoints,
            'num_keypoints': sum(1 for v in keypoints[2::3] if v > 0)}


def _ground_truth(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    height, width = IMAGE_SIZE
    images = [{'id': i, 'file_name': f'{i:06d}.png', 'height': height, 'width': width} for i in (1, 2, 3)]
    annotations = [
        _person(1, 1, (10, 12, 40, 90), rng),
        _person(2, 1, (70, 20, 36, 80), rng),
        _person(3, 2, (30, 10, 50, 100), rng),
        _person(4, 2, (100, 30, 30, 70), rng, labelled=9),
        _person(5, 3, (60, 15, 45, 95), rng),
    ]
    categories = [{'id': 1, 'name': 'person', 'supercategory': 'person',
                   'keypoints': ['k'] * 17, 'skeleton': [[1, 2]]}]
    return {'images': images, 'annotations': annotations, 'categories': categories}


def _rle(box, height=IMAGE_SIZE[0], width=IMAGE_SIZE[1]) -> dict:
    x, y, w, h = (int(round(v)) for v in box)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {'size': [height, width], 'counts': rle['counts'].decode('ascii')}


def _results_from(gt: dict, rng: np.random.Generator | None, noise: float = 0.0) -> list[dict]:
    """One result per non-crowd GT person: its box, mask and keypoints (17-slot, eyes/ears zero) + noise."""
    results = []
    for ann in gt['annotations']:
        if ann['iscrowd']:
            continue
        kp = np.array(ann['keypoints'], dtype=float).reshape(17, 3)
        kp[:, 2] = 1.0
        kp[1:5] = 0.0
        box = np.array(ann['bbox'], dtype=float)
        score = 0.9
        if rng is not None:
            kp[KEPT_SLOTS, :2] += rng.normal(0, noise, size=(13, 2))
            box[:2] += rng.normal(0, noise, size=2)
            score = float(rng.uniform(0.3, 1.0))
        results.append({'image_id': ann['image_id'], 'category_id': 1, 'bbox': box.tolist(),
                        'segmentation': _rle(box), 'keypoints': kp.reshape(-1).tolist(), 'score': score})
    return results


def _reference_stats(tmp_path, gt: dict, results: list[dict], iou_type: str) -> list[float]:
    """pycocotools' own numbers, from files, with the 13 joints selected by KEPT_SLOTS."""
    gt13 = copy.deepcopy(gt)
    for ann in gt13['annotations']:
        kp = np.array(ann['keypoints']).reshape(-1, 3)
        if len(kp) == 17:
            kp = kp[KEPT_SLOTS]
        ann['keypoints'] = kp.reshape(-1).tolist()
        ann['num_keypoints'] = int((kp[:, 2] > 0).sum())
    res13 = copy.deepcopy(results)
    for res in res13:
        kp = np.array(res['keypoints']).reshape(-1, 3)
        res['keypoints'] = (kp[KEPT_SLOTS] if len(kp) == 17 else kp).reshape(-1).tolist()
    gt_path, res_path = tmp_path / 'gt13.json', tmp_path / 'res13.json'
    gt_path.write_text(json.dumps(gt13))
    res_path.write_text(json.dumps(res13))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        if results:
            coco_dt = coco_gt.loadRes(str(res_path))
        else:
            coco_dt = COCO()
            coco_dt.dataset = {'images': gt13['images'], 'categories': gt13['categories'], 'annotations': []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if iou_type == 'keypoints':
            evaluator.params.kpt_oks_sigmas = SIGMAS_13
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats)


def _assert_matches_reference(tmp_path, gt, results):
    metrics = evaluate_coco(gt, results)
    assert set(metrics) == {'keypoints', 'bbox', 'segm'}
    for iou_type, m in metrics.items():
        np.testing.assert_allclose(m.stats, _reference_stats(tmp_path, gt, results, iou_type), atol=1e-6,
                                   err_msg=iou_type)
    return metrics


def test_perfect_detections_give_ap_one(tmp_path):
    gt = _ground_truth()
    metrics = _assert_matches_reference(tmp_path, gt, _results_from(gt, None))
    for iou_type in ('keypoints', 'bbox', 'segm'):
        assert metrics[iou_type].named['AP'] == pytest.approx(1.0)
        assert metrics[iou_type].named['AP50'] == pytest.approx(1.0)


def test_noisy_detections_match_pycocotools(tmp_path):
    gt = _ground_truth(seed=3)
    rng = np.random.default_rng(7)
    results = _results_from(gt, rng, noise=4.0)
    # a false positive and a duplicate
    results.append({'image_id': 3, 'category_id': 1, 'bbox': [5.0, 5.0, 30.0, 60.0],
                    'segmentation': _rle([5, 5, 30, 60]), 'keypoints': [10.0, 10.0, 1.0] * 17, 'score': 0.95})
    results.append(copy.deepcopy(results[0]) | {'score': 0.2})
    metrics = _assert_matches_reference(tmp_path, gt, results)
    assert 0.0 < metrics['keypoints'].named['AP'] < 1.0


def test_empty_detections_give_zero(tmp_path):
    gt = _ground_truth()
    metrics = _assert_matches_reference(tmp_path, gt, [])
    for m in metrics.values():
        assert m.named['AP'] == 0.0
        assert m.named['AP50'] == 0.0


def test_empty_ground_truth_is_undefined(tmp_path):
    gt = _ground_truth()
    results = _results_from(gt, None)
    gt['annotations'] = []
    metrics = evaluate_coco(gt, results, ['keypoints', 'bbox'])
    for iou_type, m in metrics.items():
        assert all(v == -1 for v in m.stats), iou_type
        np.testing.assert_allclose(m.stats, _reference_stats(tmp_path, gt, results, iou_type), atol=1e-6)


def test_detection_on_crowd_region_is_not_a_false_positive(tmp_path):
    gt = _ground_truth()
    crowd_box = [110.0, 5.0, 45.0, 100.0]
    gt['annotations'].append({'id': 9, 'image_id': 3, 'category_id': 1, 'bbox': crowd_box, 'area': 45 * 100,
                              'iscrowd': 1, 'segmentation': _rle(crowd_box), 'keypoints': [0] * 51,
                              'num_keypoints': 0})
    results = _results_from(gt, None)
    # a confident detection inside the crowd region: ignored by bbox/segm (IoU vs crowd = area inside it)
    results.append({'image_id': 3, 'category_id': 1, 'bbox': [115.0, 10.0, 30.0, 80.0],
                    'segmentation': _rle([115, 10, 30, 80]), 'keypoints': [120.0, 40.0, 1.0] * 17,
                    'score': 0.99})
    metrics = _assert_matches_reference(tmp_path, gt, results)
    assert metrics['bbox'].named['AP'] == pytest.approx(1.0)
    assert metrics['segm'].named['AP'] == pytest.approx(1.0)


def test_thirteen_joint_inputs_equal_seventeen_joint_inputs(tmp_path):
    gt = _ground_truth(seed=5)
    results = _results_from(gt, np.random.default_rng(1), noise=3.0)
    gt13, res13 = copy.deepcopy(gt), copy.deepcopy(results)
    for item in gt13['annotations'] + res13:
        item['keypoints'] = np.array(item['keypoints']).reshape(17, 3)[KEPT_SLOTS].reshape(-1).tolist()
    full = evaluate_coco(gt, results, ['keypoints'])['keypoints']
    reduced = evaluate_coco(gt13, res13, ['keypoints'])['keypoints']
    np.testing.assert_allclose(full.stats, reduced.stats, atol=1e-12)
    np.testing.assert_allclose(full.stats, _reference_stats(tmp_path, gt13, res13, 'keypoints'), atol=1e-6)


def test_eyes_and_ears_do_not_count():
    """Results with eyes/ears zeroed score AP 1 on the 13 joints; COCO's 17-joint OKS would not."""
    gt = _ground_truth()
    results = _results_from(gt, None)
    assert evaluate_coco(gt, results, ['keypoints'])['keypoints'].named['AP'] == pytest.approx(1.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), 'keypoints')
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] < 0.99


def test_unknown_image_in_results_is_a_clear_error():
    gt = _ground_truth()
    results = _results_from(gt, None)
    results[0]['image_id'] = 77
    with pytest.raises(ValueError, match='image_id 77'):
        evaluate_coco(gt, results)


def _pedestrian(box, keypoints, score=0.8, mask_box=None) -> Pedestrian:
    x1, y1, x2, y2 = box
    mx1, my1, mx2, my2 = mask_box or box
    mask = np.ones((my2 - my1, mx2 - mx1), dtype=bool)
    return Pedestrian(box=np.array(box, np.float32), class_id=0, class_name='person', score=score, mask=mask,
                      mask_origin=np.array([mx1, my1]), keypoints=np.asarray(keypoints, np.float32),
                      keypoint_scores=np.full(13, 0.7, np.float32), keypoint_occluded=np.zeros(13, bool))


def test_pedestrians_to_coco_results_round_trip_through_load_res(tmp_path):
    """The `ppe infer` record: xywh box, RLE of the pasted mask, 17-slot keypoints with empty eyes/ears."""
    gt = _ground_truth()
    ann = gt['annotations'][0]
    x, y, w, h = ann['bbox']
    joints17 = np.array(ann['keypoints'], dtype=float).reshape(17, 3)
    pedestrian = _pedestrian((x, y, x + w, y + h), joints17[KEPT_SLOTS, :2], mask_box=(int(x), int(y),
                                                                                      int(x + w), int(y + h)))
    records = pedestrians_to_coco_results(1, [pedestrian], IMAGE_SIZE)
    assert len(records) == 1
    record = json.loads(json.dumps(records[0]))          # JSON-serialisable
    assert record['bbox'] == pytest.approx([x, y, w, h])
    assert record['category_id'] == 1 and record['score'] == pytest.approx(0.8)
    keypoints = np.array(record['keypoints']).reshape(17, 3)
    assert np.all(keypoints[1:5] == 0)
    np.testing.assert_allclose(keypoints[KEPT_SLOTS, :2], joints17[KEPT_SLOTS, :2], atol=1e-4)
    np.testing.assert_allclose(keypoints[KEPT_SLOTS, 2], 0.7, atol=1e-6)
    decoded = mask_utils.decode({'size': record['segmentation']['size'],
                                 'counts': record['segmentation']['counts'].encode()})
    expected = np.zeros(IMAGE_SIZE, np.uint8)
    expected[int(y):int(y + h), int(x):int(x + w)] = 1
    np.testing.assert_array_equal(decoded, expected)
    # scored through COCO.loadRes: the one person of image 1 found exactly, the other missed
    gt_one = copy.deepcopy(gt)
    gt_one['images'] = [im for im in gt['images'] if im['id'] == 1]
    gt_one['annotations'] = [a for a in gt['annotations'] if a['id'] == 1]
    metrics = evaluate_coco(gt_one, [record])
    for iou_type in ('keypoints', 'bbox', 'segm'):
        assert metrics[iou_type].named['AP'] == pytest.approx(1.0), iou_type


def test_ppe_eval_coco_cli(tmp_path):
    from occluded_ppe_ros.cli import main

    gt = _ground_truth(seed=11)
    results = _results_from(gt, np.random.default_rng(2), noise=2.0)
    (tmp_path / 'gt.json').write_text(json.dumps(gt))
    (tmp_path / 'res.json').write_text(json.dumps(results))
    out = tmp_path / 'out'
    assert main(['eval', 'coco', '--gt', str(tmp_path / 'gt.json'), '--results', str(tmp_path / 'res.json'),
                 '--out', str(out)]) == 0
    written = json.loads((out / 'metrics.json').read_text())
    for iou_type in ('keypoints', 'bbox', 'segm'):
        np.testing.assert_allclose(written['coco'][iou_type]['stats'],
                                   _reference_stats(tmp_path, gt, results, iou_type), atol=1e-6)
        assert (out / f'pr_{iou_type}.png').stat().st_size > 1000
    assert 'keypoints (13 joints, OKS)' in (out / 'report.md').read_text()


def test_real_coco_annotations_match_pycocotools(shared_data_dir, tmp_path):
    """The real COCO person-keypoints subset (crowds, RLE and polygon masks, partial keypoints): results
    derived from the ground truth with noise, scored by us and by pycocotools directly."""
    gt = json.loads((shared_data_dir / 'coco_train2017_person_kp' / 'annotations.json').read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
    rng = np.random.default_rng(0)
    results = []
    for ann in gt['annotations']:
        if ann['iscrowd'] or rng.uniform() < 0.15:
            continue
        rle = coco.annToRLE(ann)
        kp = np.array(ann['keypoints'], dtype=float).reshape(17, 3)
        kp[:, :2] += rng.normal(0, 3.0, size=(17, 2))
        kp[:, 2] = 1.0
        results.append({'image_id': ann['image_id'], 'category_id': 1,
                        'bbox': (np.array(ann['bbox']) + rng.normal(0, 2.0, 4)).tolist(),
                        'segmentation': {'size': rle['size'], 'counts': rle['counts'].decode('ascii')},
                        'keypoints': kp.reshape(-1).tolist(), 'score': float(rng.uniform(0.2, 1.0))})
    metrics = _assert_matches_reference(tmp_path, gt, results)
    assert 0.3 < metrics['keypoints'].named['AP'] < 1.0


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from occluded_ppe_ros.cli import main

    gt = _ground_truth()
    (tmp_path / 'gt.json').write_text(json.dumps(gt))
    assert main(['eval', 'coco', '--gt', str(tmp_path / 'gt.json'),
                 '--results', str(tmp_path / 'missing.json'), '--out', str(tmp_path / 'out')]) == 2
    assert 'missing.json does not exist' in capsys.readouterr().err
    (tmp_path / 'bad.json').write_text(json.dumps([{'image_id': 1, 'category_id': 5, 'bbox': [0, 0, 1, 1],
                                                     'score': 1.0}]))
    assert main(['eval', 'coco', '--gt', str(tmp_path / 'gt.json'), '--results', str(tmp_path / 'bad.json'),
                 '--out', str(tmp_path / 'out')]) == 2
    assert 'category_id 5' in capsys.readouterr().err


def test_pose_score_is_detection_score_times_mean_confident_joint_score():
    pedestrian = _pedestrian((0, 0, 10, 20), np.zeros((13, 2)), score=0.5)
    pedestrian.keypoint_scores = np.array([0.9, 0.6, 0.1] + [0.0] * 10, np.float32)
    assert pedestrian.pose_score() == pytest.approx(0.5 * (0.9 + 0.6) / 2)   # 0.1 < 0.2 does not count
    pedestrian.keypoint_scores = np.full(13, 0.1, np.float32)
    assert pedestrian.pose_score() == 0.0


def test_keypoint_ap_ranks_people_by_pose_score_and_boxes_by_detection_score(tmp_path):
    """Two people: a sure box with a wrong pose and a less sure box with the right pose.

    Ranked by detection score, the wrong pose comes first (a false positive at the top of the keypoint
    PR curve); ranked by pose score, the right one does. Box AP is the same either way.
    """
    gt = _ground_truth()
    gt['images'] = [im for im in gt['images'] if im['id'] == 1]
    gt['annotations'] = [a for a in gt['annotations'] if a['image_id'] == 1]
    right, wrong = _results_from(gt, None)
    wrong_keypoints = np.array(wrong['keypoints']).reshape(17, 3)
    wrong_keypoints[KEPT_SLOTS, 1] += 30.0                        # every joint 30 px too low
    wrong['keypoints'] = wrong_keypoints.reshape(-1).tolist()
    right.update(score=0.6, pose_score=0.5)
    wrong.update(score=0.9, pose_score=0.1)
    by_pose = evaluate_coco(gt, [right, wrong])
    without_pose = [{k: v for k, v in r.items() if k != 'pose_score'} for r in (right, wrong)]
    by_detection = evaluate_coco(gt, without_pose)
    np.testing.assert_allclose(by_detection['keypoints'].stats,
                               _reference_stats(tmp_path, gt, without_pose, 'keypoints'), atol=1e-6)
    assert by_pose['keypoints'].named['AP'] > by_detection['keypoints'].named['AP']
    assert by_pose['bbox'].named['AP'] == pytest.approx(by_detection['bbox'].named['AP'])
