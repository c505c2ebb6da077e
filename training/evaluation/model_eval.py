"""Running a model over a COCO-format dataset, and the parity of two backends on the same images.

The model is used only through the deployed `Predictor` (any backend: torch, onnxruntime, tensorrt),
so the exported model is scored by exactly the same code as the PyTorch one.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from occluded_ppe_ros.inference.coco_results import pedestrians_to_coco_results
from occluded_ppe_ros.inference.results import Pedestrian

# image RGB uint8 [H, W, 3], its COCO image record -> the image the model sees
ImageTransform = Callable[[np.ndarray, dict], np.ndarray]

# The parity gate of `ppe eval model --compare-backend` (docs/evaluation.md), for fp32 backends (torch,
# ONNX Runtime, an fp32 TensorRT engine): box corners and joint positions in input-image pixels, detection
# and joint scores in score units. The export gate allows 1e-2 network-input pixels and 1e-4 in
# probability on the raw graph outputs; through letterboxing (up to a few input pixels per network pixel)
# and post-processing these become the looser numbers here. An fp16 engine needs its own, looser ones
# (--pixel-tolerance, --score-tolerance).
PARITY_PIXEL_TOLERANCE = 0.05
PARITY_SCORE_TOLERANCE = 1e-3


def load_predictor(checkpoint: str | Path, backend: str = 'torch', device: str = 'cpu',
                   score_threshold: float = 0.05):
    """`Predictor.from_checkpoint` (imported here so the evaluation library loads without a model).

    Args:
        checkpoint: a .pt checkpoint or a .onnx export.
        backend: 'torch', 'onnxruntime', 'tensorrt' or 'auto'.
        device: 'cpu' or 'cuda'.
        score_threshold: detections below it are dropped; low for AP (the whole PR curve counts).
    """
    from occluded_ppe_ros.inference.predictor import Predictor

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f'model file {checkpoint} does not exist')
    return Predictor.from_checkpoint(str(checkpoint), backend=backend, device=device,
                                     score_threshold=score_threshold)


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3]."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'cannot read image {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_path(images_dir: Path, info: dict) -> Path:
    """Where a COCO image record's file is: images_dir / file_name, else images_dir / basename."""
    name = info.get('file_name') or info.get('im_name')
    if not name:
        raise ValueError(f'image record {info.get("id")} has no file_name')
    for candidate in (images_dir / name, images_dir / Path(name).name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f'image {name!r} (id {info.get("id")}) not found under {images_dir}')


def predict_dataset(predictor, gt_dataset: dict, images_dir: str | Path,
                    image_transform: ImageTransform | None = None,
                    category_ids: Mapping[str, int] | None = None,
                    image_ids: list[int] | None = None) -> tuple[list[dict], dict[int, list[Pedestrian]]]:
    """Run `predictor.predict` on every image of a COCO ground truth.

    Args:
        predictor: anything with `predict(rgb uint8 [H, W, 3]) -> list[Pedestrian]`.
        gt_dataset: COCO dict; its `images` say which files to read.
        images_dir: folder of the image files.
        image_transform: applied to each image before prediction (e.g. occlusion).
        category_ids: class_name -> result category id (None: 1 for every detection).
        image_ids: only these images (default: all).

    Returns:
        (COCO results list, image id -> the pedestrians).
    """
    images_dir = Path(images_dir)
    wanted = None if image_ids is None else set(image_ids)
    results: list[dict] = []
    pedestrians: dict[int, list[Pedestrian]] = {}
    for info in gt_dataset['images']:
        if wanted is not None and info['id'] not in wanted:
            continue
        image = read_rgb(image_path(images_dir, info))
        if image_transform is not None:
            image = image_transform(image, info)
        found = predictor.predict(image)
        pedestrians[info['id']] = found
        results.extend(pedestrians_to_coco_results(info['id'], found, image.shape[:2], category_ids))
    return results, pedestrians


@dataclass
class ParityReport:
    """How far a candidate backend's pedestrians are from a reference backend's on the same images.

    Pairs are formed per image greedily by box distance (the largest absolute coordinate difference,
    smallest first; this also pairs degenerate boxes), min(reference, candidate) pairs per image; the
    differences are maxima over pairs, in input-image pixels (boxes, keypoints) or score units.

    Attributes:
        num_images: images compared; count_mismatches: images whose detection counts differ.
        num_reference, num_candidate: total detections; num_pairs: paired detections.
        max_box_diff, max_keypoint_diff, max_score_diff, max_keypoint_score_diff: None without pairs.
        occlusion_flag_mismatches: joints whose occluded flag differs, over all pairs.
        min_mask_iou: the lowest mask IoU over pairs (None without pairs).
        max_unpaired_score: the highest score of a detection that has no partner in the other run
            (None when every detection is paired).
        per_image: image id -> (reference count, candidate count).
    """

    num_images: int = 0
    count_mismatches: int = 0
    num_reference: int = 0
    num_candidate: int = 0
    num_pairs: int = 0
    max_box_diff: float | None = None
    max_keypoint_diff: float | None = None
    max_score_diff: float | None = None
    max_keypoint_score_diff: float | None = None
    occlusion_flag_mismatches: int = 0
    min_mask_iou: float | None = None
    max_unpaired_score: float | None = None
    per_image: dict[int, tuple[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out['per_image'] = {str(k): list(v) for k, v in self.per_image.items()}
        return out


def _maximum(current: float | None, value: float) -> float:
    return value if current is None else max(current, value)


def compare_predictions(reference: Mapping[int, list[Pedestrian]], candidate: Mapping[int, list[Pedestrian]],
                        image_sizes: Mapping[int, tuple[int, int]]) -> ParityReport:
    """Parity of two backends' pedestrians (see ParityReport).

    Args:
        reference: image id -> the reference backend's pedestrians.
        candidate: image id -> the candidate backend's pedestrians (same image ids).
        image_sizes: image id -> (height, width), the canvas for mask IoU.
    """
    if set(reference) != set(candidate):
        raise ValueError(f'the two runs cover different images: {sorted(set(reference) ^ set(candidate))}')
    report = ParityReport()
    for image_id in sorted(reference):
        ref, cand = reference[image_id], candidate[image_id]
        report.num_images += 1
        report.num_reference += len(ref)
        report.num_candidate += len(cand)
        report.per_image[image_id] = (len(ref), len(cand))
        report.count_mismatches += int(len(ref) != len(cand))
        if not ref or not cand:
            for pedestrian in (*ref, *cand):
                report.max_unpaired_score = _maximum(report.max_unpaired_score, float(pedestrian.score))
            continue
        ref_boxes = np.array([p.box for p in ref], dtype=np.float64)
        cand_boxes = np.array([p.box for p in cand], dtype=np.float64)
        distance = np.abs(ref_boxes[:, None, :] - cand_boxes[None, :, :]).max(axis=2)
        used_ref, used_cand = set(), set()
        for flat in np.argsort(distance, axis=None, kind='stable'):
            r, c = divmod(int(flat), distance.shape[1])
            if r in used_ref or c in used_cand:
                continue
            used_ref.add(r)
            used_cand.add(c)
            a, b = ref[r], cand[c]
            report.num_pairs += 1
            report.max_box_diff = _maximum(report.max_box_diff, float(np.abs(a.box - b.box).max()))
            report.max_keypoint_diff = _maximum(report.max_keypoint_diff,
                                                float(np.abs(a.keypoints - b.keypoints).max()))
            report.max_score_diff = _maximum(report.max_score_diff, abs(float(a.score) - float(b.score)))
            report.max_keypoint_score_diff = _maximum(
                report.max_keypoint_score_diff, float(np.abs(a.keypoint_scores - b.keypoint_scores).max()))
            report.occlusion_flag_mismatches += int(np.count_nonzero(
                np.asarray(a.keypoint_occluded, bool) != np.asarray(b.keypoint_occluded, bool)))
            height, width = image_sizes[image_id]
            mask_a, mask_b = a.full_mask(height, width), b.full_mask(height, width)
            union = np.count_nonzero(mask_a | mask_b)
            iou = np.count_nonzero(mask_a & mask_b) / union if union else 1.0
            report.min_mask_iou = iou if report.min_mask_iou is None else min(report.min_mask_iou, iou)
        unpaired = [p for i, p in enumerate(ref) if i not in used_ref] + \
                   [p for i, p in enumerate(cand) if i not in used_cand]
        for pedestrian in unpaired:
            report.max_unpaired_score = _maximum(report.max_unpaired_score, float(pedestrian.score))
    return report


def parity_failures(report: ParityReport, score_threshold: float,
                    pixel_tolerance: float = PARITY_PIXEL_TOLERANCE,
                    score_tolerance: float = PARITY_SCORE_TOLERANCE) -> list[str]:
    """What differs beyond the tolerances, one short phrase each; empty when the two runs agree.

    Checked: box corners and joint positions (pixels), detection and joint scores, and detection counts.
    A detection without a partner counts only when it scores above `score_threshold + score_tolerance`:
    one just above the threshold may fall below it in the other run by a score difference within the
    tolerance. Occlusion flags and mask IoU are reported, not gated (both are thresholded probabilities
    that flip at the threshold under differences within the tolerance).

    Args:
        report: compare_predictions' result.
        score_threshold: the predictors' detection score threshold (--min-score).
        pixel_tolerance: the largest position difference allowed (pixels).
        score_tolerance: the largest score difference allowed.
    """
    failures = []
    for value, tolerance, what, unit in (
            (report.max_box_diff, pixel_tolerance, 'boxes', ' px'),
            (report.max_keypoint_diff, pixel_tolerance, 'joints', ' px'),
            (report.max_score_diff, score_tolerance, 'scores', ''),
            (report.max_keypoint_score_diff, score_tolerance, 'joint scores', '')):
        if value is not None and not value <= tolerance:      # `not <=` also catches NaN
            failures.append(f'{what} differ by up to {value:.4g}{unit} (tolerance {tolerance:g}{unit})')
    unpaired = report.max_unpaired_score
    if unpaired is not None and unpaired > score_threshold + score_tolerance:
        failures.append(f'detection counts differ on {report.count_mismatches} of {report.num_images} images '
                        f'({report.num_reference} vs {report.num_candidate} detections; an unpaired one '
                        f'scores {unpaired:.4g}, above the threshold {score_threshold:g} + '
                        f'tolerance)')
    return failures
