"""COCO metrics through pycocotools: keypoint OKS AP over our 13 joints (paper Table 1), bbox and segm AP.

The ground truth's 17 COCO joints and the results' 17-slot keypoints are both reduced to the 13 joints
of `occluded_ppe_ros.skeleton` (eyes and ears dropped), `num_keypoints` is recounted over the 13, and
`COCOeval(iouType='keypoints')` runs with `params.kpt_oks_sigmas = skeleton.OKS_SIGMAS` (COCO's own
sigmas of those 13 joints). Results are loaded with `COCO.loadRes`, so any file `ppe infer` writes is
scored exactly as pycocotools scores it. See docs/evaluation.md.
"""
from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from occluded_ppe_ros.skeleton import KEYPOINT_NAMES, LIMBS, NUM_KEYPOINTS, OKS_SIGMAS, coco17_to_13

# Names of COCOeval.stats, in its order, per iouType.
DETECTION_STAT_NAMES = ('AP', 'AP50', 'AP75', 'APS', 'APM', 'APL',
                        'AR1', 'AR10', 'AR100', 'ARS', 'ARM', 'ARL')
KEYPOINT_STAT_NAMES = ('AP', 'AP50', 'AP75', 'APM', 'APL', 'AR', 'AR50', 'AR75', 'ARM', 'ARL')
IOU_TYPES = ('keypoints', 'bbox', 'segm')


@dataclass
class CocoMetrics:
    """One COCOeval run.

    Attributes:
        iou_type: 'keypoints', 'bbox' or 'segm'.
        stats: COCOeval.stats (12 numbers for bbox/segm, 10 for keypoints); -1 where undefined
            (no ground truth in that setting), exactly as pycocotools reports.
        named: the same numbers by name (AP, AP50, AP75, APM, APL, ...).
        recall_thresholds: [101] recall points of the precision curves.
        precision: name -> [101] interpolated precision at IoU/OKS 0.50, 0.75 and averaged over
            0.50:0.95 (area 'all', the largest maxDets, first category); -1 where undefined.
        summary: pycocotools' printed summary.
    """

    iou_type: str
    stats: list[float]
    named: dict[str, float]
    recall_thresholds: list[float] = field(default_factory=list)
    precision: dict[str, list[float]] = field(default_factory=dict)
    summary: str = ''

    def to_dict(self) -> dict:
        """JSON-serialisable dict (curves included)."""
        return {'iou_type': self.iou_type, 'stats': self.stats, 'metrics': self.named,
                'recall_thresholds': self.recall_thresholds, 'precision': self.precision,
                'summary': self.summary}


def _keypoints_13(values: list[float] | np.ndarray, where: str) -> np.ndarray:
    """A flat keypoint list of 51 (COCO 17) or 39 (already 13) numbers -> [13, 3] float64."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 17 * 3:
        return coco17_to_13(array).astype(np.float64)
    if array.size == NUM_KEYPOINTS * 3:
        return array.reshape(NUM_KEYPOINTS, 3)
    raise ValueError(f'expected 51 (17 joints) or 39 (13 joints) keypoint numbers in {where}, '
                     f'got {array.size}')


def reduce_ground_truth_to_13(dataset: dict) -> dict:
    """A deep copy of a COCO person-keypoints ground truth with every annotation's keypoints reduced to 13.

    Args:
        dataset: COCO JSON dict (images, annotations, categories); annotations without `keypoints`
            (e.g. pure detection ground truth) are copied unchanged.

    Returns:
        the new dict: `keypoints` has 39 numbers, `num_keypoints` counts joints with v > 0 among the 13,
        and each category with a `keypoints` list names our 13 joints (skeleton 1-based, COCO style).
    """
    out = copy.deepcopy(dataset)
    for index, ann in enumerate(out.get('annotations', [])):
        if 'keypoints' not in ann:
            continue
        joints = _keypoints_13(ann['keypoints'], f'ground-truth annotation {ann.get("id", index)}')
        ann['keypoints'] = [float(v) if not float(v).is_integer() else int(v) for v in joints.reshape(-1)]
        ann['num_keypoints'] = int(np.count_nonzero(joints[:, 2] > 0))
    for category in out.get('categories', []):
        if 'keypoints' in category:
            category['keypoints'] = list(KEYPOINT_NAMES)
            category['skeleton'] = [[a + 1, b + 1] for a, b in LIMBS]
    return out


def reduce_results_to_13(results: list[dict]) -> list[dict]:
    """A deep copy of COCO results with each `keypoints` reduced from the 17-slot layout to 39 numbers."""
    out = copy.deepcopy(results)
    for index, result in enumerate(out):
        if 'keypoints' in result:
            result['keypoints'] = [float(v) for v in
                                   _keypoints_13(result['keypoints'], f'result {index}').reshape(-1)]
    return out


def coco_from_dict(dataset: dict) -> COCO:
    """A pycocotools COCO object from an in-memory ground-truth dict (no file, no printing)."""
    for key in ('images', 'annotations', 'categories'):
        if key not in dataset:
            raise ValueError(f'ground truth has no {key!r} list (keys: {sorted(dataset)})')
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """Results -> COCO object through `COCO.loadRes` (an empty list gives an empty results set).

    pycocotools' loadRes cannot take an empty list; an empty set with the ground truth's images and
    categories is what COCOeval then needs (every ground-truth instance is a miss).

    Raises:
        ValueError: a result names an image or a category absent from the ground truth.
    """
    if not isinstance(results, list):
        raise ValueError(f'COCO results must be a JSON list, got {type(results).__name__}')
    known_images = set(coco_gt.getImgIds())
    known_categories = set(coco_gt.getCatIds())
    for index, result in enumerate(results):
        for key in ('image_id', 'category_id', 'score'):
            if key not in result:
                raise ValueError(f'result {index} has no {key!r} (keys: {sorted(result)})')
        if result['image_id'] not in known_images:
            raise ValueError(f'result {index} has image_id {result["image_id"]}, '
                             'which is not in the ground truth')
        if result['category_id'] not in known_categories:
            raise ValueError(f'result {index} has category_id {result["category_id"]}; the ground truth has '
                             f'{sorted(known_categories)}')
    if not results:
        empty = COCO()
        empty.dataset = {'images': copy.deepcopy(coco_gt.dataset['images']),
                         'categories': copy.deepcopy(coco_gt.dataset['categories']), 'annotations': []}
        with contextlib.redirect_stdout(io.StringIO()):
            empty.createIndex()
        return empty
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(copy.deepcopy(results))


def run_cocoeval(coco_gt: COCO, coco_dt: COCO, iou_type: str,
                 image_ids: list[int] | None = None) -> CocoMetrics:
    """Evaluate, accumulate and summarise one iouType (keypoints use the 13 joints' sigmas).

    Args:
        coco_gt: ground truth; for 'keypoints' already reduced to 13 joints.
        coco_dt: results from `load_results`; for 'keypoints' already reduced to 13 joints.
        iou_type: 'keypoints', 'bbox' or 'segm'.
        image_ids: restrict to these images (default: all ground-truth images).

    Returns:
        the metrics, with pycocotools' own numbers.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f'iou_type must be one of {IOU_TYPES}, got {iou_type!r}')
    evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    if iou_type == 'keypoints':
        evaluator.params.kpt_oks_sigmas = OKS_SIGMAS.copy()
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    names = KEYPOINT_STAT_NAMES if iou_type == 'keypoints' else DETECTION_STAT_NAMES
    stats = [float(v) for v in evaluator.stats]
    # precision: [T thresholds, R recall points, K categories, A area ranges, M maxDets]
    precision = evaluator.eval['precision']
    thresholds = evaluator.params.iouThrs
    curves = {}
    for label, threshold in (('0.50', 0.5), ('0.75', 0.75)):
        t = int(np.argmin(np.abs(thresholds - threshold)))
        curves[label] = [float(v) for v in precision[t, :, 0, 0, -1]]
    valid = precision[:, :, 0, 0, -1]
    mean_curve = np.where((valid > -1).all(axis=0), valid.mean(axis=0), -1.0)
    curves['0.50:0.95'] = [float(v) for v in mean_curve]
    return CocoMetrics(iou_type=iou_type, stats=stats, named=dict(zip(names, stats)),
                       recall_thresholds=[float(v) for v in evaluator.params.recThrs],
                       precision=curves, summary=buffer.getvalue())


def applicable_iou_types(gt_dataset: dict, results: list[dict]) -> list[str]:
    """The iouTypes both sides carry data for.

    Keypoints need ground-truth keypoints (and result keypoints when there are results), segm needs
    ground-truth segmentations (and result segmentations); bbox always applies.
    """
    annotations = gt_dataset.get('annotations', [])
    types = []
    gt_has_keypoints = any('keypoints' in a for a in annotations)
    if gt_has_keypoints and (not results or all('keypoints' in r for r in results)):
        types.append('keypoints')
    types.append('bbox')
    gt_has_segm = bool(annotations) and all(a.get('segmentation') for a in annotations)
    if gt_has_segm and (not results or all('segmentation' in r for r in results)):
        types.append('segm')
    return types


def evaluate_coco(gt_dataset: dict, results: list[dict], iou_types: list[str] | None = None,
                  image_ids: list[int] | None = None) -> dict[str, CocoMetrics]:
    """Paper Table 1 (keypoints, 13 joints) plus bbox and segm AP for a ground truth and its results.

    Args:
        gt_dataset: COCO ground-truth dict (17- or 13-joint keypoints).
        results: COCO results list (as `ppe infer` writes: 17-slot keypoints, RLE segmentation).
        iou_types: which evaluations to run (default: every applicable one, see `applicable_iou_types`).
        image_ids: restrict to these images (default: all ground-truth images).

    Returns:
        iou_type -> metrics.
    """
    iou_types = applicable_iou_types(gt_dataset, results) if iou_types is None else list(iou_types)
    coco_gt = coco_from_dict(reduce_ground_truth_to_13(gt_dataset))
    reduced = reduce_results_to_13(results)
    metrics = {}
    for iou_type in iou_types:
        ranked = pose_ranked(reduced) if iou_type == 'keypoints' else reduced
        metrics[iou_type] = run_cocoeval(coco_gt, load_results(coco_gt, ranked), iou_type, image_ids)
    return metrics


def pose_ranked(results: list[dict]) -> list[dict]:
    """Results whose `score` is their `pose_score` where they have one (keypoint AP ranks by pose).

    Boxes and masks keep the detection score; for keypoints, top-down methods rank each person by box
    score x mean confident joint score (`Pedestrian.pose_score`). Results without `pose_score` (files
    from other tools) keep their `score`.
    """
    # shallow record copies: `reduce_results_to_13` and `load_results` already copy deeply
    return [dict(result, score=float(result['pose_score'])) if 'pose_score' in result else result
            for result in results]
