"""Augmentations, letterbox and collate against hand-computed geometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from occluded_ppe_ros.skeleton import FLIP_PAIRS, KEYPOINT_NAMES
from occluded_ppe_training.datasets.common import make_target
from occluded_ppe_training.datasets.transforms import (
    RandomBrightnessContrast, RandomGaussianBlur, RandomHorizontalFlip, RandomScaleCrop, collate, crop,
    horizontal_flip, letterbox, letterbox_geometry, train_transforms)

# pycocotools' decoder trips a numpy 2 DeprecationWarning on every mask; not ours to fix.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')
HEIGHT, WIDTH = 30, 40


def _sample():
    """One image with two people: person 0 has labelled shoulders, person 1 sits at the right edge."""
    image = torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))
    masks = np.zeros((2, HEIGHT, WIDTH), np.uint8)
    masks[0, 5:20, 5:15] = 1
    masks[1, 10:25, 32:40] = 1
    keypoints = np.zeros((2, 13, 3), np.float32)
    keypoints[0, 1] = (10.0, 8.0, 2)   # left_shoulder, visible
    keypoints[0, 2] = (14.0, 8.5, 1)   # right_shoulder, occluded
    keypoints[0, 0] = (12.0, 6.0, 2)   # nose
    keypoints[1, 7] = (38.0, 20.0, 2)  # left_hip of the person at the edge
    target = make_target(5, HEIGHT, WIDTH, boxes=np.array([[5, 5, 15, 20], [32, 10, 40, 25]]),
                         masks=masks, keypoints=keypoints,
                         visible_boxes=np.array([[5, 5, 15, 18], [32, 10, 40, 25]]),
                         ignore_boxes=np.array([[0, 0, 4, 4]]))
    return image, target


def test_flip_mirrors_x_and_swaps_left_right():
    image, target = _sample()
    flipped_image, flipped = horizontal_flip(image, target)
    assert torch.equal(flipped_image[:, :, 0], image[:, :, WIDTH - 1])
    # Boxes: x1' = W - x2, x2' = W - x1 (continuous coordinates).
    assert flipped['boxes'].tolist() == [[25, 5, 35, 20], [0, 10, 8, 25]]
    assert flipped['visible_boxes'].tolist() == [[25, 5, 35, 18], [0, 10, 8, 25]]
    assert flipped['ignore_boxes'].tolist() == [[36, 0, 40, 4]]
    assert torch.equal(flipped['masks'][0, :, 25:35], target['masks'][0, :, 5:15].flip(-1))
    assert flipped['masks'][0, :, :25].sum() == 0
    # The old right shoulder (14, 8.5, occluded), mirrored, is the new LEFT shoulder, and vice versa.
    keypoints = flipped['keypoints']
    assert KEYPOINT_NAMES[1] == 'left_shoulder' and KEYPOINT_NAMES[2] == 'right_shoulder'
    assert keypoints[0, 1].tolist() == [26.0, 8.5, 1.0]
    assert keypoints[0, 2].tolist() == [30.0, 8.0, 2.0]
    assert keypoints[0, 0].tolist() == [28.0, 6.0, 2.0]     # the nose stays the nose
    assert keypoints[1, 8].tolist() == [2.0, 20.0, 2.0]     # left_hip -> right_hip
    assert keypoints[1, 7].tolist() == [0.0, 0.0, 0.0]      # unlabelled stays unlabelled (not W - 0)
    for left, right in FLIP_PAIRS:
        assert keypoints[0, left, 2] == target['keypoints'][0, right, 2]
    # Flipping twice is the identity.
    twice_image, twice = horizontal_flip(flipped_image, flipped)
    assert torch.equal(twice_image, image)
    for key in ('boxes', 'masks', 'keypoints', 'visible_boxes', 'ignore_boxes'):
        assert torch.equal(twice[key], target[key]), key


def test_crop_drops_keypoints_outside_and_instances_outside():
    image, target = _sample()
    cropped_image, cropped = crop(image, target, top=7, left=11, height=20, width=20)
    assert cropped_image.shape == (3, 20, 20)
    assert torch.equal(cropped_image, image[:, 7:27, 11:31])
    # Person 0: box shifted by (-11, -7) and clamped; person 1 (x 32-40) is outside: removed.
    assert cropped['boxes'].tolist() == [[0, 0, 4, 13]]
    assert cropped['visible_boxes'].tolist() == [[0, 0, 4, 11]]
    assert cropped['ignore_boxes'].shape == (0, 4)           # (0, 0, 4, 4) lies outside the window
    keypoints = cropped['keypoints'][0]
    assert keypoints[2].tolist() == [3.0, 1.5, 1.0]          # right shoulder (14, 8.5) inside
    assert keypoints[1].tolist() == [0.0, 0.0, 0.0]          # left shoulder x = 10 < 11: dropped
    assert keypoints[0].tolist() == [0.0, 0.0, 0.0]          # nose y = 6 < 7: dropped
    assert cropped['has_keypoints'].tolist() == [True]
    assert torch.equal(cropped['masks'][0], target['masks'][0, 7:27, 11:31])
    with pytest.raises(ValueError, match='leaves the 40x30 image'):
        crop(image, target, top=20, left=0, height=20, width=20)


def test_crop_that_removes_every_labelled_joint_clears_has_keypoints():
    image, target = _sample()
    _, cropped = crop(image, target, top=10, left=0, height=20, width=20)
    assert cropped['has_keypoints'].tolist() == [False]
    assert (cropped['keypoints'] == 0).all()


def test_random_scale_crop_is_seeded_and_consistent():
    image, target = _sample()
    outputs = [RandomScaleCrop((1.2, 1.6), generator=torch.Generator().manual_seed(3))(image, target)
               for _ in range(2)]
    (image_a, target_a), (image_b, target_b) = outputs
    assert torch.equal(image_a, image_b) and all(torch.equal(target_a[k], target_b[k]) for k in target_a)
    assert image_a.shape == image.shape  # scaled up, then cropped back to the original size
    assert target_a['masks'].shape[1:] == image_a.shape[1:]
    keypoints = target_a['keypoints']
    labelled = keypoints[..., 2] > 0
    assert ((keypoints[..., 0][labelled] >= 0) & (keypoints[..., 0][labelled] < WIDTH)).all()
    # A labelled joint that survived lies inside its (scaled, cropped) person's box, as before.
    for person in range(len(target_a['boxes'])):
        x1, y1, x2, y2 = target_a['boxes'][person].tolist()
        for x, y, v in keypoints[person].tolist():
            if v > 0:
                assert x1 <= x <= x2 and y1 <= y <= y2


def test_letterbox_scales_and_pads():
    image, target = _sample()
    assert letterbox_geometry(HEIGHT, WIDTH, (64, 64)) == (48, 64)     # scale min(64/30, 64/40) = 1.6
    assert letterbox_geometry(HEIGHT, WIDTH, (64, 96)) == (64, 85)     # scale min(64/30, 96/40) = 2.13
    boxed_image, boxed = letterbox(image, target, (64, 64))
    assert boxed_image.shape == (3, 64, 64)
    assert boxed_image[:, 48:].abs().sum() == 0 and boxed_image[:, :48].abs().sum() > 0
    scale = 64 / WIDTH  # = 48 / HEIGHT
    assert torch.allclose(boxed['boxes'], target['boxes'] * scale)
    assert torch.allclose(boxed['keypoints'][0, 1], torch.tensor([10 * scale, 8 * scale, 2]))
    assert boxed['masks'].shape == (2, 64, 64)
    assert boxed['masks'][0].sum() == 15 * 10 * scale ** 2


def test_photometric_transforms_are_seeded_and_keep_the_target():
    image, target = _sample()
    for transform_type in (RandomGaussianBlur, RandomBrightnessContrast):
        kwargs = {'p': 1.0} if transform_type is RandomGaussianBlur else {}
        first = transform_type(generator=torch.Generator().manual_seed(1), **kwargs)(image, target)
        second = transform_type(generator=torch.Generator().manual_seed(1), **kwargs)(image, target)
        assert torch.equal(first[0], second[0]) and not torch.equal(first[0], image)
        assert first[1] is target and 0 <= first[0].min() and first[0].max() <= 1


def test_flip_probability_uses_the_generator():
    image, target = _sample()
    flips = [not torch.equal(RandomHorizontalFlip(0.5, torch.Generator().manual_seed(s))(image, target)[0],
                             image) for s in range(20)]
    assert 0 < sum(flips) < 20


def test_collate_pads_to_multiple_of_32():
    first = _sample()
    second = train_transforms((64, 64), torch.Generator().manual_seed(0))(*_sample())
    images, targets = collate([first, second])
    assert images.shape == (2, 3, 64, 64)
    assert torch.equal(images[0, :, :HEIGHT, :WIDTH], first[0]) and images[0, :, HEIGHT:].abs().sum() == 0
    assert targets[0]['masks'].shape == (2, 64, 64) and targets[1]['masks'].shape[1:] == (64, 64)
    assert torch.equal(targets[0]['masks'][:, :HEIGHT, :WIDTH], first[1]['masks'])


def test_letterbox_matches_the_inference_preprocessing():
    """Training inputs are made as the Predictor makes them (geometry, padding, resampling)."""
    from occluded_ppe_ros.inference.preprocess import letterbox as inference_letterbox

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255
    target = make_target(0, 45, 70)
    ours, _ = letterbox(tensor, target, (64, 96))
    theirs, geometry = inference_letterbox(image, (64, 96))
    assert (geometry.resized_height, geometry.resized_width) == letterbox_geometry(45, 70, (64, 96))
    assert np.abs(ours.numpy() - theirs).max() <= 2 / 255


def test_dataset_loader_batches(tmp_path):
    """A COCO-format set through train_transforms, a DataLoader and collate: fixed-size batches."""
    from torch.utils.data import DataLoader

    from occluded_ppe_training.datasets.coco import CocoPersonKeypoints
    from occluded_ppe_training.datasets.synthetic import SynthConfig, generate_dataset

    generate_dataset(tmp_path, 4, seed=2, config=SynthConfig(width=96, height=72))
    dataset = CocoPersonKeypoints(tmp_path / 'annotations.json', tmp_path / 'images',
                                  transforms=train_transforms((64, 96), torch.Generator().manual_seed(0)))
    images, targets = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate)))
    assert images.shape == (4, 3, 64, 96) and images.dtype == torch.float32
    for target in targets:
        assert target['masks'].shape[1:] == (64, 96)
        count = len(target['boxes'])
        assert target['keypoints'].shape == (count, 13, 3) and target['labels'].shape == (count,)
        labelled = target['keypoints'][..., 2] > 0
        assert (target['keypoints'][..., 0][labelled] < 96).all()
        assert (target['keypoints'][..., 1][labelled] < 64).all()


def test_scale_down_pads_back_to_the_original_size():
    image, target = _sample()
    scale_crop = RandomScaleCrop((0.5, 0.5), generator=torch.Generator().manual_seed(0))
    small_image, small = scale_crop(image, target)
    assert small_image.shape == image.shape and small['masks'].shape == target['masks'].shape
    assert small_image[:, 15:].abs().sum() == 0 and small_image[:, :, 20:].abs().sum() == 0
    assert torch.allclose(small['boxes'], target['boxes'] * 0.5)
    assert torch.allclose(small['keypoints'][..., :2], target['keypoints'][..., :2] * 0.5)


def test_an_image_without_people_goes_through_the_pipeline():
    target = make_target(3, HEIGHT, WIDTH)
    for seed in range(5):
        transform = train_transforms((64, 64), torch.Generator().manual_seed(seed))
        image, out = transform(torch.rand(3, HEIGHT, WIDTH), target)
        assert image.shape == (3, 64, 64) and out['boxes'].shape == (0, 4)
        assert out['masks'].shape == (0, 64, 64)
