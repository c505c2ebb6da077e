"""Tracker quality and cost on synthetic street sequences, without a network (issue 18 targets).

    .venv/bin/python benchmarks/tracking.py [--sequences 6] [--people 7] [--seed 0] [--json out.json]
        [--clothing random|palette] [--no-image] [--set appearance_weight=0.3 ...]

Quality: `--sequences` synthetic videos (training/datasets/synthetic_video.py: people walking across a
street, behind vans, poles and each other; 8 s at 30 fps, `--people` people each) give exact boxes, ids,
joints and visibility per frame. They become detections the way a detector sees them: nothing while a
person is fully hidden (visibility < 5 %), detections dropped at random, more often the more the person
is hidden (kept with probability 0.97 x min(1, 0.4 + visibility)), box sides jittered by 5 % of the
width (left, right) and 3 % of the height (top, bottom), visible joints by 3 % of the height, hidden
joints (the network's guess) by 10 %, 5 % of the occlusion flags wrong, and 0.1 false boxes per frame.
Each detection carries the person's visible mask as a mask head gives it: the true visible pixels
(`PersonTruth.visible_mask`) through a 28 x 28 grid and back (soft edges, thin parts lost or grown), and
the tracker gets the rendered colour frame, so its appearance cue (`tracking.appearance`) reads the real
pixels; false boxes carry a mask over their whole box (background pixels). `--clothing palette` dresses
the people from a small palette of common colours, so that several share them (the default 'random'
colours are nearly unique per person: the easy case); `--no-image` runs the tracker on geometry alone
(no frames rendered, as before the appearance cue). The detections, their noise and the truth are the
same in all these modes.
Visibility is the visible share of the whole body, also the part outside the image, so a hand reaching
into the frame is not detected as a 40 %-visible person. The tracker (node defaults, given the frame size)
runs over them and `ppe eval tracking`'s code scores the tracks (motmetrics
MOTA, IDF1; identity switches per full occlusion). Targets: IDF1 >= 0.8, <= 0.1 identity switches per
full occlusion of up to 1 s. `--set NAME=VALUE` overrides a TrackerConfig field (`noise.NAME`: a
MotionNoise one; for tuning on the development seeds 0-5; the held-out seeds 10-15 are for reporting
only).

Cost: PedestrianTracker.update (what the node calls, Pedestrian objects in and out, with a 1280 x 720
frame and each person's elliptic mask, unless --no-image) on frames with 20 people walking to and fro
inside the frame; target <= 1 ms per frame. Median and 95th percentile over the timed frames.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from occluded_ppe_ros.source_tree import import_training_from_source  # noqa: E402

import_training_from_source(REPO)

from occluded_ppe_ros.inference.results import Pedestrian  # noqa: E402
from occluded_ppe_ros.ros.parameters import PARAMETERS  # noqa: E402
from occluded_ppe_ros.tracking import PedestrianTracker, TrackerConfig  # noqa: E402
from occluded_ppe_training.datasets.synthetic_video import (CLOTHINGS, FULLY_HIDDEN_VISIBILITY,  # noqa: E402
                                                            VideoConfig, render_sequence, sequence_rng)
from occluded_ppe_training.evaluation.tracking import evaluate_sequences  # noqa: E402


# Resolution of a mask head's output (Mask R-CNN's 28 x 28): the simulated masks go through it.
MASK_HEAD_SIZE = 28
NO_MASK = (np.zeros((1, 1), bool), np.zeros(2, int))


def node_default_config(overrides: dict[str, str] | None = None) -> TrackerConfig:
    """The tracker as ppe_node runs it with config/ppe.yaml's defaults, TrackerConfig fields overridden.

    `overrides`: field name -> value text; `noise.NAME` sets a field of the Kalman filter's MotionNoise.
    Raises ValueError naming an unknown field or a value of the wrong kind.
    """
    config = TrackerConfig.from_parameters({spec.name: spec.default for spec in PARAMETERS})
    changes: dict[str, object] = {}
    noise_changes: dict[str, object] = {}
    for name, text in (overrides or {}).items():
        target, field_name, bucket = config, name, changes
        if name.startswith('noise.'):
            target, field_name, bucket = config.noise, name.removeprefix('noise.'), noise_changes
        known = [f.name for f in dataclasses.fields(target)]
        if field_name not in known:
            prefix = 'noise.' if target is config.noise else ''
            raise ValueError(f'--set {name}: no such field; choose from '
                             + ', '.join(prefix + k for k in known if k != 'noise')
                             + ('' if prefix else ', noise.<field>'))
        kind = type(getattr(target, field_name))
        try:
            bucket[field_name] = text.lower() in ('1', 'true', 'yes') if kind is bool else kind(text)
        except ValueError:
            raise ValueError(f'--set {name}={text}: not a {kind.__name__}') from None
    if noise_changes:
        changes['noise'] = dataclasses.replace(config.noise, **noise_changes)
    return dataclasses.replace(config, **changes)


def head_mask(visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A mask head's view of a visible mask bool [H, W]: (mask crop bool, its origin x0, y0).

    The crop around the visible pixels is resized to MASK_HEAD_SIZE squared (area average), back to its
    size (bilinear) and cut at 0.5, as a detector's low-resolution mask pasted into the image.
    """
    left, top, width, height = cv2.boundingRect(visible.view(np.uint8))
    if width == 0:
        return NO_MASK
    crop = visible[top:top + height, left:left + width].astype(np.float32)
    coarse = cv2.resize(crop, (MASK_HEAD_SIZE, MASK_HEAD_SIZE), interpolation=cv2.INTER_AREA)
    pasted = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5
    return pasted, np.array([left, top])


def simulated_detection(rng: np.random.Generator, keypoints: np.ndarray, occluded: np.ndarray,
                        box: np.ndarray, mask: tuple[np.ndarray, np.ndarray] = NO_MASK) -> Pedestrian:
    """A noisy detection of one person (module docstring): keypoints [13, 2], occluded [13], box [4].

    `mask`: (bool crop, origin x0, y0) of the visible mask (`head_mask`); none by default.
    """
    width, height = float(box[2] - box[0]), float(box[3] - box[1])
    noisy_box = box + rng.normal(0.0, 1.0, 4) * np.array([0.05 * width, 0.03 * height] * 2)
    joint_noise = np.where(occluded[:, None], 0.10, 0.03) * height
    noisy_joints = keypoints + rng.normal(0.0, 1.0, (13, 2)) * joint_noise
    flags = occluded ^ (rng.random(13) < 0.05)
    return Pedestrian(box=noisy_box.astype(np.float32), class_id=0, class_name='pedestrian',
                      score=float(rng.uniform(0.5, 1.0)), mask=mask[0], mask_origin=mask[1],
                      keypoints=noisy_joints.astype(np.float32),
                      keypoint_scores=np.where(flags, 0.5, 0.9).astype(np.float32), keypoint_occluded=flags)


def false_detection(rng: np.random.Generator, width: int, height: int, with_mask: bool = False) -> Pedestrian:
    """A box where nobody is (clutter): random place and person-like size; with_mask: one over the box."""
    h = rng.uniform(0.2, 0.5) * height
    x, y = rng.uniform(0, width - h / 3), rng.uniform(0, height - h)
    joints = np.stack([rng.uniform(x, x + h / 3, 13), rng.uniform(y, y + h, 13)], axis=1)
    mask, origin = NO_MASK
    if with_mask:
        origin = np.array([int(x), int(y)])
        mask = np.ones((max(1, int(y + h) - origin[1]), max(1, int(x + h / 3) - origin[0])), bool)
    return Pedestrian(box=np.array([x, y, x + h / 3, y + h], np.float32), class_id=0, class_name='pedestrian',
                      score=float(rng.uniform(0.3, 0.6)), mask=mask, mask_origin=origin,
                      keypoints=joints.astype(np.float32),
                      keypoint_scores=np.full(13, 0.4, np.float32), keypoint_occluded=np.zeros(13, bool))


def run_sequence(seed: int, index: int, config: VideoConfig, tracker_config: TrackerConfig,
                 with_image: bool = True):
    """(gt rows, output rows) of one sequence: MOTChallenge columns, 1-based frames.

    with_image: render the frames and give the tracker each frame and each detection's mask (module
    docstring); else geometry only. The detections' boxes, joints and noise are the same either way.
    """
    rng = np.random.default_rng([seed, index, 99])
    tracker = PedestrianTracker(tracker_config)
    gt_rows, out_rows = [], []
    frames = render_sequence(sequence_rng(seed, index), config, draw=with_image)
    for frame, (image, truths) in enumerate(frames, 1):
        detections = []
        for person in truths:
            box = person.truth.box.astype(np.float64)
            gt_rows.append([frame, person.track_id, box[0], box[1], box[2] - box[0], box[3] - box[1], 1, 1,
                            person.visibility, -1])
            if person.visibility < FULLY_HIDDEN_VISIBILITY:
                continue
            if rng.random() > 0.97 * min(1.0, 0.4 + person.visibility):
                continue
            mask = head_mask(person.truth.visible_mask) if with_image else NO_MASK
            detections.append(simulated_detection(rng, person.truth.keypoints.astype(np.float64),
                                                  person.truth.occluded, box, mask))
        for _ in range(rng.poisson(0.1)):
            detections.append(false_detection(rng, config.width, config.height, with_mask=with_image))
        stamp_s = (frame - 1) / config.fps
        tracked_frame = tracker.update(detections, stamp_s, (config.height, config.width), image=image)
        for tracked in tracked_frame.pedestrians:
            x1, y1, x2, y2 = (float(v) for v in tracked.box)
            out_rows.append([frame, tracked.track_id, x1, y1, x2 - x1, y2 - y1, tracked.score, -1, -1, -1])
    return np.array(gt_rows, np.float64), np.array(out_rows, np.float64).reshape(-1, 10)


def time_tracker(people: int = 20, frames: int = 600, seed: int = 0,
                 tracker_config: TrackerConfig | None = None, with_image: bool = True) -> dict[str, float]:
    """Milliseconds per PedestrianTracker.update with `people` walkers in every frame of 1280 x 720.

    with_image: the tracker also gets the frame (random colours) and each person's elliptic mask (the size
    of their box), so that the appearance cue's per-pixel work is in the time.
    """
    rng = np.random.default_rng(seed)
    width, height = 1280, 720
    starts = np.stack([rng.uniform(0, 1200, people), rng.uniform(100, 600, people)], axis=1)
    velocities = np.stack([rng.choice([-1, 1], people) * rng.uniform(40, 120, people),
                           rng.normal(0, 5, people)], axis=1)
    heights = rng.uniform(80, 250, people)
    offsets = np.stack([rng.uniform(-0.15, 0.15, (people, 13)),
                        np.linspace(-0.45, 0.45, 13)[None].repeat(people, 0)], axis=2)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) if with_image else None
    masks = []
    for k in range(people):
        ellipse = np.zeros((int(heights[k]), int(heights[k] / 3)), np.uint8)
        cv2.ellipse(ellipse, (ellipse.shape[1] // 2, ellipse.shape[0] // 2),
                    (ellipse.shape[1] // 2, ellipse.shape[0] // 2), 0, 0, 360, 1, -1)
        masks.append(ellipse.astype(bool))
    tracker = PedestrianTracker(tracker_config or node_default_config())
    timings = []
    for frame in range(frames):
        t = frame / 30.0
        # Walking to and fro inside the frame (a triangle wave in x), so every mask is in the image.
        span = width - heights / 3
        travel = np.mod(starts[:, 0] + velocities[:, 0] * t, 2 * span)
        centres = np.stack([np.where(travel < span, travel, 2 * span - travel) + heights / 6,
                            np.clip(starts[:, 1] + velocities[:, 1] * t, heights / 2, height - heights / 2)],
                           axis=1)
        detections = []
        for k in range(people):
            box = np.array([centres[k, 0] - heights[k] / 6, centres[k, 1] - heights[k] / 2,
                            centres[k, 0] + heights[k] / 6, centres[k, 1] + heights[k] / 2])
            joints = centres[k] + offsets[k] * heights[k]
            mask = (masks[k], box[:2].astype(int)) if with_image else NO_MASK
            detections.append(simulated_detection(rng, joints, rng.random(13) < 0.2, box, mask))
        tick = time.perf_counter()
        tracker.update(detections, t, (height, width), image=image)
        timings.append((time.perf_counter() - tick) * 1e3)
    timed = np.array(timings[50:])  # after the first tracks settle
    return {'people': people, 'frames_timed': len(timed), 'median_ms': float(np.median(timed)),
            'mean_ms': float(timed.mean()), 'p95_ms': float(np.percentile(timed, 95))}


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, print them, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sequences', type=int, default=6, help='synthetic sequences (8 s, 30 fps each)')
    parser.add_argument('--people', type=int, default=7, help='people per sequence (>= 5 for the target)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', type=Path, default=None, help='write the numbers here')
    parser.add_argument('--clothing', choices=CLOTHINGS, default='random',
                        help="people's clothing colours (VideoConfig.clothing): 'palette' = several alike")
    parser.add_argument('--no-image', action='store_true',
                        help='geometry only: no frames rendered, no masks, no appearance cue')
    parser.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                        help='override a TrackerConfig field, e.g. appearance_weight=0.5, or a MotionNoise '
                             'field as noise.NAME, e.g. noise.acceleration_std=0.5 (repeatable)')
    args = parser.parse_args(argv)
    config = VideoConfig(num_people=args.people, clothing=args.clothing)
    try:
        malformed = [item for item in args.set if '=' not in item]
        if malformed:
            raise ValueError(f'--set takes NAME=VALUE, got {malformed[0]!r}')
        tracker_config = node_default_config(dict(item.split('=', 1) for item in args.set))
    except ValueError as error:  # an unknown field, a bad value, or one TrackerConfig rejects: one line
        print(f'{parser.prog}: error: {error}', file=sys.stderr)
        return 2
    with_image = not args.no_image
    start = time.perf_counter()
    pairs = []
    for index in range(args.sequences):
        gt, out = run_sequence(args.seed, index, config, tracker_config, with_image)
        pairs.append((f'seq{index:02d}', gt, out, config.fps))
    scores = evaluate_sequences(pairs)
    quality = scores.to_dict()
    cost = time_tracker(tracker_config=tracker_config, with_image=with_image)
    m, short = quality['metrics'], quality['occlusions_up_to_1s']
    print(f'tracker: appearance_weight {tracker_config.appearance_weight if with_image else "- (no image)"}, '
          f'clothing {args.clothing}')
    print(f'tracking quality: {args.sequences} sequences x {config.num_frames} frames, {args.people} people: '
          f'MOTA {m["mota"]:.3f}, IDF1 {m["idf1"]:.3f}, {int(m["num_switches"])} id switches, '
          f'{int(m["num_false_positives"])} FP, {int(m["num_misses"])} misses')
    print(f'full occlusions <= 1 s: {short["events"]} ({short["resolved"]} matched on both sides), '
          f'{short["switches"]} id switches = {short["switches_per_event"]:.3f} per occlusion; longer: '
          f'{quality["occlusions_longer_than_1s"]}')
    print(f'tracker cost, {cost["people"]} people: median {cost["median_ms"]:.3f} ms, '
          f'mean {cost["mean_ms"]:.3f} ms, p95 {cost["p95_ms"]:.3f} ms per frame '
          f'({time.perf_counter() - start:.0f} s in all)')
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        quality.pop('events')
        args.json.write_text(json.dumps({'quality': quality, 'cost': cost, 'sequences': args.sequences,
                                         'people': args.people, 'seed': args.seed, 'clothing': args.clothing,
                                         'image': with_image,
                                         'tracker': dataclasses.asdict(tracker_config)}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
