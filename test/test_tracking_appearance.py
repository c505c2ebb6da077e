"""The tracker's appearance cue (clothing colours inside the visible mask) on painted frames: the colours
themselves, their use in a crossing that box and keypoint geometry alone gets wrong, its settings, and the
synthetic videos' clothing palette."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_ros.ros.parameters import PARAMETERS_BY_NAME
from occluded_ppe_ros.tracking import PedestrianTracker, TrackerConfig
from occluded_ppe_ros.tracking.appearance import (BODY_BANDS, NUM_BANDS, band_colours, colour_similarity,
                                                  pedestrian_colours)
from occluded_ppe_training.datasets import synthetic as still
from occluded_ppe_training.datasets import synthetic_video
from occluded_ppe_training.datasets.synthetic_video import VideoConfig, render_sequence, sequence_rng

FPS = 30.0
FRAME = (240, 480)  # rows, columns
GREY, RED, BLUE, BLACK = (128, 128, 128), (200, 30, 30), (30, 40, 200), (20, 20, 20)


def _lab(rgb) -> np.ndarray:
    """CIELAB of one RGB colour (0-255), as the tracker computes it."""
    return cv2.cvtColor(np.array([[rgb]], np.float32) / 255.0, cv2.COLOR_RGB2LAB)[0, 0].astype(np.float64)


def _paint(people: list[tuple[list[float], tuple, tuple]]) -> tuple[np.ndarray, list[tuple[int, Pedestrian]]]:
    """A frame with people painted far to near, and a detection with its visible mask for each one seen.

    Args:
        people: (box x1, y1, x2, y2 pixels, shirt RGB, trousers RGB) per person, the farthest first; a
            person is a box, shirt colour over its upper half, trousers colour over its lower half.

    Returns:
        (image uint8 [240, 480, 3] RGB, [(index into people, detection)] of the people at least 5 %
        visible).
    """
    image = np.full(FRAME + (3,), GREY, np.uint8)
    owner = np.full(FRAME, -1)
    for index, (box, shirt, trousers) in enumerate(people):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        middle = (y1 + y2) // 2
        image[y1:middle, x1:x2] = shirt
        image[middle:y2, x1:x2] = trousers
        owner[y1:y2, x1:x2] = index
    detections = []
    for index, (box, _, _) in enumerate(people):
        visible = owner == index
        rows, cols = np.nonzero(visible)
        box = np.asarray(box, np.float32)
        if len(rows) < 0.05 * (box[2] - box[0]) * (box[3] - box[1]):
            continue
        x0, y0 = cols.min(), rows.min()
        keypoints = np.stack([np.full(13, (box[0] + box[2]) / 2) + np.linspace(-5, 5, 13),
                              np.linspace(box[1] + 5, box[3] - 5, 13)], axis=1)
        detections.append((index, Pedestrian(
            box=box, class_id=0, class_name='pedestrian', score=0.9,
            mask=visible[y0:rows.max() + 1, x0:cols.max() + 1], mask_origin=np.array([x0, y0]),
            keypoints=keypoints.astype(np.float32), keypoint_scores=np.full(13, 0.8, np.float32),
            keypoint_occluded=np.zeros(13, bool))))
    return image, detections


def test_band_colours_read_only_the_visible_mask_of_each_band():
    # A red-shirted, blue-trousered person, the right half of them behind a black post (nearer, painted
    # after them); a second person whose legs alone are in the image.
    image, detections = _paint([([100, 40, 140, 160], RED, BLUE), ([120, 20, 160, 200], BLACK, BLACK),
                                ([300, 150, 340, 270], (0, 200, 0), (200, 200, 0))])
    person = detections[0][1]
    assert person.mask.shape == (120, 20)  # the left 20 columns: the post hides the rest
    colours = pedestrian_colours(image, [person, detections[2][1]])
    assert colours.shape == (2, NUM_BANDS, 3)
    np.testing.assert_allclose(colours[0, 0], _lab(RED), atol=0.5)  # no black from the post
    np.testing.assert_allclose(colours[0, 1], _lab(BLUE), atol=0.5)
    # The second person's box reaches past the bottom image row (240): their upper band is in the image
    # (green), the leg band is partly in it (yellow); nothing is read outside the frame.
    np.testing.assert_allclose(colours[1, 0], _lab((0, 200, 0)), atol=0.5)
    np.testing.assert_allclose(colours[1, 1], _lab((200, 200, 0)), atol=0.5)
    # A band less than MIN_BAND_SHARE of which is visible stays unknown (here the legs: a 2 x 3 pixel
    # sliver of them is seen); no mask at all leaves both bands unknown.
    sliver = np.zeros((120, 20), bool)
    sliver[int(BODY_BANDS[1][0] * 120) + 5:int(BODY_BANDS[1][0] * 120) + 7, :3] = True
    sliver[5:60, :] = True
    colours = band_colours(image, [[100, 40, 140, 160], [0, 0, 10, 10]], [sliver, np.zeros((1, 1), bool)],
                           [[100, 40], [0, 0]])
    assert np.isfinite(colours[0, 0]).all() and np.isnan(colours[0, 1]).all() and np.isnan(colours[1]).all()
    assert band_colours(image, np.zeros((0, 4)), [], np.zeros((0, 2))).shape == (0, NUM_BANDS, 3)


def test_colour_similarity_per_band_and_unknown_when_no_band_is_shared():
    red_blue = np.stack([_lab(RED), _lab(BLUE)])
    tracks = np.stack([red_blue, np.full((2, 3), np.nan)])  # a track with colours, one never seen
    detections = np.stack([red_blue, np.stack([_lab(BLUE), _lab(BLUE)]), np.stack([_lab(RED),
                                                                                  [np.nan] * 3])])
    similarity = colour_similarity(tracks, detections, colour_std=15.0)
    assert similarity.shape == (2, 3)
    assert similarity[0, 0] == pytest.approx(1.0)
    assert similarity[0, 1] < 1e-3  # the legs agree, the shirts do not at all: another person
    assert similarity[0, 2] == pytest.approx(1.0)  # the one band both have agrees
    assert np.isnan(similarity[1]).all()


def _meet_and_stop(tracker: PedestrianTracker, with_image: bool) -> dict[int, set[int]]:
    """Two people walk toward each other, stop a step apart, hidden for 10 frames (behind a van), and are
    seen again where they stopped; returns the track ids each person (0 red, 1 blue) was given."""
    ids: dict[int, set[int]] = {0: set(), 1: set()}
    speed, stop_frame = 60.0, 45
    for frame in range(90):
        walked = speed * min(frame, stop_frame) / FPS
        red_x = 165.0 - speed * stop_frame / FPS + walked
        blue_x = 195.0 + speed * stop_frame / FPS - walked
        image, detections = _paint([([red_x, 100, red_x + 40, 220], RED, BLACK),
                                    ([blue_x, 102, blue_x + 40, 222], BLUE, BLACK)])
        if stop_frame <= frame < stop_frame + 10:
            detections = []
        step = tracker.update([d for _, d in detections], frame / FPS, FRAME,
                              image=image if with_image else None)
        for (person, _), tracked in zip(detections, step.pedestrians):
            ids[person].add(tracked.track_id)
    return ids


def test_clothing_colours_keep_the_ids_of_two_people_whose_motion_says_they_swapped():
    # Constant-velocity motion carries each hidden track on past the other person's stopping place, so
    # geometry alone gives each person the other's id when they are seen again.
    geometry = _meet_and_stop(PedestrianTracker(TrackerConfig(appearance_weight=0.0)), with_image=True)
    assert geometry == {0: {1, 2}, 1: {1, 2}}
    no_image = _meet_and_stop(PedestrianTracker(TrackerConfig(appearance_weight=0.3)), with_image=False)
    assert no_image == geometry  # without the frame the tracker is on geometry alone
    colours = _meet_and_stop(PedestrianTracker(TrackerConfig(appearance_weight=0.3)), with_image=True)
    assert colours == {0: {1}, 1: {2}}


def test_alike_clothes_give_the_geometric_answer():
    # Both in red and black: the colours cannot tell them apart, the score is the geometric one.
    tracker = PedestrianTracker(TrackerConfig(appearance_weight=0.3))
    for frame in range(20):
        image, detections = _paint([([50 + 2 * frame, 100, 90 + 2 * frame, 220], RED, BLACK),
                                    ([300 - 2 * frame, 100, 340 - 2 * frame, 220], RED, BLACK)])
        step = tracker.update([d for _, d in detections], frame / FPS, image=image)
        assert [p.track_id for p in step.pedestrians] == [1, 2]


def test_appearance_settings_are_validated_and_read_from_the_node_parameters():
    for kwargs, name in (({'appearance_weight': 1.5}, 'appearance_weight'),
                         ({'appearance_weight': -0.1}, 'appearance_weight'),
                         ({'appearance_std': 0.0}, 'appearance_std'),
                         ({'appearance_min_similarity': 1.5}, 'appearance_min_similarity'),
                         ({'appearance_rate': 0.0}, 'appearance_rate')):
        with pytest.raises(ValueError, match=name):
            TrackerConfig(**kwargs)
    values = {spec.name: spec.default for spec in PARAMETERS_BY_NAME.values()}
    default = TrackerConfig.from_parameters(values)
    assert default.appearance_weight == PARAMETERS_BY_NAME['tracking_appearance_weight'].default > 0.0
    gate = PARAMETERS_BY_NAME['tracking_appearance_min_similarity'].default
    assert default.appearance_min_similarity == gate > 0.0
    values.update(tracking_appearance_weight=0.0, tracking_appearance_min_similarity=0.2)
    changed = TrackerConfig.from_parameters(values)
    assert (changed.appearance_weight, changed.appearance_min_similarity) == (0.0, 0.2)


def test_clearly_different_clothes_never_take_a_coasting_track():
    # A red person hidden for a few frames; a blue person appears right where the red one is predicted:
    # geometry would hand them the red track, the colour gate gives them a new one.
    def seen(frame: int, shirt: tuple) -> int:
        x = 100.0 + 3.0 * frame  # walking right at 90 px/s
        image, detections = _paint([([x, 60, x + 40, 180], shirt, BLACK)])
        return tracker.update([d for _, d in detections], frame / FPS, image=image).pedestrians[0].track_id

    for min_similarity, expected in ((0.05, [1, 2]), (0.0, [1, 1])):
        tracker = PedestrianTracker(TrackerConfig(appearance_weight=0.3,
                                                  appearance_min_similarity=min_similarity))
        red_ids = [seen(frame, RED) for frame in range(20)]
        assert [red_ids[-1], seen(24, BLUE)] == expected, min_similarity


def test_palette_clothing_dresses_people_alike_and_keeps_the_sequence():
    config = VideoConfig(width=240, height=135, duration_s=1.0, fps=10.0, num_people=12)
    random_truth = [[(p.track_id, p.visibility) for p in truths]
                    for _, truths in render_sequence(sequence_rng(5, 0), config, draw=False)]
    palette = VideoConfig(width=240, height=135, duration_s=1.0, fps=10.0, num_people=12, clothing='palette')
    palette_truth = [[(p.track_id, p.visibility) for p in truths]
                     for _, truths in render_sequence(sequence_rng(5, 0), palette, draw=False)]
    assert palette_truth == random_truth

    def shirts(video: VideoConfig) -> np.ndarray:
        rng = sequence_rng(5, 0)
        _, horizon = still._background(rng, video.height, video.width)
        return np.array([walker.painter.shirt for walker in synthetic_video._walkers(rng, video, horizon)])

    palette_colours = np.array([colour for colour, _ in synthetic_video.CLOTHING_PALETTE['shirt']], float)
    nearest = np.linalg.norm(shirts(palette)[:, None] - palette_colours[None], axis=2).argmin(axis=1)
    assert len(set(nearest.tolist())) < 12  # some of the 12 people wear the same colour
    assert len({tuple(c) for c in shirts(config).tolist()}) == 12  # random clothing: all differ
    with pytest.raises(ValueError, match='clothing'):
        VideoConfig(clothing='uniform')
