"""Synthetic street videos for tracking: people walking across, behind parked vans, poles and each other.

Built from the still-image generator's parts (`synthetic`: backdrop, bodies, painter, occluders), so
every frame has exact ground truth: each person's id, full (amodal) box, visible-pixel fraction and the
13 joints with their per-joint visibility. A sequence:
- one backdrop (sky, buildings, sidewalk, road);
- `num_people` people, each on a walking line (its ground row sets the person's size: nearer is larger),
  walking left or right at 0.6-1.1 body heights per second (about 1-1.9 m/s), legs and arms swinging,
  entering at staggered times from outside the image;
- static occluders standing on some walking lines' near side: vans tall enough to hide a person
  completely for 0.4-2 s, poles, and the parked cars / bins / bushes of the still generator; people on
  nearer lines pass in front of people on farther ones.

Written by `write_sequence` in MOTChallenge layout plus COCO-style per-frame annotations:
    <out>/<name>/img1/000001.jpg ...        frames (JPEG)
    <out>/<name>/video.avi                  the same frames as an MJPG video (for `ppe infer --video`)
    <out>/<name>/gt/gt.txt                  frame,id,left,top,width,height,1,1,visibility (1-based frames)
    <out>/<name>/seqinfo.ini                name, frame rate, length, image size
    <out>/<name>/annotations.json           COCO person keypoints per frame (`synthetic.person_annotation`)
                                            plus `track_id` and `visibility` per annotation
Visibility = visible pixels inside the image / pixels of the whole body, also the part outside the image
(a person half out of the frame counts half visible; one whose hand alone reaches in, a few per cent),
in [0, 1]; a person fully hidden (0) is still in
gt.txt (MOTChallenge keeps occluded people), and `ppe eval tracking` decides what to ignore.
Deterministic: a sequence depends only on (seed, index).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from occluded_ppe_ros.skeleton import COCO17_NAMES
from occluded_ppe_ros.tracking.mot import gt_line, write_lines
from occluded_ppe_training.datasets import synthetic as still
from occluded_ppe_training.datasets.synthetic import (COCO_SKELETON, L_ANKLE, L_ELBOW, L_HIP, L_KNEE,
                                                      L_SHOULDER, L_WRIST, PersonTruth, _Body, _Layer,
                                                      _PersonPainter)

# Ground-truth visibility below which a person counts as fully hidden (no detector sees them).
FULLY_HIDDEN_VISIBILITY = 0.05
CLOTHINGS = ('random', 'palette')
# VideoConfig.clothing == 'palette': RGB colours of tops and of trousers with their draw weights, heavy on
# black, greys, navy, denim and beige, as people dress in a street (rough shares, not a survey).
CLOTHING_PALETTE = {
    'shirt': (((25, 25, 28), 4), ((70, 70, 75), 2), ((130, 130, 135), 2), ((225, 225, 220), 3),
              ((30, 40, 80), 2), ((95, 120, 160), 1), ((190, 170, 135), 1), ((100, 70, 50), 1),
              ((85, 90, 55), 1), ((120, 30, 40), 1), ((190, 45, 45), 1), ((230, 200, 60), 0.5)),
    'pants': (((25, 25, 28), 5), ((65, 65, 70), 2), ((30, 40, 70), 2), ((60, 85, 125), 3),
              ((185, 165, 130), 1), ((95, 70, 50), 1)),
}


@dataclass(frozen=True)
class VideoConfig:
    """What a synthetic sequence looks like.

    Attributes:
        width, height: frame size, pixels.
        fps: frames per second.
        duration_s: sequence length, seconds.
        num_people: people walking through (all enter during the first 45 % of the sequence).
        num_vans: tall occluders that hide a person completely while they pass behind.
        num_poles: poles (hide a thin slice of a person).
        num_small_occluders: parked cars, bins and bushes (hide legs or hips).
        nearest_person_height: a person on the bottom image row is this fraction of the frame height tall.
        jpeg_quality: JPEG quality of the written frames.
        clothing: 'random' = shirt and trousers colours drawn uniformly from the RGB cube (the still
            generator's people: almost every person's colours are unique, an easy case for an appearance
            cue); 'palette' = drawn from `CLOTHING_PALETTE`, a few common street-clothing colours weighted
            toward dark and neutral ones, +-10 % brightness per person, so that several people of a
            sequence dress alike as in a real street. Everything else of the sequence (places, timing,
            occluders, truth) is the same for both.
    """

    width: int = 480
    height: int = 270
    fps: float = 30.0
    duration_s: float = 8.0
    num_people: int = 6
    num_vans: int = 2
    num_poles: int = 2
    num_small_occluders: int = 2
    nearest_person_height: float = 0.7
    jpeg_quality: int = 90
    clothing: str = 'random'

    def __post_init__(self) -> None:
        if self.clothing not in CLOTHINGS:
            raise ValueError(f'clothing must be one of {CLOTHINGS}, got {self.clothing!r}')

    @property
    def num_frames(self) -> int:
        """Frames in the sequence."""
        return int(round(self.duration_s * self.fps))


@dataclass
class FrameTruth:
    """The ground truth of one person in one frame (only people at least partly inside the image).

    Attributes:
        track_id: the person's id in the sequence (1-based).
        truth: joints, per-joint occlusion, amodal and visible masks (image pixels).
        visibility: visible pixels inside the image / pixels of the whole body (also outside it), [0, 1].
    """

    track_id: int
    truth: PersonTruth
    visibility: float


@dataclass
class _Walker:
    painter: _PersonPainter
    body: _Body
    scale: float           # pixels per body unit
    low: np.ndarray        # shape extent in body units (x, y)
    high: np.ndarray
    foot_y: float          # ground row, pixels
    start_x: float         # pelvis x at t_enter, pixels
    velocity: float        # pixels per second (signed)
    t_enter: float
    stride_hz: float       # steps per second
    phase: float


def _swing(body: _Body, angle: float) -> _Body:
    """The body with legs swung by +-angle and arms by -+0.7 angle (radians) in the walking plane."""
    joints = body.joints.copy()

    def rotate(points: np.ndarray, pivot: np.ndarray, theta: float) -> np.ndarray:
        y, f = points[:, 1] - pivot[1], points[:, 2] - pivot[2]
        cos, sin = math.cos(theta), math.sin(theta)
        out = points.copy()
        out[:, 1] = pivot[1] + y * cos - f * sin
        out[:, 2] = pivot[2] + y * sin + f * cos
        return out

    for side, sign in ((0, 1.0), (1, -1.0)):
        legs = [L_KNEE + side, L_ANKLE + side]
        joints[legs] = rotate(joints[legs], joints[L_HIP + side], sign * angle)
        arms = [L_ELBOW + side, L_WRIST + side]
        joints[arms] = rotate(joints[arms], joints[L_SHOULDER + side], -0.7 * sign * angle)
    return replace(body, joints=joints)


def _palette_colour(rng: np.random.Generator, garment: str) -> tuple[int, int, int]:
    """A colour of CLOTHING_PALETTE[garment] by its weight, its brightness varied by +-10 %."""
    colours, weights = zip(*CLOTHING_PALETTE[garment])
    weights = np.asarray(weights, np.float64)
    colour = colours[int(rng.choice(len(colours), p=weights / weights.sum()))]
    return still._shade(colour, rng.uniform(0.9, 1.1))


def _walkers(rng: np.random.Generator, config: VideoConfig, horizon: int) -> list[_Walker]:
    walkers = []
    ground = config.height - horizon
    # Palette colours from a child stream: the sequence's own stream (places, timing, occluders) stays
    # what it is with random clothing.
    palette_rng = rng.spawn(1)[0] if config.clothing == 'palette' else None
    for _ in range(config.num_people):
        body = still._pose_body(rng, 0.0)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        body = replace(body, yaw=direction * math.pi / 2)  # side view, facing where they walk
        painter = _PersonPainter(rng, body)
        if palette_rng is not None:
            painter.shirt = _palette_colour(palette_rng, 'shirt')
            painter.pants = _palette_colour(palette_rng, 'pants')
        low, high = painter.extent()
        foot_y = rng.uniform(horizon + 0.45 * ground, config.height - 3)
        person_height = config.nearest_person_height * config.height * (foot_y - horizon) / ground
        scale = person_height / (high[1] - low[1])
        speed = rng.uniform(0.6, 1.1) * person_height  # body heights per second
        margin = (high[0] - low[0]) * scale
        start_x = -margin if direction > 0 else config.width + margin
        walkers.append(_Walker(painter, body, scale, low, high, foot_y, start_x, direction * speed,
                               t_enter=rng.uniform(0.0, 0.45 * config.duration_s),
                               stride_hz=rng.uniform(1.6, 2.0), phase=rng.uniform(0, 2 * math.pi)))
    return walkers


def _occluders(rng: np.random.Generator, config: VideoConfig, walkers: list[_Walker]) -> list[_Layer]:
    """Static occluders, each standing just in front of a random person's walking line."""
    layers = []
    kinds = ['van'] * config.num_vans + ['pole'] * config.num_poles
    kinds += [str(rng.choice(['car', 'bin', 'bush'])) for _ in range(config.num_small_occluders)]
    for kind in kinds:
        walker = walkers[int(rng.integers(len(walkers)))]
        person_height = (walker.high[1] - walker.low[1]) * walker.scale
        centre_x = rng.uniform(0.15, 0.85) * config.width
        if kind == 'van':
            mask = np.zeros((config.height, config.width), np.uint8)
            canvas = np.zeros((config.height, config.width, 3), np.uint8)
            length = rng.uniform(0.6, 1.5) * person_height  # hides a walker for about 0.3-1.5 s
            bottom = walker.foot_y + rng.uniform(3, 0.1 * person_height)
            top = bottom - rng.uniform(1.15, 1.35) * person_height
            x1, x2 = centre_x - length / 2, centre_x + length / 2
            corners = np.array([still._pt(x1, top), still._pt(x2, top), still._pt(x2, bottom),
                                still._pt(x1, bottom)], np.int32)
            colour = still._colour(rng, 30, 230)
            cv2.fillConvexPoly(canvas, corners, colour, cv2.LINE_8, still._SHIFT)
            cv2.fillConvexPoly(mask, corners, 1, cv2.LINE_8, still._SHIFT)
            layers.append(_Layer(mask.astype(bool), canvas, depth=float(bottom)))
        else:
            box = np.array([centre_x - 5, walker.foot_y - person_height, centre_x + 5, walker.foot_y])
            layers.append(still._occluder(rng, kind, box, walker.foot_y, person_height, config.height,
                                          config.width))
    return layers


def sequence_rng(seed: int, index: int) -> np.random.Generator:
    """The random source of sequence `index` of the set generated with `seed`."""
    return np.random.default_rng([int(seed), int(index), 7])


def render_sequence(rng: np.random.Generator, config: VideoConfig,
                    draw: bool = True) -> Iterator[tuple[np.ndarray | None, list[FrameTruth]]]:
    """Frames of one sequence: (image uint8 [H, W, 3] RGB or None without `draw`, the people in it).

    `draw=False` skips composing the colour image (the truth is the same), for benchmarks that only need
    the ground truth.
    """
    background, horizon = still._background(rng, config.height, config.width)
    walkers = _walkers(rng, config, horizon)
    occluders = _occluders(rng, config, walkers)
    grain = float(rng.uniform(1.0, 4.0))
    for frame in range(config.num_frames):
        t = frame / config.fps
        layers = list(occluders)
        people: list[tuple[int, int, int]] = []  # (track id, layer index, pixels of the whole body)
        for track_id, walker in enumerate(walkers, start=1):
            if t < walker.t_enter:
                continue
            pelvis_x = walker.start_x + walker.velocity * (t - walker.t_enter)
            left = pelvis_x + walker.low[0] * walker.scale
            right = pelvis_x + walker.high[0] * walker.scale
            if right <= 0 or left >= config.width:
                continue  # not entered yet or gone
            angle = 0.45 * math.sin(2 * math.pi * walker.stride_hz / 2 * (t - walker.t_enter) + walker.phase)
            walker.painter.body = _swing(walker.body, angle)
            origin = np.array([pelvis_x, walker.foot_y - walker.high[1] * walker.scale])
            canvas, mask, keypoints = walker.painter.draw(walker.scale, origin, config.height, config.width)
            if not mask.any():
                continue
            whole_pixels = int(mask.sum())
            if left < 0 or right > config.width:
                # Partly outside the image: count the whole body's pixels on a canvas wide enough to hold
                # it, so that a hand reaching into the frame is a few per cent visible, not the share of
                # the body's width that is inside (the arm swings ahead of the torso).
                pad = int(math.ceil(right - left)) + 1
                _, whole, _ = walker.painter.draw(walker.scale, origin + [pad, 0.0], config.height,
                                                  config.width + 2 * pad)
                whole_pixels = max(whole_pixels, int(whole.sum()))
            people.append((track_id, len(layers), whole_pixels))
            layers.append(_Layer(mask, canvas, depth=walker.foot_y, person=track_id, keypoints=keypoints))
        owner = still._compose(layers, config.height, config.width)
        truths = []
        for track_id, index, whole_pixels in people:
            layer = layers[index]
            inside = ((layer.keypoints[:, 0] >= 0) & (layer.keypoints[:, 0] < config.width)
                      & (layer.keypoints[:, 1] >= 0) & (layer.keypoints[:, 1] < config.height))
            clipped = np.clip(layer.keypoints, 0, [config.width - 1e-3, config.height - 1e-3])
            visible = still._joint_visible(owner, clipped, index) & inside
            visible_mask = owner == index
            truth = PersonTruth(keypoints=layer.keypoints, occluded=~visible, amodal_mask=layer.mask,
                                visible_mask=visible_mask)
            visibility = visible_mask.sum() / max(1, whole_pixels)
            truths.append(FrameTruth(track_id, truth, float(visibility)))
        image = None
        if draw:
            image = background.copy()
            for index in sorted(range(len(layers)), key=lambda i: layers[i].depth):
                region = owner == index
                image[region] = layers[index].colour[region]
            image += rng.standard_normal((config.height, config.width, 1), dtype=np.float32) * grain
            image = np.clip(image, 0, 255).astype(np.uint8)
        yield image, truths


def write_sequence(out_dir: str | Path, name: str, seed: int, index: int, config: VideoConfig) -> dict:
    """Render sequence `index` of `seed` into out_dir/name (layout in the module docstring).

    Returns:
        a summary: frames, people, boxes, fully hidden boxes.
    """
    folder = Path(out_dir) / name
    (folder / 'img1').mkdir(parents=True, exist_ok=True)
    video = cv2.VideoWriter(str(folder / 'video.avi'), cv2.VideoWriter_fourcc(*'MJPG'), config.fps,
                            (config.width, config.height))
    gt, images, annotations, ids = [], [], [], set()
    hidden = 0
    try:
        for frame, (image, truths) in enumerate(render_sequence(sequence_rng(seed, index), config), start=1):
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(folder / 'img1' / f'{frame:06d}.jpg'), bgr,
                        [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
            video.write(bgr)
            images.append({'id': frame, 'file_name': f'img1/{frame:06d}.jpg', 'width': config.width,
                           'height': config.height, 'frame_index': frame - 1})
            for person in truths:
                gt.append(gt_line(frame, person.track_id, person.truth.box, person.visibility))
                record = still.person_annotation(person.truth, len(annotations) + 1, frame)
                record.update(track_id=person.track_id, visibility=round(person.visibility, 4))
                annotations.append(record)
                ids.add(person.track_id)
                hidden += person.visibility < FULLY_HIDDEN_VISIBILITY
    finally:
        video.release()
    write_lines(folder / 'gt' / 'gt.txt', gt)
    (folder / 'seqinfo.ini').write_text(
        f'[Sequence]\nname={name}\nimDir=img1\nframeRate={config.fps:g}\nseqLength={config.num_frames}\n'
        f'imWidth={config.width}\nimHeight={config.height}\nimExt=.jpg\n')
    (folder / 'annotations.json').write_text(json.dumps({
        'info': {'description': 'synthetic pedestrian tracking sequence', 'seed': seed, 'index': index,
                 'config': asdict(config)},
        'images': images, 'annotations': annotations,
        'categories': [{'id': 1, 'name': 'person', 'supercategory': 'person', 'keypoints': list(COCO17_NAMES),
                        'skeleton': COCO_SKELETON}]}))
    return {'frames': config.num_frames, 'people': len(ids), 'boxes': len(gt), 'fully_hidden_boxes': hidden}
