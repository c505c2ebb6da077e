"""COCO person keypoints (the source domain, E_M branch): annotations JSON + image folder.

Per image: every non-crowd person annotation becomes an instance (label 0 = person) with its full box
(COCO's bbox x, y, w, h -> x1, y1, x2, y2), its mask (polygons, uncompressed or compressed RLE, decoded
with pycocotools) and its 17 keypoints reduced to our 13 by `skeleton.coco17_to_13`. Crowd
annotations (iscrowd = 1) are not instances: their boxes go to `ignore_boxes`. Images without any
person are kept (negatives) unless `keep_empty=False`.

The synthetic set (synthetic.py) writes this same format and loads through this class.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from occluded_ppe_ros.skeleton import coco17_to_13
from occluded_ppe_training.datasets.common import (
    RecordChecker, box_outside_image, image_to_tensor, make_target, read_rgb, xywh_to_xyxy)

# How far (pixels) a box or a labelled keypoint may leave the image before the record is rejected:
# COCO's own boxes are float and can exceed the border by rounding.
BORDER_TOLERANCE = 1.0

Transform = Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]]


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygon list, uncompressed RLE or compressed RLE) to uint8 [H, W]."""
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), np.uint8)
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get('counts'), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get('counts'), (str, bytes)):
        rle = dict(segmentation)
        if isinstance(rle['counts'], str):
            rle['counts'] = rle['counts'].encode('ascii')
    else:
        raise ValueError(f'unknown segmentation type {type(segmentation).__name__}')
    return mask_utils.decode(rle).astype(np.uint8)


class CocoPersonKeypoints(Dataset):
    """COCO person-keypoints annotations as contract-2 targets (domain 'coco', label 0 = person).

    Args:
        annotation_file: person_keypoints_*.json (COCO format; the synthetic set's annotations.json).
        image_dir: folder holding each image's `file_name`.
        transforms: callable (image, target) -> (image, target), e.g. transforms.Compose.
        skip_invalid: False: a bad record raises `DatasetRecordError` naming the file and record id;
            True: bad annotations (or images, when the image itself is bad) are left out and listed in
            `skipped`.
        keep_empty: keep images with no person instance (negatives).
        category_name: the category treated as person.
    """

    domain = 'coco'
    class_names = ('person',)

    def __init__(self, annotation_file: str | Path, image_dir: str | Path,
                 transforms: Transform | None = None, skip_invalid: bool = False,
                 keep_empty: bool = True, category_name: str = 'person') -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self._checker = RecordChecker(skip_invalid)
        data = self._read_json()
        self.person_category_ids = {c['id'] for c in data.get('categories', [])
                                    if c.get('name') == category_name}
        self.images: list[dict] = []
        self._annotations: dict[int, list[dict]] = {}
        self._index(data, keep_empty)

    @property
    def skipped(self):
        """Records left out with `skip_invalid=True` (list of SkippedRecord)."""
        return self._checker.skipped

    def _read_json(self) -> dict:
        try:
            with open(self.annotation_file, encoding='utf-8') as stream:
                data = json.load(stream)
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f'{self.annotation_file}: not valid JSON: {error}') from error
        if not isinstance(data, dict) or not isinstance(data.get('images'), list) \
                or not isinstance(data.get('annotations'), list):
            raise ValueError(f'{self.annotation_file}: not a COCO annotation file '
                             f'(needs "images" and "annotations" lists)')
        return data

    def _index(self, data: dict, keep_empty: bool) -> None:
        source = self.annotation_file
        images: dict[int, dict] = {}
        for position, image in enumerate(data['images']):
            image_id = image.get('id') if isinstance(image, dict) else None
            record = f'image id {image_id} (images[{position}])'
            if not isinstance(image_id, int) or not all(k in image for k in ('file_name', 'width', 'height')):
                self._checker.reject(source, record, 'needs integer id, file_name, width and height')
                continue
            if not (self.image_dir / image['file_name']).is_file():
                self._checker.reject(source, record, f'image file {self.image_dir / image["file_name"]} '
                                                     f'is missing')
                continue
            images[image_id] = image
        annotations: dict[int, list[dict]] = {image_id: [] for image_id in images}
        for position, annotation in enumerate(data['annotations']):
            if self.person_category_ids and annotation.get('category_id') not in self.person_category_ids:
                continue
            reason = self._annotation_problem(annotation, images)
            if reason is None:
                annotations[annotation['image_id']].append(annotation)
            elif reason != 'image skipped':
                self._checker.reject(source, f'annotation id {annotation.get("id")} '
                                             f'(annotations[{position}], image id '
                                             f'{annotation.get("image_id")})', reason)
        for image_id, image in images.items():
            if keep_empty or any(not a.get('iscrowd', 0) for a in annotations[image_id]):
                self.images.append(image)
                self._annotations[image_id] = annotations[image_id]

    def _annotation_problem(self, annotation: dict, images: dict[int, dict]) -> str | None:
        """Why an annotation cannot be used, or None; 'image skipped' when its image was left out."""
        image_id = annotation.get('image_id')
        if image_id not in images:
            return 'image skipped' if self._checker.skip_invalid else f'unknown image id {image_id}'
        image = images[image_id]
        bbox = annotation.get('bbox')
        if not isinstance(bbox, list) or len(bbox) != 4:
            return f'bbox must be [x, y, w, h], got {bbox!r}'
        if bbox[2] < 0 or bbox[3] < 0:
            return f'bbox {bbox} has a negative size'
        if box_outside_image(xywh_to_xyxy(bbox)[0], image['width'], image['height'], BORDER_TOLERANCE):
            return f'bbox {bbox} (x, y, w, h) is outside the {image["width"]}x{image["height"]} image'
        keypoints = annotation.get('keypoints')
        if keypoints is not None and not annotation.get('iscrowd', 0):
            if len(keypoints) != 51:
                return f'expected 51 keypoint numbers (17 x (x, y, v)), got {len(keypoints)}'
            array = np.asarray(keypoints, np.float64).reshape(17, 3)
            if not np.isin(array[:, 2], (0, 1, 2)).all():
                return f'keypoint visibilities must be 0, 1 or 2, got {array[:, 2].tolist()}'
            labelled = array[array[:, 2] > 0]
            if len(labelled) and (labelled[:, 0].min() < -BORDER_TOLERANCE
                                  or labelled[:, 1].min() < -BORDER_TOLERANCE
                                  or labelled[:, 0].max() > image['width'] + BORDER_TOLERANCE
                                  or labelled[:, 1].max() > image['height'] + BORDER_TOLERANCE):
                return f'a labelled keypoint is outside the {image["width"]}x{image["height"]} image'
        return None

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """Image uint8 [H, W, 3] RGB and its target, before transforms."""
        image_info = self.images[index]
        path = self.image_dir / image_info['file_name']
        image = read_rgb(path)
        height, width = image.shape[:2]
        if (width, height) != (image_info['width'], image_info['height']):
            raise ValueError(f'{path}: image is {width}x{height} but {self.annotation_file} says '
                             f'{image_info["width"]}x{image_info["height"]} (image id {image_info["id"]})')
        people = [a for a in self._annotations[image_info['id']] if not a.get('iscrowd', 0)]
        crowds = [a for a in self._annotations[image_info['id']] if a.get('iscrowd', 0)]
        boxes = xywh_to_xyxy([a['bbox'] for a in people]) if people else np.zeros((0, 4), np.float32)
        masks = np.zeros((len(people), height, width), np.uint8)
        has_mask = np.zeros(len(people), bool)
        keypoints = np.zeros((len(people), 13, 3), np.float32)
        for i, annotation in enumerate(people):
            segmentation = annotation.get('segmentation')
            if segmentation:
                masks[i] = decode_segmentation(segmentation, height, width)
                has_mask[i] = True
            if annotation.get('keypoints') is not None:
                keypoints[i] = coco17_to_13(np.asarray(annotation['keypoints'], np.float32))
        keypoints[keypoints[:, :, 2] == 0] = 0.0
        ignore = xywh_to_xyxy([a['bbox'] for a in crowds]) if crowds else None
        target = make_target(image_info['id'], height, width, boxes=boxes, labels=np.zeros(len(people)),
                             masks=masks, has_mask=has_mask, keypoints=keypoints, ignore_boxes=ignore)
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = self.load(index)
        tensor = image_to_tensor(image)
        if self.transforms is not None:
            tensor, target = self.transforms(tensor, target)
        return tensor, target
