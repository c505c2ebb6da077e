"""Synthetic occluded pedestrians: street-like scenes where every joint's position and visibility is known.

Each person is a 13-joint skeleton posed in a simple 3-D body frame (walking, standing or arm poses;
random body proportions, clothing, and yaw: front, side and back views, `back_view_probability` of them
from behind, with a face or only hair telling which), projected orthographically and drawn with OpenCV
as thick capsules (limbs), a convex torso and a round head, so the drawn shape is a real instance mask
with the joints at the limb ends. Occluders (cars, poles, signs, bins, bushes) and other people closer to the
camera are painted over people (painter's algorithm, ordered by where each object stands on the ground).
A joint is occluded when the pixel that contains it belongs to something painted later; self-occlusion
(a far arm behind the torso) is not modelled, so such a joint counts as visible.

Written as COCO person-keypoints JSON (loads with pycocotools and `CocoPersonKeypoints`) + JPEG images:
- `bbox`: the full (amodal) box x, y, w, h around the person's whole drawn shape;
- `segmentation`: compressed RLE of the VISIBLE mask; `area`: its pixel count (COCO's convention);
- `amodal_mask`: compressed RLE of the whole drawn shape;
- `keypoints`: COCO's 17-slot layout, v = 2 visible, v = 1 occluded, eyes and ears 0; `num_keypoints`;
- `keypoints_occluded`: 13 flags in skeleton.KEYPOINT_NAMES order, 1 where the joint is hidden.
Keypoint coordinates use the continuous convention: the joint at (x, y) lies in pixel
(row floor(y), column floor(x)).

Deterministic: image i depends only on (seed, i), not on how many images are generated.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from occluded_ppe_ros.skeleton import COCO17_NAMES, NUM_KEYPOINTS, coco13_to_17

# Joint indices in the 13-joint layout (skeleton.KEYPOINT_NAMES).
NOSE, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = range(7)
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = range(7, 13)

# COCO's person skeleton (1-based COCO-17 indices), written into the categories entry.
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
                 [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]

# cv2 drawing with `shift` fractional bits: sub-pixel placement of every shape.
_SHIFT = 4
_ONE = 1 << _SHIFT


@dataclass
class SynthConfig:
    """What a synthetic image looks like.

    Attributes:
        width, height: image size, pixels.
        min_people, max_people: people per image (inclusive).
        min_person_height, max_person_height: person height (head top to soles) as a fraction of the
            image height (0.34-0.9 of 240 px is about 80-215 px).
        occluder_probability: chance that a person gets an occluder placed over part of its body.
        min_visible_fraction: people whose visible mask is a smaller share of their whole shape are
            removed from the scene (they would be unlearnable).
        min_visible_joints: people with fewer visible joints are removed too.
        back_view_probability: share of people seen from behind (yaw 2.1-pi rad from facing the camera);
            the rest are split evenly between front views (|yaw| < 1) and side views (1-2.1).
        jpeg_quality: JPEG quality of the written images (0-100).
    """

    width: int = 320
    height: int = 240
    min_people: int = 1
    max_people: int = 4
    min_person_height: float = 0.34
    max_person_height: float = 0.9
    occluder_probability: float = 0.6
    min_visible_fraction: float = 0.35
    min_visible_joints: int = 4
    back_view_probability: float = 0.3
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        if not 0.0 <= self.back_view_probability <= 1.0:
            raise ValueError(f'back_view_probability must be in [0, 1], got {self.back_view_probability}')


@dataclass
class PersonTruth:
    """One rendered person.

    Attributes:
        keypoints: float32 [13, 2] x, y of the joints, image pixels (continuous convention).
        occluded: bool [13], True where the joint's pixel is covered by something drawn later.
        amodal_mask: bool [H, W], the person's whole drawn shape.
        visible_mask: bool [H, W], the part of it left visible in the final image.
    """

    keypoints: np.ndarray
    occluded: np.ndarray
    amodal_mask: np.ndarray
    visible_mask: np.ndarray

    @property
    def box(self) -> np.ndarray:
        """float32 [4] x1, y1, x2, y2 (pixel edges) around the amodal mask."""
        rows = np.flatnonzero(self.amodal_mask.any(axis=1))
        cols = np.flatnonzero(self.amodal_mask.any(axis=0))
        return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


@dataclass
class _Layer:
    """Something painted over the scene: its mask, its colours, where it stands (larger = closer)."""

    mask: np.ndarray
    colour: np.ndarray
    depth: float
    person: int = -1  # index into the scene's people, -1 for an occluder
    keypoints: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def _pt(x: float, y: float) -> tuple[int, int]:
    """Continuous image coordinates -> cv2 fixed-point coordinates (cv2 puts pixel centres at integers)."""
    return int(round((x - 0.5) * _ONE)), int(round((y - 0.5) * _ONE))


def _colour(rng: np.random.Generator, low: int = 20, high: int = 235) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, 3))


def _shade(colour, factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)


# ----------------------------------------------------------------------------------------------
# Background

def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, int]:
    """Street-like backdrop (sky, buildings, sidewalk, road): (float image [H, W, 3], horizon row)."""
    image = np.empty((height, width, 3), np.float32)
    horizon = int(rng.uniform(0.22, 0.5) * height)
    top, bottom = np.array(_colour(rng, 60, 240), np.float32), np.array(_colour(rng, 150, 255), np.float32)
    ramp = np.linspace(0.0, 1.0, max(horizon, 1), dtype=np.float32)[:, None, None]
    image[:horizon] = top * (1 - ramp) + bottom * ramp
    # Buildings along the horizon, some reaching the top of the image.
    x = 0
    while x < width:
        building_width = int(rng.uniform(0.1, 0.35) * width)
        roof = int(rng.uniform(0.0, 0.9) * horizon)
        colour = np.array(_colour(rng, 40, 220), np.float32)
        x_end = min(width, x + building_width)
        image[roof:horizon, x:x_end] = colour
        period_x, period_y = int(rng.integers(6, 16)), int(rng.integers(8, 18))
        window_w, window_h = max(2, period_x // 2), max(2, period_y // 2)
        cols = np.arange(x_end - x)[None, :] % period_x < window_w
        rows = np.arange(horizon - roof)[:, None] % period_y < window_h
        windows = rows & cols
        window_colour = np.array(_colour(rng, 20, 250), np.float32)
        region = image[roof:horizon, x:x_end]
        region[windows] = window_colour
        x = x_end + int(rng.integers(0, max(2, width // 20)))
    # Ground: a sidewalk band then the road (or the other way round), with tiles and lane marks.
    split = horizon + int(rng.uniform(0.2, 0.6) * (height - horizon))
    sidewalk = np.array(_colour(rng, 110, 210), np.float32)
    road = np.array(_colour(rng, 50, 120), np.float32)
    road_first = rng.random() < 0.4
    near, far = (sidewalk, road) if road_first else (road, sidewalk)
    image[horizon:split] = far
    image[split:] = near
    tile = int(rng.integers(8, 20))
    sidewalk_rows = slice(split, height) if road_first else slice(horizon, split)
    band = image[sidewalk_rows]
    lines = (np.arange(band.shape[1])[None, :] % tile == 0) | (np.arange(band.shape[0])[:, None] % tile == 0)
    band[lines] *= 0.85
    road_rows = (horizon, split) if road_first else (split, height)
    lane_y = int((road_rows[0] + road_rows[1]) / 2)
    dash = int(rng.integers(12, 30))
    for x0 in range(int(rng.integers(0, dash)), width, 2 * dash):
        image[lane_y:lane_y + 2, x0:x0 + dash] = 235.0
    # Texture: low-frequency colour blotches plus fine grain.
    coarse = rng.standard_normal((max(2, height // 16), max(2, width // 16), 3), dtype=np.float32)
    blotches = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    image += blotches * rng.uniform(4, 14)
    return image, horizon


# ----------------------------------------------------------------------------------------------
# People

@dataclass
class _Body:
    """A posed body: joints in the body frame (units of body height), ready to place and project."""

    joints: np.ndarray      # [13, 3] x (person's left), y (down), f (forward), origin at the pelvis
    head: np.ndarray        # [3] head centre
    head_radius: float
    torso: np.ndarray       # [8, 3] corners of the torso box
    yaw: float              # rotation about the vertical axis; 0 = facing the camera


def _limb(angle_forward: float, abduction: float, side: float) -> np.ndarray:
    """Unit vector of a limb hanging down, swung forward by `angle_forward` and out by `abduction` (rad)."""
    return np.array([side * math.sin(abduction) * math.cos(angle_forward),
                     math.cos(abduction) * math.cos(angle_forward), math.sin(angle_forward)])


def _pose_body(rng: np.random.Generator, back_view_probability: float) -> _Body:
    shoulder_half, hip_half = rng.uniform(0.095, 0.125), rng.uniform(0.055, 0.075)
    torso_length, neck = rng.uniform(0.28, 0.32), rng.uniform(0.10, 0.12)
    head_radius = rng.uniform(0.056, 0.068)
    upper_arm, forearm = rng.uniform(0.16, 0.19), rng.uniform(0.14, 0.16)
    thigh, shin = rng.uniform(0.23, 0.26), rng.uniform(0.22, 0.25)
    mode = rng.choice(['walk', 'stand', 'arms'], p=[0.55, 0.3, 0.15])
    phase = rng.uniform(0, 2 * math.pi)
    stride = rng.uniform(0.3, 0.6) if mode == 'walk' else rng.uniform(0.0, 0.12)
    hip_angles = (stride * math.sin(phase), -stride * math.sin(phase))
    knee_bends = (rng.uniform(0.05, 0.2) + 0.6 * stride * max(0.0, -math.sin(phase)),
                  rng.uniform(0.05, 0.2) + 0.6 * stride * max(0.0, math.sin(phase)))
    arm_swing = stride * rng.uniform(0.6, 1.2)
    shoulder_angles = [-arm_swing * math.sin(phase), arm_swing * math.sin(phase)]
    shoulder_abductions = [rng.uniform(0.05, 0.25), rng.uniform(0.05, 0.25)]
    elbow_bends = [rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.6)]
    if mode == 'arms':
        for side in ([0], [1], [0, 1])[int(rng.integers(3))]:
            shoulder_abductions[side] = rng.uniform(0.6, 2.7)
            shoulder_angles[side] = rng.uniform(-0.3, 0.9)
            elbow_bends[side] = rng.uniform(0.0, 1.4)
    joints = np.zeros((NUM_KEYPOINTS, 3))
    for index, side in ((0, 1.0), (1, -1.0)):  # 0 = left (+x), 1 = right (-x)
        shoulder = np.array([side * shoulder_half, -torso_length, 0.0])
        elbow = shoulder + upper_arm * _limb(shoulder_angles[index], shoulder_abductions[index], side)
        wrist = elbow + forearm * _limb(shoulder_angles[index] + elbow_bends[index],
                                        shoulder_abductions[index] * 0.8, side)
        hip = np.array([side * hip_half, 0.0, 0.0])
        leg_abduction = rng.uniform(0.0, 0.08)
        knee = hip + thigh * _limb(hip_angles[index], leg_abduction, side)
        ankle = knee + shin * _limb(hip_angles[index] - knee_bends[index], leg_abduction, side)
        joints[[L_SHOULDER + index, L_ELBOW + index, L_WRIST + index]] = shoulder, elbow, wrist
        joints[[L_HIP + index, L_KNEE + index, L_ANKLE + index]] = hip, knee, ankle
    head = np.array([0.0, -torso_length - neck, 0.0])
    joints[NOSE] = head + np.array([0.0, 0.15, 0.85]) * head_radius
    depth_half = rng.uniform(0.05, 0.07)
    torso = np.array([[sx * w, y, sf * depth_half] for w, y in ((shoulder_half * 1.05, -torso_length),
                                                                  (hip_half * 1.25, 0.03))
                      for sx in (-1, 1) for sf in (-1, 1)])
    # Street pedestrians walk toward the camera, away from it and across it about equally often, so by
    # default back views (face hidden, the person's left on the image left) are about as common as front
    # and side views; a front-heavy mix lets a network get away with 'left joints on the image right'.
    view = rng.random()
    if view < back_view_probability:
        yaw = rng.choice([-1, 1]) * rng.uniform(2.1, math.pi)
    elif view < back_view_probability + (1.0 - back_view_probability) / 2:
        yaw = rng.uniform(-1.0, 1.0)
    else:
        yaw = rng.choice([-1, 1]) * rng.uniform(1.0, 2.1)
    return _Body(joints, head, head_radius, torso, yaw)


def _project(points: np.ndarray, yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame points [..., 3] -> (image offsets [..., 2] in body units, depth toward the camera [...])."""
    cos, sin = math.cos(yaw), math.sin(yaw)
    x = points[..., 0] * cos + points[..., 2] * sin
    depth = -points[..., 0] * sin + points[..., 2] * cos
    return np.stack([x, points[..., 1]], axis=-1), depth


class _PersonPainter:
    """Draws one posed body at a place and size into a colour canvas and a mask."""

    def __init__(self, rng: np.random.Generator, body: _Body) -> None:
        self.body = body
        skin_tones = [(255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36),
                      (92, 58, 36)]
        self.skin = skin_tones[int(rng.integers(len(skin_tones)))]
        self.shirt = _colour(rng, 10, 245)
        self.pants = _colour(rng, 10, 160)
        self.hair = _shade(_colour(rng, 10, 120), 0.8)
        self.shoes = _colour(rng, 0, 70)
        self.long_sleeves = rng.random() < 0.6
        self.shorts = rng.random() < 0.2
        # Relative thicknesses (units of body height) of upper arm, forearm, thigh, shin, neck.
        self.thickness = {'upper_arm': rng.uniform(0.045, 0.06), 'forearm': rng.uniform(0.035, 0.048),
                          'thigh': rng.uniform(0.065, 0.085), 'shin': rng.uniform(0.045, 0.06),
                          'neck': 0.045}

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) of the projected shape in body units (x, y), with the limb thickness margin."""
        points = np.concatenate([self.body.joints, self.body.torso, self.body.head[None]])
        projected, _ = _project(points, self.body.yaw)
        margin = max(self.body.head_radius, 0.05)
        return projected.min(axis=0) - margin, projected.max(axis=0) + margin

    def draw(self, scale: float, origin: np.ndarray, height: int, width: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render at `scale` pixels per body unit with the pelvis at `origin` (x, y pixels).

        Returns:
            (colour uint8 [H, W, 3], mask bool [H, W], keypoints float32 [13, 2]) in image pixels.
        """
        body = self.body
        joints_2d, depth = _project(body.joints, body.yaw)
        # Rounded to 0.01 px here, as written to the JSON, so the pixel that decides visibility is the
        # pixel of the written coordinates.
        keypoints = np.round(origin + joints_2d * scale, 2).astype(np.float32)
        torso_2d, _ = _project(body.torso, body.yaw)
        head_2d, head_depth = _project(body.head, body.yaw)
        head_xy = origin + head_2d * scale
        canvas = np.zeros((height, width, 3), np.uint8)
        mask = np.zeros((height, width), np.uint8)
        parts = []  # (depth, draw function)

        def capsule(a: int, b: int, kind: str, colour) -> None:
            part_depth = (depth[a] + depth[b]) / 2
            shade = 1.0 if part_depth >= 0 else 0.75  # far-side limbs darker: a depth cue
            thickness = max(3, int(round(self.thickness[kind] * scale)))
            points = (_pt(*keypoints[a]), _pt(*keypoints[b]))
            parts.append((part_depth, lambda: self._line(canvas, mask, points, thickness,
                                                         _shade(colour, shade))))

        sleeves = self.shirt if self.long_sleeves else self.skin
        legs = self.skin if self.shorts else self.pants
        for side in (0, 1):
            capsule(L_SHOULDER + side, L_ELBOW + side, 'upper_arm', self.shirt)
            capsule(L_ELBOW + side, L_WRIST + side, 'forearm', sleeves)
            capsule(L_HIP + side, L_KNEE + side, 'thigh', self.pants)
            capsule(L_KNEE + side, L_ANKLE + side, 'shin', legs)
            ankle = L_ANKLE + side
            foot_end = keypoints[ankle] + np.array(_project(np.array([0.0, 0.02, 0.07]), body.yaw)[0]) * scale
            foot_points = (_pt(*keypoints[ankle]), _pt(*foot_end))
            foot_thickness = max(3, int(round(0.04 * scale)))
            parts.append((depth[ankle] - 1e-3, lambda p=foot_points, t=foot_thickness:
                          self._line(canvas, mask, p, t, self.shoes)))
            wrist = L_WRIST + side
            hand_radius = max(2.0, 0.026 * scale)
            parts.append((depth[wrist] + 1e-3, lambda w=wrist, r=hand_radius:
                          self._disc(canvas, mask, keypoints[w], r, self.skin)))
        hull = cv2.convexHull(np.array([_pt(*(origin + p * scale)) for p in torso_2d], np.int32))
        parts.append((0.0, lambda: self._polygon(canvas, mask, hull, self.shirt)))
        neck_top = head_xy + np.array([0.0, 0.5 * body.head_radius * scale])
        neck_base = (keypoints[L_SHOULDER] + keypoints[R_SHOULDER]) / 2
        neck_thickness = max(3, int(round(self.thickness['neck'] * scale)))
        parts.append((0.001, lambda: self._line(canvas, mask, (_pt(*neck_base), _pt(*neck_top)),
                                                neck_thickness, self.skin)))
        parts.append((float(head_depth) + 0.01, lambda: self._head(canvas, mask, head_xy,
                                                                    body.head_radius * scale)))
        for _, paint in sorted(parts, key=lambda item: item[0]):
            paint()
        # Every joint is a capsule end (round caps of radius >= 1.5 px), so the pixel containing it is
        # inside the shape; the nose is inside the head disc.
        return canvas, mask.astype(bool), keypoints

    @staticmethod
    def _line(canvas, mask, points, thickness, colour) -> None:
        cv2.line(canvas, points[0], points[1], colour, thickness, cv2.LINE_8, _SHIFT)
        cv2.line(mask, points[0], points[1], 1, thickness, cv2.LINE_8, _SHIFT)
        for point in points:  # round caps of the capsule
            cv2.circle(canvas, point, (thickness * _ONE) // 2, colour, -1, cv2.LINE_8, _SHIFT)
            cv2.circle(mask, point, (thickness * _ONE) // 2, 1, -1, cv2.LINE_8, _SHIFT)

    @staticmethod
    def _disc(canvas, mask, centre, radius, colour) -> None:
        cv2.circle(canvas, _pt(*centre), int(radius * _ONE), colour, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(mask, _pt(*centre), int(radius * _ONE), 1, -1, cv2.LINE_8, _SHIFT)

    @staticmethod
    def _polygon(canvas, mask, hull, colour) -> None:
        cv2.fillConvexPoly(canvas, hull, colour, cv2.LINE_8, _SHIFT)
        cv2.fillConvexPoly(mask, hull, 1, cv2.LINE_8, _SHIFT)

    def _head(self, canvas, mask, centre, radius) -> None:
        """Skin-coloured head with hair: a face toward the camera, only hair from behind."""
        self._disc(canvas, mask, centre, radius, self.skin)
        facing = math.cos(self.body.yaw)
        if facing < -0.3:
            self._disc(canvas, mask, centre, radius * 1.02, self.hair)
            return
        # Hair on top and toward the back of the head (away from where the person looks), ending above
        # the eye line: the face below it is what tells a front view from a back view, so it must stay
        # skin-coloured (the eyes, at the head centre's height, are outside the hair disc).
        backward = -math.sin(self.body.yaw) * 0.45 * radius
        hair_centre = centre + np.array([backward, -0.9 * radius])
        hair_canvas = np.zeros(mask.shape, np.uint8)
        cv2.circle(hair_canvas, _pt(*hair_centre), int(radius * 0.85 * _ONE), 1, -1, cv2.LINE_8, _SHIFT)
        head_disc = np.zeros(mask.shape, np.uint8)
        cv2.circle(head_disc, _pt(*centre), int(radius * _ONE), 1, -1, cv2.LINE_8, _SHIFT)
        canvas[(hair_canvas & head_disc).astype(bool)] = self.hair
        if facing > 0.3:  # eyes: two dark dots on a face turned to the camera
            for dx in (-0.35, 0.35):
                eye = centre + np.array([(dx * facing + 0.3 * math.sin(self.body.yaw)) * radius, 0.0])
                cv2.circle(canvas, _pt(*eye), max(_ONE // 2, int(0.14 * radius * _ONE)), (30, 20, 20), -1,
                           cv2.LINE_8, _SHIFT)


# ----------------------------------------------------------------------------------------------
# Occluders

def _occluder(rng: np.random.Generator, kind: str, box: np.ndarray, foot_y: float, person_height: float,
              height: int, width: int) -> _Layer:
    """An occluder standing in front of the person with amodal box `box` (x1, y1, x2, y2, pixels)."""
    canvas = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    centre_x = rng.uniform(x1, x2)
    bottom = foot_y + rng.uniform(2, 0.15 * person_height)
    colour = _colour(rng, 20, 235)

    def fill_rect(left, top, right, bottom_, colour_) -> None:
        corners = np.array([_pt(left, top), _pt(right, top), _pt(right, bottom_), _pt(left, bottom_)],
                           np.int32)
        cv2.fillConvexPoly(canvas, corners, colour_, cv2.LINE_8, _SHIFT)
        cv2.fillConvexPoly(mask, corners, 1, cv2.LINE_8, _SHIFT)

    if kind == 'car':
        car_height = rng.uniform(0.45, 0.7) * person_height
        car_length = rng.uniform(1.3, 2.4) * person_height
        left = centre_x - rng.uniform(0.15, 0.85) * car_length
        body_top = bottom - 0.55 * car_height
        fill_rect(left, body_top, left + car_length, bottom - 0.12 * car_height, colour)
        cabin = np.array([_pt(left + 0.2 * car_length, body_top),
                          _pt(left + 0.32 * car_length, bottom - car_height),
                          _pt(left + 0.72 * car_length, bottom - car_height),
                          _pt(left + 0.85 * car_length, body_top)], np.int32)
        cv2.fillConvexPoly(canvas, cabin, _shade(colour, 0.9), cv2.LINE_8, _SHIFT)
        cv2.fillConvexPoly(mask, cabin, 1, cv2.LINE_8, _SHIFT)
        window = np.array([_pt(left + 0.25 * car_length, body_top - 2),
                           _pt(left + 0.34 * car_length, bottom - 0.92 * car_height),
                           _pt(left + 0.7 * car_length, bottom - 0.92 * car_height),
                           _pt(left + 0.8 * car_length, body_top - 2)], np.int32)
        cv2.fillConvexPoly(canvas, window, (60, 80, 100), cv2.LINE_8, _SHIFT)
        wheel_radius = 0.16 * car_height
        for wheel_x in (left + 0.2 * car_length, left + 0.8 * car_length):
            centre = _pt(wheel_x, bottom - wheel_radius)
            cv2.circle(canvas, centre, int(wheel_radius * _ONE), (20, 20, 20), -1, cv2.LINE_8, _SHIFT)
            cv2.circle(mask, centre, int(wheel_radius * _ONE), 1, -1, cv2.LINE_8, _SHIFT)
    elif kind in ('pole', 'sign'):
        pole_width = max(3.0, rng.uniform(0.03, 0.07) * person_height)
        pole_top = rng.uniform(0, y1) if kind == 'pole' else y1 - rng.uniform(0.1, 0.3) * person_height
        pole_colour = _colour(rng, 40, 160)
        fill_rect(centre_x - pole_width / 2, pole_top, centre_x + pole_width / 2, bottom, pole_colour)
        if kind == 'sign':
            size = rng.uniform(0.2, 0.35) * person_height
            plate_y = rng.uniform(y1, y1 + 0.45 * (y2 - y1))
            plate_colours = [(200, 30, 30), (30, 60, 200), (240, 240, 240), (240, 200, 30)]
            plate_colour = plate_colours[int(rng.integers(4))]
            shape = rng.integers(3)
            if shape == 0:
                fill_rect(centre_x - size / 2, plate_y - size / 2, centre_x + size / 2, plate_y + size / 2,
                          plate_colour)
            elif shape == 1:
                cv2.circle(canvas, _pt(centre_x, plate_y), int(size / 2 * _ONE), plate_colour, -1, cv2.LINE_8,
                           _SHIFT)
                cv2.circle(mask, _pt(centre_x, plate_y), int(size / 2 * _ONE), 1, -1, cv2.LINE_8, _SHIFT)
            else:
                triangle = np.array([_pt(centre_x, plate_y - size / 2),
                                     _pt(centre_x + size / 2, plate_y + size / 2),
                                     _pt(centre_x - size / 2, plate_y + size / 2)], np.int32)
                cv2.fillConvexPoly(canvas, triangle, plate_colour, cv2.LINE_8, _SHIFT)
                cv2.fillConvexPoly(mask, triangle, 1, cv2.LINE_8, _SHIFT)
    else:  # 'bin' or 'bush': a low obstacle in front of the legs
        obstacle_height = rng.uniform(0.25, 0.5) * person_height
        obstacle_width = rng.uniform(0.3, 0.8) * person_height
        if kind == 'bush':
            green = (int(rng.integers(20, 80)), int(rng.integers(90, 170)), int(rng.integers(20, 80)))
            centre = _pt(centre_x, bottom - obstacle_height / 2)
            axes = (int(obstacle_width / 2 * _ONE), int(obstacle_height / 2 * _ONE))
            cv2.ellipse(canvas, centre, axes, 0, 0, 360, green, -1, cv2.LINE_8, _SHIFT)
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
        else:
            fill_rect(centre_x - obstacle_width / 2, bottom - obstacle_height, centre_x + obstacle_width / 2,
                      bottom, colour)
    return _Layer(mask.astype(bool), canvas, depth=float(bottom))


# Written into each set's info; raised whenever the same (seed, settings) would draw other images, so a
# set generated by an older version is not mistaken for the current one (trainer.prepare_synthetic).
# 2: faces below the hair line (the eyes were drawn onto the hair), back views 30 % instead of 15 %.
GENERATOR_VERSION = 2

OCCLUDER_KINDS = ('car', 'pole', 'sign', 'bin', 'bush')
OCCLUDER_WEIGHTS = (0.35, 0.2, 0.15, 0.15, 0.15)


# ----------------------------------------------------------------------------------------------
# Scenes

def _place_people(rng: np.random.Generator, config: SynthConfig) -> list[_Layer]:
    height, width = config.height, config.width
    layers = []
    count = int(rng.integers(config.min_people, config.max_people + 1))
    for _ in range(count):
        painter = _PersonPainter(rng, _pose_body(rng, config.back_view_probability))
        low, high = painter.extent()
        person_height = rng.uniform(config.min_person_height, config.max_person_height) * height
        scale = person_height / (high[1] - low[1])
        span_x = (high[0] - low[0]) * scale
        if span_x >= width - 4:
            continue
        # Pelvis so that the whole shape stays inside the image with a 2-pixel border.
        x_min, x_max = 2 - low[0] * scale, width - 2 - high[0] * scale
        if layers and rng.random() < 0.5:  # next to someone already there, so people overlap
            other_x = layers[int(rng.integers(len(layers)))].extra['pelvis'][0]
            pelvis_x = float(np.clip(other_x + rng.uniform(-0.6, 0.6) * span_x, x_min, x_max))
        else:
            pelvis_x = rng.uniform(x_min, x_max)
        y_min, y_max = 2 - low[1] * scale, height - 2 - high[1] * scale
        pelvis_y = rng.uniform(y_min, max(y_min, y_max))
        origin = np.array([pelvis_x, pelvis_y])
        canvas, mask, keypoints = painter.draw(scale, origin, height, width)
        foot_y = float(origin[1] + high[1] * scale)
        layers.append(_Layer(mask, canvas, depth=foot_y, person=len(layers), keypoints=keypoints,
                             extra={'pelvis': origin, 'height': person_height}))
    return layers


def _compose(layers: list[_Layer], height: int, width: int) -> np.ndarray:
    """Owner map int [H, W]: index into `layers` of the topmost layer at each pixel, -1 for background."""
    owner = np.full((height, width), -1, np.int32)
    for index in sorted(range(len(layers)), key=lambda i: layers[i].depth):
        owner[layers[index].mask] = index
    return owner


def _joint_visible(owner: np.ndarray, keypoints: np.ndarray, layer_index: int) -> np.ndarray:
    columns = np.floor(keypoints[:, 0]).astype(int)
    rows = np.floor(keypoints[:, 1]).astype(int)
    return owner[rows, columns] == layer_index


def render_scene(rng: np.random.Generator, config: SynthConfig) -> tuple[np.ndarray, list[PersonTruth]]:
    """Render one image.

    Args:
        rng: the random source (all randomness of the image comes from it).
        config: sizes and probabilities.

    Returns:
        (image uint8 [H, W, 3] RGB, the people in the image with their truth).
    """
    height, width = config.height, config.width
    background, _ = _background(rng, height, width)
    for _attempt in range(10):
        layers = _place_people(rng, config)
        people = list(layers)
        for person in people:
            if rng.random() < config.occluder_probability:
                kind = rng.choice(OCCLUDER_KINDS, p=OCCLUDER_WEIGHTS)
                rows = np.flatnonzero(person.mask.any(axis=1))
                cols = np.flatnonzero(person.mask.any(axis=0))
                box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)
                layers.append(_occluder(rng, str(kind), box, person.depth, person.extra['height'],
                                        height, width))
        # Remove people hidden too much to be learnable, until everyone left is visible enough.
        while True:
            owner = _compose(layers, height, width)
            worst = None
            for index, layer in enumerate(layers):
                if layer.person < 0:
                    continue
                visible_fraction = (owner == index).sum() / max(1, layer.mask.sum())
                visible_joints = _joint_visible(owner, layer.keypoints, index).sum()
                if (visible_fraction < config.min_visible_fraction
                        or visible_joints < config.min_visible_joints):
                    worst = index
                    break
            if worst is None:
                break
            del layers[worst]
        if any(layer.person >= 0 for layer in layers):
            break
    image = background
    order = sorted(range(len(layers)), key=lambda i: layers[i].depth)
    for index in order:
        region = owner == index
        image[region] = layers[index].colour[region]
    # Sensor-like grain and a slight blur so edges are not perfectly hard.
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(rng.uniform(1.0, 5.0))
    image = cv2.GaussianBlur(np.clip(image, 0, 255).astype(np.uint8), (3, 3), rng.uniform(0.3, 0.8))
    truths = []
    for index in order:  # far to near, a stable order
        layer = layers[index]
        if layer.person < 0:
            continue
        visible = _joint_visible(owner, layer.keypoints, index)
        truths.append(PersonTruth(keypoints=layer.keypoints, occluded=~visible, amodal_mask=layer.mask,
                                  visible_mask=owner == index))
    return image, truths


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(v) for v in encoded['size']], 'counts': encoded['counts'].decode('ascii')}


def person_annotation(truth: PersonTruth, annotation_id: int, image_id: int) -> dict:
    """The COCO annotation of one rendered person (see the module docstring for the fields)."""
    keypoints_13 = np.zeros((NUM_KEYPOINTS, 3), np.float64)
    keypoints_13[:, :2] = np.round(truth.keypoints.astype(np.float64), 2)
    keypoints_13[:, 2] = np.where(truth.occluded, 1, 2)
    x1, y1, x2, y2 = (float(v) for v in truth.box)
    return {
        'id': annotation_id, 'image_id': image_id, 'category_id': 1, 'iscrowd': 0,
        'bbox': [x1, y1, x2 - x1, y2 - y1],
        'area': int(truth.visible_mask.sum()),
        'segmentation': _rle(truth.visible_mask),
        'amodal_mask': _rle(truth.amodal_mask),
        'keypoints': [float(v) if i % 3 != 2 else int(v)
                      for i, v in enumerate(coco13_to_17(keypoints_13).ravel())],
        'num_keypoints': int((keypoints_13[:, 2] > 0).sum()),
        'keypoints_occluded': [int(v) for v in truth.occluded],
    }


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random source of image `index` of the set generated with `seed`."""
    return np.random.default_rng([int(seed), int(index)])


def generate_dataset(out_dir: str | Path, num_images: int, seed: int, config: SynthConfig | None = None,
                     progress: bool = False) -> dict:
    """Write `num_images` images to out_dir/images/ and their COCO annotations to out_dir/annotations.json.

    Args:
        out_dir: output folder (created).
        num_images: how many images.
        seed: the set's seed; image i depends only on (seed, i).
        config: image size and scene settings.
        progress: print a line every 100 images.

    Returns:
        a summary: images, people, joints, occluded joints, seconds, images per second.
    """
    config = config or SynthConfig()
    if num_images < 0:
        raise ValueError(f'num_images must be >= 0, got {num_images}')
    out_dir = Path(out_dir)
    image_dir = out_dir / 'images'
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    occluded_joints = 0
    start = time.perf_counter()
    for index in range(num_images):
        image, truths = render_scene(image_rng(seed, index), config)
        file_name = f'{index:06d}.jpg'
        cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
        image_id = index + 1
        images.append({'id': image_id, 'file_name': file_name, 'width': config.width,
                       'height': config.height})
        for truth in truths:
            annotations.append(person_annotation(truth, len(annotations) + 1, image_id))
            occluded_joints += int(truth.occluded.sum())
        if progress and (index + 1) % 100 == 0:
            print(f'{index + 1}/{num_images} images', flush=True)
    seconds = time.perf_counter() - start
    data = {
        'info': {'description': 'synthetic occluded pedestrians (occluded_ppe_training.datasets.synthetic)',
                 'seed': seed, 'generator_version': GENERATOR_VERSION, 'config': asdict(config)},
        'images': images,
        'annotations': annotations,
        'categories': [{'id': 1, 'name': 'person', 'supercategory': 'person',
                        'keypoints': list(COCO17_NAMES), 'skeleton': COCO_SKELETON}],
    }
    temporary = out_dir / 'annotations.json.tmp'
    temporary.write_text(json.dumps(data), encoding='utf-8')
    temporary.replace(out_dir / 'annotations.json')
    joints = len(annotations) * NUM_KEYPOINTS
    return {'images': num_images, 'people': len(annotations), 'joints': joints,
            'occluded_joints': occluded_joints, 'seconds': seconds,
            'images_per_second': num_images / seconds if seconds > 0 else float('inf')}
