"""CityPersons MR^-2 against a small example worked out by hand, from a .mat in the official layout."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from occluded_ppe_training.evaluation import citypersons as cp

# bbs rows: class, x1, y1, w, h, instance id, x1_vis, y1_vis, w_vis, h_vis
IMAGE_1 = np.array([
    [1, 100, 100, 40, 100, 1001, 100, 100, 40, 100],   # A: pedestrian, h 100, visibility 1.0
    [1, 300, 100, 40, 100, 1002, 300, 100, 40, 40],    # B: pedestrian, h 100, visibility 0.4
    [0, 500, 50, 100, 100, 0, 500, 50, 100, 100],      # C: ignore region
    [1, 700, 100, 16, 40, 1003, 700, 100, 16, 40],     # D: pedestrian, h 40, visibility 1.0
], dtype=np.float64)
IMAGE_2 = np.array([
    [1, 100, 100, 50, 120, 2001, 100, 100, 50, 120],   # E: pedestrian, never detected
    [2, 900, 100, 40, 100, 2002, 900, 100, 40, 100],   # F: rider -> ignore region
], dtype=np.float64)
NAMES = ['frankfurt_000000_000001_leftImg8bit.png', 'frankfurt_000000_000002_leftImg8bit.png',
         'munster_000000_000003_leftImg8bit.png']
DETECTIONS = [
    {'image_id': 1, 'bbox': [102, 102, 40, 100], 'score': 0.90},   # d1 -> A
    {'image_id': 1, 'bbox': [510, 60, 40, 80], 'score': 0.80},     # d2 inside C (IoU 0.32, ioa 1)
    {'image_id': 1, 'bbox': [300, 100, 40, 100], 'score': 0.70},   # d3 -> B
    {'image_id': 2, 'bbox': [400, 400, 30, 35], 'score': 0.97},    # d4: nothing there, h 35
    {'image_id': 2, 'bbox': [600, 100, 40, 100], 'score': 0.95},   # d5: nothing there
    {'image_id': 1, 'bbox': [700, 100, 16, 40], 'score': 0.50},    # d6 -> D, h 40
    {'image_id': 2, 'bbox': [905, 110, 30, 80], 'score': 0.99},    # d7 inside the rider F
]


def write_anno_mat(path, bbs_per_image=(IMAGE_1, IMAGE_2, np.zeros((0, 10))), names=NAMES):
    """anno_val.mat as the official file: `anno_val_aligned`, a 1 x N cell array of 1 x 1 structs."""
    cells = np.empty((1, len(bbs_per_image)), dtype=object)
    for i, (bbs, name) in enumerate(zip(bbs_per_image, names)):
        record = np.zeros((1, 1), dtype=[('cityname', 'O'), ('im_name', 'O'), ('bbs', 'O')])
        record[0, 0]['cityname'] = name.split('_')[0]
        record[0, 0]['im_name'] = name
        record[0, 0]['bbs'] = bbs.astype(np.uint16) if len(bbs) else bbs
        cells[0, i] = record
    scipy.io.savemat(str(path), {'anno_val_aligned': cells})
    return path


EXPECTED = {
    # regular GT A, E; d4 dropped (h 35 < 50 / 1.25); d2 (C), d3 (B, vis 0.4), d6 (D, h 40), d7 (rider)
    # ignored. Kept in score order: d5 FP, d1 TP; 3 images -> FPPI 1/3 at both points, recall 0 then 1/2.
    # References 0.01 .. 0.3162 (7) lie below FPPI 1/3: recall 0, miss 1. 0.5623 and 1: miss 1/2.
    'Reasonable': (0.5 ** (2 / 9), [1.0] * 7 + [0.5] * 2),
    # regular GT B only (0.2 <= 0.4 <= 0.65); A, E (visibility 1) and D (h 40) ignored. d5 FP, d3 TP:
    # miss 1 at 7 references, 0 (floored to 1e-10 in the log) at 2.
    'Heavy': (1e-10 ** (2 / 9), [1.0] * 7 + [0.0] * 2),
    # regular A, B, E; D ignored (h 40) but d6 (h 40 >= 40) is kept and falls on it. d5 FP, d1 TP, d3 TP:
    # FPPI 1/3 throughout, recall 2/3 at the end: miss 1 at 7 references, 1/3 at 2.
    'R+HO': ((1 / 3) ** (2 / 9), [1.0] * 7 + [1 / 3] * 2),
    # regular A, B, D, E; height limit 20 / 1.25 = 16 keeps d4. d4 FP, d5 FP (FPPI 2/3), d1, d3, d6 TP:
    # FPPI <= 0.5623 only at the first point (recall 0): miss 1 at 8 references, 1/4 at FPPI 1.
    'All': (0.25 ** (1 / 9), [1.0] * 8 + [0.25]),
}


def test_hand_worked_miss_rates(tmp_path):
    """The example above (3 images, the third empty), every setup, against the hand computation.

    Image 1: A (pedestrian, h 100, vis 1), B (pedestrian, h 100, vis 0.4), C (ignore region),
    D (pedestrian, h 40). Image 2: E (pedestrian, missed), F (rider = ignore). Image 3: nothing.
    d2 lies inside C: its IoU with C is 0.32, but ignore regions use intersection / detection area = 1,
    so it is dropped rather than a false positive. d4 (h 35) is removed by the 1.25 height margin in the
    h >= 50 setups (35 < 40) and kept in All (35 >= 16); d6 (h 40 = 50 / 1.25) is kept everywhere.
    """
    images = cp.load_annotations(write_anno_mat(tmp_path / 'anno_val.mat'))
    assert [im.image_id for im in images] == [1, 2, 3]
    assert [im.im_name for im in images] == NAMES
    np.testing.assert_allclose(images[0].visibility, [1.0, 0.4, 1.0, 1.0])
    np.testing.assert_array_equal(images[1].regular, [True, False])
    results = cp.evaluate_citypersons(images, DETECTIONS)
    for name, (mr2, sampled) in EXPECTED.items():
        assert results[name].mr2 == pytest.approx(mr2, rel=1e-9), name
        np.testing.assert_allclose(results[name].miss_rate_at_references, sampled, atol=1e-12, err_msg=name)
        assert results[name].num_images == 3
    assert [results[n].num_regular for n in EXPECTED] == [2, 1, 3, 4]


def test_ignore_regions_use_the_detection_area():
    gt = np.array([[0, 0, 10, 10], [100, 100, 10, 10]], dtype=float)
    det = np.array([[5, 0, 10, 10]], dtype=float)   # half inside each way
    overlap = cp.overlaps(det, gt, np.array([False, False]))
    assert overlap[0, 0] == pytest.approx(50 / 150)
    assert cp.overlaps(det, gt, np.array([True, False]))[0, 0] == pytest.approx(50 / 100)
    assert overlap[0, 1] == 0.0


def test_regular_match_wins_over_ignore_and_gt_is_taken_once():
    """Two detections on one pedestrian that also sits in an ignore region: the first is a TP, the
    second cannot take the pedestrian again and falls on the ignore region (dropped, not an FP)."""
    image = cp.ImageGroundTruth(1, 'a.png', np.array([[0, 0, 40, 100], [0, 0, 200, 200]], dtype=float),
                                np.array([1.0, 1.0]), np.array([True, False]))
    dets = np.array([[0, 0, 40, 100, 0.9], [1, 1, 40, 100, 0.8], [150, 0, 40, 100, 0.7]], dtype=float)
    dets = np.vstack([dets, [[300, 0, 40, 100, 0.6]]])
    match = cp.match_image(image, dets, cp.SETUPS['Reasonable'])
    np.testing.assert_array_equal(match.true_positive, [True, False, False, False])
    np.testing.assert_array_equal(match.ignored, [False, True, True, False])
    assert match.num_regular == 1


def test_log_average_miss_rate_reference_sampling():
    fppi = np.array([0.005, 0.02, 0.2, 2.0])
    recall = np.array([0.1, 0.4, 0.6, 0.9])
    mr2, sampled = cp.log_average_miss_rate(fppi, recall)
    # refs 0.01 -> 0.005 (0.1); 0.0178 -> 0.005; 0.0316..0.1778 -> 0.02 (0.4); 0.3162..1 -> 0.2 (0.6)
    expected = np.array([0.9, 0.9, 0.6, 0.6, 0.6, 0.6, 0.4, 0.4, 0.4])
    np.testing.assert_allclose(sampled, expected)
    assert mr2 == pytest.approx(np.exp(np.log(expected).mean()))


def test_coco_style_annotations_and_im_name_detections_agree(tmp_path):
    images = cp.load_annotations(write_anno_mat(tmp_path / 'anno_val.mat'))
    coco = {'images': [{'id': im.image_id, 'im_name': im.im_name, 'height': 1024, 'width': 2048}
                       for im in images],
            'annotations': [], 'categories': [{'id': 1, 'name': 'pedestrian'}]}
    for im, bbs in zip(images, (IMAGE_1, IMAGE_2)):
        for row in bbs:
            coco['annotations'].append({'id': len(coco['annotations']) + 1, 'image_id': im.image_id,
                                        'category_id': 1, 'bbox': row[1:5].tolist(),
                                        'vis_bbox': row[6:10].tolist(), 'ignore': int(row[0] != 1)})
    (tmp_path / 'val_gt.json').write_text(json.dumps(coco))
    from_json = cp.load_annotations(tmp_path / 'val_gt.json')
    by_name = [{'im_name': NAMES[d['image_id'] - 1], 'bbox': d['bbox'], 'score': d['score']}
               for d in DETECTIONS]
    results = cp.evaluate_citypersons(from_json, by_name)
    for name, (mr2, _) in EXPECTED.items():
        assert results[name].mr2 == pytest.approx(mr2, rel=1e-9), name


def test_bad_detection_names_the_problem(tmp_path):
    images = cp.load_annotations(write_anno_mat(tmp_path / 'anno_val.mat'))
    with pytest.raises(ValueError, match='image_id 9'):
        cp.evaluate_citypersons(images, [{'image_id': 9, 'bbox': [0, 0, 1, 1], 'score': 1.0}])
    with pytest.raises(ValueError, match='nope.png'):
        cp.evaluate_citypersons(images, [{'im_name': 'nope.png', 'bbox': [0, 0, 1, 1], 'score': 1.0}])


def test_ppe_eval_citypersons_cli(tmp_path):
    from occluded_ppe_ros.cli import main

    anno = write_anno_mat(tmp_path / 'anno_val.mat')
    (tmp_path / 'det.json').write_text(json.dumps(DETECTIONS))
    out = tmp_path / 'out'
    assert main(['eval', 'citypersons', '--anno', str(anno), '--detections', str(tmp_path / 'det.json'),
                 '--out', str(out)]) == 0
    written = json.loads((out / 'metrics.json').read_text())['citypersons']
    for name, (mr2, _) in EXPECTED.items():
        assert written[name]['MR-2'] == pytest.approx(mr2, rel=1e-9)
    assert (out / 'mr_fppi.png').stat().st_size > 1000
    assert 'Reasonable' in (out / 'report.md').read_text()
