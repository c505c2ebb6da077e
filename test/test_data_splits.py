"""The held-out split rule, `split_filter`, and several datasets in one domain (`extra`, `repeat`).

References: the split against hashlib computed here; dataset lengths and image ids against the
annotation file read directly.
"""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from occluded_ppe_training.config import DatasetConfig, TrainConfig
from occluded_ppe_training.datasets.splits import in_split, is_held_out, split_coco, write_split
from occluded_ppe_training.datasets.synthetic import SynthConfig, generate_dataset
from occluded_ppe_training.trainer import build_dataset

INPUT_SIZE = (64, 96)


def _reference_held_out(image_id: int) -> bool:
    return int(hashlib.sha256(str(image_id).encode('ascii')).hexdigest(), 16) % 3 == 0


@pytest.fixture(scope='module')
def tiny_set(tmp_path_factory):
    """A 12-image synthetic COCO-format set (64 x 96 pixels) and its annotations dict."""
    directory = tmp_path_factory.mktemp('synthetic')
    generate_dataset(directory, 12, seed=5, config=SynthConfig(width=96, height=64, max_people=2,
                                                              min_person_height=0.6))
    return directory, json.loads((directory / 'annotations.json').read_text())


def test_held_out_rule_matches_hashlib_and_partitions():
    ids = list(range(300)) + [790, 129648, 174375, 234748, 412151]
    assert [is_held_out(i) for i in ids] == [_reference_held_out(i) for i in ids]
    # the sample photos: 790 and 174375 are held out (worked out by hand with sha256 once)
    assert is_held_out(790) and is_held_out(174375) and not is_held_out(129648)
    for i in ids:
        assert in_split(i, 'train') != in_split(i, 'heldout')
    share = sum(is_held_out(i) for i in range(3000)) / 3000
    assert 0.30 < share < 0.37
    with pytest.raises(ValueError, match="'val'"):
        in_split(1, 'val')


def test_split_coco_and_write_split(tiny_set, tmp_path):
    directory, data = tiny_set
    held = split_coco(data, 'heldout')
    train = split_coco(data, 'train')
    all_ids = {image['id'] for image in data['images']}
    held_ids = {image['id'] for image in held['images']}
    train_ids = {image['id'] for image in train['images']}
    assert held_ids == {i for i in all_ids if _reference_held_out(i)}
    assert held_ids | train_ids == all_ids and not held_ids & train_ids
    assert all(a['image_id'] in held_ids for a in held['annotations'])
    assert len(held['annotations']) + len(train['annotations']) == len(data['annotations'])
    counts = write_split(directory / 'annotations.json', 'heldout', tmp_path / 'held.json')
    assert counts['images'] == len(held_ids)
    assert json.loads((tmp_path / 'held.json').read_text())['images'] == held['images']


def test_split_filter_selects_images(tiny_set):
    directory, data = tiny_set
    seen = {}
    for split in ('train', 'heldout'):
        cfg = DatasetConfig(format='coco', annotations=str(directory / 'annotations.json'),
                            images=str(directory / 'images'), split_filter=split)
        dataset = build_dataset(cfg, 'coco', INPUT_SIZE, None, train=False)
        seen[split] = {int(dataset[index][1]['image_id']) for index in range(len(dataset))}
    expected_held = {image['id'] for image in data['images'] if _reference_held_out(image['id'])}
    assert seen['heldout'] == expected_held
    assert seen['train'] == {image['id'] for image in data['images']} - expected_held


def test_extra_datasets_and_repeat_concatenate(tiny_set):
    directory, data = tiny_set
    coco_files = {'format': 'coco', 'annotations': str(directory / 'annotations.json'),
                  'images': str(directory / 'images')}
    config = TrainConfig.from_dict({
        'model': {'backbone': {'name': 'resnet18'}},
        'input_size': list(INPUT_SIZE),
        'data': {'citypersons': {
            **coco_files, 'split_filter': 'train', 'repeat': 3,
            'extra': [dict(coco_files, split_filter='heldout')]}},
    }, where='test')
    section = config.data['citypersons']
    assert isinstance(section.extra[0], DatasetConfig) and section.extra[0].split_filter == 'heldout'
    dataset = build_dataset(section, 'citypersons', INPUT_SIZE, None, train=True)
    train_count = sum(not _reference_held_out(image['id']) for image in data['images'])
    assert len(dataset) == 3 * train_count + (len(data['images']) - train_count)
    last_image, last_target = dataset[len(dataset) - 1]
    assert _reference_held_out(int(last_target['image_id']))
    assert last_image.shape == (3, *INPUT_SIZE)
    # the target domain never sees pose labels, in the extra set too
    assert not bool(last_target['has_keypoints'].any()) and float(last_target['keypoints'].abs().sum()) == 0.0
    # the round trip through the checkpoint's plain dict keeps the nested sets
    assert TrainConfig.from_dict(config.to_dict()).data['citypersons'].extra[0].split_filter == 'heldout'
    assert torch.is_tensor(last_target['boxes'])


@pytest.mark.parametrize('bad, message', [
    ({'split_filter': 'val'}, "'val'"),
    ({'repeat': 0}, 'repeat must be >= 1, got 0'),
])
def test_bad_dataset_options_name_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({'model': {'backbone': {'name': 'resnet18'}},
                               'data': {'coco': dict({'format': 'synthetic', 'directory': 'x'}, **bad)}},
                              where='cfg.yaml')
