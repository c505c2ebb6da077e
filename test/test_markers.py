"""Skeleton markers: back-projection against the pinhole model, marker layout, colours and cleanup."""
from __future__ import annotations

import numpy as np
import pytest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from occluded_ppe_ros.draw import OCCLUDED_COLOR, VISIBLE_COLOR
from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_ros.ros.markers import Intrinsics, back_project, skeleton_markers
from occluded_ppe_ros.skeleton import LIMBS


def pedestrian(scores, occluded) -> Pedestrian:
    keypoints = np.stack([np.arange(13) * 10.0 + 100.5, np.arange(13) * 5.0 + 50.5], axis=1)
    keypoints = keypoints.astype(np.float32)
    return Pedestrian(box=np.array([90, 40, 240, 120], np.float32), class_id=0, class_name='pedestrian',
                      score=0.9, mask=np.zeros((2, 2), bool), mask_origin=np.array([0, 0]),
                      keypoints=keypoints, keypoint_scores=np.asarray(scores, np.float32),
                      keypoint_occluded=np.asarray(occluded, bool))


def test_back_projection_inverts_the_pinhole_projection():
    intrinsics = Intrinsics(fx=500.0, fy=400.0, cx=319.5, cy=239.5)
    # The centre of pixel (row 239, column 319) is the principal point: straight ahead.
    np.testing.assert_allclose(back_project([[320.0, 240.0]], intrinsics, 4.0), [[0.0, 0.0, 4.0]])
    # One focal length to the right and half a focal length down at depth 2: X = 2, Y = 1.
    np.testing.assert_allclose(back_project([[820.0, 440.0]], intrinsics, 2.0), [[2.0, 1.0, 2.0]])
    points = np.random.default_rng(0).uniform(0, 640, size=(20, 2))
    xyz = back_project(points, intrinsics, 3.0)
    u = intrinsics.fx * xyz[:, 0] / xyz[:, 2] + intrinsics.cx + 0.5
    v = intrinsics.fy * xyz[:, 1] / xyz[:, 2] + intrinsics.cy + 0.5
    np.testing.assert_allclose(np.stack([u, v], axis=1), points)


def test_camera_info_rescaled_to_the_image_size():
    k = [1000.0, 0.0, 639.5, 0.0, 1000.0, 479.5, 0.0, 0.0, 1.0]
    same = Intrinsics.from_camera_info(k, 1280, 960, 1280, 960)
    assert same == Intrinsics(1000.0, 1000.0, 639.5, 479.5)
    half = Intrinsics.from_camera_info(k, 1280, 960, 640, 480)
    assert half == Intrinsics(500.0, 500.0, 319.5, 239.5)
    with pytest.raises(ValueError, match='non-positive focal lengths fx=0.0'):
        Intrinsics.from_camera_info([0.0] * 9, 640, 480, 640, 480)


def test_virtual_intrinsics_span_depth_metres_across_the_image():
    intrinsics = Intrinsics.virtual(640, 480)
    xyz = back_project([[0.0, 240.0], [640.0, 240.0]], intrinsics, 5.0)
    assert xyz[1, 0] - xyz[0, 0] == pytest.approx(5.0)
    np.testing.assert_allclose(xyz[:, 1], 0.0, atol=1e-12)


def test_markers_layout_colours_and_deleteall():
    scores = [0.9] * 13
    scores[12] = 0.1  # right ankle not present: no sphere, no limb (10, 12)
    occluded = [False] * 13
    occluded[9] = True  # left knee occluded: orange, and so are limbs (7, 9) and (9, 11)
    stamp = Header(frame_id='cam_optical')
    stamp.stamp.sec = 5
    intrinsics = Intrinsics(fx=500.0, fy=500.0, cx=319.5, cy=239.5)
    people = [pedestrian(scores, occluded), pedestrian([0.0] * 13, [False] * 13)]
    array = skeleton_markers(people, stamp, intrinsics, depth=4.0, keypoint_threshold=0.3)
    first = array.markers[0]
    assert first.action == Marker.DELETEALL and first.header == stamp
    assert len(array.markers) == 3
    joints, limbs = array.markers[1], array.markers[2]
    # The second pedestrian has no joint above the threshold: only the first one's points are listed.
    assert joints.type == Marker.SPHERE_LIST and joints.ns == 'ppe_joints' and joints.id == 0
    assert limbs.type == Marker.LINE_LIST and limbs.ns == 'ppe_limbs' and limbs.id == 0
    assert joints.header == stamp and limbs.header == stamp
    assert len(joints.points) == 12 and len(joints.colors) == 12
    expected = back_project(people[0].keypoints, intrinsics, 4.0)
    np.testing.assert_allclose([(p.x, p.y, p.z) for p in joints.points], expected[:12])
    orange = tuple(c / 255.0 for c in OCCLUDED_COLOR)
    green = tuple(c / 255.0 for c in VISIBLE_COLOR)
    colours = [(c.r, c.g, c.b) for c in joints.colors]
    assert colours[9] == pytest.approx(orange) and colours[0] == pytest.approx(green)
    drawn = [limb for limb in LIMBS if 12 not in limb]
    assert len(limbs.points) == 2 * len(drawn) == len(limbs.colors)
    for index, limb in enumerate(drawn):
        colour = (limbs.colors[2 * index].r, limbs.colors[2 * index].g, limbs.colors[2 * index].b)
        assert colour == pytest.approx(orange if 9 in limb else green), limb
    # Sizes are given in image pixels: 8 px at fx = 500 and 4 m is 0.064 m.
    assert joints.scale.x == pytest.approx(8 * 4.0 / 500.0)
    assert limbs.scale.x == pytest.approx(3 * 4.0 / 500.0)
    assert joints.pose.orientation.w == 1.0


def test_empty_frame_still_clears_old_skeletons():
    array = skeleton_markers([], Header(frame_id='cam'), Intrinsics.virtual(64, 48), 5.0, 0.3)
    assert [m.action for m in array.markers] == [Marker.DELETEALL]


def test_two_pedestrians_share_one_sphere_list_and_one_line_list():
    intrinsics = Intrinsics.virtual(640, 480)
    first, second = pedestrian([0.9] * 13, [False] * 13), pedestrian([0.9] * 13, [True] * 13)
    second.keypoints[:, 0] += 200.0
    array = skeleton_markers([first, second], Header(frame_id='cam'), intrinsics, 3.0, 0.3)
    joints, limbs = array.markers[1:]
    assert len(joints.points) == 26 and len(limbs.points) == 4 * len(LIMBS)
    np.testing.assert_allclose([(p.x, p.y, p.z) for p in joints.points[13:]],
                               back_project(second.keypoints, intrinsics, 3.0))
    orange = tuple(c / 255.0 for c in OCCLUDED_COLOR)
    assert all((c.r, c.g, c.b) == pytest.approx(orange) for c in joints.colors[13:])


def test_track_markers_carry_the_track_id_a_stable_colour_and_deletes():
    from occluded_ppe_ros.ros.markers import track_color, track_skeleton_markers

    first, second = pedestrian([0.9] * 13, [False] * 13), pedestrian([0.9] * 13, [True] * 13)
    first.track_id, second.track_id = 4, 9
    header = Header(frame_id='cam')
    array = track_skeleton_markers([first, second], header, Intrinsics.virtual(640, 480), 3.0, 0.3,
                                   deleted_track_ids=[2], clear_first=True)
    actions = [(m.action, m.ns, m.id) for m in array.markers[:3]]
    assert actions == [(Marker.DELETEALL, '', 0), (Marker.DELETE, 'ppe_joints', 2),
                       (Marker.DELETE, 'ppe_limbs', 2)]
    drawn = array.markers[3:]
    assert [(m.type, m.ns, m.id) for m in drawn] == [
        (Marker.SPHERE_LIST, 'ppe_joints', 4), (Marker.LINE_LIST, 'ppe_limbs', 4),
        (Marker.SPHERE_LIST, 'ppe_joints', 9), (Marker.LINE_LIST, 'ppe_limbs', 9)]
    # Limbs take the track's colour (opaque when both ends are visible, translucent when occluded);
    # joints keep the visible / occluded colours.
    own = tuple(c / 255.0 for c in track_color(4))
    assert all((c.r, c.g, c.b, c.a) == pytest.approx((*own, 1.0)) for c in drawn[1].colors)
    assert all(c.a == pytest.approx(0.35) for c in drawn[3].colors)
    orange = tuple(c / 255.0 for c in OCCLUDED_COLOR)
    assert all((c.r, c.g, c.b) == pytest.approx(orange) for c in drawn[2].colors)
    # The same id always gets the same colour; neighbouring ids get clearly different ones.
    assert track_color(4) == track_color(4)
    colours = [np.array(track_color(i), float) for i in range(1, 21)]
    assert min(np.abs(a - b).max() for a, b in zip(colours, colours[1:])) > 60
    # A frame without deletions or clearing only adds.
    again = track_skeleton_markers([first], header, Intrinsics.virtual(640, 480), 3.0, 0.3)
    assert {m.action for m in again.markers} == {Marker.ADD}


def test_track_markers_of_a_frame_with_nothing_to_draw_or_delete_name_the_frame():
    """Tracked and nobody drawn, no track ended: one DELETEALL stamped with the frame (never an empty array,
    which has no header and so cannot be matched to its frame)."""
    from occluded_ppe_ros.ros.markers import track_skeleton_markers

    stamp = Header(frame_id='cam')
    stamp.stamp.sec = 11
    hidden = pedestrian([0.0] * 13, [False] * 13)  # no joint above the threshold: nothing to draw
    hidden.track_id = 3
    for people in ([], [hidden]):
        array = track_skeleton_markers(people, stamp, Intrinsics.virtual(64, 48), 5.0, 0.3)
        assert [(m.action, m.header) for m in array.markers] == [(Marker.DELETEALL, stamp)]
    # With something to delete, the DELETEs carry the header and no DELETEALL is added.
    array = track_skeleton_markers([], stamp, Intrinsics.virtual(64, 48), 5.0, 0.3, deleted_track_ids=[3])
    assert [m.action for m in array.markers] == [Marker.DELETE, Marker.DELETE]
