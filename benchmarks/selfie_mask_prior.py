"""What MediaPipe's selfie segmenter is worth as a visible-instance mask prior, on ground-truth person boxes.

For every ground-truth person (non-crowd, with a segmentation) of the real COCO photos of
../shared/data/coco_train2017_person_kp in the TRAINING split (`splits.in_split(image_id, 'train')`):
take the square around its box (side 1.25 x the longer box side, same centre: `pipeline.square_rois`'s
geometry), resample it to 256 x 256 (bilinear, zero outside the photo), run `SelfieSegmenter`, paste the
probability back into the photo (inverse of the same affine map), keep it inside the box only and
threshold it. Scored as
    - COCO segm AP (pycocotools, all GT persons of those photos; crowd regions ignored as usual), one
      result per GT person, with score 1 or the mean probability inside the mask;
    - the mean IoU of each person's thresholded mask with its ground-truth mask, overall and split by
      whether another person's box overlaps this one's (box IoU > 0.1) -- the segmenter marks every person
      in the crop, not the instance;
against the trivial prior "the whole box filled" (score 1), and a combination: the selfie mask, or the
box where the selfie mask covers less than 10 % of the box (`FALLBACK_FILL`; the segmenter finds no one in
some small, blurry crops). Mean IoU also per COCO size class of the ground-truth mask (small < 32^2 px,
medium < 96^2, large), with the count of empty selfie masks.
Also the per-crop latency (batch 1, 1 thread, median) of the torch module and of its ONNX export
(torch.onnx.export dynamo=False, opset 18) in ONNX Runtime, and optionally of the tf2onnx conversion of
the original graph (--original-onnx).

Measured (2026-12-04; 88 training photos, 182 persons: 92 small, 58 medium, 32 large; 51 with another
person's box overlapping):
    prior                         segm AP  AP50   APs    APm    APl    mean IoU  (small / medium / large)
    box filled                    0.076    0.347  0.131  0.053  0.052  0.516     (0.546 / 0.482 / 0.490)
    selfie p>=0.3, score 1        0.170    0.412  0.128  0.157  0.357  0.512     (0.444 / 0.532 / 0.671)
    selfie p>=0.5, score 1        0.150    0.377  0.102  0.133  0.405  0.488     (0.415 / 0.503 / 0.671)
    selfie p>=0.3, mean prob      0.201    0.501  0.199  0.182  0.318  (as score 1)
    selfie p>=0.5, mean prob      0.192    0.482  0.177  0.172  0.358
    selfie p>=0.3, box fallback   0.217    0.566  0.231  0.148  0.356  0.614     (0.611 / 0.579 / 0.687)
    selfie p>=0.5, box fallback   0.201    0.557  0.198  0.134  0.391  0.604     (0.596 / 0.564 / 0.702)
Empty selfie masks: 22 (p >= 0.3) and 30 (p >= 0.5) of 182, nearly all small people. Mean IoU with
another person's box overlapping: 0.415 (selfie 0.3) / 0.483 (fallback) / 0.461 (box), isolated 0.550 /
0.665 / 0.537. Latency per 256 x 256 crop, 1 thread, median (noisy: 2 cores shared with other jobs):
torch eager 6.7-11.8 ms, ONNX Runtime on our export 3.9-4.1 ms (max |diff| 2.8e-5), on the tf2onnx
conversion of the original 3.4-7.0 ms.

Usage (project venv; 2 shared CPU cores, so one thread):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/selfie_mask_prior.py [--json OUT.json]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from occluded_ppe_ros.model.selfie import INPUT_SIZE, load_selfie_segmenter  # noqa: E402
from occluded_ppe_ros.peers import square_crop_transform  # noqa: E402
from occluded_ppe_ros.source_tree import import_training_from_source  # noqa: E402

DATA_DIR = REPO_ROOT.parent / 'shared' / 'data' / 'coco_train2017_person_kp'
CROP_MARGIN = 1.25
THRESHOLDS = (0.3, 0.5)
OVERLAP_BOX_IOU = 0.1
FALLBACK_FILL = 0.1          # selfie mask area / box area below which the box is used instead
SIZE_CLASSES = (('small', 0, 32 ** 2), ('medium', 32 ** 2, 96 ** 2), ('large', 96 ** 2, float('inf')))


def index_transform(box_xyxy: np.ndarray, size: int) -> np.ndarray:
    """`square_crop_transform` in cv2's pixel-index convention (pixel i covers [i, i + 1), centre i + 0.5).

    COCO boxes are continuous coordinates; cv2.warpAffine maps pixel indices. With u = s x + t in
    continuous coordinates, indices map as j = s i + (t + 0.5 s - 0.5).
    """
    transform = square_crop_transform(box_xyxy, size, CROP_MARGIN).copy()
    scale = transform[0, 0]
    transform[:, 2] += 0.5 * scale - 0.5
    return transform


def box_mask(box_xyxy: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool [H, W]: pixels whose centre lies inside the box."""
    x1, y1, x2, y2 = box_xyxy
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    return ((rows >= y1) & (rows <= y2))[:, None] & ((cols >= x1) & (cols <= x2))[None, :]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def segm_ap(coco_gt, results: list[dict]) -> dict[str, float]:
    """COCO segm AP / AP50 / AP75 / APs / APm / APl of `results` (pycocotools, printing silenced)."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, 'segm')
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    names = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
    return {name: round(float(value), 4) for name, value in zip(names, evaluator.stats[:6])}


def encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def median_latency_ms(run, repeats: int) -> float:
    for _ in range(5):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def measure_latency(model, example: torch.Tensor, repeats: int, original_onnx: Path | None) -> dict:
    import onnxruntime as ort

    latency: dict[str, float] = {}
    with torch.no_grad():
        latency['torch_eager_ms'] = median_latency_ms(lambda: model(example), repeats)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'selfie.onnx'
        with contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=18,
                              input_names=['images'], output_names=['person_prob'])
        session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
        feed = {'images': example.numpy()}
        with torch.no_grad():
            difference = session.run(None, feed)[0] - model(example).numpy()
            latency['export_max_abs_diff'] = float(np.abs(difference).max())
        latency['onnxruntime_export_ms'] = median_latency_ms(lambda: session.run(None, feed), repeats)
    if original_onnx is not None:
        session = ort.InferenceSession(str(original_onnx), options, providers=['CPUExecutionProvider'])
        feed = {session.get_inputs()[0].name: example.permute(0, 2, 3, 1).numpy()}
        latency['onnxruntime_tf2onnx_original_ms'] = median_latency_ms(lambda: session.run(None, feed),
                                                                       repeats)
    return {key: round(value, 3) if key.endswith('_ms') else value for key, value in latency.items()}


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DATA_DIR)
    parser.add_argument('--split', default='train', choices=('train', 'heldout'))
    parser.add_argument('--checkpoint', type=Path, default=None)
    parser.add_argument('--latency-repeats', type=int, default=100)
    parser.add_argument('--original-onnx', type=Path, default=None,
                        help='tf2onnx conversion of the original graph (NHWC input), for its latency')
    parser.add_argument('--json', type=Path, default=None, help='also write the numbers here')
    args = parser.parse_args()
    torch.set_num_threads(1)

    import_training_from_source(REPO_ROOT)
    from occluded_ppe_training.datasets.splits import in_split
    from pycocotools.coco import COCO

    data = json.loads((args.data / 'annotations.json').read_text())
    images = [image for image in data['images'] if in_split(image['id'], args.split)]
    image_ids = {image['id'] for image in images}
    gt = dict(data, images=images, annotations=[a for a in data['annotations'] if a['image_id'] in image_ids])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()

    model = load_selfie_segmenter(args.checkpoint)
    variants = [f'selfie_t{t}_score1' for t in THRESHOLDS] + [f'selfie_t{t}_meanprob' for t in THRESHOLDS]
    variants += [f'selfie_t{t}_boxfallback_score1' for t in THRESHOLDS]
    results: dict[str, list[dict]] = {name: [] for name in variants + ['box']}
    ious: dict[str, list[float]] = ({f'selfie_t{t}': [] for t in THRESHOLDS}
                                    | {f'selfie_t{t}_boxfallback': [] for t in THRESHOLDS} | {'box': []})
    empty_masks = {f'selfie_t{t}': 0 for t in THRESHOLDS}
    overlapped: list[bool] = []
    gt_areas: list[float] = []
    persons = 0
    for image in images:
        photo = cv2.imread(str(args.data / 'images' / image['file_name']))
        if photo is None:
            raise FileNotFoundError(args.data / 'images' / image['file_name'])
        rgb = np.ascontiguousarray(photo[:, :, ::-1])
        height, width = rgb.shape[:2]
        anns = [a for a in coco_gt.imgToAnns[image['id']] if not a.get('iscrowd') and a.get('segmentation')]
        if not anns:
            continue
        boxes = [np.array([x, y, x + w, y + h]) for x, y, w, h in (a['bbox'] for a in anns)]
        transforms = [index_transform(box, INPUT_SIZE) for box in boxes]
        crops = np.stack([cv2.warpAffine(rgb, t, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
                          for t in transforms])
        with torch.no_grad():
            probs = model(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0)[:, 0].numpy()
        for k, (ann, box, transform, prob) in enumerate(zip(anns, boxes, transforms, probs)):
            persons += 1
            inside = box_mask(box, height, width)
            pasted = cv2.warpAffine(prob, transform, (width, height),
                                    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) * inside
            gt_mask = coco_gt.annToMask(ann).astype(bool)
            gt_areas.append(float(ann['area']))
            overlapped.append(any(box_iou(box, other) > OVERLAP_BOX_IOU
                                  for j, other in enumerate(boxes) if j != k))
            for threshold in THRESHOLDS:
                mask = pasted >= threshold
                rle = encode(mask)
                mean_prob = float(pasted[mask].mean()) if mask.any() else 0.0
                results[f'selfie_t{threshold}_score1'].append(
                    {'image_id': image['id'], 'category_id': 1, 'segmentation': rle, 'score': 1.0})
                results[f'selfie_t{threshold}_meanprob'].append(
                    {'image_id': image['id'], 'category_id': 1, 'segmentation': rle, 'score': mean_prob})
                ious[f'selfie_t{threshold}'].append(mask_iou(mask, gt_mask))
                empty_masks[f'selfie_t{threshold}'] += int(not mask.any())
                fallback = inside if mask.sum() < FALLBACK_FILL * inside.sum() else mask
                results[f'selfie_t{threshold}_boxfallback_score1'].append(
                    {'image_id': image['id'], 'category_id': 1, 'segmentation': encode(fallback),
                     'score': 1.0})
                ious[f'selfie_t{threshold}_boxfallback'].append(mask_iou(fallback, gt_mask))
            results['box'].append({'image_id': image['id'], 'category_id': 1, 'segmentation': encode(inside),
                                   'score': 1.0})
            ious['box'].append(mask_iou(inside, gt_mask))

    overlapped_array = np.array(overlapped)
    areas = np.array(gt_areas)

    def iou_summary(values: list[float]) -> dict[str, float]:
        values_array = np.array(values)
        summary = {'all': values_array, 'isolated': values_array[~overlapped_array],
                   'overlapping_box': values_array[overlapped_array]}
        summary |= {size: values_array[(areas >= low) & (areas < high)] for size, low, high in SIZE_CLASSES}
        return {key: round(float(v.mean()), 4) if len(v) else None for key, v in summary.items()}

    report = {
        'data': str(args.data), 'split': args.split, 'images': len(images), 'persons': persons,
        'persons_with_overlapping_box': int(overlapped_array.sum()),
        'persons_per_size': {size: int(((areas >= low) & (areas < high)).sum())
                             for size, low, high in SIZE_CLASSES},
        'empty_selfie_masks': empty_masks,
        'segm_ap': {name: segm_ap(coco_gt, entries) for name, entries in results.items()},
        'mean_iou': {name: iou_summary(values) for name, values in ious.items()},
        'latency_per_crop': measure_latency(model, torch.from_numpy(crops[:1]).permute(0, 3, 1, 2) / 255.0,
                                            args.latency_repeats, args.original_onnx),
    }
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
