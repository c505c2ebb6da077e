"""Overlay rendering: pixels inside masks tinted, joints coloured by state, absent joints not drawn."""
from __future__ import annotations

import numpy as np
import pytest

from occluded_ppe_ros import draw
from occluded_ppe_ros.inference.results import Pedestrian


def pedestrian(keypoints, scores, occluded, mask_origin=(10, 10), mask=None) -> Pedestrian:
    return Pedestrian(box=np.array([10, 10, 50, 70], np.float32), class_id=0, class_name='pedestrian',
                      score=0.8, mask=np.ones((20, 10), bool) if mask is None else mask,
                      mask_origin=np.asarray(mask_origin), keypoints=np.asarray(keypoints, np.float32),
                      keypoint_scores=np.asarray(scores, np.float32),
                      keypoint_occluded=np.asarray(occluded, bool))


def test_keypoint_states_by_threshold_and_flag():
    scores = np.array([0.05, 0.5, 0.5, 0.29, 0.3] + [0.9] * 8)
    occluded = np.array([True, False, True, True, True] + [False] * 8)
    states = draw.keypoint_states(scores, occluded, 0.3)
    assert states.tolist() == [0, 1, 2, 0, 2] + [1] * 8
    with pytest.raises(ValueError, match='expected 13 keypoint'):
        draw.keypoint_states(np.zeros(17), np.zeros(17, bool), 0.3)


def test_overlay_pixels():
    image = np.full((80, 100, 3), 100, np.uint8)
    keypoints = np.full((13, 2), 90.5, np.float32)  # parked far right, outside any limb of interest
    keypoints[0] = (60.5, 40.5)     # visible joint, centre of pixel (40, 60)
    keypoints[1] = (80.5, 40.5)     # occluded joint at pixel (40, 80)
    keypoints[2] = (70.5, 5.5)      # not present
    scores = np.full(13, 0.1, np.float32)
    scores[[0, 1]] = 0.9
    scores[2] = 0.2
    occluded = np.zeros(13, bool)
    occluded[1] = True
    person = pedestrian(keypoints, scores, occluded)
    out = draw.draw_overlay(image, [person], keypoint_threshold=0.3, mask_alpha=0.5, draw_labels=False)
    assert out.shape == image.shape and out is not image
    assert (image == 100).all(), 'the input must not be modified'
    # The mask covers columns 10..19, rows 10..29: tinted halfway towards the first instance colour.
    expected_tint = np.floor(100 * 0.5 + np.array(draw.instance_color(0)) * 0.5 + 0.5)
    np.testing.assert_array_equal(out[20, 15], expected_tint)
    # Box edges: the rectangle runs along column 10 and row 69 (last pixel inside y2 = 70).
    np.testing.assert_array_equal(out[40, 10], draw.instance_color(0))
    np.testing.assert_array_equal(out[69, 30], draw.instance_color(0))
    np.testing.assert_array_equal(out[40, 60], draw.VISIBLE_COLOR)
    np.testing.assert_array_equal(out[40, 80], draw.OCCLUDED_COLOR)
    np.testing.assert_array_equal(out[5, 70], (100, 100, 100))  # absent joint: nothing drawn
    # The limb between the visible head (0) and the occluded left shoulder (1) is drawn occluded.
    np.testing.assert_array_equal(out[40, 70], draw.OCCLUDED_COLOR)
    np.testing.assert_array_equal(out[75, 95], (100, 100, 100))


def test_mask_partly_outside_the_image_and_bad_inputs():
    image = np.zeros((20, 20, 3), np.uint8)
    person = pedestrian(np.zeros((13, 2)), np.zeros(13), np.zeros(13, bool), mask_origin=(-5, 15),
                        mask=np.ones((10, 10), bool))
    out = draw.draw_overlay(image, [person], 0.3, mask_alpha=1.0, draw_labels=False)
    np.testing.assert_array_equal(out[19, 0], draw.instance_color(0))
    np.testing.assert_array_equal(out[19, 6], (0, 0, 0))
    with pytest.raises(ValueError, match='mask_alpha'):
        draw.draw_overlay(image, [], 0.3, mask_alpha=1.5)
    with pytest.raises(ValueError, match='uint8'):
        draw.draw_overlay(image.astype(np.float32), [], 0.3)


def test_render_in_place_matches_the_copying_variant():
    image = np.random.default_rng(1).integers(0, 256, size=(80, 100, 3), dtype=np.uint8)
    keypoints = np.stack([np.linspace(12, 48, 13), np.linspace(12, 68, 13)], axis=1)
    person = pedestrian(keypoints, np.full(13, 0.9), np.arange(13) % 2 == 0)
    expected = draw.draw_overlay(image, [person], keypoint_threshold=0.3)
    canvas = image.copy()
    draw.render_overlay(canvas, [person], keypoint_threshold=0.3)
    np.testing.assert_array_equal(canvas, expected)
    assert not np.array_equal(expected, image)
    with pytest.raises(ValueError, match='writable C-contiguous'):
        draw.render_overlay(image[:, ::2], [person], 0.3)


def test_blend_mask_table_matches_per_pixel_blending():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = rng.random((30, 30)) < 0.6
    pedestrian = Pedestrian(box=np.array([-5, 20, 25, 50], np.float32), class_id=0, class_name='pedestrian',
                            score=0.9, mask=mask, mask_origin=np.array([-5, 20]),
                            keypoints=np.zeros((13, 2), np.float32), keypoint_scores=np.zeros(13, np.float32),
                            keypoint_occluded=np.zeros(13, bool))
    expected = image.copy()
    crop, inside = expected[20:40, 0:25], mask[0:20, 5:30]  # the mask cut by the image's left and bottom
    tint = np.asarray((200, 30, 90), np.float32)
    crop[inside] = (crop[inside].astype(np.float32) * (1.0 - 0.45) + tint * 0.45 + 0.5).astype(np.uint8)
    draw.blend_mask(image, pedestrian, (200, 30, 90), 0.45)
    np.testing.assert_array_equal(image, expected)


def test_overlay_size_caps_the_long_side_and_never_enlarges():
    assert draw.overlay_size(1024, 2048, 1024) == (512, 1024)
    assert draw.overlay_size(1080, 1920, 1024) == (576, 1024)
    assert draw.overlay_size(2048, 1024, 1024) == (1024, 512)  # portrait: the height is the long side
    assert draw.overlay_size(480, 640, 1024) == (480, 640)
    assert draw.overlay_size(1024, 1024, 1024) == (1024, 1024)
    assert draw.overlay_size(1024, 2048, 0) == (1024, 2048)     # 0 = no cap
    assert draw.overlay_size(1, 5000, 64) == (1, 64)            # never a zero side


def test_shrink_image_sizes_anti_aliasing_and_a_fitting_image_untouched():
    image = np.full((1024, 2048, 3), 77, np.uint8)
    for height, width in ((512, 1024), (320, 640), (100, 333)):
        small = draw.shrink_image(image, height, width)
        assert small.shape == (height, width, 3) and (small == 77).all()
    assert draw.shrink_image(image, 1024, 2048) is image
    # A one-pixel checkerboard averages to grey instead of aliasing to black or white stripes.
    checker = ((np.indices((1024, 2048)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    small = draw.shrink_image(checker, 320, 640)
    assert abs(float(small.mean()) - 127.5) < 2.0 and float(small.std()) < 3.0


def test_render_on_a_reduced_canvas_draws_at_the_scaled_place():
    """Results in the pixels of a 2048 x 1024 frame, drawn on its 1024 x 512 overlay (the node's default)."""
    keypoints = np.zeros((13, 2), np.float32)
    keypoints[0] = (1201.0, 601.0)   # canvas (600.5, 300.5): the centre of pixel row 300, column 600
    keypoints[1] = (1601.0, 201.0)   # canvas pixel row 100, column 800
    scores = np.zeros(13, np.float32)
    scores[[0, 1]] = 0.9
    occluded = np.zeros(13, bool)
    occluded[1] = True
    # Mask: source columns 420..619, rows 300..699 -> canvas columns 210..309, rows 150..349.
    person = Pedestrian(box=np.array([400, 200, 800, 1000], np.float32), class_id=0, class_name='pedestrian',
                        score=0.8, mask=np.ones((400, 200), bool), mask_origin=np.array([420, 300]),
                        keypoints=keypoints, keypoint_scores=scores, keypoint_occluded=occluded)
    canvas = np.full((512, 1024, 3), 100, np.uint8)
    draw.render_overlay(canvas, [person], 0.3, mask_alpha=1.0, draw_labels=False, source_size=(1024, 2048))
    colour = draw.instance_color(0)
    # Box [400, 200, 800, 1000] -> [200, 100, 400, 500]: columns 200 and 399, rows 100 and 499.
    for row, column in ((300, 200), (300, 399), (100, 300), (499, 300)):
        np.testing.assert_array_equal(canvas[row, column], colour)
    for row, column in ((300, 196), (300, 403), (96, 300), (503, 300), (420, 380)):
        np.testing.assert_array_equal(canvas[row, column], (100, 100, 100))
    # Mask edges, exactly: the tint starts at canvas column 210 / row 150 and ends at 309 / 349.
    for row, column in ((250, 210), (250, 309), (150, 260), (349, 260)):
        np.testing.assert_array_equal(canvas[row, column], colour)
    for row, column in ((250, 209), (250, 310), (149, 260), (350, 260)):
        np.testing.assert_array_equal(canvas[row, column], (100, 100, 100))
    np.testing.assert_array_equal(canvas[300, 600], draw.VISIBLE_COLOR)
    np.testing.assert_array_equal(canvas[100, 800], draw.OCCLUDED_COLOR)
    with pytest.raises(ValueError, match='source_size'):
        draw.render_overlay(canvas, [person], 0.3, source_size=(0, 2048))


@pytest.mark.parametrize('canvas_size', [(26, 37), (70, 100), (140, 45)])
def test_scaled_mask_is_the_nearest_neighbour_sample_under_each_canvas_pixel(canvas_size):
    rng = np.random.default_rng(3)
    source_height, source_width = 70, 100
    mask = rng.random((50, 40)) < 0.5
    person = Pedestrian(box=np.array([-5, 10, 35, 60], np.float32), class_id=0, class_name='pedestrian',
                        score=0.9, mask=mask, mask_origin=np.array([-5, 30]),  # cut by the left and bottom
                        keypoints=np.zeros((13, 2), np.float32), keypoint_scores=np.zeros(13, np.float32),
                        keypoint_occluded=np.zeros(13, bool))
    full = np.zeros((source_height, source_width), bool)
    full[30:70, 0:35] = mask[:40, 5:]
    height, width = canvas_size
    scale = (width / source_width, height / source_height)
    rows = np.floor((np.arange(height) + 0.5) / scale[1]).astype(int)
    columns = np.floor((np.arange(width) + 0.5) / scale[0]).astype(int)
    expected = full[rows][:, columns]
    canvas = np.zeros((height, width, 3), np.uint8)
    draw.blend_mask(canvas, person, (255, 255, 255), 1.0, scale)
    np.testing.assert_array_equal(canvas[..., 0] == 255, expected)
