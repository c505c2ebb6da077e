"""`ppe eval model` / `ppe eval occlusion` on a tiny random-init checkpoint, and the backend parity report.

A random-init network detects nothing meaningful, so these tests check the plumbing against independent
references (the results file re-scored by pycocotools through `ppe eval coco`, parity by hand) rather
than the metric values.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_models import TINY_STRIDE8, tiny_model_config
import scipy.io

from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_training.evaluation.model_eval import compare_predictions, parity_failures

TINY_MODEL_CONFIG = tiny_model_config(TINY_STRIDE8, 'coco', 96, 128, max_detections=5)
KEPT_SLOTS = [0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]


@pytest.fixture(scope='module')
def fixture_dir(tmp_path_factory) -> Path:
    """A tiny checkpoint, 2 images (96 x 128) with one fully labelled person each, their COCO JSON."""
    import torch
    import yaml

    from occluded_ppe_ros.model.checkpoint import main as checkpoint_main

    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp('eval_model')
    (folder / 'tiny.yaml').write_text(yaml.safe_dump(TINY_MODEL_CONFIG))
    assert checkpoint_main(['--config', str(folder / 'tiny.yaml'), '--out', str(folder / 'tiny.pt'),
                            '--seed', '5']) == 0
    (folder / 'images').mkdir()
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for image_id in (1, 2):
        rgb = np.full((96, 128, 3), rng.integers(90, 200, 3), dtype=np.uint8)
        x, y, w, h = 20 + 40 * (image_id - 1), 10, 24, 70
        cv2.rectangle(rgb, (x, y), (x + w, y + h), (30, 30, 30), -1)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        assert cv2.imwrite(str(folder / 'images' / f'{image_id:04d}.png'), bgr)
        keypoints = []
        for slot in range(17):
            keypoints += [x + w / 2, y + 4 * slot + 2, 2]
        images.append({'id': image_id, 'file_name': f'{image_id:04d}.png', 'height': 96, 'width': 128})
        annotations.append({'id': image_id, 'image_id': image_id, 'category_id': 1, 'iscrowd': 0,
                            'bbox': [x, y, w, h], 'area': w * h, 'keypoints': keypoints, 'num_keypoints': 17,
                            'segmentation': [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    gt = {'images': images, 'annotations': annotations,
          'categories': [{'id': 1, 'name': 'person', 'keypoints': ['k'] * 17, 'skeleton': []}]}
    (folder / 'gt.json').write_text(json.dumps(gt))
    # the same people as a CityPersons anno_val.mat (1 x N cell array of structs), plus an image not evaluated
    cells = np.empty((1, 3), dtype=object)
    for index, name in enumerate(['0001.png', '0002.png', 'not_evaluated.png']):
        record = np.zeros((1, 1), dtype=[('cityname', 'O'), ('im_name', 'O'), ('bbs', 'O')])
        x, y, w, h = annotations[min(index, 1)]['bbox']
        record[0, 0]['cityname'], record[0, 0]['im_name'] = 'test', name
        record[0, 0]['bbs'] = np.array([[1, x, y, w, h, index, x, y, w, h]], dtype=np.float64)
        cells[0, index] = record
    scipy.io.savemat(str(folder / 'anno_val.mat'), {'anno_val_aligned': cells})
    return folder


def test_eval_model_onnxruntime_against_torch(fixture_dir, tmp_path):
    from occluded_ppe_ros.cli import main

    out = tmp_path / 'model'
    assert main(['eval', 'model', '--checkpoint', str(fixture_dir / 'tiny.pt'),
                 '--gt', str(fixture_dir / 'gt.json'), '--images', str(fixture_dir / 'images'),
                 '--backend', 'onnxruntime', '--compare-backend', 'torch', '--min-score', '0.0',
                 '--anno', str(fixture_dir / 'anno_val.mat'), '--out', str(out)]) == 0
    report = json.loads((out / 'metrics.json').read_text())
    parity = report['parity']
    assert parity['num_images'] == 2
    assert parity['num_reference'] > 0, 'the random-init model produced no detection to compare'
    assert parity['count_mismatches'] == 0
    assert parity['num_pairs'] == parity['num_reference']
    assert parity['max_box_diff'] < 0.05 and parity['max_keypoint_diff'] < 0.05
    assert parity['max_score_diff'] < 1e-3
    assert parity['ok'] and parity['failures'] == []
    for backend in ('onnxruntime', 'torch'):
        assert set(report[backend]['coco']) == {'keypoints', 'bbox', 'segm'}
        reasonable = report[backend]['citypersons']['Reasonable']
        assert reasonable['num_images'] == 2 and reasonable['num_regular_ground_truth'] == 2
        assert 0.0 <= reasonable['MR-2'] <= 1.0
        # the results file `ppe eval model` wrote, scored again by `ppe eval coco`: the same numbers
        rescored = tmp_path / f'rescored_{backend}'
        assert main(['eval', 'coco', '--gt', str(fixture_dir / 'gt.json'),
                     '--results', str(out / f'results_{backend}.json'), '--out', str(rescored)]) == 0
        again = json.loads((rescored / 'metrics.json').read_text())['coco']
        for iou_type, metrics in report[backend]['coco'].items():
            np.testing.assert_allclose(again[iou_type]['stats'], metrics['stats'], atol=1e-9)
    assert 'parity: onnxruntime vs torch' in (out / 'report.md').read_text()


def test_eval_occlusion_runs_every_level(fixture_dir, tmp_path):
    from occluded_ppe_ros.cli import main

    out = tmp_path / 'occlusion'
    assert main(['eval', 'occlusion', '--checkpoint', str(fixture_dir / 'tiny.pt'),
                 '--gt', str(fixture_dir / 'gt.json'), '--images', str(fixture_dir / 'images'),
                 '--backend', 'torch', '--levels', '0.5', '--out', str(out)]) == 0
    report = json.loads((out / 'metrics.json').read_text())
    assert sorted(report['levels'], key=int) == ['0', '50']
    assert report['num_instances'] == 2
    for level in report['levels'].values():
        assert len(level['stats']) == 10
    assert (out / 'pr_occlusion_levels.png').is_file()


def _pedestrian(box, shift=0.0, score=0.9, occluded=None) -> Pedestrian:
    x1, y1, x2, y2 = box
    return Pedestrian(box=np.array(box, np.float32) + shift, class_id=0, class_name='person', score=score,
                      mask=np.ones((y2 - y1, x2 - x1), bool), mask_origin=np.array([x1, y1]),
                      keypoints=np.full((13, 2), 5.0, np.float32) + shift,
                      keypoint_scores=np.full(13, 0.5, np.float32),
                      keypoint_occluded=np.zeros(13, bool) if occluded is None else occluded)


def test_parity_report_by_hand():
    """Image 1: two pedestrians on both sides, the candidate's shifted by 0.25 px and one score 0.02 lower,
    one joint flag flipped. Image 2: one reference pedestrian, none in the candidate (a count mismatch)."""
    flipped = np.zeros(13, bool)
    flipped[3] = True
    reference = {1: [_pedestrian((10, 10, 30, 60)), _pedestrian((50, 10, 70, 60), score=0.8)],
                 2: [_pedestrian((10, 10, 30, 60))]}
    candidate = {1: [_pedestrian((50, 10, 70, 60), shift=0.25, score=0.78, occluded=flipped),
                     _pedestrian((10, 10, 30, 60))],
                 2: []}
    report = compare_predictions(reference, candidate, {1: (80, 100), 2: (80, 100)})
    assert (report.num_images, report.num_reference, report.num_candidate) == (2, 3, 2)
    assert report.count_mismatches == 1 and report.num_pairs == 2
    assert report.max_box_diff == pytest.approx(0.25)
    assert report.max_keypoint_diff == pytest.approx(0.25)
    assert report.max_score_diff == pytest.approx(0.02, abs=1e-6)
    assert report.occlusion_flag_mismatches == 1
    assert report.min_mask_iou == pytest.approx(1.0)
    assert report.per_image == {1: (2, 2), 2: (1, 0)}


class _FixedPredictor:
    """Stands in for a backend: the same pedestrians for every image."""

    def __init__(self, pedestrians: list[Pedestrian]) -> None:
        self.pedestrians = pedestrians

    def predict(self, image: np.ndarray) -> list[Pedestrian]:
        return list(self.pedestrians)


@pytest.mark.parametrize('shift, score_drop, expected_code, expected_reasons', [
    (0.0, 0.0, 0, []),
    (0.3, 0.0, 1, ['boxes', 'joints']),
    (0.0, 0.05, 1, ['scores']),
], ids=['agree', 'moved', 'rescored'])
def test_compare_backend_is_a_gate(fixture_dir, tmp_path, monkeypatch, capsys, shift, score_drop,
                                   expected_code, expected_reasons):
    """`--compare-backend` exits 1 with one line naming each pair's difference beyond the tolerance."""
    from occluded_ppe_ros.cli import main
    from occluded_ppe_training.evaluation import model_eval

    reference = [_pedestrian((20, 10, 44, 80))]
    candidates = {'torch': reference,
                  'onnxruntime': [_pedestrian((20, 10, 44, 80), shift=shift, score=0.9 - score_drop)]}
    monkeypatch.setattr(model_eval, 'load_predictor',
                        lambda checkpoint, backend, device, min_score: _FixedPredictor(candidates[backend]))
    out = tmp_path / 'gate'
    code = main(['eval', 'model', '--checkpoint', str(fixture_dir / 'tiny.pt'),
                 '--gt', str(fixture_dir / 'gt.json'), '--images', str(fixture_dir / 'images'),
                 '--backend', 'onnxruntime', '--compare-backend', 'torch', '--out', str(out)])
    assert code == expected_code
    errors = capsys.readouterr().err.strip().splitlines()
    parity = json.loads((out / 'metrics.json').read_text())['parity']
    assert parity['ok'] == (expected_code == 0)
    if expected_code == 0:
        assert errors == [] and parity['failures'] == []
        return
    (line,) = [e for e in errors if 'PARITY' in e]
    assert line.startswith('ppe eval model: PARITY FAILED: onnxruntime vs torch: ')
    named = [what for what in ('boxes', 'joints', 'scores', 'joint scores', 'detection counts')
             if f'{what} differ' in line]
    assert named == expected_reasons, line
    assert 'tolerance' in line
    assert 'FAILED' in (out / 'report.md').read_text()


def test_parity_failures_forgive_only_threshold_flips_in_counts():
    """A detection one run keeps and the other does not is a failure unless it scores within the score
    tolerance of the threshold (the other run scored it just below)."""
    reference = {1: [_pedestrian((10, 10, 30, 60)), _pedestrian((50, 10, 70, 60), score=0.3004)]}
    candidate = {1: [_pedestrian((10, 10, 30, 60))]}
    report = compare_predictions(reference, candidate, {1: (80, 100)})
    assert report.max_unpaired_score == pytest.approx(0.3004)
    assert parity_failures(report, score_threshold=0.3, score_tolerance=1e-3) == []
    (reason,) = parity_failures(report, score_threshold=0.25, score_tolerance=1e-3)
    assert reason.startswith('detection counts differ on 1 of 1 images (2 vs 1 detections')
    nothing = compare_predictions({1: []}, {1: [_pedestrian((10, 10, 30, 60), score=0.9)]}, {1: (80, 100)})
    (reason,) = parity_failures(nothing, score_threshold=0.05)
    assert 'detection counts differ' in reason and '0.9' in reason
    nan = compare_predictions(reference, {1: [_pedestrian((10, 10, 30, 60), score=float('nan')),
                                              _pedestrian((50, 10, 70, 60), score=0.3004)]}, {1: (80, 100)})
    assert any(r.startswith('scores differ by up to nan') for r in parity_failures(nan, 0.3))
