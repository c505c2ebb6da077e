"""Pedestrian tracks across frames, through full occlusions: the stage after the Predictor (no ROS).

    tracker = PedestrianTracker(TrackerConfig(max_coast_s=1.5))
    step = tracker.update(pedestrians, stamp_s)       # pedestrians of one frame, stamp in seconds
    step.pedestrians[k].track_id                      # >= 1, the same person keeps the same id
    step.ended_track_ids                              # tracks dropped at this frame (markers DELETE them)

Per frame:
1. every track's box is predicted to the frame's time by a constant-velocity Kalman filter
   (`tracking.kalman`), so a track keeps moving while its person is hidden ("coasting");
2. tracks not matched for longer than `max_coast_s` end;
3. tracks and detections are paired by `scipy.optimize.linear_sum_assignment` on a similarity that mixes
   the IoU of the predicted and detected boxes with an OKS-like keypoint similarity (COCO's per-joint
   tolerances, widened by the track's position uncertainty so that a long-coasting track still finds its
   person near the predicted place); pairs below `min_similarity`, pairs whose box centres lie outside
   the track's Kalman gate (`gate_probability`, squared Mahalanobis distance) and pairs whose heights
   differ by more than `max_height_ratio` (except at the image border) are never matched. The
   assignment maximises the similarity blended with a height consistency term (`height_weight`: a
   person's amodal height barely changes while hidden, their width swings with the stride) and a motion
   consistency term (`motion_weight`: how many standard deviations the detection lies from the track's
   predicted centre). One global assignment for the confirmed tracks (`min_hits` matches), coasting or
   not, then one for the unconfirmed tracks with the detections left. A coasting track keeps its last
   box size. A narrow box cut by the left or right image border (a person walking in or out) is tracked
   as its free edge plus a typical person width (`border_width_ratio`), so that its track moves at the
   person's speed; a track whose last box was cut and wider than that coasts at the speed of the box's
   free edge (the cut box's centre moves at half the person's speed);
4. a matched track is corrected by the detection's box; one that had missed frames is re-filtered along
   a straight virtual path from its last match to the new box (OC-SORT's observation-centric re-update,
   `reupdate_steps`), so the velocity it leaves the occlusion with is the one it had behind it. An
   unmatched detection starts a new track with the next id (ids are never re-used by another person).

Appearance (optional, `appearance_weight` > 0 and the frame's image given to `update`): each track keeps a
running average of its person's clothing colours (`tracking.appearance`: mean CIELAB colour of the upper
body and the legs inside the visible instance mask). The assignment's score blends in how alike a track's
and a detection's colours are, and a pair in clearly different colours is never matched
(`appearance_min_similarity`), so that two people who cross or meet behind an occluder keep their own
ids when geometry alone is ambiguous or wrong. Without an image (`update_arrays`
without colours) the tracker works on geometry alone.

Each track also remembers where each joint sits relative to its box when the joint is seen (visible).
While a joint is hidden (`keypoint_occluded`), its position is carried forward from that offset on the
current box (`carry_occluded_joints`); the same predicted joints serve the keypoint similarity.

Coordinates: input-image pixels (results contract); times: seconds on the stamps' clock (image header
stamps in the node, video timestamps offline). A stamp earlier than the previous one (a replayed
recording looping) ends every track and starts afresh.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_ros.skeleton import NUM_KEYPOINTS, OKS_SIGMAS
from occluded_ppe_ros.tracking import kalman
from occluded_ppe_ros.tracking.appearance import NUM_BANDS, colour_similarity, pedestrian_colours
from occluded_ppe_ros.tracking.kalman import MotionNoise

# Similarity given to pairs that must never match (below any min_similarity).
_NO_MATCH = -1.0
# Longest time (seconds) over which a box size is extrapolated by its rate (about 3 frames at 30 Hz).
_SIZE_RATE_HORIZON_S = 0.1


def _chi2_2dof(probability: float) -> float:
    """Quantile of the chi-square distribution with 2 degrees of freedom: -2 ln(1 - p)."""
    return -2.0 * math.log(1.0 - probability)


@dataclass(frozen=True)
class TrackerConfig:
    """Association and life-time settings of `PedestrianTracker`.

    Attributes:
        max_coast_s: a track not matched for longer than this (seconds) ends; a person hidden for less
            keeps the id when they reappear near the predicted place.
        min_similarity: pairs of a track and a detection whose similarity (in [0, 1]) is below this are
            never matched. Low (0.15) on purpose: a track coasting behind an occluder reappears off its
            predicted box by a good part of a box width (its velocity is a guess), so its similarity is low
            however right the pair is; the motion gate, the height gate and the appearance gate are what
            keep it off other people (0.3 lost such tracks, benchmarks/tracking.py).
        iou_weight: similarity = iou_weight x IoU + (1 - iou_weight) x keypoint similarity, [0, 1].
        keypoint_tolerance: factor on COCO's per-joint OKS tolerance (2 sigma_j x sqrt(box area)) in the
            keypoint similarity; > 0. 1 = COCO's OKS; larger forgives more motion between frames.
        keypoint_threshold: detected joints scoring below it take no part in the keypoint similarity and
            are not learnt as offsets, [0, 1].
        occluded_joint_weight: weight of a detected joint flagged occluded in the keypoint similarity
            (visible joints weigh 1): the network guesses hidden joints, so they count less, [0, 1].
        max_height_ratio: a detection whose box height differs from a track's predicted height by more
            than this factor is never matched to it (> 1), unless either box touches the image border
            (a person entering or leaving the image grows or shrinks in a few frames).
        min_hits: matches after which a track is confirmed (matched before unconfirmed ones).
        gate_probability: a detection whose box centre lies outside this probability mass of a track's
            predicted centre (Kalman covariance plus measurement noise, a chi-square gate on the squared
            Mahalanobis distance with 2 degrees of freedom) is never matched to it, (0, 1]; 1 = no gate.
        border_margin_px: a box within this many pixels of the image border is cut by it (pixels).
        border_width_ratio: a box cut by only the left or right image border and narrower than this times
            its height is tracked as its free edge plus a box this times its height wide (a typical walker's
            width), so that the track moves with the person walking in or out, not with the centre of the
            part of them inside the image (which moves at half their speed); 0 = off. With image_size only.
        motion_weight: share of the motion consistency exp(-d^2 / 2) in the score the assignment
            maximises, [0, 1], d^2 the squared Mahalanobis distance of the detection's centre from the
            track's prediction (as in the gate): of two tracks coasting near a detection, the one it is
            fewer standard deviations from is preferred (not the one whose wide gate merely admits it).
        carry_occluded_joints: replace a joint flagged occluded by the track's carried-forward position of
            it (where it was last seen, relative to the box), when the track has seen it within
            max_coast_s.
        height_weight: share of the height consistency in the score the assignment maximises, [0, 1]:
            score = (1 - height_weight) x similarity + height_weight x exp(-ln(h_det / h_track)^2 /
            (2 height_std^2)), 1 for pairs at the image border. A person's amodal height hardly changes
            over a second of occlusion while their width swings with the stride, so among the tracks
            coasting near a reappearing person the one of their size wins.
        height_std: std of ln(detected / tracked height) for the same person (> 0); 0.1 = 10 %.
        reupdate_steps: observation-centric re-update (OC-SORT's ORU): a track matched again after
            missing frames is re-filtered from its last match along a straight virtual path to the new
            box in this many steps (at most one per missed frame), so that its velocity is that of the
            path it took while hidden, not the coasting guess; 0 = off (one plain Kalman update).
        appearance_weight: share of the colour similarity in the score the assignment maximises, [0, 1]:
            score = (1 - appearance_weight) x geometric score + appearance_weight x colour similarity
            (`appearance.colour_similarity`), for the pairs whose colours are known on both sides (the
            other pairs keep the geometric score). Used only when `update` is given the frame's image;
            0 = off (also appearance_min_similarity). min_similarity stays on the geometric similarity.
        appearance_min_similarity: pairs whose colours are known on both sides and whose colour similarity
            is below this are never matched, [0, 1]: someone in clearly different clothes is another person
            (0 = no such gate). Only with appearance_weight > 0 and an image.
        appearance_std: root-mean-square CIELAB distance of a track's and a detection's band colours at
            which their colour similarity is exp(-1/2) (> 0); ~2.3 is a just-noticeable difference.
        appearance_rate: weight of a new sighting in a track's running average of its colours, (0, 1].
        noise: the Kalman filter's noise levels.
    """

    max_coast_s: float = 3.0
    min_similarity: float = 0.15
    iou_weight: float = 0.5
    keypoint_tolerance: float = 2.0
    keypoint_threshold: float = 0.1
    occluded_joint_weight: float = 0.5
    carry_occluded_joints: bool = True
    max_height_ratio: float = 1.25
    min_hits: int = 3
    noise: MotionNoise = field(default_factory=MotionNoise)
    gate_probability: float = 0.9999
    border_margin_px: float = 2.0
    border_width_ratio: float = 0.2
    motion_weight: float = 0.2
    height_weight: float = 0.2
    height_std: float = 0.1
    reupdate_steps: int = 4
    appearance_weight: float = 0.3
    appearance_min_similarity: float = 0.05
    appearance_std: float = 15.0
    appearance_rate: float = 0.2

    def __post_init__(self) -> None:
        if not self.max_coast_s >= 0.0:
            raise ValueError(f'max_coast_s must be >= 0 seconds, got {self.max_coast_s}')
        for name in ('min_similarity', 'iou_weight', 'keypoint_threshold', 'occluded_joint_weight',
                     'appearance_weight', 'appearance_min_similarity', 'motion_weight'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {value}')
        if not self.max_height_ratio > 1.0:
            raise ValueError(f'max_height_ratio must be > 1, got {self.max_height_ratio}')
        if not 0.0 < self.gate_probability <= 1.0:
            raise ValueError(f'gate_probability must be in (0, 1], got {self.gate_probability}')
        if not self.keypoint_tolerance > 0.0:
            raise ValueError(f'keypoint_tolerance must be > 0, got {self.keypoint_tolerance}')
        if not 0.0 <= self.height_weight <= 1.0:
            raise ValueError(f'height_weight must be in [0, 1], got {self.height_weight}')
        if not self.border_width_ratio >= 0.0:
            raise ValueError(f'border_width_ratio must be >= 0, got {self.border_width_ratio}')
        if not self.height_std > 0.0:
            raise ValueError(f'height_std must be > 0, got {self.height_std}')
        if not (isinstance(self.reupdate_steps, int) and self.reupdate_steps >= 0):
            raise ValueError(f'reupdate_steps must be an integer >= 0, got {self.reupdate_steps}')
        if not self.appearance_std > 0.0:
            raise ValueError(f'appearance_std must be > 0 (CIELAB units), got {self.appearance_std}')
        if not 0.0 < self.appearance_rate <= 1.0:
            raise ValueError(f'appearance_rate must be in (0, 1], got {self.appearance_rate}')

    @classmethod
    def from_parameters(cls, values: dict[str, Any]) -> TrackerConfig:
        """From the node's parameter values (`tracking_*` and `keypoint_threshold`, config/ppe.yaml)."""
        return cls(max_coast_s=float(values['tracking_max_coast_s']),
                   min_similarity=float(values['tracking_min_similarity']),
                   iou_weight=float(values['tracking_iou_weight']),
                   keypoint_tolerance=float(values['tracking_keypoint_tolerance']),
                   keypoint_threshold=float(values['keypoint_threshold']),
                   carry_occluded_joints=bool(values['tracking_carry_occluded_joints']),
                   appearance_weight=float(values['tracking_appearance_weight']),
                   appearance_min_similarity=float(values['tracking_appearance_min_similarity']))


@dataclass
class TrackStep:
    """What one `PedestrianTracker.update` decided.

    Attributes:
        track_ids: int64 [D], the track id of each detection of the frame (same order), >= 1.
        keypoints: float32 [D, 13, 2], the detections' joints with hidden ones carried forward (pixels).
        ended_track_ids: ids of the tracks that ended at this frame (coasted too long, or a reset).
        coasting_track_ids: ids of live tracks without a detection in this frame.
    """

    track_ids: np.ndarray
    keypoints: np.ndarray
    ended_track_ids: list[int]
    coasting_track_ids: list[int]


@dataclass
class TrackedFrame:
    """`PedestrianTracker.update`'s result for `Pedestrian`s: copies with `track_id` set, and the step."""

    pedestrians: list[Pedestrian]
    step: TrackStep

    @property
    def ended_track_ids(self) -> list[int]:
        """Ids of the tracks that ended at this frame."""
        return self.step.ended_track_ids


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The IoU of every pair: float [A, 4] x [B, 4] x1, y1, x2, y2 -> float64 [A, B] (0 for empty boxes)."""
    first = np.asarray(first, np.float64).reshape(-1, 4)
    second = np.asarray(second, np.float64).reshape(-1, 4)
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0.0, None).prod(axis=2)
    area_first = np.clip(first[:, 2:] - first[:, :2], 0.0, None).prod(axis=1)
    area_second = np.clip(second[:, 2:] - second[:, :2], 0.0, None).prod(axis=1)
    union = area_first[:, None] + area_second[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)


class PedestrianTracker:
    """Track ids for each frame's detections; see the module docstring.

    The tracks live in parallel arrays (one row per track), so a frame with 20 people costs a few batched
    numpy operations rather than 20 Python objects' worth of calls.
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._next_id = 1
        self._last_stamp: float | None = None
        self._clear()

    def _clear(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self._state = np.zeros((0, kalman.STATE_SIZE))
        self._covariance = np.zeros((0, kalman.STATE_SIZE, kalman.STATE_SIZE))
        self._last_matched = np.zeros(0)
        self._hits = np.zeros(0, np.int64)  # matches so far
        self._missed = np.zeros(0, np.int64)  # updates since the last match
        # Joint offsets from the box centre in box sizes ([T, 13, 2]), and when each was last seen.
        self._joint_offsets = np.zeros((0, NUM_KEYPOINTS, 2))
        self._joint_seen = np.full((0, NUM_KEYPOINTS), -np.inf)
        # The filter right after the last match (state, covariance), that match's measurement, and whether
        # its box was cut by the left (1) or right (-1) image border (`_horizontal_cut`).
        self._obs_state = np.zeros((0, kalman.STATE_SIZE))
        self._obs_covariance = np.zeros((0, kalman.STATE_SIZE, kalman.STATE_SIZE))
        self._obs_measurement = np.zeros((0, kalman.MEASUREMENT_SIZE))
        self._obs_cut = np.zeros(0)
        # Running average of each track's band colours (CIELAB, `tracking.appearance`), NaN until seen.
        self._colours = np.zeros((0, NUM_BANDS, 3))

    def reset(self) -> list[int]:
        """End every track (the id counter keeps counting, so ids stay unique); returns the ended ids."""
        ended = self.ids.tolist()
        self._clear()
        self._last_stamp = None
        return ended

    @property
    def predicted_boxes(self) -> np.ndarray:
        """The live tracks' boxes at the last update's time: float64 [T, 4] x1, y1, x2, y2 pixels."""
        return kalman.states_to_boxes(self._state)

    def _keep(self, rows: np.ndarray) -> None:
        self.ids = self.ids[rows]
        self._state = self._state[rows]
        self._covariance = self._covariance[rows]
        self._last_matched = self._last_matched[rows]
        self._hits = self._hits[rows]
        self._missed = self._missed[rows]
        self._joint_offsets = self._joint_offsets[rows]
        self._joint_seen = self._joint_seen[rows]
        self._obs_state = self._obs_state[rows]
        self._obs_covariance = self._obs_covariance[rows]
        self._obs_measurement = self._obs_measurement[rows]
        self._obs_cut = self._obs_cut[rows]
        self._colours = self._colours[rows]

    def update(self, pedestrians: Sequence[Pedestrian], stamp_s: float,
               image_size: tuple[int, int] | None = None, image: np.ndarray | None = None) -> TrackedFrame:
        """Track one frame's pedestrians (input-image pixels) taken at `stamp_s` seconds.

        `image_size` (rows, columns) of the frame lets the height gate spare boxes cut by the image
        border (people walking in or out); None = no such exception (taken from `image` when given).
        `image`, uint8 [H, W, 3] RGB, the frame the pedestrians were detected in: with appearance_weight > 0
        the colours inside their visible masks (`Pedestrian.mask`) help the association; None = geometry
        only.

        Returns:
            Copies of the pedestrians, same order, with `track_id` set and, with carry_occluded_joints,
            hidden joints carried forward; and the step's track bookkeeping.
        """
        count = len(pedestrians)
        boxes = np.array([p.box for p in pedestrians], np.float64).reshape(count, 4)
        keypoints = np.array([p.keypoints for p in pedestrians], np.float64).reshape(count, NUM_KEYPOINTS, 2)
        scores = np.array([p.keypoint_scores for p in pedestrians], np.float64).reshape(count, NUM_KEYPOINTS)
        occluded = np.array([p.keypoint_occluded for p in pedestrians], bool).reshape(count, NUM_KEYPOINTS)
        colours = None
        if image is not None:
            if image_size is None:
                image_size = image.shape[:2]
            if self.config.appearance_weight > 0.0:
                colours = pedestrian_colours(image, pedestrians)
        step = self.update_arrays(boxes, keypoints, scores, occluded, stamp_s, image_size, colours)
        tracked = []
        for index, pedestrian in enumerate(pedestrians):
            changes: dict[str, Any] = {'track_id': int(step.track_ids[index])}
            if self.config.carry_occluded_joints:
                changes['keypoints'] = step.keypoints[index].astype(np.float32)
            tracked.append(dataclasses.replace(pedestrian, **changes))
        return TrackedFrame(tracked, step)

    def update_arrays(self, boxes: np.ndarray, keypoints: np.ndarray, keypoint_scores: np.ndarray,
                      keypoint_occluded: np.ndarray, stamp_s: float,
                      image_size: tuple[int, int] | None = None,
                      colours: np.ndarray | None = None) -> TrackStep:
        """The tracker on plain arrays (what `update` calls).

        Args:
            boxes: float [D, 4] x1, y1, x2, y2 full boxes, pixels.
            keypoints: float [D, 13, 2] x, y, pixels.
            keypoint_scores: float [D, 13] in [0, 1].
            keypoint_occluded: bool [D, 13], True where the joint is estimated hidden.
            stamp_s: the frame's time, seconds.
            image_size: (rows, columns) of the frame, or None (see `update`).
            colours: float [D, NUM_BANDS, 3] CIELAB band colours of the detections
                (`appearance.band_colours`, NaN where unknown), or None = geometry only.
        """
        config = self.config
        ended: list[int] = []
        if self._last_stamp is not None and stamp_s < self._last_stamp:
            ended += self.reset()
        dt = 0.0 if self._last_stamp is None else stamp_s - self._last_stamp
        self._last_stamp = stamp_s
        if dt > 0.0 and len(self.ids):
            # A coasting track keeps its size: the box width of a walking person swings with the stride,
            # and its rate, extrapolated over a second of occlusion, would grow or shrink the box until it
            # matches nobody (or somebody else). So sizes follow their rates for at most
            # _SIZE_RATE_HORIZON_S of a step, and not at all once a track has missed a frame.
            # A box cut by the left or right image border moves at half its person's speed (one edge
            # stays on the border): a track that loses such a box coasts at the speed of its free edge.
            first_miss = (self._missed == 1) & (self._obs_cut != 0)
            self._state[first_miss, 4] += self._obs_cut[first_miss] * self._state[first_miss, 6] / 2.0
            self._state[self._missed > 0, 6:8] = 0.0
            sizes = self._state[:, 2:4] + self._state[:, 6:8] * min(dt, _SIZE_RATE_HORIZON_S)
            self._state, self._covariance = kalman.predict(self._state, self._covariance, dt, config.noise)
            self._state[:, 2:4] = sizes
        expired = stamp_s - self._last_matched > config.max_coast_s
        if expired.any():
            ended += self.ids[expired].tolist()
            self._keep(~expired)

        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        keypoints = np.asarray(keypoints, np.float64).reshape(-1, NUM_KEYPOINTS, 2)
        scores = np.asarray(keypoint_scores, np.float64).reshape(-1, NUM_KEYPOINTS)
        occluded = np.asarray(keypoint_occluded, bool).reshape(-1, NUM_KEYPOINTS)
        count = len(boxes)
        # What the motion model sees of each box: a box cut by the left or right border is replaced by its
        # free edge plus a typical person width (`_border_boxes`); outputs keep the detected boxes.
        motion_boxes = boxes if image_size is None else self._border_boxes(boxes, image_size)
        found = scores >= config.keypoint_threshold
        seen = found & ~occluded  # joints whose position the detection shows

        if colours is not None:
            colours = np.asarray(colours, np.float64).reshape(count, NUM_BANDS, 3)
        track_rows, detection_rows = self._associate(motion_boxes, keypoints, found, occluded, image_size,
                                                     colours)
        track_ids = np.zeros(count, np.int64)
        if len(track_rows):
            measurements = kalman.boxes_to_measurements(motion_boxes[detection_rows])
            self._state[track_rows], self._covariance[track_rows] = kalman.update(
                self._state[track_rows], self._covariance[track_rows], measurements, config.noise)
            if config.reupdate_steps > 0:
                self._reupdate(track_rows, measurements, stamp_s)  # tracks that missed frames
            self._obs_state[track_rows] = self._state[track_rows]
            self._obs_covariance[track_rows] = self._covariance[track_rows]
            self._obs_measurement[track_rows] = measurements
            if image_size is not None:
                self._obs_cut[track_rows] = self._horizontal_cut(motion_boxes[detection_rows], image_size)
            self._last_matched[track_rows] = stamp_s
            self._hits[track_rows] += 1
            if colours is not None:
                self._learn_colours(track_rows, colours[detection_rows])
            track_ids[detection_rows] = self.ids[track_rows]
        self._missed += 1
        self._missed[track_rows] = 0
        unmatched = np.ones(count, bool)
        unmatched[detection_rows] = False
        new_rows = np.flatnonzero(unmatched)
        if len(new_rows):
            self._start_tracks(motion_boxes[new_rows], stamp_s)
            if image_size is not None:
                self._obs_cut[-len(new_rows):] = self._horizontal_cut(motion_boxes[new_rows], image_size)
            if colours is not None:
                self._colours[-len(new_rows):] = colours[new_rows]
            track_ids[new_rows] = self.ids[-len(new_rows):]
            track_rows = np.concatenate([track_rows, np.arange(len(self.ids) - len(new_rows), len(self.ids))])
            detection_rows = np.concatenate([detection_rows, new_rows])
        carried = self._carry_joints(track_rows, detection_rows, boxes, keypoints, seen, occluded, stamp_s)
        coasting = np.ones(len(self.ids), bool)
        coasting[track_rows] = False
        return TrackStep(track_ids, carried.astype(np.float32), ended, self.ids[coasting].tolist())

    def similarity(self, boxes: np.ndarray, keypoints: np.ndarray, found: np.ndarray,
                   occluded: np.ndarray) -> np.ndarray:
        """Similarity in [0, 1] of every live track (at its predicted place) and detection: [T, D].

        iou_weight x IoU + (1 - iou_weight) x KS, where KS is an OKS over the joints the detection found
        and the track has seen: mean of exp(-d^2 / (2 t^2)) weighted by the detection's joint weights, with
        t^2 = area x (2 sigma_j x keypoint_tolerance)^2 (pixels^2). Without such joints KS = IoU. The
        tolerance is not widened by the track's position uncertainty: that made every detection near a
        coasting track look like its person (the one walking in front of it too); the motion gate is
        where the uncertainty counts.
        """
        config = self.config
        iou = box_iou(kalman.states_to_boxes(self._state), boxes)
        size = np.maximum(self._state[:, 2:4], 1.0)
        track_joints = self._state[:, None, :2] + self._joint_offsets * size[:, None, :]  # [T, 13, 2]
        known = np.isfinite(self._joint_seen).astype(np.float64)  # [T, 13]
        weights = np.where(occluded, config.occluded_joint_weight, 1.0) * found  # [D, 13]
        # Per coordinate rather than a sum over a last axis of 2: fewer, larger numpy operations.
        squared = ((track_joints[:, None, :, 0] - keypoints[None, :, :, 0]) ** 2
                   + (track_joints[:, None, :, 1] - keypoints[None, :, :, 1]) ** 2)  # [T, D, 13]
        area = np.clip(boxes[:, 2] - boxes[:, 0], 1.0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 1.0, None)
        joint_tolerance = (2.0 * OKS_SIGMAS * config.keypoint_tolerance) ** 2  # [13]
        tolerance = area[None, :, None] * joint_tolerance  # [1, D, 13]
        # sum_j known[t, j] weights[d, j] (...): the weights factor per track and per detection.
        total = known @ weights.T  # [T, D]
        matched = np.einsum('tj,dj,tdj->td', known, weights, np.exp(-squared / (2.0 * tolerance)))
        keypoint_similarity = np.where(total > 0, matched / np.maximum(total, 1e-9), iou)
        return config.iou_weight * iou + (1.0 - config.iou_weight) * keypoint_similarity

    def _associate(self, boxes: np.ndarray, keypoints: np.ndarray, found: np.ndarray, occluded: np.ndarray,
                   image_size: tuple[int, int] | None,
                   colours: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(track rows, detection rows) of the matched pairs, by maximum total score (see TrackerConfig)."""
        if not len(self.ids) or not len(boxes):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        config = self.config
        similarity = self.similarity(boxes, keypoints, found, occluded)
        allowed = similarity >= config.min_similarity
        appearance = None
        if colours is not None and config.appearance_weight > 0.0:
            # Clearly different clothes are never the same person (TrackerConfig.appearance_min_similarity);
            # NaN (colours unknown on either side) compares False, so such pairs stay allowed.
            appearance = colour_similarity(self._colours, colours, config.appearance_std)
            allowed &= ~(appearance < config.appearance_min_similarity)
        # A person's height cannot jump between frames: such a pair is two people overlapping (the near
        # one's big box over the far one's track), however much the boxes overlap. Except at the image
        # border, where the box of a person walking in or out is cut by it.
        predicted = kalman.states_to_boxes(self._state)
        predicted_height = np.maximum(self._state[:, 3], 1.0)
        height_ratio = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)[None, :] / predicted_height[:, None]
        log_ratio = np.abs(np.log(height_ratio))
        if image_size is not None:
            log_ratio = np.where(self._cut_by_border(boxes, image_size)[None, :]
                                 | self._cut_by_border(predicted, image_size)[:, None], 0.0, log_ratio)
        allowed &= log_ratio <= math.log(config.max_height_ratio)
        # Size consistency (TrackerConfig.height_weight): ranks the pairs, min_similarity stays on the
        # similarity alone.
        score = ((1.0 - config.height_weight) * similarity
                 + config.height_weight * np.exp(-0.5 * (log_ratio / config.height_std) ** 2))
        # Motion consistency (TrackerConfig.motion_weight): the Kalman likelihood of the detection's centre,
        # without the normalising 1 / sqrt(det S), so that of two coasting tracks near a detection the one
        # it is fewer standard deviations from wins, not the one with the larger uncertainty.
        centre_distance = self.centre_distance(boxes)
        if config.motion_weight > 0.0:
            motion = np.exp(-0.5 * centre_distance)
            score = (1.0 - config.motion_weight) * score + config.motion_weight * motion
        if appearance is not None:
            # Clothing colours (TrackerConfig.appearance_weight): pairs without colours on both sides keep
            # their geometric score, so a track not yet seen in colour is neither favoured nor penalised.
            score = np.where(np.isnan(appearance), score,
                             (1.0 - config.appearance_weight) * score + config.appearance_weight * appearance)
        # Motion gate: where the Kalman filter says the track can be now. A coasting track's gate widens
        # with its uncertainty; a track just seen cannot jump onto the person walking past it.
        if config.gate_probability < 1.0:
            allowed &= centre_distance <= _chi2_2dof(config.gate_probability)
        score = np.where(allowed, score, _NO_MATCH)
        # One global assignment over the confirmed tracks (coasting or not), then the unconfirmed ones with
        # the detections left. Not a DeepSORT cascade by frames since the last match: that gives a track
        # seen in the last frame every detection it is similar to, also the one of the person reappearing
        # from behind it, whose own coasting track waits for a later round.
        confirmed = self._hits >= config.min_hits
        matched_tracks, matched_detections = [], []
        free = np.ones(len(boxes), bool)
        for tracks in (np.flatnonzero(confirmed), np.flatnonzero(~confirmed)):
            detections = np.flatnonzero(free)
            if not len(tracks) or not len(detections):
                continue
            block = score[np.ix_(tracks, detections)]
            rows, cols = linear_sum_assignment(block, maximize=True)
            good = allowed[tracks[rows], detections[cols]]
            matched_tracks.append(tracks[rows[good]])
            matched_detections.append(detections[cols[good]])
            free[detections[cols[good]]] = False
        if not matched_tracks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (np.concatenate(matched_tracks).astype(np.int64),
                np.concatenate(matched_detections).astype(np.int64))

    def _learn_colours(self, track_rows: np.ndarray, colours: np.ndarray) -> None:
        """Fold matched detections' band colours [M, NUM_BANDS, 3] (CIELAB) into their tracks' averages.

        A band the detection has no colour for leaves the track's as it was; one the track has never seen
        takes the detection's. (Learning also while people overlap: each one's colours come from their own
        visible mask, and skipping those frames measured no better on the development seeds.)
        """
        old = self._colours[track_rows]
        rate = self.config.appearance_rate
        blended = np.where(np.isnan(old), colours, (1.0 - rate) * old + rate * colours)
        self._colours[track_rows] = np.where(np.isnan(colours), old, blended)

    def _horizontal_cut(self, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """Per box [N, 4]: 1 if cut by the left image border only, -1 by the right only, else 0."""
        margin = self.config.border_margin_px
        left = boxes[:, 0] <= margin
        right = boxes[:, 2] >= image_size[1] - margin
        return np.where(left & ~right, 1.0, np.where(right & ~left, -1.0, 0.0))

    def _border_boxes(self, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """The boxes [N, 4] (x1, y1, x2, y2 pixels) as the motion model and the association see them.

        A box cut by only the left (right) image border and narrower than border_width_ratio x its height
        becomes its free right (left) edge with a box border_width_ratio x height wide reaching out of the
        image. While a person walks in or out, the cut box's centre moves at half their speed and its width
        changes with how much of them is inside; the free edge moves with the person. So the track's
        velocity is the person's, not that of a growing or shrinking part of them. Other boxes unchanged.
        """
        ratio = self.config.border_width_ratio
        if ratio <= 0.0:
            return boxes
        cut = self._horizontal_cut(boxes, image_size)
        width = (boxes[:, 3] - boxes[:, 1]) * ratio
        narrow = (cut != 0) & (boxes[:, 2] - boxes[:, 0] < width)
        if not narrow.any():
            return boxes
        result = boxes.copy()
        left = narrow & (cut > 0)
        right = narrow & (cut < 0)
        result[left, 0] = boxes[left, 2] - width[left]
        result[right, 2] = boxes[right, 0] + width[right]
        return result

    def _cut_by_border(self, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """Flag (bool [N]) boxes [N, 4] (pixels) within border_margin_px of an image edge (rows, cols)."""
        rows, cols = image_size
        margin = self.config.border_margin_px
        return ((boxes[:, 0] <= margin) | (boxes[:, 1] <= margin)
                | (boxes[:, 2] >= cols - margin) | (boxes[:, 3] >= rows - margin))

    def centre_distance(self, boxes: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance float64 [T, D] of each detection's box centre from each track's.

        Each detection's box centre (boxes [D, 4] pixels) from each live track's predicted centre, under the
        track's centre covariance plus the measurement noise: chi-square with 2 degrees of freedom for the
        track's own person.
        """
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        noise_var = (self.config.noise.measurement_std * np.maximum(self._state[:, 3], 1.0)) ** 2
        sxx = self._covariance[:, 0, 0] + noise_var
        syy = self._covariance[:, 1, 1] + noise_var
        sxy = self._covariance[:, 0, 1]
        determinant = (sxx * syy - sxy ** 2)[:, None]
        dx = centres[None, :, 0] - self._state[:, None, 0]
        dy = centres[None, :, 1] - self._state[:, None, 1]
        # The 2 x 2 inverse written out: cheaper than np.linalg for [T] small matrices.
        return (syy[:, None] * dx ** 2 - 2.0 * sxy[:, None] * dx * dy + sxx[:, None] * dy ** 2) / determinant

    def _reupdate(self, track_rows: np.ndarray, measurements: np.ndarray, stamp_s: float) -> None:
        """OC-SORT's observation-centric re-update of the matched tracks that missed frames.

        From the filter as it was right after the last match, `reupdate_steps` (at most one per missed
        frame plus one) predict + update steps along the straight line from that match's box to the new
        one (measurements [M, 4] cx, cy, w, h of track_rows [M]); replaces the plain update's result. The
        size rates start at 0, as while coasting. A few tracks per frame at most: a loop is cheap enough.
        """
        config = self.config
        gaps = self._missed[track_rows]
        for row, measurement, gap in zip(track_rows[gaps > 0], measurements[gaps > 0], gaps[gaps > 0]):
            steps = int(min(gap + 1, config.reupdate_steps))
            dt = (stamp_s - self._last_matched[row]) / steps
            state = self._obs_state[row:row + 1].copy()
            covariance = self._obs_covariance[row:row + 1]
            state[:, 6:8] = 0.0
            start = self._obs_measurement[row]
            for k in range(1, steps + 1):
                state, covariance = kalman.predict(state, covariance, dt, config.noise)
                virtual = start + (measurement - start) * (k / steps)
                state, covariance = kalman.update(state, covariance, virtual[None], config.noise)
            self._state[row], self._covariance[row] = state[0], covariance[0]

    def _start_tracks(self, boxes: np.ndarray, stamp_s: float) -> None:
        count = len(boxes)
        measurements = kalman.boxes_to_measurements(boxes)
        state, covariance = kalman.initiate(measurements, self.config.noise)
        self._obs_state = np.concatenate([self._obs_state, state])
        self._obs_covariance = np.concatenate([self._obs_covariance, covariance])
        self._obs_measurement = np.concatenate([self._obs_measurement, measurements])
        self._obs_cut = np.concatenate([self._obs_cut, np.zeros(count)])
        self.ids = np.concatenate([self.ids, np.arange(self._next_id, self._next_id + count)])
        self._next_id += count
        self._state = np.concatenate([self._state, state])
        self._covariance = np.concatenate([self._covariance, covariance])
        self._last_matched = np.concatenate([self._last_matched, np.full(count, stamp_s)])
        self._hits = np.concatenate([self._hits, np.ones(count, np.int64)])
        self._missed = np.concatenate([self._missed, np.zeros(count, np.int64)])
        self._joint_offsets = np.concatenate([self._joint_offsets, np.zeros((count, NUM_KEYPOINTS, 2))])
        self._joint_seen = np.concatenate([self._joint_seen, np.full((count, NUM_KEYPOINTS), -np.inf)])
        self._colours = np.concatenate([self._colours, np.full((count, NUM_BANDS, 3), np.nan)])

    def _carry_joints(self, track_rows: np.ndarray, detection_rows: np.ndarray, boxes: np.ndarray,
                      keypoints: np.ndarray, seen: np.ndarray, occluded: np.ndarray,
                      stamp_s: float) -> np.ndarray:
        """Learn the seen joints' box offsets; return the keypoints [D, 13, 2] with hidden ones carried."""
        result = keypoints.copy()
        if not len(track_rows):
            return result
        det_boxes = boxes[detection_rows]
        centre = (det_boxes[:, None, :2] + det_boxes[:, None, 2:]) / 2.0
        size = np.maximum(det_boxes[:, None, 2:] - det_boxes[:, None, :2], 1.0)
        offsets = (keypoints[detection_rows] - centre) / size  # [M, 13, 2]
        det_seen = seen[detection_rows]
        if self.config.carry_occluded_joints:
            recent = stamp_s - self._joint_seen[track_rows] <= self.config.max_coast_s
            carry = occluded[detection_rows] & recent  # [M, 13]
            carried = centre + self._joint_offsets[track_rows] * size
            result[detection_rows] = np.where(carry[..., None], carried, keypoints[detection_rows])
        self._joint_offsets[track_rows] = np.where(det_seen[..., None], offsets,
                                                   self._joint_offsets[track_rows])
        self._joint_seen[track_rows] = np.where(det_seen, stamp_s, self._joint_seen[track_rows])
        return result
