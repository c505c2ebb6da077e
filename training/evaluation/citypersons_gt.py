"""CityPersons ground truth as COCO instance JSON: masks for instance IoU (Table 4) and segm AP.

`anno_val.mat` has boxes only; the instance masks are Cityscapes' gtFine instanceIds (the row's
instance_id, see occluded_ppe_training.datasets.citypersons). The JSON written here:
- images: `id` = 1-based cell position in the .mat (as the official evaluation), `file_name` =
  '<city>/<im_name>' (relative to leftImg8bit/<split>/), `im_name`, `height`, `width`;
- categories: 1 pedestrian, 2 rider;
- pedestrians (class 1) and riders (class 2) with a mask: `iscrowd` 0, `bbox` the full box, `vis_bbox`,
  `vis_ratio`, `ignore` (0 for pedestrians, 1 for riders, as the MR protocol reads them), `segmentation`
  the RLE of the instance's pixels, `area` their count;
- every other row (classes 0, 3, 4, 5), and a pedestrian or rider whose mask is not found: a crowd
  region (`iscrowd` 1, `ignore` 1, `mask_missing` for the latter) whose segmentation is its box, so
  the instance IoU leaves its pixels out and COCO AP ignores detections on it.
For MR^-2 use the .mat itself (`ppe eval citypersons`, `ppe eval model --anno`): a pedestrian without a
mask is a regular pedestrian there.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from occluded_ppe_training.datasets.citypersons import (CLASS_PEDESTRIAN, CLASS_RIDER,
                                                        cityscapes_instance_value, png_size,
                                                        read_annotation_file)

CATEGORIES = [{'id': 1, 'name': 'pedestrian', 'supercategory': 'person'},
              {'id': 2, 'name': 'rider', 'supercategory': 'person'}]
CATEGORY_OF_CLASS = {CLASS_PEDESTRIAN: 1, CLASS_RIDER: 2}


def _box_rle(box_xywh, height: int, width: int) -> dict:
    """RLE of the pixels a box touches (clipped to the image)."""
    x, y, w, h = box_xywh
    mask = np.zeros((height, width), dtype=np.uint8)
    row0, row1 = max(int(np.floor(y)), 0), max(int(np.ceil(y + h)), 0)
    col0, col1 = max(int(np.floor(x)), 0), max(int(np.ceil(x + w)), 0)
    mask[row0:row1, col0:col1] = 1
    return _rle(mask)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(rle['size'][0]), int(rle['size'][1])], 'counts': rle['counts'].decode('ascii')}


def citypersons_instance_ground_truth(anno_path: str | Path, cityscapes_root: str | Path,
                                      split: str = 'val') -> dict:
    """Build the COCO instance ground truth of a CityPersons split (module docstring).

    Args:
        anno_path: anno_val.mat (or anno_train.mat).
        cityscapes_root: folder holding leftImg8bit/ and gtFine/.
        split: 'val' or 'train'.

    Returns:
        a COCO JSON dict.
    """
    root = Path(cityscapes_root)
    images, annotations = [], []
    for position, record in enumerate(read_annotation_file(anno_path)):
        city, name = record['cityname'], record['im_name']
        image_file = root / 'leftImg8bit' / split / city / name
        if not image_file.is_file():
            raise FileNotFoundError(f'image {position + 1} of {anno_path}: {image_file} is missing')
        width, height = png_size(image_file)
        image_id = position + 1
        images.append({'id': image_id, 'file_name': f'{city}/{name}', 'im_name': name,
                       'height': height, 'width': width})
        stem = name.rsplit('_leftImg8bit', 1)[0]
        ids_file = root / 'gtFine' / split / city / f'{stem}_gtFine_instanceIds.png'
        instance_ids = cv2.imread(str(ids_file), cv2.IMREAD_UNCHANGED) if ids_file.is_file() else None
        if instance_ids is not None and instance_ids.shape[:2] != (height, width):
            raise ValueError(f'{ids_file} is {instance_ids.shape[1]}x{instance_ids.shape[0]}, '
                             f'the image is {width}x{height}')
        for row in record['bbs']:
            label = int(row[0])
            box = [float(v) for v in row[1:5]]
            vis_box = [float(v) for v in row[6:10]]
            area = box[2] * box[3]
            ann = {'id': len(annotations) + 1, 'image_id': image_id, 'bbox': box, 'vis_bbox': vis_box,
                   'vis_ratio': vis_box[2] * vis_box[3] / area if area > 0 else 0.0,
                   'height': box[3], 'class_label': label, 'instance_id': int(row[5])}
            mask = None
            if label in CATEGORY_OF_CLASS and instance_ids is not None:
                value = cityscapes_instance_value(int(row[5]), label)
                mask = (instance_ids == value) if value else None
                if mask is not None and not mask.any():
                    mask = None
            if label in CATEGORY_OF_CLASS and mask is not None:
                ann.update(category_id=CATEGORY_OF_CLASS[label], iscrowd=0,
                           ignore=int(label != CLASS_PEDESTRIAN), segmentation=_rle(mask),
                           area=int(mask.sum()))
            else:
                region = _box_rle(box, height, width)
                ann.update(category_id=CATEGORY_OF_CLASS.get(label, 1), iscrowd=1, ignore=1,
                           segmentation=region, area=float(mask_utils.area(
                               {'size': region['size'], 'counts': region['counts'].encode('ascii')})),
                           mask_missing=label in CATEGORY_OF_CLASS)
            annotations.append(ann)
    return {'images': images, 'annotations': annotations, 'categories': CATEGORIES}
