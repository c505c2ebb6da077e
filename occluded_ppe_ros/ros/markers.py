"""RViz skeleton markers: joints as sphere lists, limbs as line lists, in the camera's optical frame.

Each image point is back-projected through the camera intrinsics onto the plane Z = `depth` metres in
the optical frame of the image's header (x right, y down, z forward: REP-103's `_optical` convention),
so that RViz's Camera display, which projects markers with the same camera_info, draws them exactly on
top of the image. Without camera_info the node uses `Intrinsics.virtual`: a pinhole with focal length =
image width in pixels and the principal point at the image centre, i.e. the image spans a rectangle
`depth` metres wide at Z = `depth` (the documented pixel-scaled frame: 1 px = depth / width metres).

Points of the results contract use the continuous convention (pixel (r, c) has its centre at
(c + 0.5, r + 0.5)); camera_info's K uses pixel centres at integers, hence the 0.5 shift.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from occluded_ppe_ros.draw import (OCCLUDED_COLOR, STATE_NOT_PRESENT, STATE_OCCLUDED, STATE_VISIBLE,
                                   VISIBLE_COLOR)
from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_ros.skeleton import LIMBS, NUM_KEYPOINTS

JOINT_NAMESPACE = 'ppe_joints'
LIMB_NAMESPACE = 'ppe_limbs'


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in camera_info's convention (pixel centres at integer coordinates), pixels."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_camera_info(cls, k: Sequence[float], info_width: int, info_height: int,
                         image_width: int, image_height: int) -> Intrinsics:
        """From CameraInfo's row-major K, rescaled when the image's size differs from the calibration's.

        Raises:
            ValueError: K has a non-positive focal length (an uncalibrated camera publishes zeros).
        """
        fx, cx, fy, cy = float(k[0]), float(k[2]), float(k[4]), float(k[5])
        if fx <= 0 or fy <= 0:
            raise ValueError(f'camera_info K has non-positive focal lengths fx={fx}, fy={fy}')
        scale_x = image_width / info_width if info_width > 0 else 1.0
        scale_y = image_height / info_height if info_height > 0 else 1.0
        # A pixel centre maps to a pixel centre under resizing: (u + 0.5) * s - 0.5.
        return cls(fx * scale_x, fy * scale_y, (cx + 0.5) * scale_x - 0.5, (cy + 0.5) * scale_y - 0.5)

    @classmethod
    def virtual(cls, image_width: int, image_height: int) -> Intrinsics:
        """The documented stand-in without camera_info: f = image width, principal point at the centre."""
        return cls(float(image_width), float(image_width), image_width / 2.0 - 0.5, image_height / 2.0 - 0.5)


def back_project(points_xy: np.ndarray, intrinsics: Intrinsics, depth: float) -> np.ndarray:
    """Image points onto the plane Z = depth of the optical frame.

    Args:
        points_xy: float [N, 2] x, y in image pixels (continuous convention).
        intrinsics: the camera's.
        depth: metres, > 0.

    Returns:
        float64 [N, 3] X, Y, Z in metres (optical frame: x right, y down, z forward).
    """
    points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    u = points[:, 0] - 0.5
    v = points[:, 1] - 0.5
    x = (u - intrinsics.cx) * depth / intrinsics.fx
    y = (v - intrinsics.cy) * depth / intrinsics.fy
    return np.stack([x, y, np.full_like(x, depth)], axis=1)


def _color(rgb: tuple[int, int, int]) -> ColorRGBA:
    return ColorRGBA(r=rgb[0] / 255.0, g=rgb[1] / 255.0, b=rgb[2] / 255.0, a=1.0)


def _marker_pair(header: Header, marker_id: int, color: ColorRGBA, joint_diameter_m: float,
                 limb_width_m: float) -> tuple[Marker, Marker]:
    """An empty joint SPHERE_LIST (ns ppe_joints) and limb LINE_LIST (ns ppe_limbs) with id `marker_id`."""
    joints = Marker(header=header, ns=JOINT_NAMESPACE, id=marker_id, type=Marker.SPHERE_LIST,
                    action=Marker.ADD, color=color)
    joints.pose.orientation.w = 1.0
    joints.scale.x = joints.scale.y = joints.scale.z = float(joint_diameter_m)
    limbs = Marker(header=header, ns=LIMB_NAMESPACE, id=marker_id, type=Marker.LINE_LIST,
                   action=Marker.ADD, color=color)
    limbs.pose.orientation.w = 1.0
    limbs.scale.x = float(limb_width_m)
    return joints, limbs


def _copy_pair(templates: tuple[Marker, Marker], marker_id: int, color: ColorRGBA) -> tuple[Marker, Marker]:
    """`_marker_pair` for another id and colour by shallow copies of a frame's pair (~5x faster).

    The copies share the templates' header, pose, scale and other unset fields, all equal within a frame
    and never changed after; id, colour and the point and colour lists are their own.
    """
    pair = copy.copy(templates[0]), copy.copy(templates[1])
    for marker in pair:
        marker.id, marker.color, marker.points, marker.colors = marker_id, color, [], []
    return pair


def _frame_skeletons(pedestrians: Sequence[Pedestrian], intrinsics: Intrinsics, depth: float,
                     keypoint_threshold: float) -> tuple[list[list[int]], list[list[Point | None]]]:
    """Every pedestrian's joint states (as `keypoint_states`) and back-projected Points, in one numpy pass.

    Returns:
        (states, points): per pedestrian 13 states and 13 Points (None where the joint is NOT_PRESENT).
    """
    if not pedestrians:
        return [], []
    scores = np.stack([np.asarray(p.keypoint_scores, dtype=np.float32).reshape(-1) for p in pedestrians])
    occluded = np.stack([np.asarray(p.keypoint_occluded, dtype=bool).reshape(-1) for p in pedestrians])
    if scores.shape[1] != NUM_KEYPOINTS or occluded.shape != scores.shape:
        raise ValueError(f'expected {NUM_KEYPOINTS} keypoint scores and flags per pedestrian, got '
                         f'{scores.shape} and {occluded.shape}')
    states = np.where(occluded, STATE_OCCLUDED, STATE_VISIBLE).astype(np.uint8)
    states[scores < keypoint_threshold] = STATE_NOT_PRESENT
    xyz = back_project(np.concatenate([p.keypoints for p in pedestrians]), intrinsics, depth)
    rows = xyz.reshape(len(pedestrians), NUM_KEYPOINTS, 3).tolist()
    state_rows = states.tolist()
    points = [[Point(x=x, y=y, z=z) if state else None for (x, y, z), state in zip(row, person_states)]
              for row, person_states in zip(rows, state_rows)]
    return state_rows, points


def _add_skeleton(joints: Marker, limbs: Marker, points: list[Point | None], states: list[int],
                  joint_colors: tuple[ColorRGBA, ColorRGBA],
                  limb_colors: tuple[ColorRGBA, ColorRGBA]) -> None:
    """Append one pedestrian's drawn joints and limbs to the two markers.

    Colours are (visible, occluded) pairs; a limb counts as occluded when either end is. Joints that are
    NOT_PRESENT, and limbs with such an end, are left out.
    """
    visible_joint, occluded_joint = joint_colors
    for point, state in zip(points, states):
        if state != STATE_NOT_PRESENT:
            joints.points.append(point)
            joints.colors.append(occluded_joint if state == STATE_OCCLUDED else visible_joint)
    visible_limb, occluded_limb = limb_colors
    limb_points, limb_colors_out = limbs.points, limbs.colors
    for first, second in LIMBS:
        first_state, second_state = states[first], states[second]
        if first_state == STATE_NOT_PRESENT or second_state == STATE_NOT_PRESENT:
            continue
        color = (occluded_limb if first_state == STATE_OCCLUDED or second_state == STATE_OCCLUDED
                 else visible_limb)
        limb_points += (points[first], points[second])
        limb_colors_out += (color, color)


def skeleton_markers(pedestrians: Sequence[Pedestrian], header: Header, intrinsics: Intrinsics,
                     depth: float, keypoint_threshold: float, joint_diameter_px: float = 8.0,
                     limb_width_px: float = 3.0) -> MarkerArray:
    """The frame's skeletons as markers, preceded by a DELETEALL that removes the previous frame's.

    All pedestrians share one sphere list and one line list (per-point colours carry the states): two
    markers per frame instead of two per pedestrian keeps the message cheap to build in Python.

    Args:
        pedestrians: the frame's results (input-image pixels).
        header: the input image's header (frame_id = the camera's optical frame).
        intrinsics: of the input image (`Intrinsics.from_camera_info` or `Intrinsics.virtual`).
        depth: metres; the plane the skeletons are drawn on.
        keypoint_threshold: joints scoring below it are not drawn, nor their limbs.
        joint_diameter_px: sphere diameter as it appears in the image, pixels.
        limb_width_px: line width as it appears in the image, pixels.

    Returns:
        MarkerArray: [DELETEALL, SPHERE_LIST (ns ppe_joints, id 0), LINE_LIST (ns ppe_limbs, id 0)]; each
        list is left out when empty. Colours per point: green visible, orange occluded (a limb is orange
        if either end is occluded).
    """
    metres_per_pixel = depth / intrinsics.fx
    message = MarkerArray()
    message.markers.append(Marker(header=header, action=Marker.DELETEALL))
    visible, occluded = _color(VISIBLE_COLOR), _color(OCCLUDED_COLOR)
    joints, limbs = _marker_pair(header, 0, visible, joint_diameter_px * metres_per_pixel,
                                 limb_width_px * metres_per_pixel)
    for states, points in zip(*_frame_skeletons(pedestrians, intrinsics, depth, keypoint_threshold)):
        _add_skeleton(joints, limbs, points, states, (visible, occluded), (visible, occluded))
    for marker in (joints, limbs):
        if marker.points:
            message.markers.append(marker)
    return message


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable RGB colour per track id: hues spaced by the golden angle, so neighbours differ clearly."""
    hue = (int(track_id) * 0.618033988749895) % 1.0
    sector, fraction = int(hue * 6.0), (hue * 6.0) % 1.0
    high, low, rising, falling = 235, 60, int(60 + 175 * fraction), int(235 - 175 * fraction)
    return [(high, rising, low), (falling, high, low), (low, high, rising), (low, falling, high),
            (rising, low, high), (high, low, falling)][sector % 6]


def track_skeleton_markers(pedestrians: Sequence[Pedestrian], header: Header, intrinsics: Intrinsics,
                           depth: float, keypoint_threshold: float, deleted_track_ids: Sequence[int] = (),
                           clear_first: bool = False, joint_diameter_px: float = 8.0,
                           limb_width_px: float = 3.0, occluded_alpha: float = 0.35) -> MarkerArray:
    """The frame's skeletons as one marker pair per track (marker id = track id), with DELETEs for the rest.

    Unlike `skeleton_markers` there is no DELETEALL each frame: a person's markers keep their identity in
    RViz, and `deleted_track_ids` (tracks drawn before but not in this frame: ended, or hidden and coasting)
    are removed one by one.

    Args:
        pedestrians: the frame's tracked results (`Pedestrian.track_id` >= 1), input-image pixels.
        header: the input image's header (frame_id = the camera's optical frame).
        intrinsics: of the input image.
        depth: metres; the plane the skeletons are drawn on.
        keypoint_threshold: joints scoring below it are not drawn, nor their limbs.
        deleted_track_ids: ids whose markers are deleted (DELETE in both namespaces).
        clear_first: start with a DELETEALL (e.g. the first frame after per-frame markers were published).
        joint_diameter_px: sphere diameter as it appears in the image, pixels.
        limb_width_px: line width as it appears in the image, pixels.
        occluded_alpha: opacity of a limb with an occluded end (visible limbs are opaque).

    Returns:
        MarkerArray: [DELETEALL if clear_first] + DELETE (ns ppe_joints and ppe_limbs, id = track id) per
        deleted id + per drawn track a SPHERE_LIST (ns ppe_joints) and a LINE_LIST (ns ppe_limbs), both with
        id = track id. Joints are green visible / orange occluded as in `skeleton_markers`; limbs take the
        track's `track_color`, translucent where an end is occluded. Never empty: a frame with nothing to
        draw or delete gets [DELETEALL] (it removes nothing that is still drawn), so that every frame's
        array carries the frame's header and a consumer waiting for each frame's outputs sees this one.
    """
    metres_per_pixel = depth / intrinsics.fx
    message = MarkerArray()
    if clear_first:
        message.markers.append(Marker(header=header, action=Marker.DELETEALL))
    for track_id in deleted_track_ids:
        for namespace in (JOINT_NAMESPACE, LIMB_NAMESPACE):
            message.markers.append(Marker(header=header, ns=namespace, id=int(track_id),
                                          action=Marker.DELETE))
    visible, occluded = _color(VISIBLE_COLOR), _color(OCCLUDED_COLOR)
    templates = None
    skeletons = _frame_skeletons(pedestrians, intrinsics, depth, keypoint_threshold)
    for pedestrian, states, points in zip(pedestrians, *skeletons):
        if not any(states):
            continue
        track_id = int(pedestrian.track_id)
        own = _color(track_color(track_id))
        faded = ColorRGBA(r=own.r, g=own.g, b=own.b, a=float(occluded_alpha))
        if templates is None:
            templates = _marker_pair(header, track_id, own, joint_diameter_px * metres_per_pixel,
                                     limb_width_px * metres_per_pixel)
            joints, limbs = templates
        else:
            joints, limbs = _copy_pair(templates, track_id, own)
        _add_skeleton(joints, limbs, points, states, (visible, occluded), (own, faded))
        for marker in (joints, limbs):
            if marker.points:
                message.markers.append(marker)
    if not message.markers:
        message.markers.append(Marker(header=header, action=Marker.DELETEALL))
    return message
