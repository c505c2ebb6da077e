"""COCO and CityPersons loaders against hand-written fixtures in the real file formats."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from pycocotools import mask as mask_utils

from occluded_ppe_training.datasets.citypersons import CityPersons, read_annotation_file
from occluded_ppe_training.datasets.coco import CocoPersonKeypoints
from occluded_ppe_training.datasets.common import TARGET_KEYS, DatasetRecordError

# pycocotools' decoder trips a numpy 2 DeprecationWarning on every mask; not ours to fix.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')
WIDTH, HEIGHT = 40, 30


# ----------------------------------------------------------------------------------------------
# COCO fixture: 3 images; image 1 has a polygon person with keypoints, an uncompressed-RLE person
# without keypoints and a crowd region; image 2 a compressed-RLE person; image 3 is a negative.

def _coco_keypoints() -> list[float]:
    """17 COCO joints: joint j at (j + 3, j + 5) with v = 2, except joint 6 (right_shoulder) v = 1
    and joints 15, 16 (ankles) not labelled."""
    values = []
    for j in range(17):
        v = 0 if j in (15, 16) else (1 if j == 6 else 2)
        values += [float(j + 3), float(j + 5), v] if v else [0.0, 0.0, 0]
    return values


def _rect_mask(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order='F')
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {'counts': counts, 'size': [HEIGHT, WIDTH]}


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {'counts': rle['counts'].decode('ascii'), 'size': [HEIGHT, WIDTH]}


def _write_coco(root: Path, mutate=None) -> tuple[Path, Path]:
    image_dir = root / 'images'
    image_dir.mkdir(parents=True, exist_ok=True)
    for index in (1, 2, 3):
        image = np.full((HEIGHT, WIDTH, 3), 40 * index, np.uint8)
        image[0, 0] = (255, 0, 0)  # BGR blue at the top-left corner: checks the RGB conversion
        cv2.imwrite(str(image_dir / f'{index:03d}.png'), image)
    data = {
        'images': [{'id': i, 'file_name': f'{i:03d}.png', 'width': WIDTH, 'height': HEIGHT}
                   for i in (1, 2, 3)],
        'annotations': [
            {'id': 7, 'image_id': 1, 'category_id': 1, 'iscrowd': 0, 'bbox': [5.0, 4.0, 10.0, 16.0],
             'area': 160.0, 'segmentation': [[5, 4, 15, 4, 15, 20, 5, 20]],
             'keypoints': _coco_keypoints(), 'num_keypoints': 14},
            {'id': 8, 'image_id': 1, 'category_id': 1, 'iscrowd': 0, 'bbox': [20.0, 10.0, 6.0, 12.0],
             'area': 72.0, 'segmentation': _uncompressed_rle(_rect_mask(10, 22, 20, 26)),
             'keypoints': [0] * 51, 'num_keypoints': 0},
            {'id': 9, 'image_id': 1, 'category_id': 1, 'iscrowd': 1, 'bbox': [30.0, 0.0, 10.0, 8.0],
             'area': 80.0, 'segmentation': _uncompressed_rle(_rect_mask(0, 8, 30, 40)),
             'keypoints': [0] * 51, 'num_keypoints': 0},
            {'id': 10, 'image_id': 2, 'category_id': 1, 'iscrowd': 0, 'bbox': [1.0, 2.0, 3.0, 4.0],
             'area': 12.0, 'segmentation': _compressed_rle(_rect_mask(2, 6, 1, 4)),
             'keypoints': [0] * 51, 'num_keypoints': 0},
        ],
        'categories': [{'id': 1, 'name': 'person', 'supercategory': 'person'}],
    }
    if mutate:
        mutate(data)
    path = root / 'person_keypoints.json'
    path.write_text(json.dumps(data))
    return path, image_dir


def test_coco_loader_values(tmp_path):
    annotation_file, image_dir = _write_coco(tmp_path)
    dataset = CocoPersonKeypoints(annotation_file, image_dir)
    assert len(dataset) == 3 and dataset.domain == 'coco'
    image, target = dataset[0]
    assert set(target) == set(TARGET_KEYS)
    assert image.dtype == torch.float32 and image.shape == (3, HEIGHT, WIDTH)
    assert image[:, 0, 0].tolist() == [0.0, 0.0, 1.0]  # BGR (255, 0, 0) on disk is RGB blue
    assert target['image_id'].item() == 1
    # x, y, w, h -> x1, y1, x2, y2; the crowd annotation is an ignore box, not an instance.
    assert target['boxes'].tolist() == [[5, 4, 15, 20], [20, 10, 26, 22]]
    assert target['visible_boxes'].tolist() == target['boxes'].tolist()
    assert target['ignore_boxes'].tolist() == [[30, 0, 40, 8]]
    assert target['labels'].tolist() == [0, 0]
    assert target['has_mask'].tolist() == [True, True]
    assert target['masks'].dtype == torch.uint8 and target['masks'].shape == (2, HEIGHT, WIDTH)
    polygon = target['masks'][0].numpy()
    assert polygon[6:19, 6:14].all() and polygon[:3].sum() == 0 and polygon[:, 17:].sum() == 0
    np.testing.assert_array_equal(target['masks'][1].numpy(), _rect_mask(10, 22, 20, 26))
    # 17 -> 13: nose = COCO 0, shoulders = COCO 5, 6, ..., ankles = COCO 15, 16 (not labelled here).
    keypoints = target['keypoints']
    assert keypoints.shape == (2, 13, 3)
    assert keypoints[0, 0].tolist() == [3, 5, 2]            # nose
    assert keypoints[0, 1].tolist() == [8, 10, 2]           # left_shoulder = COCO 5
    assert keypoints[0, 2].tolist() == [9, 11, 1]           # right_shoulder = COCO 6, occluded
    assert keypoints[0, 10].tolist() == [17, 19, 2]         # right_knee = COCO 14
    assert keypoints[0, 11:].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert target['has_keypoints'].tolist() == [True, False]
    assert keypoints[1].abs().sum() == 0

    _, target = dataset[1]
    np.testing.assert_array_equal(target['masks'][0].numpy(), _rect_mask(2, 6, 1, 4))
    assert target['boxes'].tolist() == [[1, 2, 4, 6]]
    _, target = dataset[2]  # the negative image
    assert target['boxes'].shape == (0, 4) and target['masks'].shape == (0, HEIGHT, WIDTH)
    assert len(CocoPersonKeypoints(annotation_file, image_dir, keep_empty=False)) == 2


def _set(field, value, annotation_id=7):
    def mutate(data):
        for annotation in data['annotations']:
            if annotation['id'] == annotation_id:
                annotation[field] = value
    return mutate


@pytest.mark.parametrize('mutate, words', [
    (_set('keypoints', [1.0] * 48), ['annotation id 7', 'expected 51 keypoint numbers', 'got 48']),
    (_set('bbox', [30.0, 4.0, 20.0, 10.0]), ['annotation id 7', 'outside the 40x30 image']),
], ids=['wrong-keypoint-count', 'box-outside-image'])
def test_coco_corrupt_annotation(tmp_path, mutate, words):
    annotation_file, image_dir = _write_coco(tmp_path, mutate)
    with pytest.raises(DatasetRecordError) as error:
        CocoPersonKeypoints(annotation_file, image_dir)
    message = str(error.value)
    assert str(annotation_file) in message and all(word in message for word in words), message
    dataset = CocoPersonKeypoints(annotation_file, image_dir, skip_invalid=True)
    assert len(dataset.skipped) == 1 and dataset.skipped[0].record.startswith('annotation id 7')
    _, target = dataset[0]
    assert target['boxes'].tolist() == [[20, 10, 26, 22]]  # annotation 7 left out, 8 kept


def test_coco_missing_image(tmp_path):
    annotation_file, image_dir = _write_coco(tmp_path)
    (image_dir / '002.png').unlink()
    with pytest.raises(DatasetRecordError, match=r'image id 2 .*002\.png is missing'):
        CocoPersonKeypoints(annotation_file, image_dir)
    dataset = CocoPersonKeypoints(annotation_file, image_dir, skip_invalid=True)
    assert len(dataset) == 2 and [s.record for s in dataset.skipped] == ['image id 2 (images[1])']
    assert [dataset[i][1]['image_id'].item() for i in range(2)] == [1, 3]


def test_coco_bad_json(tmp_path):
    annotation_file, image_dir = _write_coco(tmp_path)
    annotation_file.write_text('{"images": [}')
    with pytest.raises(ValueError, match='person_keypoints.json: not valid JSON'):
        CocoPersonKeypoints(annotation_file, image_dir, skip_invalid=True)


def test_coco_real_data_smoke(shared_data_dir):
    """The real COCO subset: the README's counts, and masks equal to pycocotools' annToMask."""
    from pycocotools.coco import COCO

    root = shared_data_dir / 'coco_train2017_person_kp'
    dataset = CocoPersonKeypoints(root / 'annotations.json', root / 'images')
    assert len(dataset) == 130 and not dataset.skipped
    coco = COCO(str(root / 'annotations.json'))
    instances = ignores = with_keypoints = checked = 0
    for index, info in enumerate(dataset.images):
        annotations = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=info['id'])) if not a['iscrowd']]
        if not annotations:
            continue
        _, target = dataset.load(index)
        instances += len(target['boxes'])
        ignores += len(target['ignore_boxes'])
        with_keypoints += int(target['has_keypoints'].sum())
        if checked < 5:
            for i, annotation in enumerate(annotations):
                np.testing.assert_array_equal(target['masks'][i].numpy(), coco.annToMask(annotation))
            checked += 1
    assert (instances, ignores, with_keypoints) == (263, 8, 143)


# ----------------------------------------------------------------------------------------------
# CityPersons fixture: the official .mat layout (1 x N cell of 1 x 1 structs) + Cityscapes folders.

CITY_WIDTH, CITY_HEIGHT = 64, 32
IMAGE_1 = ('aachen', 'aachen_000000_000019_leftImg8bit.png')
IMAGE_2 = ('bochum', 'bochum_000000_001097_leftImg8bit.png')
# [class_label, x1, y1, w, h, instance_id, x1_vis, y1_vis, w_vis, h_vis]
BBS_1 = np.array([
    [1, 10, 4, 8, 30, 24000, 10, 4, 8, 20],   # pedestrian; full box leaves the image at the bottom
    [2, 30, 2, 10, 20, 25001, 31, 3, 8, 18],  # rider
    [0, 50, 0, 10, 10, 0, 50, 0, 10, 10],     # ignore region
    [5, 44, 20, 12, 10, 0, 44, 20, 12, 10],   # person group
], np.float64)
BBS_2 = np.array([
    [1, 2, 2, 6, 12, 3, 2, 2, 6, 12],         # pedestrian with a bare per-class index: 24003
    [3, 20, 10, 8, 8, 24004, 20, 10, 8, 8],   # sitting person -> ignore
], np.float64)


def _write_citypersons(root: Path, rows_2: np.ndarray = BBS_2, drop_image_2: bool = False) -> Path:
    instance_maps = {}
    for (city, name), regions in ((IMAGE_1, [(24000, 4, 24, 10, 18), (25001, 3, 21, 31, 39)]),
                                  (IMAGE_2, [(24003, 2, 14, 2, 8), (24004, 10, 18, 20, 28)])):
        image_folder = root / 'leftImg8bit' / 'train' / city
        mask_folder = root / 'gtFine' / 'train' / city
        image_folder.mkdir(parents=True, exist_ok=True)
        mask_folder.mkdir(parents=True, exist_ok=True)
        if not (drop_image_2 and name == IMAGE_2[1]):
            cv2.imwrite(str(image_folder / name), np.full((CITY_HEIGHT, CITY_WIDTH, 3), 90, np.uint8))
        instance_ids = np.full((CITY_HEIGHT, CITY_WIDTH), 7, np.uint16)  # 7 = road (stuff)
        for value, top, bottom, left, right in regions:
            instance_ids[top:bottom, left:right] = value
        stem = name.rsplit('_leftImg8bit', 1)[0]
        assert cv2.imwrite(str(mask_folder / f'{stem}_gtFine_instanceIds.png'), instance_ids)
        instance_maps[name] = instance_ids
    structure = np.dtype([('cityname', 'O'), ('im_name', 'O'), ('bbs', 'O')])
    cells = np.empty((1, 2), dtype=object)
    for position, ((city, name), bbs) in enumerate(((IMAGE_1, BBS_1), (IMAGE_2, rows_2))):
        entry = np.zeros((1, 1), dtype=structure)
        entry[0, 0]['cityname'] = city
        entry[0, 0]['im_name'] = name
        entry[0, 0]['bbs'] = bbs
        cells[0, position] = entry
    path = root / 'anno_train.mat'
    scipy.io.savemat(str(path), {'anno_train_aligned': cells})
    return path


def test_citypersons_mat_layout(tmp_path):
    records = read_annotation_file(_write_citypersons(tmp_path))
    assert [(r['cityname'], r['im_name']) for r in records] == [IMAGE_1, IMAGE_2]
    np.testing.assert_array_equal(records[0]['bbs'], BBS_1)


def test_citypersons_loader_values(tmp_path):
    dataset = CityPersons(tmp_path, _write_citypersons(tmp_path), split='train')
    assert len(dataset) == 2 and dataset.domain == 'citypersons'
    image, target = dataset[0]
    assert image.shape == (3, CITY_HEIGHT, CITY_WIDTH) and set(target) == set(TARGET_KEYS)
    assert target['image_id'].item() == 1
    # Full boxes x1, y1, x1 + w, y1 + h clipped to the image (the pedestrian's ends at y = 34 > 32).
    assert target['boxes'].tolist() == [[10, 4, 18, 32], [30, 2, 40, 22]]
    assert target['visible_boxes'].tolist() == [[10, 4, 18, 24], [31, 3, 39, 21]]
    assert target['labels'].tolist() == [0, 1]
    assert target['ignore_boxes'].tolist() == [[50, 0, 60, 10], [44, 20, 56, 30]]
    masks = target['masks'].numpy()
    expected = np.zeros((2, CITY_HEIGHT, CITY_WIDTH), np.uint8)
    expected[0, 4:24, 10:18] = 1
    expected[1, 3:21, 31:39] = 1
    np.testing.assert_array_equal(masks, expected)
    assert target['has_mask'].tolist() == [True, True]
    assert target['has_keypoints'].tolist() == [False, False] and target['keypoints'].abs().sum() == 0

    _, target = dataset[1]
    assert target['boxes'].tolist() == [[2, 2, 8, 14]] and target['labels'].tolist() == [0]
    assert target['ignore_boxes'].tolist() == [[20, 10, 28, 18]]  # the sitting person
    assert target['masks'][0].sum().item() == 12 * 6 and target['masks'][0, 2:14, 2:8].all()


def test_citypersons_corrupt_row(tmp_path):
    rows = BBS_2.copy()
    rows[0, 6:10] = [60, 2, 10, 12]  # visible box reaching x = 70 in a 64-pixel-wide image
    path = _write_citypersons(tmp_path, rows)
    with pytest.raises(DatasetRecordError) as error:
        CityPersons(tmp_path, path)
    message = str(error.value)
    assert str(path) in message and f'image 2 (bochum/{IMAGE_2[1]}) bbs row 1' in message
    assert 'outside the 64x32 image' in message
    dataset = CityPersons(tmp_path, path, skip_invalid=True)
    assert len(dataset) == 2 and len(dataset.skipped) == 1
    assert dataset[1][1]['boxes'].shape == (0, 4)


def test_citypersons_missing_image_and_bad_class(tmp_path):
    path = _write_citypersons(tmp_path, drop_image_2=True)
    with pytest.raises(DatasetRecordError, match='image 2 .*is missing'):
        CityPersons(tmp_path, path)
    dataset = CityPersons(tmp_path, path, skip_invalid=True)
    assert len(dataset) == 1 and dataset.skipped[0].record.startswith('image 2')
    rows = BBS_2.copy()
    rows[1, 0] = 7
    path = _write_citypersons(tmp_path / 'other', rows)
    with pytest.raises(DatasetRecordError, match='bbs row 2: class_label must be 0..5, got 7'):
        CityPersons(tmp_path / 'other', path)


def test_citypersons_not_a_mat_file(tmp_path):
    path = tmp_path / 'anno_val.mat'
    path.write_text('not matlab')
    with pytest.raises(ValueError, match='anno_val.mat'):
        read_annotation_file(path)


def test_citypersons_instance_without_mask(tmp_path):
    """An instance_id absent from instanceIds.png (or 0) gives has_mask False and an all-zero mask."""
    rows = BBS_2.copy()
    rows[0, 5] = 24099
    dataset = CityPersons(tmp_path, _write_citypersons(tmp_path, rows))
    _, target = dataset[1]
    assert target['has_mask'].tolist() == [False] and target['masks'].sum() == 0
    assert CityPersons(tmp_path, tmp_path / 'anno_train.mat', load_masks=False)[0][1]['has_mask'].tolist() \
        == [False, False]
