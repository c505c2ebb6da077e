"""Instance segmentation IoU per class (paper Table 4: person, rider on CityPersons).

Two numbers per class c, both over predictions with score >= a threshold (default 0.5):
- instance IoU: in each image, the ground-truth instances of class c and the predictions of class c are
  paired one-to-one so that the summed mask IoU is largest (Hungarian assignment on the IoU matrix);
  a ground-truth instance's IoU is its partner's mask IoU, 0 without a partner; the class's instance
  IoU is the mean over all its ground-truth instances in the dataset.
- pixel IoU: per image, G = union of the class's ground-truth masks and P = union of its predicted
  masks; pixel IoU = sum over images |G & P| / sum over images |G | P| (Cityscapes-style class IoU).
Crowd annotations (iscrowd = 1) are not instances; their pixels are left out of both counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from occluded_ppe_training.evaluation.coco_eval import coco_from_dict


@dataclass
class ClassIoU:
    """IoU of one class.

    Attributes:
        name: category name; category_id: its id.
        instance_iou: mean best-partner IoU over ground-truth instances (None without instances).
        pixel_iou: dataset-level |G & P| / |G | P| (None when both are empty).
        num_instances: ground-truth instances; num_predictions: predictions above the threshold.
        intersection, union: the pixel counts.
    """

    name: str
    category_id: int
    instance_iou: float | None
    pixel_iou: float | None
    num_instances: int
    num_predictions: int
    intersection: int
    union: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _decode_result_mask(result: dict, height: int, width: int, where: str) -> np.ndarray:
    segmentation = result.get('segmentation')
    if not isinstance(segmentation, dict) or 'counts' not in segmentation:
        raise ValueError(f'{where} needs an RLE segmentation {{size, counts}}, '
                         f'got {type(segmentation).__name__}')
    if list(segmentation['size']) != [height, width]:
        raise ValueError(f'{where} has a mask of size {segmentation["size"]}, the image is {[height, width]}')
    rle = dict(segmentation)
    if isinstance(rle['counts'], str):
        rle['counts'] = rle['counts'].encode('ascii')
    return mask_utils.decode(rle).astype(bool)


def _encode_all(masks: list[np.ndarray]) -> list[dict]:
    """Run-length encodings (COCO RLE) of bool [H, W] masks."""
    return mask_utils.encode(np.asfortranarray(np.stack(masks, axis=2).astype(np.uint8)))


def evaluate_instance_iou(gt_dataset: dict, results: list[dict], score_threshold: float = 0.5,
                          category_ids: list[int] | None = None) -> dict[str, ClassIoU]:
    """Instance IoU and pixel IoU per category (module docstring).

    Args:
        gt_dataset: COCO ground truth with `segmentation` (polygons or RLE) and image height/width.
        results: COCO results with RLE `segmentation`, `category_id`, `score`, `image_id`.
        score_threshold: predictions below it are dropped.
        category_ids: categories to report (default: all ground-truth categories).

    Returns:
        category name -> ClassIoU.
    """
    coco = coco_from_dict(gt_dataset)
    categories = {c['id']: c['name'] for c in gt_dataset['categories']}
    category_ids = sorted(categories) if category_ids is None else list(category_ids)
    for cid in category_ids:
        if cid not in categories:
            raise ValueError(f'category id {cid} is not in the ground truth categories {categories}')
    image_ids = set(coco.getImgIds())
    results_by_image: dict[tuple[int, int], list[tuple[int, dict]]] = {}
    for index, result in enumerate(results):
        if result.get('image_id') not in image_ids:
            raise ValueError(f'result {index} has image_id {result.get("image_id")}, not in the ground truth')
        if float(result['score']) >= score_threshold:
            key = (result['image_id'], result['category_id'])
            results_by_image.setdefault(key, []).append((index, result))

    out = {}
    for cid in category_ids:
        instance_ious: list[float] = []
        intersection = union = num_predictions = 0
        for image_id in sorted(image_ids):
            info = coco.imgs[image_id]
            height, width = int(info['height']), int(info['width'])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=[cid], iscrowd=None))
            instances = [coco.annToMask(a).astype(bool) for a in anns if not a.get('iscrowd', 0)]
            crowd = np.zeros((height, width), dtype=bool)
            for a in anns:
                if a.get('iscrowd', 0):
                    crowd |= coco.annToMask(a).astype(bool)
            predictions = [_decode_result_mask(r, height, width, f'result {i}')
                           for i, r in results_by_image.get((image_id, cid), [])]
            num_predictions += len(predictions)
            if instances:
                best = np.zeros(len(instances))
                if predictions:
                    # mask IoU on run-length encodings: [G, P]
                    ious = np.asarray(mask_utils.iou(_encode_all(instances), _encode_all(predictions),
                                                     [0] * len(predictions)), dtype=np.float64)
                    ious = ious.reshape(len(instances), len(predictions))
                    rows, cols = linear_sum_assignment(ious, maximize=True)
                    best[rows] = ious[rows, cols]
                instance_ious.extend(best.tolist())
            gt_union = np.zeros((height, width), dtype=bool)
            for m in instances:
                gt_union |= m
            pred_union = np.zeros((height, width), dtype=bool)
            for m in predictions:
                pred_union |= m
            counted = ~crowd
            intersection += int(np.count_nonzero(gt_union & pred_union & counted))
            union += int(np.count_nonzero((gt_union | pred_union) & counted))
        out[categories[cid]] = ClassIoU(
            name=categories[cid], category_id=cid,
            instance_iou=float(np.mean(instance_ious)) if instance_ious else None,
            pixel_iou=intersection / union if union else None,
            num_instances=len(instance_ious), num_predictions=num_predictions,
            intersection=intersection, union=union)
    return out
