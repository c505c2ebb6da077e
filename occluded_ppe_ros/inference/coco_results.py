"""`Pedestrian`s -> COCO's results format: what `ppe infer` writes and `ppe eval coco` scores.

One result dict per pedestrian (https://cocodataset.org/#format-results, detection and keypoint
results merged into one record, which `COCO.loadRes` accepts):
    image_id     the image's id in the ground-truth JSON
    category_id  1 (COCO's person) unless a class-name -> id map is given
    bbox         [x, y, w, h] of the full box, input-image pixels (COCO continuous convention)
    segmentation RLE of the visible mask pasted into the full image ({'size': [H, W], 'counts': str})
    keypoints    51 numbers: COCO's 17-slot layout, x, y, score per joint, zeros for eyes and ears
    score        detection confidence
plus fields of our own, which COCO tools ignore: `keypoints_occluded` (13 0/1 flags, skeleton
order), `pose_score` (`Pedestrian.pose_score`: detection confidence x mean confident joint score),
the score our keypoint evaluation ranks people by (`evaluate_coco`), and `track_id`
(`Pedestrian.track_id`: the same person's id across a video's frames, -1 where nothing tracked).

This module is ROS-free and training-free: the offline `ppe infer` and the evaluation share it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_ros.skeleton import coco13_to_17

COCO_PERSON_CATEGORY_ID = 1


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a bool [H, W] mask, with `counts` as a str so that it serialises to JSON."""
    if mask.ndim != 2:
        raise ValueError(f'expected a 2-D mask, got shape {mask.shape}')
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(rle['size'][0]), int(rle['size'][1])], 'counts': rle['counts'].decode('ascii')}


def pedestrian_to_coco_result(image_id: int, pedestrian: Pedestrian, image_size: tuple[int, int],
                              category_ids: Mapping[str, int] | None = None) -> dict:
    """One pedestrian as a COCO result record (see the module docstring for the fields).

    Args:
        image_id: the image's id in the ground truth the results will be scored against.
        pedestrian: the detection, in input-image pixels.
        image_size: (height, width) of the input image, pixels: the RLE's canvas.
        category_ids: class_name -> COCO category id; None puts every detection in category 1.

    Returns:
        a JSON-serialisable dict.
    """
    height, width = (int(v) for v in image_size)
    if category_ids is None:
        category_id = COCO_PERSON_CATEGORY_ID
    elif pedestrian.class_name in category_ids:
        category_id = int(category_ids[pedestrian.class_name])
    else:
        raise ValueError(f'class {pedestrian.class_name!r} of a detection in image {image_id} has no '
                         f'category id in {dict(category_ids)}')
    x1, y1, x2, y2 = (float(v) for v in pedestrian.box)
    joints13 = np.concatenate([np.asarray(pedestrian.keypoints, dtype=np.float64).reshape(-1, 2),
                               np.asarray(pedestrian.keypoint_scores, dtype=np.float64).reshape(-1, 1)],
                              axis=1)
    return {
        'image_id': int(image_id),
        'category_id': category_id,
        'bbox': [x1, y1, x2 - x1, y2 - y1],
        'segmentation': encode_mask(pedestrian.full_mask(height, width)),
        'keypoints': [float(v) for v in coco13_to_17(joints13).reshape(-1)],
        'keypoints_occluded': [int(bool(v)) for v in np.asarray(pedestrian.keypoint_occluded).reshape(-1)],
        'score': float(pedestrian.score),
        'pose_score': pedestrian.pose_score(),
        'track_id': int(pedestrian.track_id),
    }


def pedestrians_to_coco_results(image_id: int, pedestrians: Sequence[Pedestrian],
                                image_size: tuple[int, int],
                                category_ids: Mapping[str, int] | None = None) -> list[dict]:
    """All pedestrians of one image as COCO result records (`pedestrian_to_coco_result` for each).

    Args:
        image_id: the image's id in the ground-truth JSON.
        pedestrians: `Predictor.predict`'s output for that image.
        image_size: (height, width) of the image, pixels.
        category_ids: class_name -> COCO category id; None: category 1 for all.

    Returns:
        a list of JSON-serialisable dicts, in the pedestrians' order.
    """
    return [pedestrian_to_coco_result(image_id, p, image_size, category_ids) for p in pedestrians]
