"""The result contract of every backend: one `Pedestrian` per detected person.

Frames and units: all coordinates are in pixels of the image given to `Predictor.predict`, origin at
the top-left corner of the top-left pixel, x to the right, y down (the continuous COCO convention: the
centre of pixel (row r, column c) is (c + 0.5, r + 0.5)).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from occluded_ppe_ros.skeleton import NUM_KEYPOINTS


# Joints below this score do not count toward `Pedestrian.pose_score` (HRNet's `in_vis_thre`).
POSE_SCORE_JOINT_THRESHOLD = 0.2
# `Pedestrian.track_id` of a pedestrian no tracker has seen.
NO_TRACK = -1


@dataclass
class Pedestrian:
    """One detected pedestrian.

    Attributes:
        box: float32 [4], x1, y1, x2, y2 of the full (amodal) box, input-image pixels.
        class_id: index into the deployed branch's class names (e.g. 0 pedestrian, 1 rider).
        class_name: e.g. 'pedestrian', 'rider' (CityPersons branch) or 'person' (COCO branch).
        score: detection confidence in [0, 1].
        mask: bool [H_m, W_m], the visible instance mask cropped to `mask_origin` and its own size:
            mask[r, c] is input pixel (row mask_origin[1] + r, column mask_origin[0] + c).
        mask_origin: int [2], x0, y0 (column, row) of the mask crop's top-left pixel.
        keypoints: float32 [13, 2], x, y of each joint (skeleton.KEYPOINT_NAMES order), input pixels.
        keypoint_scores: float32 [13], confidence of each joint in [0, 1].
        keypoint_occluded: bool [13], True where the joint is estimated to be hidden.
        track_id: the pedestrian's track id (>= 1, the same person keeps it across frames) once a
            `tracking.PedestrianTracker` has seen the frame; `NO_TRACK` (-1) from the Predictor alone.
    """

    box: np.ndarray
    class_id: int
    class_name: str
    score: float
    mask: np.ndarray
    mask_origin: np.ndarray
    keypoints: np.ndarray
    keypoint_scores: np.ndarray
    keypoint_occluded: np.ndarray
    track_id: int = NO_TRACK

    def __post_init__(self) -> None:
        if self.keypoints.shape != (NUM_KEYPOINTS, 2):
            raise ValueError(f'keypoints must be [{NUM_KEYPOINTS}, 2], got {self.keypoints.shape}')
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_:
            raise ValueError(f'mask must be a 2-D bool array, got {self.mask.dtype} {self.mask.shape}')

    @property
    def visible_box(self) -> np.ndarray:
        """Box around the visible mask: float32 [4] x1, y1, x2, y2 (pixel edges); the full box if empty."""
        # OpenCV's bounding rectangle of the non-zero pixels: one pass, ~4x faster than any() per axis.
        left, top, width, height = (cv2.boundingRect(self.mask.view(np.uint8)) if self.mask.size
                                    else (0, 0, 0, 0))
        if width == 0:
            return self.box.astype(np.float32).copy()
        x0, y0 = self.mask_origin
        return np.array([x0 + left, y0 + top, x0 + left + width, y0 + top + height], dtype=np.float32)

    def pose_score(self, joint_threshold: float = POSE_SCORE_JOINT_THRESHOLD) -> float:
        """Confidence in the whole pose: `score` x the mean of the joint scores >= `joint_threshold`.

        0 when no joint reaches the threshold. This is the instance score of top-down keypoint
        evaluation (Xiao et al., Simple Baselines, 2018; HRNet's evaluation code): COCO keypoint AP ranks
        people by it, so a well-found box with a doubtful pose does not rank above a sure pose.
        """
        scores = np.asarray(self.keypoint_scores, dtype=np.float64)
        confident = scores[scores >= joint_threshold]
        return float(self.score * confident.mean()) if confident.size else 0.0

    @property
    def visibility_ratio(self) -> float:
        """Visible mask area / full box area, clipped to [0, 1]; 0 for a degenerate box."""
        width = float(self.box[2] - self.box[0])
        height = float(self.box[3] - self.box[1])
        if width <= 0 or height <= 0:
            return 0.0
        return float(min(1.0, np.count_nonzero(self.mask) / (width * height)))  # count_nonzero: ~8x sum()

    def full_mask(self, height: int, width: int) -> np.ndarray:
        """The mask pasted into a bool [height, width] image (parts outside the image are cut)."""
        canvas = np.zeros((height, width), dtype=bool)
        x0, y0 = (int(v) for v in self.mask_origin)
        h, w = self.mask.shape
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + w, width), min(y0 + h, height)
        if cx1 > cx0 and cy1 > cy0:
            canvas[cy0:cy1, cx0:cx1] = self.mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        return canvas
