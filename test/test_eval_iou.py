"""Instance and pixel IoU per class against masks computed by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from occluded_ppe_training.evaluation.instance_iou import evaluate_instance_iou

H, W = 10, 12


def _mask(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[rows, cols] = 1
    return mask


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [H, W], 'counts': rle['counts'].decode('ascii')}


def _case() -> tuple[dict, list[dict]]:
    """Image 1: persons P1 (rows 0-4, cols 0-3: 20 px) and P2 (rows 5-9, cols 5-9: 25 px), rider R1
    (rows 0-3, cols 8-11: 16 px). Image 2: person P3 (rows 0-2, cols 0-3: 12 px), never found, and a crowd
    region (rows 5-9, cols 0-5) with a person prediction inside it.

    Predictions (score >= 0.5 unless said): person pa rows 0-4 cols 0-4 (25 px: IoU with P1 20/25), its
    duplicate pa' (score 0.7), pb rows 6-9 cols 5-9 (20 px: IoU with P2 20/25), pc everything at score
    0.3 (dropped); rider ra rows 0-1 cols 8-11 (8 px: IoU with R1 8/16); image 2: person pd rows 6-8 cols
    1-3 (9 px, inside the crowd region).
    """
    gt_masks = [(1, 1, _mask(slice(0, 5), slice(0, 4)), 0), (2, 1, _mask(slice(5, 10), slice(5, 10)), 0),
                (3, 2, _mask(slice(0, 4), slice(8, 12)), 0), (4, 1, _mask(slice(0, 3), slice(0, 4)), 0),
                (5, 1, _mask(slice(5, 10), slice(0, 6)), 1)]
    images = [1, 1, 1, 2, 2]
    annotations = []
    for (ann_id, category, mask, crowd), image_id in zip(gt_masks, images):
        rows, cols = np.nonzero(mask)
        annotations.append({'id': ann_id, 'image_id': image_id, 'category_id': category, 'iscrowd': crowd,
                            'segmentation': _rle(mask), 'area': int(mask.sum()),
                            'bbox': [int(cols.min()), int(rows.min()),
                                     int(np.ptp(cols) + 1), int(np.ptp(rows) + 1)]})
    gt = {'images': [{'id': i, 'file_name': f'{i}.png', 'height': H, 'width': W} for i in (1, 2)],
          'annotations': annotations,
          'categories': [{'id': 1, 'name': 'person'}, {'id': 2, 'name': 'rider'}]}
    predictions = [
        (1, 1, _mask(slice(0, 5), slice(0, 5)), 0.9),
        (1, 1, _mask(slice(0, 5), slice(0, 5)), 0.7),
        (1, 1, _mask(slice(6, 10), slice(5, 10)), 0.8),
        (1, 1, np.ones((H, W), np.uint8), 0.3),
        (1, 2, _mask(slice(0, 2), slice(8, 12)), 0.6),
        (2, 1, _mask(slice(6, 9), slice(1, 4)), 0.95),
    ]
    results = [{'image_id': i, 'category_id': c, 'segmentation': _rle(m), 'score': s, 'bbox': [0, 0, 1, 1]}
               for i, c, m, s in predictions]
    return gt, results


def test_hand_computed_instance_and_pixel_iou():
    gt, results = _case()
    per_class = evaluate_instance_iou(gt, results, score_threshold=0.5)
    person, rider = per_class['person'], per_class['rider']
    # instances P1 0.8 (pa; its duplicate cannot take P2 better than pb), P2 0.8 (pb), P3 0 -> mean 1.6 / 3
    assert person.num_instances == 3
    assert person.instance_iou == pytest.approx((0.8 + 0.8 + 0.0) / 3)
    # pixels, image 1: G = P1 | P2 (45), P = pa | pb (45), G & P = 20 + 20 -> union 50;
    # image 2: G = P3 (12), P = pd (9, all inside the crowd region, not counted) -> union 12
    assert (person.intersection, person.union) == (40, 62)
    assert person.pixel_iou == pytest.approx(40 / 62)
    assert person.num_predictions == 4
    assert rider.instance_iou == pytest.approx(0.5)
    assert (rider.intersection, rider.union) == (8, 16)


def test_threshold_changes_which_predictions_count():
    gt, results = _case()
    everything = evaluate_instance_iou(gt, results, score_threshold=0.0)['person']
    # pc (all 120 px of image 1) joins: P = whole image 1, G & P = 45, union 120; image 2 unchanged
    assert (everything.intersection, everything.union) == (45 + 0, 120 + 12)
    # pc is the best partner of nobody (IoU 20/120 < 0.8), so the instance IoU stays
    assert everything.instance_iou == pytest.approx(1.6 / 3)


def test_mask_of_the_wrong_size_is_a_clear_error():
    gt, results = _case()
    results[0]['segmentation'] = {'size': [5, 5], 'counts': results[0]['segmentation']['counts']}
    with pytest.raises(ValueError, match=r'size \[5, 5\]'):
        evaluate_instance_iou(gt, results)


def test_ppe_eval_iou_cli(tmp_path):
    from occluded_ppe_ros.cli import main

    gt, results = _case()
    (tmp_path / 'gt.json').write_text(json.dumps(gt))
    (tmp_path / 'res.json').write_text(json.dumps(results))
    assert main(['eval', 'iou', '--gt', str(tmp_path / 'gt.json'), '--results', str(tmp_path / 'res.json'),
                 '--out', str(tmp_path / 'out')]) == 0
    written = json.loads((tmp_path / 'out' / 'metrics.json').read_text())['instance_iou']
    assert written['person']['pixel_iou'] == pytest.approx(40 / 62)
    assert written['rider']['instance_iou'] == pytest.approx(0.5)


def _fake_cityscapes(root) -> tuple:
    """One 64 x 48 Cityscapes image with an instanceIds map and its anno_val.mat: a pedestrian (24001),
    a rider given by its bare index 1 (-> 25001), an ignore region, a pedestrian whose id is absent."""
    import cv2
    import scipy.io

    name = 'aachen_000000_000019_leftImg8bit.png'
    (root / 'leftImg8bit' / 'val' / 'aachen').mkdir(parents=True)
    (root / 'gtFine' / 'val' / 'aachen').mkdir(parents=True)
    assert cv2.imwrite(str(root / 'leftImg8bit' / 'val' / 'aachen' / name), np.zeros((48, 64, 3), np.uint8))
    ids = np.full((48, 64), 7, np.uint16)
    ids[5:31, 5:16] = 24001
    ids[10:41, 30:41] = 25001
    ids_file = root / 'gtFine' / 'val' / 'aachen' / 'aachen_000000_000019_gtFine_instanceIds.png'
    assert cv2.imwrite(str(ids_file), ids)
    bbs = np.array([[1, 5, 5, 11, 30, 24001, 5, 5, 11, 26],
                    [2, 30, 10, 11, 31, 1, 30, 10, 11, 31],
                    [0, 50, 0, 10, 10, 0, 50, 0, 10, 10],
                    [1, 45, 20, 5, 20, 24005, 45, 20, 5, 20]], dtype=np.float64)
    record = np.zeros((1, 1), dtype=[('cityname', 'O'), ('im_name', 'O'), ('bbs', 'O')])
    record[0, 0]['cityname'], record[0, 0]['im_name'], record[0, 0]['bbs'] = 'aachen', name, bbs
    cells = np.empty((1, 1), dtype=object)
    cells[0, 0] = record
    scipy.io.savemat(str(root / 'anno_val.mat'), {'anno_val_aligned': cells})
    return root / 'anno_val.mat', ids


def test_citypersons_instance_ground_truth_from_gtfine(tmp_path):
    from occluded_ppe_ros.cli import main

    anno, ids = _fake_cityscapes(tmp_path / 'cityscapes')
    assert main(['eval', 'citypersons-gt', '--anno', str(anno), '--root', str(tmp_path / 'cityscapes'),
                 '--out', str(tmp_path / 'gt.json')]) == 0
    gt = json.loads((tmp_path / 'gt.json').read_text())
    assert gt['images'] == [{'id': 1, 'file_name': 'aachen/aachen_000000_000019_leftImg8bit.png',
                             'im_name': 'aachen_000000_000019_leftImg8bit.png', 'height': 48, 'width': 64}]
    instances = [a for a in gt['annotations'] if not a['iscrowd']]
    assert [(a['category_id'], a['area']) for a in instances] == [(1, 26 * 11), (2, 31 * 11)]
    for ann, value in zip(instances, (24001, 25001)):
        decoded = mask_utils.decode({'size': ann['segmentation']['size'],
                                     'counts': ann['segmentation']['counts'].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), ids == value)
    assert instances[0]['vis_ratio'] == pytest.approx(26 / 30)
    crowd = [a for a in gt['annotations'] if a['iscrowd']]
    assert [a.get('mask_missing') for a in crowd] == [False, True]
    # the ground-truth masks as predictions: IoU 1 for both classes
    results = [{'image_id': 1, 'category_id': a['category_id'], 'segmentation': a['segmentation'],
                'score': 0.9, 'bbox': a['bbox']} for a in instances]
    per_class = evaluate_instance_iou(gt, results)
    assert per_class['pedestrian'].instance_iou == 1.0 and per_class['pedestrian'].pixel_iou == 1.0
    assert per_class['rider'].instance_iou == 1.0 and per_class['rider'].num_instances == 1
