"""CityPersons log-average miss rate MR^-2 (paper Table 3), following the official evaluation.

The official evaluation (CityPersons' `eval_MR_multisetup.py`, after Dollar et al.'s Caltech toolbox):
- Ground truth: class 1 (pedestrian) rows are regular; every other class (0 ignore region, 2 rider,
  3 sitting, 4 other, 5 group) is an ignore region. A pedestrian outside the setup's height range
  (full-box height, pixels) or visibility range (visible-box area / full-box area) also becomes an
  ignore region. Both ranges are inclusive.
- Detections of an image: sorted by score, the first 1000 kept, then those whose box height lies
  outside [h_min / 1.25, h_max * 1.25) dropped (the 1.25 margin keeps detections just under the height
  limit from counting as false positives against ground truth just over it).
- Matching at IoU 0.5, detections in score order: a regular GT is taken once, by the detection with the
  highest IoU >= 0.5 among those not yet taken; only when no regular GT matches may a detection fall
  on an ignore region, measured by intersection / the detection's own area (>= 0.5). Detections on
  ignore regions are dropped; the others are true or false positives.
- Over all images: recall = TP / regular GT, FPPI = FP / number of images (every image counts);
  miss rate = 1 - recall sampled at 9 FPPI points log-spaced over [1e-2, 1e0] (the official values,
  rounded to 4 digits), each taking the curve's last operating point with FPPI <= the reference
  (recall 0 if none); MR^-2 = exp(mean(log(max(miss rate, 1e-10)))).
See docs/evaluation.md for the details and the one place where this differs from the official code.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# CityPersons bbs columns: class_label, x1, y1, w, h, instance_id, x1_vis, y1_vis, w_vis, h_vis.
PEDESTRIAN_CLASS = 1
CLASS_NAMES = {0: 'ignore', 1: 'pedestrian', 2: 'rider', 3: 'sitting', 4: 'other', 5: 'group'}
# The official reference FPPI points: 10 ** linspace(-2, 0, 9), as the official code writes them.
FPPI_REFERENCES = np.array([0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000])
MATCH_IOU = 0.5
HEIGHT_MARGIN = 1.25
MAX_DETECTIONS = 1000
_NO_LIMIT = 1e10


@dataclass(frozen=True)
class Setup:
    """One evaluation setup: inclusive ranges of full-box height (pixels) and visibility ratio."""

    name: str
    height_range: tuple[float, float]
    visibility_range: tuple[float, float]


SETUPS: dict[str, Setup] = {s.name: s for s in (
    Setup('Reasonable', (50, _NO_LIMIT), (0.65, _NO_LIMIT)),
    Setup('Heavy', (50, _NO_LIMIT), (0.2, 0.65)),
    Setup('R+HO', (50, _NO_LIMIT), (0.2, _NO_LIMIT)),
    Setup('All', (20, _NO_LIMIT), (0.2, _NO_LIMIT)),
)}


@dataclass
class ImageGroundTruth:
    """One image's annotations.

    Attributes:
        image_id: 1-based position in anno_val.mat (the official convention), or the COCO image id.
        im_name: e.g. 'frankfurt_000000_000294_leftImg8bit.png'.
        boxes: float64 [N, 4] full boxes x, y, w, h (pixels).
        visibility: float64 [N] visible-box area / full-box area.
        regular: bool [N] True for pedestrians (class 1), False for ignore regions.
    """

    image_id: int
    im_name: str
    boxes: np.ndarray
    visibility: np.ndarray
    regular: np.ndarray


def _mat_string(value) -> str:
    """A MATLAB char array as loaded by scipy (nested 1-element arrays) -> str."""
    while isinstance(value, np.ndarray):
        if value.size == 0:
            return ''
        value = value.reshape(-1)[0]
    return str(value)


def _from_bbs(image_id: int, im_name: str, bbs: np.ndarray, where: str) -> ImageGroundTruth:
    bbs = np.asarray(bbs, dtype=np.float64)
    if bbs.size == 0:
        bbs = np.zeros((0, 10))
    if bbs.ndim != 2 or bbs.shape[1] != 10:
        raise ValueError(f'expected bbs rows of 10 numbers in {where}, got shape {bbs.shape}')
    boxes = bbs[:, 1:5]
    full_area = boxes[:, 2] * boxes[:, 3]
    visible_area = bbs[:, 8] * bbs[:, 9]
    visibility = np.divide(visible_area, full_area, out=np.zeros_like(full_area), where=full_area > 0)
    return ImageGroundTruth(image_id, im_name, boxes, visibility, bbs[:, 0] == PEDESTRIAN_CLASS)


def load_annotations_mat(path: str | Path) -> list[ImageGroundTruth]:
    """Read an official CityPersons annotation file (anno_val.mat / anno_train.mat).

    The file holds one variable (`anno_val_aligned`, `anno_train_aligned`): a 1 x N cell array, each cell
    a struct with `cityname`, `im_name` and `bbs` (rows: class, x1, y1, w, h, instance id, x1_vis,
    y1_vis, w_vis, h_vis). Image ids are 1-based cell positions, as in the official evaluation.
    """
    import scipy.io

    path = Path(path)
    contents = scipy.io.loadmat(str(path))
    names = [k for k in contents if not k.startswith('__')]
    if len(names) != 1:
        raise ValueError(f'expected one annotation variable (e.g. anno_val_aligned) in {path}, found {names}')
    cells = np.asarray(contents[names[0]]).reshape(-1)
    images = []
    for index, cell in enumerate(cells):
        record = cell
        while isinstance(record, np.ndarray) and record.dtype.names is None and record.dtype == object:
            record = record.reshape(-1)[0]
        record = np.asarray(record).reshape(-1)[0]
        fields = record.dtype.names or ()
        for required in ('im_name', 'bbs'):
            if required not in fields:
                raise ValueError(f'cell {index + 1} of {names[0]} in {path} has no {required!r} field '
                                 f'(fields: {fields})')
        images.append(_from_bbs(index + 1, _mat_string(record['im_name']), record['bbs'],
                                f'cell {index + 1} of {names[0]} in {path}'))
    return images


def load_annotations_coco(dataset: dict, pedestrian_category: int = 1) -> list[ImageGroundTruth]:
    """Read a COCO-style CityPersons conversion (e.g. the official val_gt.json).

    Per annotation: `bbox` (full box x, y, w, h); the visibility from `vis_ratio`, else from `vis_bbox`
    (visible box area / full box area), else 1; an ignore region where `ignore` or `iscrowd` is set or
    `category_id` is not `pedestrian_category`. Images: `id` and `im_name` (or `file_name`).
    """
    by_image: dict[int, list[dict]] = {}
    for ann in dataset.get('annotations', []):
        by_image.setdefault(ann['image_id'], []).append(ann)
    images = []
    for info in dataset['images']:
        anns = by_image.get(info['id'], [])
        boxes = np.array([a['bbox'] for a in anns], dtype=np.float64).reshape(-1, 4)
        visibility = np.ones(len(anns))
        for i, ann in enumerate(anns):
            if 'vis_ratio' in ann:
                visibility[i] = float(ann['vis_ratio'])
            elif 'vis_bbox' in ann:
                area = boxes[i, 2] * boxes[i, 3]
                visibility[i] = ann['vis_bbox'][2] * ann['vis_bbox'][3] / area if area > 0 else 0.0
        regular = np.array([not (a.get('ignore') or a.get('iscrowd'))
                            and a.get('category_id', pedestrian_category) == pedestrian_category
                            for a in anns], dtype=bool)
        name = info.get('im_name') or Path(info.get('file_name', '')).name
        images.append(ImageGroundTruth(int(info['id']), name, boxes, visibility, regular))
    return images


def load_annotations(path: str | Path, pedestrian_category: int = 1) -> list[ImageGroundTruth]:
    """anno_*.mat or a COCO-style JSON, by the file's suffix."""
    path = Path(path)
    if path.suffix == '.mat':
        return load_annotations_mat(path)
    if path.suffix == '.json':
        return load_annotations_coco(json.loads(path.read_text()), pedestrian_category)
    raise ValueError(f'expected a .mat (official) or .json (COCO-style) CityPersons annotation file, '
                     f'got {path}')


def detections_by_image(detections: list[dict], images: list[ImageGroundTruth],
                        category_id: int | None = None) -> dict[int, np.ndarray]:
    """Group detections per image: image_id -> float64 [D, 5] (x, y, w, h, score).

    Args:
        detections: dicts with `bbox` [x, y, w, h], `score` and `image_id` or `im_name`.
        images: the ground truth (resolves `im_name` and checks ids).
        category_id: keep only detections with this `category_id` (None: keep all).
    """
    ids = {im.image_id for im in images}
    by_name = {im.im_name: im.image_id for im in images}
    grouped: dict[int, list[list[float]]] = {i: [] for i in ids}
    for index, det in enumerate(detections):
        if category_id is not None and det.get('category_id', category_id) != category_id:
            continue
        if 'image_id' in det:
            image_id = det['image_id']
        elif 'im_name' in det:
            if det['im_name'] not in by_name:
                raise ValueError(f'detection {index} names image {det["im_name"]!r}, '
                                 'absent from the annotations')
            image_id = by_name[det['im_name']]
        else:
            raise ValueError(f'detection {index} has neither image_id nor im_name (keys: {sorted(det)})')
        if image_id not in grouped:
            raise ValueError(f'detection {index} has image_id {image_id}, absent from the annotations '
                             f'({len(ids)} images)')
        bbox = det.get('bbox')
        if bbox is None or len(bbox) != 4:
            raise ValueError(f'detection {index} needs bbox [x, y, w, h], got {bbox}')
        grouped[image_id].append([*map(float, bbox), float(det['score'])])
    return {i: np.array(rows, dtype=np.float64).reshape(-1, 5) for i, rows in grouped.items()}


def overlaps(detections: np.ndarray, ground_truth: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """[D, G] overlaps of x, y, w, h boxes: IoU for regular GT, intersection / detection area for ignore.

    Args:
        detections: [D, 4+] boxes x, y, w, h.
        ground_truth: [G, 4] boxes x, y, w, h.
        ignore: bool [G].
    """
    d = np.asarray(detections, dtype=np.float64)[:, None, :4]
    g = np.asarray(ground_truth, dtype=np.float64)[None, :, :4]
    inter_w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    inter_h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    det_area = d[..., 2] * d[..., 3]
    union = np.where(np.asarray(ignore, dtype=bool)[None, :], det_area,
                     det_area + g[..., 2] * g[..., 3] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class ImageMatches:
    """One image under one setup: kept detections (score order) and their outcome."""

    scores: np.ndarray       # float64 [D]
    true_positive: np.ndarray  # bool [D]
    ignored: np.ndarray      # bool [D] matched an ignore region: neither TP nor FP
    num_regular: int         # regular (non-ignored) ground truth


def match_image(gt: ImageGroundTruth, detections: np.ndarray, setup: Setup) -> ImageMatches:
    """Match one image's detections to its ground truth under `setup` (official rules, module docstring).

    Args:
        gt: the image's annotations.
        detections: float64 [D, 5] x, y, w, h, score.
        setup: height / visibility ranges.
    """
    h_min, h_max = setup.height_range
    v_min, v_max = setup.visibility_range
    heights = gt.boxes[:, 3]
    in_setup = ((heights >= h_min) & (heights <= h_max)
                & (gt.visibility >= v_min) & (gt.visibility <= v_max))
    ignore = ~(gt.regular & in_setup)
    order = np.argsort(ignore, kind='stable')      # regular ground truth first
    gt_boxes, ignore = gt.boxes[order], ignore[order]

    detections = detections[np.argsort(-detections[:, 4], kind='stable')][:MAX_DETECTIONS]
    det_heights = detections[:, 3]
    keep = (det_heights >= h_min / HEIGHT_MARGIN) & (det_heights < h_max * HEIGHT_MARGIN)
    detections = detections[keep]

    num_det = len(detections)
    true_positive = np.zeros(num_det, dtype=bool)
    ignored = np.zeros(num_det, dtype=bool)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    if num_det and len(gt_boxes):
        overlap = overlaps(detections, gt_boxes, ignore)
        for d in range(num_det):
            best, best_g = MATCH_IOU, -1
            for g in range(len(gt_boxes)):
                if taken[g]:
                    continue
                if best_g >= 0 and ignore[g]:
                    break       # a regular match (or an earlier ignore match) is final
                if overlap[d, g] < best:
                    continue
                best, best_g = overlap[d, g], g
            if best_g < 0:
                continue
            if ignore[best_g]:
                ignored[d] = True
            else:
                true_positive[d] = True
                taken[best_g] = True
    return ImageMatches(detections[:, 4].copy(), true_positive, ignored, int(np.count_nonzero(~ignore)))


@dataclass
class MissRateResult:
    """One setup's outcome.

    Attributes:
        setup: the setup.
        mr2: log-average miss rate over FPPI_REFERENCES in [0, 1]; None without regular ground truth.
        miss_rate_at_references: [9] miss rate sampled at each reference FPPI.
        fppi: [D'] the curve's false positives per image after each kept detection (score order).
        miss_rate: [D'] the curve's miss rate after each kept detection.
        num_regular: regular ground-truth count; num_images: images counted in FPPI.
    """

    setup: Setup
    mr2: float | None
    miss_rate_at_references: list[float]
    fppi: list[float]
    miss_rate: list[float]
    num_regular: int
    num_images: int

    def to_dict(self) -> dict:
        return {'setup': self.setup.name, 'height_range': list(self.setup.height_range),
                'visibility_range': list(self.setup.visibility_range), 'MR-2': self.mr2,
                'fppi_references': FPPI_REFERENCES.tolist(),
                'miss_rate_at_references': self.miss_rate_at_references,
                'num_regular_ground_truth': self.num_regular, 'num_images': self.num_images,
                'curve': {'fppi': self.fppi, 'miss_rate': self.miss_rate}}


def log_average_miss_rate(fppi: np.ndarray, recall: np.ndarray,
                          references: np.ndarray = FPPI_REFERENCES) -> tuple[float, np.ndarray]:
    """MR^-2 from a curve (points in detection-score order).

    Args:
        fppi: [D] non-decreasing false positives per image.
        recall: [D] recall at the same points.
        references: FPPI values to sample.

    Returns:
        (log-average miss rate, [R] miss rate at each reference); a reference below the curve's first
        FPPI takes recall 0 (no detection kept).
    """
    last = np.searchsorted(fppi, references, side='right') - 1
    recall = np.asarray(recall, dtype=np.float64)
    sampled_recall = np.zeros(len(references))
    sampled_recall[last >= 0] = recall[last[last >= 0]]
    miss = 1.0 - sampled_recall
    return float(np.exp(np.mean(np.log(np.maximum(miss, 1e-10))))), miss


def evaluate_setup(images: list[ImageGroundTruth], detections: dict[int, np.ndarray],
                   setup: Setup) -> MissRateResult:
    """Official MR^-2 of one setup over all images (module docstring)."""
    per_image = [match_image(im, detections.get(im.image_id, np.zeros((0, 5))), setup) for im in images]
    num_regular = sum(m.num_regular for m in per_image)
    scores = np.concatenate([m.scores[~m.ignored] for m in per_image]) if per_image else np.zeros(0)
    positives = (np.concatenate([m.true_positive[~m.ignored] for m in per_image])
                 if per_image else np.zeros(0, dtype=bool))
    order = np.argsort(-scores, kind='stable')
    positives = positives[order]
    num_images = len(images)
    if num_regular == 0:
        return MissRateResult(setup, None, [], [], [], 0, num_images)
    fppi = np.cumsum(~positives) / max(num_images, 1)
    recall = np.cumsum(positives) / num_regular
    mr2, sampled = log_average_miss_rate(fppi, recall)
    return MissRateResult(setup, mr2, [float(v) for v in sampled], fppi.tolist(),
                          (1.0 - recall).tolist(), num_regular, num_images)


def evaluate_citypersons(images: list[ImageGroundTruth], detections: list[dict],
                         setups: list[str] | None = None,
                         category_id: int | None = None) -> dict[str, MissRateResult]:
    """Paper Table 3: MR^-2 per setup (default: Reasonable, Heavy, R+HO, All).

    Args:
        images: the annotations (`load_annotations`).
        detections: dicts with `bbox` [x, y, w, h], `score`, and `image_id` or `im_name`.
        setups: names from SETUPS.
        category_id: evaluate only detections of this category (None: all).
    """
    setups = list(SETUPS) if setups is None else setups
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        raise ValueError(f'unknown setup(s) {unknown}; choose from {list(SETUPS)}')
    grouped = detections_by_image(detections, images, category_id)
    return {name: evaluate_setup(images, grouped, SETUPS[name]) for name in setups}


def format_percent(value: float | None) -> str:
    """MR as the tables print it: percent with 2 decimals, 'n/a' when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 'n/a'
    return f'{100 * value:.2f}'
