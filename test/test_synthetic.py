"""The synthetic occluded-pedestrian generator: determinism, truth consistent with masks, COCO format."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from occluded_ppe_ros.skeleton import coco17_to_13
from occluded_ppe_training.datasets.coco import CocoPersonKeypoints
from occluded_ppe_training.datasets.synthetic import SynthConfig, generate_dataset, image_rng, render_scene

# pycocotools' decoder trips a numpy 2 DeprecationWarning on every mask; not ours to fix.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')
CONFIG = SynthConfig(width=160, height=128)
NUM_IMAGES = 12


@pytest.fixture(scope='module')
def synthetic_set(tmp_path_factory):
    out = tmp_path_factory.mktemp('synthetic')
    generate_dataset(out, NUM_IMAGES, seed=11, config=CONFIG)
    return out, json.loads((out / 'annotations.json').read_text())


def test_deterministic_given_the_seed(synthetic_set, tmp_path):
    out, data = synthetic_set
    generate_dataset(tmp_path / 'again', 3, seed=11, config=CONFIG)  # fewer images: same first images
    again = json.loads((tmp_path / 'again' / 'annotations.json').read_text())
    assert again['images'] == data['images'][:3]
    assert again['annotations'] == [a for a in data['annotations'] if a['image_id'] <= 3]
    for index in range(3):
        name = f'{index:06d}.jpg'
        assert (tmp_path / 'again' / 'images' / name).read_bytes() == (out / 'images' / name).read_bytes()
    other_image, _ = render_scene(image_rng(12, 0), CONFIG)
    same_image, _ = render_scene(image_rng(11, 0), CONFIG)
    again_image, _ = render_scene(image_rng(11, 0), CONFIG)
    assert np.array_equal(same_image, again_image) and not np.array_equal(same_image, other_image)


def test_visibility_flags_agree_with_the_masks(synthetic_set):
    _, data = synthetic_set
    occluded = visible = 0
    for annotation in data['annotations']:
        visible_mask = mask_utils.decode(annotation['segmentation'])
        amodal_mask = mask_utils.decode(annotation['amodal_mask'])
        assert not (visible_mask & ~amodal_mask.astype(bool)).any()
        keypoints = coco17_to_13(np.array(annotation['keypoints'], np.float64))
        flags = annotation['keypoints_occluded']
        assert len(flags) == 13 and annotation['num_keypoints'] == 13
        for (x, y, v), flag in zip(keypoints, flags):
            row, column = int(np.floor(y)), int(np.floor(x))
            assert amodal_mask[row, column] == 1                # every joint lies on the person's shape
            if v == 1:
                assert flag == 1 and visible_mask[row, column] == 0   # covered by something in front
                occluded += 1
            else:
                assert v == 2 and flag == 0 and visible_mask[row, column] == 1
                visible += 1
        # bbox = the amodal mask's extent; area = the visible mask's pixel count.
        rows, columns = np.flatnonzero(amodal_mask.any(axis=1)), np.flatnonzero(amodal_mask.any(axis=0))
        assert annotation['bbox'] == [columns[0], rows[0], columns[-1] + 1 - columns[0],
                                      rows[-1] + 1 - rows[0]]
        assert annotation['area'] == int(visible_mask.sum())
        eyes_and_ears = np.array(annotation['keypoints']).reshape(17, 3)[1:5]
        assert not eyes_and_ears.any()
    assert occluded > 0 and visible > occluded


def test_people_are_large_enough_and_inside_the_image(synthetic_set):
    _, data = synthetic_set
    per_image = np.bincount([a['image_id'] for a in data['annotations']], minlength=NUM_IMAGES + 1)[1:]
    assert per_image.min() >= 1 and per_image.max() <= CONFIG.max_people
    for annotation in data['annotations']:
        x, y, w, h = annotation['bbox']
        assert x >= 0 and y >= 0 and x + w <= CONFIG.width and y + h <= CONFIG.height
        assert h >= 0.3 * CONFIG.height


def test_loads_with_pycocotools_and_scores_itself_perfectly(synthetic_set):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out, data = synthetic_set
    ground_truth = COCO(str(out / 'annotations.json'))
    assert len(ground_truth.getImgIds()) == NUM_IMAGES
    results = [{'image_id': a['image_id'], 'category_id': 1, 'keypoints': a['keypoints'], 'score': 1.0}
               for a in data['annotations']]
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), 'keypoints')
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_loads_through_the_coco_dataset(synthetic_set):
    out, data = synthetic_set
    dataset = CocoPersonKeypoints(out / 'annotations.json', out / 'images')
    assert len(dataset) == NUM_IMAGES and not dataset.skipped
    image, target = dataset[0]
    assert image.shape == (3, CONFIG.height, CONFIG.width)
    annotations = [a for a in data['annotations'] if a['image_id'] == 1]
    assert len(target['boxes']) == len(annotations)
    for i, annotation in enumerate(annotations):
        expected = coco17_to_13(np.array(annotation['keypoints'], np.float32))
        np.testing.assert_array_equal(target['keypoints'][i].numpy(), expected)
        np.testing.assert_array_equal(target['masks'][i].numpy(),
                                      mask_utils.decode(annotation['segmentation']))
        occluded = (target['keypoints'][i, :, 2] == 1).numpy().astype(int)
        assert occluded.tolist() == annotation['keypoints_occluded']


def test_cli_writes_a_set(tmp_path, capsys):
    from occluded_ppe_ros.cli import main

    assert main(['synth', '--out', str(tmp_path), '--num-images', '2', '--seed', '3', '--size', '96x64']) == 0
    data = json.loads((tmp_path / 'annotations.json').read_text())
    assert [(i['width'], i['height']) for i in data['images']] == [(96, 64)] * 2
    assert (tmp_path / 'images' / '000001.jpg').is_file()
    assert 'wrote 2 images' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(['synth', '--out', str(tmp_path), '--size', '96by64'])
    with pytest.raises(SystemExit, match='back-view-probability must be in \\[0, 1\\], got 1.5'):
        main(['synth', '--out', str(tmp_path), '--num-images', '1', '--back-view-probability', '1.5'])
    with pytest.raises(ValueError, match='back_view_probability must be in \\[0, 1\\], got -0.1'):
        SynthConfig(back_view_probability=-0.1)


def _shoulder_order(config: SynthConfig, images: int) -> np.ndarray:
    """Per rendered person: (left shoulder x - right shoulder x) / person height; < 0 = seen from behind."""
    orders = []
    for index in range(images):
        _, truths = render_scene(image_rng(21, index), config)
        for truth in truths:
            height = truth.box[3] - truth.box[1]
            orders.append((truth.keypoints[1, 0] - truth.keypoints[2, 0]) / height)
    return np.array(orders)


def test_back_view_probability_sets_the_share_of_people_seen_from_behind():
    # Seen from behind (yaw 2.1..pi), the person's left shoulder is drawn on the image left, by at least
    # 2 x 0.095 x cos(2.1) ~ 0.09 body heights; front views put it on the image right.
    plain = {'width': 160, 'height': 128, 'max_people': 3, 'occluder_probability': 0.0}
    behind = _shoulder_order(SynthConfig(back_view_probability=1.0, **plain), 12)
    assert len(behind) >= 12 and (behind < -0.05).all()
    mixed = _shoulder_order(SynthConfig(back_view_probability=0.3, **plain), 40)
    assert 0.15 < (mixed < -0.05).mean() < 0.5 and (mixed > 0.05).mean() > 0.25


def test_a_face_turned_to_the_camera_shows_skin_and_eyes_below_the_hair():
    from occluded_ppe_training.datasets import synthetic

    for yaw, face_expected in ((0.0, True), (math.pi, False)):
        rng = np.random.default_rng(5)
        body = synthetic._pose_body(rng, back_view_probability=0.0)
        body.yaw = yaw
        painter = synthetic._PersonPainter(rng, body)
        canvas, _, _ = painter.draw(400.0, np.array([200.0, 220.0]), 480, 400)
        centre_x, centre_y = 200.0 + body.head[0] * 400.0, 220.0 + body.head[1] * 400.0
        eye_row = canvas[int(centre_y), int(centre_x - 0.6 * body.head_radius * 400):
                         int(centre_x + 0.6 * body.head_radius * 400)]
        skin = (eye_row == painter.skin).all(axis=1).mean()
        eyes = (eye_row == (30, 20, 20)).all(axis=1).any()
        hair = (eye_row == painter.hair).all(axis=1).mean()
        if face_expected:   # the eye line is face: skin, with the eyes on it
            assert skin > 0.3 and eyes and hair == 0.0
        else:               # from behind: hair only
            assert hair == 1.0 and not eyes
