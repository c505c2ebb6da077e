"""The pipeline's score calibration (inference/score_calibration.py) and its fitting.

The fitting lives in training/score_calibration.py.

References, independent of the code under test:
- the cues: boxes, joint scores and masks small enough to work out by hand (IoU, cover, shares);
- calibrate_scores: a hand-built calibration whose only weight is on one cue, so the expected order of
  the rows is known; every array must follow its row;
- fit_logistic: data drawn from a known logistic model (the fit must recover its weights);
- match_labels: COCO's greedy matching worked out by hand (a duplicate and a far box get 0);
- the command line: a real pipeline checkpoint (shipped imports, untrained heads) over the sample photos
  with ground truth written in COCO's format; the written checkpoint must carry a model the Predictor
  applies, and keep every weight.
Only shipped files (models/, samples/) are read; nothing from ../shared.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from occluded_ppe_ros.inference.backends.pipeline_backend import PipelineBackend
from occluded_ppe_ros.inference.predictor import Predictor
from occluded_ppe_ros.inference.score_calibration import (FEATURE_NAMES, calibrate_scores,
                                                          calibrated_probability, calibration_features,
                                                          check_calibration)

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / 'samples'

BOXES = np.array([[0, 0, 10, 20], [1, 0, 11, 20], [50, 50, 60, 70]], np.float64)   # A, its duplicate, C
SCORES = np.array([0.9, 0.6, 0.3])
JOINTS = np.array([[0.9, 0.5, 0.1, 0.2], [0.4, 0.35, 0.2, 0.1], [0.1, 0.1, 0.1, 0.1]])


def one_hot_calibration(feature: str, weight: float, bias: float = 0.0) -> dict:
    """P = sigmoid(weight * cue + bias) for one cue (mean 0, std 1), every other weight 0."""
    weights = [weight if name == feature else 0.0 for name in FEATURE_NAMES]
    return {'features': list(FEATURE_NAMES), 'mean': [0.0] * len(FEATURE_NAMES),
            'std': [1.0] * len(FEATURE_NAMES), 'weights': weights, 'bias': bias}


def test_cues_of_a_person_its_duplicate_and_a_lone_box_by_hand():
    masks = np.zeros((3, 4, 4))
    masks[0, :2] = 0.9          # half the cells above the cut
    masks[1, 0, 0] = 0.31       # one cell of 16, just above 0.3
    cues = calibration_features(BOXES, SCORES, JOINTS, masks, mask_threshold=0.3)
    assert cues.shape == (3, len(FEATURE_NAMES))
    by_name = {name: cues[:, index] for index, name in enumerate(FEATURE_NAMES)}
    logits = np.log(SCORES / (1 - SCORES))
    np.testing.assert_allclose(by_name['detector_logit'], logits)
    np.testing.assert_allclose(by_name['detector_logit_squared'], logits ** 2)
    np.testing.assert_allclose(by_name['max_joint_score'], [0.9, 0.4, 0.1])
    np.testing.assert_allclose(by_name['share_joints_above_0.3'], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(by_name['mask_coverage'], [0.5, 1 / 16, 0.0])
    # B overlaps A: intersection 9 x 20 = 180, union 200 + 200 - 180 = 220; 180 of B's 200 lie in A
    np.testing.assert_allclose(by_name['max_iou_above'], [0.0, 180 / 220, 0.0])
    np.testing.assert_allclose(by_name['max_iou_times_score_above'], [0.0, 0.9 * 180 / 220, 0.0])
    np.testing.assert_allclose(by_name['max_cover_by_above'], [0.0, 0.9, 0.0])


def test_cues_of_no_boxes_are_an_empty_table():
    cues = calibration_features(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 13)), np.zeros((0, 5, 5)), 0.3)
    assert cues.shape == (0, len(FEATURE_NAMES))


def contract_outputs() -> dict[str, np.ndarray]:
    """One image, four rows: A, its duplicate, C (valid, detector order), and an invalid row."""
    boxes = np.concatenate([BOXES, [[0, 0, 1, 1]]])[None].astype(np.float32)
    scores = np.array([[0.9, 0.6, 0.3, 0.2]], np.float32)
    keypoints = np.zeros((1, 4, 13, 3), np.float32)
    keypoints[0, :, :, 0] = np.arange(4)[:, None]          # x names the row
    return {'boxes': boxes, 'scores': scores, 'labels': np.zeros((1, 4), np.int64),
            'valid': np.array([[True, True, True, False]]), 'masks': np.zeros((1, 4, 3, 3), np.float32),
            'keypoints': keypoints, 'keypoint_occluded': np.zeros((1, 4, 13), np.float32)}


def test_calibrated_scores_rank_a_duplicate_below_a_lone_box_and_every_array_follows_its_row():
    outputs = contract_outputs()
    # a duplicate is no person: only the overlap with the boxes above counts
    calibration = one_hot_calibration('max_iou_above', -10.0, bias=1.0)
    calibrated = calibrate_scores(outputs, calibration, mask_threshold=0.3)
    assert set(calibrated) == set(outputs)
    duplicate = 1.0 / (1.0 + np.exp(-(1.0 - 10.0 * 180 / 220)))
    lone = 1.0 / (1.0 + np.exp(-1.0))
    # A and C tie at sigmoid(1) and keep their order; the duplicate falls below; the invalid row is last
    np.testing.assert_allclose(calibrated['scores'][0], [lone, lone, duplicate, 0.2], rtol=1e-6)
    np.testing.assert_array_equal(calibrated['keypoints'][0, :, 0, 0], [0, 2, 1, 3])
    np.testing.assert_array_equal(calibrated['boxes'][0], outputs['boxes'][0, [0, 2, 1, 3]])
    np.testing.assert_array_equal(calibrated['valid'][0], [True, True, True, False])
    assert calibrate_scores(outputs, {}, 0.3) is outputs


def test_cues_are_computed_in_detector_order_even_when_rows_arrive_otherwise():
    outputs = contract_outputs()
    swapped = {name: value[:, [1, 0, 2, 3]] for name, value in outputs.items()}
    calibration = one_hot_calibration('max_iou_above', -10.0, bias=1.0)
    straight = calibrate_scores(outputs, calibration, 0.3)
    np.testing.assert_allclose(calibrate_scores(swapped, calibration, 0.3)['scores'], straight['scores'])


@pytest.mark.parametrize('change, named', [
    ({'features': ['detector_logit']}, 'refit'),
    ({'mean': [0.0, 1.0]}, 'mean must be 8'),
    ({'std': [0.0] * 8}, 'std must be positive'),
    ({'weights': [float('nan')] * 8}, 'weights must be 8 finite'),
    ({'bias': 'x'}, None),
])
def test_a_broken_calibration_is_refused_naming_what_and_where(change, named):
    calibration = {**one_hot_calibration('detector_logit', 1.0), **change}
    with pytest.raises(ValueError, match=named or 'bias') as error:
        check_calibration(calibration, 'models/x.pt model_config')
    assert 'models/x.pt model_config' in str(error.value)
    from occluded_ppe_ros.model.pipeline import PipelineConfig

    with pytest.raises(ValueError, match='PipelineConfig.score_calibration'):
        PipelineConfig(score_calibration=calibration)


class OneImageDetector:
    def run(self, feeds):
        outputs = contract_outputs()
        return {name: outputs[name] for name in ('boxes', 'scores', 'labels', 'valid')}


class ConstantPose:
    """Every crop: joints at the box's top-left, all scored 0.5, half-covering masks."""

    def run(self, feeds):
        count = len(feeds['rois'])
        keypoints = np.zeros((count, 13, 3), np.float32)
        keypoints[..., :2] = feeds['rois'][:, None, 1:3]
        keypoints[..., 2] = 0.5
        masks = np.zeros((count, 3, 3), np.float32)
        masks[:, :1] = 1.0
        return {'keypoints': keypoints, 'keypoint_occluded': np.zeros((count, 13), np.float32),
                'masks': masks}


def test_predictor_over_a_calibrated_backend_reports_the_calibrated_scores_best_first():
    calibration = one_hot_calibration('max_iou_above', -10.0, bias=1.0)
    backend = PipelineBackend('stub', OneImageDetector(), ConstantPose(), (80, 80), ['person'], 3,
                              score_calibration=calibration)
    predictor = Predictor(backend, score_threshold=0.25)
    people = predictor.predict(np.zeros((80, 80, 3), np.uint8))
    # the invalid row and C (detector 0.3 >= 0.25: posed) ... C's calibrated score is sigmoid(1)
    lone = 1.0 / (1.0 + np.exp(-1.0))
    duplicate = 1.0 / (1.0 + np.exp(-(1.0 - 10.0 * 180 / 220)))
    assert [round(p.score, 6) for p in people] == [round(lone, 6), round(lone, 6)]
    assert duplicate < 0.25       # reported no more
    np.testing.assert_allclose([p.box for p in people], BOXES[[0, 2]], atol=1e-4)
    with pytest.raises(ValueError, match='stub pipeline score_calibration'):
        PipelineBackend('stub', OneImageDetector(), ConstantPose(), (80, 80), ['person'], 3,
                        score_calibration={'features': ['x']})


# ----------------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------------

def test_fit_logistic_recovers_the_weights_of_a_known_model():
    from occluded_ppe_training.score_calibration import fit_logistic

    rng = np.random.default_rng(0)
    features = np.c_[rng.normal(2.0, 3.0, 20000), rng.normal(-1.0, 0.5, 20000), np.full(20000, 4.0)]
    true_logit = 0.8 * features[:, 0] - 2.0 * features[:, 1] - 1.0
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true_logit))).astype(float)
    model = fit_logistic(features, labels, l2=1e-6)
    calibration = {'features': list(FEATURE_NAMES), **model}
    # in the standardised units the model keeps: w_std = w * std; the constant cue gets ~0
    np.testing.assert_allclose(model['weights'][:2], [0.8 * 3.0, -2.0 * 0.5], rtol=0.08)
    assert abs(model['weights'][2]) < 1e-6
    probe = np.array([[1.0, -1.0, 4.0], [5.0, 0.0, 4.0]])
    mean = np.asarray(model['mean'])
    std = np.asarray(model['std'])
    fitted = 1 / (1 + np.exp(-(((probe - mean) / std) @ np.asarray(model['weights']) + model['bias'])))
    expected = 1 / (1 + np.exp(-(0.8 * probe[:, 0] - 2.0 * probe[:, 1] - 1.0)))
    np.testing.assert_allclose(fitted, expected, atol=0.03)
    with pytest.raises(ValueError, match='both matched and unmatched'):
        fit_logistic(features[:10], np.ones(10))
    assert calibration['weights'] == model['weights']


def test_match_labels_is_cocos_greedy_matching():
    from occluded_ppe_training.score_calibration import match_labels

    truths = np.array([[0, 0, 10, 20], [50, 50, 60, 70]], np.float64)
    detections = np.array([[0, 0, 10, 20],        # A: takes truth 0
                           [1, 0, 11, 20],        # its duplicate: truth 0 taken -> 0
                           [52, 50, 62, 70],      # IoU 160 / 240 = 0.67 with truth 1 -> 1
                           [100, 100, 110, 120]])  # nowhere -> 0
    np.testing.assert_array_equal(match_labels(detections, truths), [1, 0, 1, 0])
    np.testing.assert_array_equal(match_labels(detections, np.zeros((0, 4))), [0, 0, 0, 0])


@pytest.fixture(scope='module')
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A real pipeline checkpoint: the shipped imports (NanoDet, Thunder), untrained heads."""
    import torch

    from occluded_ppe_ros.model.pipeline import PipelineConfig, build_pipeline, import_pretrained_parts
    from occluded_ppe_ros.model.pipeline_checkpoint import save_pipeline_checkpoint

    torch.manual_seed(0)
    net = build_pipeline(PipelineConfig())
    import_pretrained_parts(net)
    return save_pipeline_checkpoint(tmp_path_factory.mktemp('calibration') / 'net.pt', net.eval())


def write_coco_folder(folder: Path, people_per_image: dict[str, list[list[float]]]) -> Path:
    """COCO person-keypoints layout: images/ and annotations.json (boxes only need bbox, area, iscrowd)."""
    (folder / 'images').mkdir(parents=True)
    images, annotations = [], []
    for image_id, (name, boxes) in enumerate(people_per_image.items(), start=1):
        shutil.copy(SAMPLES / name, folder / 'images' / name)
        height, width = cv2.imread(str(SAMPLES / name)).shape[:2]
        images.append({'id': image_id, 'file_name': name, 'height': height, 'width': width})
        for x1, y1, x2, y2 in boxes:
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': 1,
                                'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1),
                                'iscrowd': 0, 'num_keypoints': 0, 'keypoints': [0] * 51})
    (folder / 'annotations.json').write_text(json.dumps({
        'images': images, 'annotations': annotations,
        'categories': [{'id': 1, 'name': 'person'}]}))
    return folder


def test_fit_command_writes_a_calibration_the_predictor_applies_and_keeps_the_weights(untrained_checkpoint,
                                                                                     tmp_path):
    import torch

    from occluded_ppe_ros.model.checkpoint import load_checkpoint
    from occluded_ppe_training.score_calibration import main

    # the ground truth: the people the untrained pipeline's own detector finds with score >= 0.5, so
    # both matched boxes and misses / duplicates exist
    uncalibrated = Predictor.from_checkpoint(untrained_checkpoint, backend='torch', score_threshold=0.5)
    truths = {}
    for name in ('000000000790.jpg', '000000129648.jpg'):
        rgb = np.ascontiguousarray(cv2.imread(str(SAMPLES / name))[:, :, ::-1])
        truths[name] = [[float(v) for v in p.box] for p in uncalibrated.predict(rgb)]
    assert sum(len(boxes) for boxes in truths.values()) >= 3
    data = write_coco_folder(tmp_path / 'coco', truths)
    out = tmp_path / 'calibrated.pt'
    assert main(['--checkpoint', str(untrained_checkpoint), '--data', str(data), '--split', 'all',
                 '--out', str(out)]) == 0
    written, original = load_checkpoint(out), load_checkpoint(untrained_checkpoint)
    calibration = written['model_config']['score_calibration']
    check_calibration(calibration)
    assert calibration['features'] == list(FEATURE_NAMES)
    fit = written['metrics']['score_calibration_fit']
    assert fit['split'] == 'all' and fit['matched'] == sum(len(b) for b in truths.values())
    assert fit['log_loss_calibrated'] < fit['log_loss_detector_score']
    assert written['model'].keys() == original['model'].keys()
    assert all(torch.equal(written['model'][key], original['model'][key]) for key in original['model'])
    # the Predictor applies it: scores are the model's probabilities of the cues, not the detector's
    calibrated = Predictor.from_checkpoint(out, backend='torch', score_threshold=0.0)
    assert calibrated.backend.score_calibration == calibration
    rgb = np.ascontiguousarray(cv2.imread(str(SAMPLES / '000000000790.jpg'))[:, :, ::-1])
    people = calibrated.predict(rgb)
    scores = [p.score for p in people]
    assert scores == sorted(scores, reverse=True)
    detector_scores = sorted((p.score for p in Predictor.from_checkpoint(
        untrained_checkpoint, backend='torch', score_threshold=0.0).predict(rgb)), reverse=True)
    assert len(people) == len(detector_scores) and not np.allclose(scores, detector_scores)
    assert calibrated_probability(np.zeros((1, len(FEATURE_NAMES))), calibration).shape == (1,)
