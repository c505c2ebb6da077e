"""Pedestrian tracker (no ROS): the batched Kalman filter against filterpy, association, coasting
through full occlusions, joints carried forward, id bookkeeping, and MOTChallenge text."""
from __future__ import annotations

import math

import numpy as np
import pytest
from filterpy.common import Q_continuous_white_noise
from filterpy.kalman import KalmanFilter

from occluded_ppe_ros.inference.results import NO_TRACK, Pedestrian
from occluded_ppe_ros.tracking import MotionNoise, PedestrianTracker, TrackerConfig
from occluded_ppe_ros.tracking import kalman
from occluded_ppe_ros.tracking.mot import gt_line, mot_line, read_mot, write_lines
from occluded_ppe_ros.tracking.tracker import box_iou

FPS = 30.0


def _filterpy_reference(measurement: np.ndarray, noise: MotionNoise) -> KalmanFilter:
    """filterpy's KalmanFilter set up as kalman.initiate / predict / update describe the model."""
    reference = KalmanFilter(dim_x=8, dim_z=4)
    state, covariance = kalman.initiate(measurement[None], noise)
    reference.x = state[0].copy()
    reference.P = covariance[0].copy()
    reference.H = np.eye(4, 8)
    return reference


def test_batched_kalman_filter_matches_filterpy_step_by_step():
    noise = MotionNoise(measurement_std=0.06, acceleration_std=0.8, initial_velocity_std=1.2)
    rng = np.random.default_rng(3)
    first = np.array([[100.0, 200.0, 40.0, 120.0], [300.0, 180.0, 30.0, 90.0]])
    state, covariance = kalman.initiate(first, noise)
    references = [_filterpy_reference(m, noise) for m in first]
    for _ in range(12):
        dt = float(rng.uniform(0.02, 0.4))
        heights = np.maximum(state[:, 3], 1.0)
        state, covariance = kalman.predict(state, covariance, dt, noise)
        measurements = state[:, :4] + rng.normal(0, 3.0, (2, 4))
        r_heights = np.maximum(state[:, 3], 1.0)
        state, covariance = kalman.update(state, covariance, measurements, noise)
        for row, reference in enumerate(references):
            reference.F = kalman.transition(dt)
            q = np.zeros((8, 8))
            pair = Q_continuous_white_noise(dim=2, dt=dt, spectral_density=(noise.acceleration_std
                                                                            * heights[row]) ** 2)
            for axis in range(4):
                q[np.ix_([axis, axis + 4], [axis, axis + 4])] = pair
            reference.predict(Q=q)
            reference.update(measurements[row], R=np.eye(4) * (noise.measurement_std * r_heights[row]) ** 2)
            np.testing.assert_allclose(state[row], reference.x, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(covariance[row], reference.P, rtol=1e-9, atol=1e-9)


def test_box_iou_against_hand_computed_values():
    iou = box_iou([[0, 0, 10, 10], [0, 0, 0, 0]], [[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(iou, [[50 / 150, 0.0, 1.0], [0.0, 0.0, 0.0]])


def _person(box, keypoints=None, occluded=None, score=0.9) -> Pedestrian:
    box = np.asarray(box, np.float32)
    occluded = np.zeros(13, bool) if occluded is None else np.asarray(occluded, bool)
    if keypoints is None:  # joints spread over the box: a column of 13 points down its middle
        xs = np.full(13, (box[0] + box[2]) / 2) + np.linspace(-5, 5, 13)
        ys = np.linspace(box[1] + 5, box[3] - 5, 13)
        keypoints = np.stack([xs, ys], axis=1)
    return Pedestrian(box=box, class_id=0, class_name='pedestrian', score=score,
                      mask=np.zeros((1, 1), bool), mask_origin=np.zeros(2, int),
                      keypoints=np.asarray(keypoints, np.float32),
                      keypoint_scores=np.full(13, 0.8, np.float32),
                      keypoint_occluded=occluded)


def _walker(start_x: float, speed_px_s: float, t: float, y: float = 100.0) -> list[float]:
    x = start_x + speed_px_s * t
    return [x, y, x + 40.0, y + 120.0]


def test_ids_stay_with_people_who_cross_and_get_fresh_ids_when_new():
    tracker = PedestrianTracker()
    assert _person([0, 0, 10, 10]).track_id == NO_TRACK
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    for frame in range(60):
        t = frame / FPS
        # Two people walking toward each other, one row apart (their boxes overlap while they pass).
        people = [_person(_walker(50, 120, t)), _person(_walker(300, -120, t, y=130))]
        tracked = tracker.update(people, t).pedestrians
        for index, pedestrian in enumerate(tracked):
            seen[index].add(pedestrian.track_id)
    assert seen == {0: {1}, 1: {2}}
    third = tracker.update([_person([600, 100, 640, 220])], 60 / FPS).pedestrians[0]
    assert third.track_id == 3


def test_full_occlusion_shorter_than_max_coast_keeps_the_id_longer_loses_it():
    for gap_s, max_coast_s, same in ((0.9, 1.0, True), (1.3, 1.0, False)):
        tracker = PedestrianTracker(TrackerConfig(max_coast_s=max_coast_s))
        ids, ended = [], []
        frame = 0
        while frame / FPS < 3.0:
            t = frame / FPS
            hidden = 1.0 <= t < 1.0 + gap_s  # behind a van: no detection at all
            people = [] if hidden else [_person(_walker(20, 150, t))]
            step = tracker.update(people, t)
            ids += [p.track_id for p in step.pedestrians]
            ended += step.ended_track_ids
            frame += 1
        assert (len(set(ids)) == 1) is same, (gap_s, sorted(set(ids)))
        assert ended == ([] if same else [1])


def test_reappearance_far_from_the_prediction_starts_a_new_track():
    tracker = PedestrianTracker(TrackerConfig(max_coast_s=2.0))
    for frame in range(30):
        tracker.update([_person(_walker(20, 150, frame / FPS))], frame / FPS)
    # Walking right at 150 px/s, predicted near x = 20 + 150 * 1.5 = 245 after the gap; someone at 600.
    step = tracker.update([_person([600, 100, 640, 220])], 1.5)
    assert step.pedestrians[0].track_id == 2
    assert step.step.coasting_track_ids == [1]


def test_hidden_joints_carried_forward_from_where_they_were_last_seen():
    tracker = PedestrianTracker()
    knee = 9
    for frame in range(10):
        t = frame / FPS
        tracker.update([_person(_walker(20, 60, t))], t)
    t = 10 / FPS
    box = _walker(20, 60, t)
    seen = _person(box)
    expected_knee = seen.keypoints[knee].copy()
    guessed = seen.keypoints.copy()
    guessed[knee] += [25.0, -30.0]  # the network's guess for the hidden knee is off
    occluded = np.zeros(13, bool)
    occluded[knee] = True
    out = tracker.update([_person(box, guessed, occluded)], t).pedestrians[0]
    np.testing.assert_allclose(out.keypoints[knee], expected_knee, atol=1e-3)
    np.testing.assert_allclose(np.delete(out.keypoints, knee, 0), np.delete(guessed, knee, 0))
    plain = PedestrianTracker(TrackerConfig(carry_occluded_joints=False))
    plain.update([_person(box)], 0.0)
    kept = plain.update([_person(box, guessed, occluded)], 1 / FPS).pedestrians[0]
    np.testing.assert_allclose(kept.keypoints, guessed)


def test_stamp_going_backwards_ends_every_track():
    tracker = PedestrianTracker()
    tracker.update([_person([0, 0, 40, 120]), _person([100, 0, 140, 120])], 5.0)
    step = tracker.update([_person([0, 0, 40, 120])], 1.0)
    assert sorted(step.ended_track_ids) == [1, 2]
    assert step.pedestrians[0].track_id == 3


def test_config_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match='max_coast_s must be >= 0'):
        TrackerConfig(max_coast_s=-1.0)
    with pytest.raises(ValueError, match='iou_weight must be in'):
        TrackerConfig(iou_weight=1.5)
    with pytest.raises(ValueError, match='keypoint_tolerance must be > 0'):
        TrackerConfig(keypoint_tolerance=0.0)


def test_mot_lines_round_trip(tmp_path):
    path = write_lines(tmp_path / 'seq' / 'tracks.txt',
                       [mot_line(1, 7, [10, 20, 50, 140], 0.9), gt_line(2, 3, [0, 0, 4, 8], 0.25)])
    rows = read_mot(path)
    np.testing.assert_allclose(rows[0, :7], [1, 7, 10, 20, 40, 120, 0.9])
    np.testing.assert_allclose(rows[1, :9], [2, 3, 0, 0, 4, 8, 1, 1, 0.25])
    (tmp_path / 'bad.txt').write_text('1,2,3\n')
    with pytest.raises(ValueError, match='bad.txt:1: 3 fields'):
        read_mot(tmp_path / 'bad.txt')


def test_person_walking_in_at_the_image_border_keeps_one_id_as_the_box_grows():
    # Entering from the left: the box, cut by the border, grows from a 40-px-high arm to a 120-px body in
    # one frame. The height gate would split that into two tracks; at the border it does not apply.
    ids = {}
    for image_size in (None, (240, 320)):
        tracker = PedestrianTracker()
        seen = set()
        for frame in range(20):
            t = frame / FPS
            right = 5.0 + 4.0 * frame
            box = [0.0, 100.0, right, 140.0] if frame < 4 else [0.0, 60.0, right, 180.0]
            seen |= {p.track_id for p in tracker.update([_person(box)], t, image_size).pedestrians}
        ids[image_size] = seen
    assert len(ids[None]) == 2 and len(ids[(240, 320)]) == 1, ids


def test_coasting_track_keeps_its_size_and_is_gated_by_its_motion():
    tracker = PedestrianTracker(TrackerConfig(max_coast_s=2.0))
    for frame in range(15):  # walking right at 120 px/s while the box widens by 60 px/s (a stride)
        t = frame / FPS
        x = 20.0 + 4.0 * frame
        tracker.update([_person([x, 100.0, x + 40.0 + 2.0 * frame, 220.0])], t)
    width_before = tracker.predicted_boxes[0, 2] - tracker.predicted_boxes[0, 0]
    tracker.update([], 1.5)  # a second of occlusion: the box moves on but keeps its size
    box = tracker.predicted_boxes[0]
    assert abs((box[2] - box[0]) - width_before) < 0.1 * 60.0 + 1.0  # not the 60 px/s x 1 s of its rate
    assert box[0] > 20.0 + 4.0 * 14 + 100.0  # moved on with the walking speed
    centre = (box[0] + box[2]) / 2.0
    # Someone far behind the prediction is not this person (outside the motion gate, which after a second
    # of coasting spans a few box widths) ...
    behind = _person([centre - 500.0, 100.0, centre - 430.0, 220.0])
    assert tracker.centre_distance(behind.box[None].astype(np.float64))[0, 0] > 18.0
    # ... someone at the predicted place is.
    step = tracker.update([_person([box[0], 100.0, box[2], 220.0]), behind], 1.5 + 1 / FPS)
    assert [p.track_id for p in step.pedestrians] == [1, 2]


def test_reupdate_after_occlusion_gives_the_velocity_of_the_hidden_path():
    # Walking right at 150 px/s, then hidden for 0.4 s during which the person slows to 90 px/s: the id
    # survives the change of speed, and the re-update along the path taken while hidden leaves the
    # occlusion with the new speed, the size rates at rest (a coasting box keeps its size).
    for steps in (0, 4):
        tracker = PedestrianTracker(TrackerConfig(reupdate_steps=steps, max_coast_s=2.0))
        x = 20.0
        ids = set()
        for frame in range(60):
            t = frame / FPS
            hidden = 30 <= frame < 42
            x += (90.0 if frame >= 30 else 150.0) / FPS
            step = tracker.update([] if hidden else [_person([x, 100.0, x + 40.0, 220.0])], t)
            ids |= {p.track_id for p in step.pedestrians}
            if frame == 42:
                velocity = tracker._state[0, 4:].copy()
        assert ids == {1}, (steps, ids)
        if steps:
            assert abs(velocity[0] - 90.0) < 15.0 and np.all(np.abs(velocity[1:]) < 5.0), velocity


def test_reappearing_person_goes_to_the_coasting_track_of_their_height():
    # Two people walking right side by side at the same speed, 120 and 100 px tall, hidden together (one
    # van); only the shorter one is detected first when they come out, between the two tracks' predicted
    # boxes (the detector's boxes jitter), overlapping the tall one's a little more.
    for weight, expected in ((0.0, None), (0.2, 2)):
        tracker = PedestrianTracker(TrackerConfig(height_weight=weight))
        for frame in range(30):
            t = frame / FPS
            x = 20.0 + 100.0 * t
            tall, short = [x, 100.0, x + 40.0, 220.0], [x + 16.0, 112.0, x + 50.0, 212.0]
            tracker.update([_person(tall), _person(short)], t)
        t = 50 / FPS
        x = 20.0 + 100.0 * t
        step = tracker.update([_person([x + 6.0, 110.0, x + 40.0, 210.0])], t)
        if expected is not None:
            assert step.pedestrians[0].track_id == expected
        else:
            assert step.pedestrians[0].track_id == 1  # without the height term: the IoU decides


def test_track_lost_while_walking_in_at_the_border_coasts_at_the_walking_speed():
    # Entering from the left at 150 px/s: while cut by the border the box's centre moves at 75 px/s. Hidden
    # right after that (behind a van by the border), the track must coast at 150 px/s to meet the person.
    tracker = PedestrianTracker(TrackerConfig(max_coast_s=2.0))
    ids = set()
    for frame in range(40):
        t = frame / FPS
        right = 5.0 + 150.0 * t
        hidden = 8 <= frame < 26
        box = [max(0.0, right - 40.0), 100.0, right, 220.0]
        step = tracker.update([] if hidden else [_person(box)], t, (240, 640))
        ids |= {p.track_id for p in step.pedestrians}
    assert ids == {1}, ids


def test_new_settings_are_validated_by_name():
    for kwargs, name in (({'height_weight': 1.5}, 'height_weight'), ({'height_std': 0.0}, 'height_std'),
                         ({'reupdate_steps': -1}, 'reupdate_steps'),
                         ({'motion_weight': 1.5}, 'motion_weight'),
                         ({'border_width_ratio': -0.1}, 'border_width_ratio')):
        with pytest.raises(ValueError, match=name):
            TrackerConfig(**kwargs)


def _stride_box(centre_x: float, t: float) -> list[float]:
    """A walker's full box, 150 px tall and 50 px wide on average, its width swinging by +-12 px with the
    stride (one cycle a second), so its centre velocity over a short span is not the walking speed."""
    half = 25.0 + 12.0 * math.sin(2.0 * math.pi * t)
    return [centre_x - half, 100.0, centre_x + half, 250.0]


def test_young_track_entering_at_the_border_keeps_its_id_behind_a_van():
    # Walking in from the left at 100 px/s: for the first frames the box is cut by the border (its centre
    # moves at half speed), then the person is seen whole for a few frames only and hides behind a van for
    # 0.67 s. The young track's velocity is still off, so the person reappears well off the coasted box:
    # inside the motion gate, but with a box/keypoint similarity below the old floor of 0.3, which split
    # the person into two tracks.
    def ids_seen(config: TrackerConfig) -> set[int]:
        tracker = PedestrianTracker(config)
        ids = set()
        for frame in range(75):
            t = frame / FPS
            box = _stride_box(-30.0 + 100.0 * t, t)
            box[0] = max(0.0, box[0])  # cut by the left image border
            hidden = 20 <= frame < 40 or box[2] <= 0.0
            step = tracker.update([] if hidden else [_person(box)], t, (300, 640))
            ids |= {p.track_id for p in step.pedestrians}
        return ids

    assert ids_seen(TrackerConfig()) == {1}
    assert ids_seen(TrackerConfig(min_similarity=0.3, border_width_ratio=0.0)) == {1, 2}
    # Tracked by the cut box's free edge (border_width_ratio), the young track's velocity is right and
    # the person reappears on the coasted box: kept even with the old floor.
    assert ids_seen(TrackerConfig(min_similarity=0.3)) == {1}


def test_track_of_a_person_walking_in_moves_with_the_free_edge_of_the_cut_box():
    # An 80 x 200 px person walking in from the left at 90 px/s: for 12 frames only their right part is in
    # the image, a box cut by the border whose centre moves at 45 px/s. Tracked as the free (right) edge
    # plus a typical width (border_width_ratio), the track's velocity is the person's.
    def track_after_walking_in(ratio: float) -> tuple[float, np.ndarray]:
        tracker = PedestrianTracker(TrackerConfig(border_width_ratio=ratio))
        for frame in range(12):
            t = frame / FPS
            right = 2.0 + 90.0 * t
            tracker.update([_person([max(0.0, right - 80.0), 100.0, right, 300.0])], t, (400, 640))
        return float(tracker._state[0, 4]), tracker.predicted_boxes[0]

    velocity, box = track_after_walking_in(0.2)
    assert velocity == pytest.approx(90.0, rel=0.05)
    right = 2.0 + 90.0 * 11 / FPS
    assert box[2] == pytest.approx(right, abs=2.0) and box[2] - box[0] == pytest.approx(0.2 * 200.0, abs=1.0)
    velocity, _ = track_after_walking_in(0.0)
    assert velocity == pytest.approx(45.0, rel=0.05)  # the cut box's centre: half the walking speed


def test_detection_between_two_tracks_goes_to_the_one_it_is_fewer_deviations_from():
    # Person 1 stands at x 80-120 and is seen every frame; person 2 stood at x 140-180 and has been hidden
    # for 20 frames, so their track's position is uncertain. A detection at x 106-146 overlaps person 1's
    # box a little more (24 px off), but is 2.3 standard deviations from their track and under one from the
    # coasting one (34 px off): the motion term gives it to the coasting track, the box overlap alone not.
    def id_of_detection(weight: float) -> int:
        tracker = PedestrianTracker(TrackerConfig(motion_weight=weight))
        for frame in range(30):
            people = [_person([80.0, 100.0, 120.0, 300.0])]
            if frame < 10:
                people.append(_person([140.0, 100.0, 180.0, 300.0]))
            tracker.update(people, frame / FPS)
        distances = tracker.centre_distance(np.array([[106.0, 100.0, 146.0, 300.0]]))[:, 0]
        assert distances[0] > 4.0 > 1.0 > distances[1]
        return tracker.update([_person([106.0, 100.0, 146.0, 300.0])], 30 / FPS).pedestrians[0].track_id

    assert id_of_detection(0.2) == 2
    assert id_of_detection(0.0) == 1
