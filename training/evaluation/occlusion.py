"""Occlusion levels (paper Table 2) and PCK on the synthetic set, split by occluded / visible joints.

Occlusion levels: the instances evaluated are the non-crowd ground-truth people with all 13 joints
labelled (v > 0). For a level f (0.2 ... 0.7), each such instance's box, on the integer pixel grid
(columns floor(x) .. ceil(x + w) - 1, rows likewise, clipped to the image), gets random axis-aligned
rectangles painted in `OCCLUDER_RGB` until they cover between f - 0.01 and f of its pixels
(`occlusion_rectangles`; the random stream of an instance is `default_rng([seed, round(100 f),
annotation id])`, so a level's rectangles do not depend on the order or the set of images). Keypoint AP
(13 joints, coco_eval) is then computed over those images with every other annotation turned into a
crowd region (a detection on it is neither true nor false positive).

PCK@alpha on the synthetic set: ground truth carries per annotation `keypoints_occluded`, 13 0/1 flags
(1 = the joint is hidden behind an occluder; skeleton order). Predictions are paired with ground truth
per image by box IoU (>= 0.5; predictions in score order each take the free instance of highest IoU).
A labelled joint (v > 0) is correct when its predicted position lies within alpha * max(w, h) of the
ground-truth box of the truth; an unpaired instance's joints are all wrong. PCK is the correct fraction,
reported for occluded joints, visible joints and all.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from occluded_ppe_ros.skeleton import NUM_KEYPOINTS
from occluded_ppe_training.evaluation.coco_eval import _keypoints_13

OCCLUSION_LEVELS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
OCCLUSION_TOLERANCE = 0.01           # coverage lands in [f - tolerance, f] of the box's pixels
OCCLUDER_RGB = (124, 116, 104)       # ImageNet mean colour: carries no signal after normalisation
MAX_RECTANGLES = 10_000


def box_pixel_region(bbox_xywh, image_height: int, image_width: int) -> tuple[int, int, int, int]:
    """The pixels a continuous x, y, w, h box touches, clipped: (col0, row0, col1, row1), end-exclusive."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    col0, row0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    col1, row1 = min(int(np.ceil(x + w)), image_width), min(int(np.ceil(y + h)), image_height)
    return col0, row0, max(col1, col0), max(row1, row0)


def occlusion_rectangles(region_height: int, region_width: int, fraction: float,
                         rng: np.random.Generator) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """Random rectangles covering `fraction` of a region's pixels (within OCCLUSION_TOLERANCE below).

    Each rectangle's area is a uniform 30-100 % of the pixels still to cover (so coverage never
    overshoots), its aspect ratio (height / width) log-uniform in [1/3, 3], and its position uniform
    inside the region; rectangles may overlap and are drawn until the coverage is reached.

    Args:
        region_height, region_width: the region's size, pixels.
        fraction: target covered fraction in [0, 1].
        rng: the random stream.

    Returns:
        (rectangles as (col0, row0, col1, row1) end-exclusive in region pixels, bool [H, W] coverage).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f'occlusion fraction must be in [0, 1], got {fraction}')
    covered = np.zeros((region_height, region_width), dtype=bool)
    total = region_height * region_width
    target = int(round(fraction * total))
    lower = max(target - int(OCCLUSION_TOLERANCE * total), min(target, 1))
    rectangles: list[tuple[int, int, int, int]] = []
    count = 0
    while count < lower:
        if len(rectangles) >= MAX_RECTANGLES:
            raise RuntimeError(f'could not cover {fraction:.0%} of a {region_height}x{region_width} region '
                               f'with {MAX_RECTANGLES} rectangles')
        remaining = target - count
        area = max(1.0, rng.uniform(0.3, 1.0) * remaining)
        aspect = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
        rect_h = int(np.clip(np.floor(np.sqrt(area * aspect)), 1, region_height))
        rect_w = int(np.clip(np.floor(area / rect_h), 1, region_width))
        row0 = int(rng.integers(0, region_height - rect_h + 1))
        col0 = int(rng.integers(0, region_width - rect_w + 1))
        covered[row0:row0 + rect_h, col0:col0 + rect_w] = True
        rectangles.append((col0, row0, col0 + rect_w, row0 + rect_h))
        count = int(np.count_nonzero(covered))
    return rectangles, covered


def instance_rng(seed: int, fraction: float, annotation_id: int) -> np.random.Generator:
    """The random stream of one instance at one level (independent of image order)."""
    return np.random.default_rng([int(seed), int(round(100 * fraction)), int(annotation_id)])


def fully_labelled_annotations(gt_dataset: dict) -> list[dict]:
    """Non-crowd annotations whose 13 joints (17-slot or 13 keypoints) are all labelled (v > 0)."""
    selected = []
    for ann in gt_dataset.get('annotations', []):
        if ann.get('iscrowd', 0) or 'keypoints' not in ann:
            continue
        joints = _keypoints_13(ann['keypoints'], f'annotation {ann.get("id")}')
        if np.all(joints[:, 2] > 0):
            selected.append(ann)
    return selected


def occlude_image(image: np.ndarray, annotations: list[dict], fraction: float, seed: int) -> np.ndarray:
    """A copy of an RGB uint8 [H, W, 3] image with each annotation's box occluded by `fraction`.

    Args:
        image: the image.
        annotations: COCO annotations (need `id` and `bbox` x, y, w, h in image pixels).
        fraction: covered share of each box's pixels.
        seed: the evaluation seed (see `instance_rng`).
    """
    out = image.copy()
    height, width = image.shape[:2]
    for ann in annotations:
        col0, row0, col1, row1 = box_pixel_region(ann['bbox'], height, width)
        if col1 <= col0 or row1 <= row0:
            continue
        _, covered = occlusion_rectangles(row1 - row0, col1 - col0, fraction,
                                          instance_rng(seed, fraction, ann['id']))
        out[row0:row1, col0:col1][covered] = OCCLUDER_RGB
    return out


def occlusion_ground_truth(gt_dataset: dict) -> tuple[dict, dict[int, list[dict]]]:
    """The ground truth of the occlusion evaluation and the instances to occlude per image.

    Returns:
        (a copy of `gt_dataset` restricted to images with at least one fully labelled instance, in
        which every other annotation is a crowd region; image id -> its fully labelled annotations).
    """
    selected = fully_labelled_annotations(gt_dataset)
    selected_ids = {a['id'] for a in selected}
    per_image: dict[int, list[dict]] = {}
    for ann in selected:
        per_image.setdefault(ann['image_id'], []).append(ann)
    out = copy.deepcopy(gt_dataset)
    out['images'] = [im for im in out['images'] if im['id'] in per_image]
    out['annotations'] = [a for a in out['annotations'] if a['image_id'] in per_image]
    for ann in out['annotations']:
        if ann['id'] not in selected_ids:
            ann['iscrowd'] = 1
    return out, per_image


@dataclass
class PckResult:
    """PCK@alpha of one run: fractions in [0, 1] (None without joints) and joint counts."""

    alpha: float
    occluded: float | None
    visible: float | None
    all: float | None
    num_occluded: int
    num_visible: int
    num_instances: int
    num_unmatched_instances: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[A, B] IoU of x, y, w, h boxes."""
    a = a[:, None, :]
    b = b[None, :, :]
    right = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2])
    bottom = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3])
    inter = (np.clip(right - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(bottom - np.maximum(a[..., 1], b[..., 1]), 0, None))
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def evaluate_pck(gt_dataset: dict, results: list[dict], alpha: float = 0.1,
                 match_iou: float = 0.5) -> PckResult:
    """PCK@alpha for occluded and visible joints (module docstring).

    Args:
        gt_dataset: COCO ground truth whose evaluated annotations carry `keypoints_occluded` (13 flags).
        results: COCO results (`bbox`, `keypoints` 51 or 39 numbers, `score`, `image_id`).
        alpha: the threshold as a fraction of the ground-truth box's larger side.
        match_iou: minimum box IoU pairing a prediction with a ground-truth instance.
    """
    results_by_image: dict[int, list[dict]] = {}
    for result in results:
        results_by_image.setdefault(result['image_id'], []).append(result)
    gt_by_image: dict[int, list[dict]] = {}
    for ann in gt_dataset.get('annotations', []):
        if ann.get('iscrowd', 0) or 'keypoints_occluded' not in ann:
            continue
        flags = np.asarray(ann['keypoints_occluded'])
        if flags.shape != (NUM_KEYPOINTS,) or not np.isin(flags, (0, 1)).all():
            raise ValueError(f'annotation {ann.get("id")}: keypoints_occluded must be '
                             f'{NUM_KEYPOINTS} 0/1 flags, '
                             f'got {ann["keypoints_occluded"]}')
        gt_by_image.setdefault(ann['image_id'], []).append(ann)

    correct = {True: 0, False: 0}
    counted = {True: 0, False: 0}
    unmatched = 0
    num_instances = 0
    for image_id, anns in gt_by_image.items():
        preds = sorted(results_by_image.get(image_id, []), key=lambda r: -float(r['score']))
        gt_boxes = np.array([a['bbox'] for a in anns], dtype=np.float64).reshape(-1, 4)
        pred_boxes = np.array([p['bbox'] for p in preds], dtype=np.float64).reshape(-1, 4)
        ious = _box_iou_xywh(pred_boxes, gt_boxes)
        partner: dict[int, dict] = {}
        for p, pred in enumerate(preds):
            free = [g for g in range(len(anns)) if g not in partner and ious[p, g] >= match_iou]
            if free:
                partner[max(free, key=lambda g: ious[p, g])] = pred
        for g, ann in enumerate(anns):
            num_instances += 1
            truth = _keypoints_13(ann['keypoints'], f'annotation {ann.get("id")}')
            occluded = np.asarray(ann['keypoints_occluded']).astype(bool)
            labelled = truth[:, 2] > 0
            threshold = alpha * max(float(ann['bbox'][2]), float(ann['bbox'][3]))
            if g in partner:
                predicted = _keypoints_13(partner[g]['keypoints'], f'result for image {image_id}')
                hit = np.hypot(predicted[:, 0] - truth[:, 0], predicted[:, 1] - truth[:, 1]) <= threshold
            else:
                unmatched += 1
                hit = np.zeros(NUM_KEYPOINTS, dtype=bool)
            for is_occluded in (True, False):
                joints = labelled & (occluded == is_occluded)
                counted[is_occluded] += int(np.count_nonzero(joints))
                correct[is_occluded] += int(np.count_nonzero(hit & joints))

    def ratio(hits: int, total: int) -> float | None:
        return hits / total if total else None

    return PckResult(alpha=alpha, occluded=ratio(correct[True], counted[True]),
                     visible=ratio(correct[False], counted[False]),
                     all=ratio(correct[True] + correct[False], counted[True] + counted[False]),
                     num_occluded=counted[True], num_visible=counted[False],
                     num_instances=num_instances, num_unmatched_instances=unmatched)
