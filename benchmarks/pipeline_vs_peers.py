"""Our shipped network against the CPU peers on real photos, in one run: every number issue 17 asks for.

Rows: each given checkpoint (the Predictor over ONNX Runtime by default) and the peers of
occluded_ppe_ros/peers.py (MoveNet MultiPose at long side 384, NanoDet -> MoveNet Thunder, NanoDet
alone). All are scored by the same code on the same photos:
    box AP / AP50, 13-joint keypoint AP / AP50 (pycocotools, skeleton.OKS_SIGMAS, people ranked by pose
    score), mask AP / AP50 (ours; the peers have no masks), all at detector min score 0.05 (AP wants every
    candidate; a score calibration, where the checkpoint has one, re-ranks them but drops none);
    occluded joints: of the labelled-but-hidden joints (COCO v=1) of people matched at box IoU >= 0.5,
    the share localised within per-joint OKS >= 0.5;
    occlusion flag: balanced accuracy of each joint's hidden/seen flag against v=1 / v=2 on matched
    people: ours = the occlusion head's probability > 0.5 (the node's occlusion_threshold); the peers'
    = Thunder's joint score below a threshold, chosen on the *training* split (--flag-split) and also
    reported at its best on the evaluated split (an upper bound a real deployment could not pick);
    latency: median whole-Predictor (or whole-peer) wall time per image at the deployment min score
    (--deploy-min-score, 0.3), 2 threads, after warm-up.

Splits (training/datasets/splits.py): 'heldout' (sha256(str(id)) % 3 == 0, 42 photos; nothing was
trained or chosen on it), 'train' (88 photos the heads were trained on), 'all'.

    .venv/bin/python benchmarks/pipeline_vs_peers.py --checkpoints models/ppe_default.pt \
        models/ppe_fast.pt --split heldout --output outputs/bench/pipeline_vs_peers.json

`--ablate-calibration` adds each checkpoint's row with its score calibration off: the gain of that
fitted step over the imported detector's scores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from occluded_ppe_ros.inference.coco_results import pedestrians_to_coco_results  # noqa: E402
from occluded_ppe_ros.peers import DEFAULT_PEER_DIR, PeerSettings, available_peers, create_peer  # noqa: E402
from occluded_ppe_ros.skeleton import OKS_SIGMAS, coco17_to_13  # noqa: E402
from occluded_ppe_ros.source_tree import import_training_from_source  # noqa: E402
from occluded_ppe_ros.tracking.tracker import box_iou  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / 'shared' / 'data' / 'coco_train2017_person_kp'
THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def load_split(data: Path, split: str) -> tuple[dict, list[dict], list[tuple[int, np.ndarray]]]:
    """(ground truth, image records of the split, [(image id, RGB uint8 image)])."""
    import_training_from_source(REPO_ROOT)
    from occluded_ppe_training.datasets.splits import in_split

    gt = json.loads((data / 'annotations.json').read_text())
    images = [r for r in gt['images'] if split == 'all' or in_split(r['id'], split)]
    loaded = []
    for record in images:
        bgr = cv2.imread(str(data / 'images' / record['file_name']))
        if bgr is None:
            raise FileNotFoundError(f'cannot read {data / "images" / record["file_name"]}')
        loaded.append((record['id'], np.ascontiguousarray(bgr[:, :, ::-1])))
    return gt, images, loaded


def require_coco_folder(parser: argparse.ArgumentParser, data: Path) -> None:
    """Stop with a usage error unless `data` holds a COCO person-keypoints annotations.json."""
    if not (data / 'annotations.json').is_file():
        parser.error(f'no {data / "annotations.json"}: --data must be a COCO person-keypoints folder')


def run_model(predict, loaded: list[tuple[int, np.ndarray]], warmup: int = 2):
    """predict(image) -> pedestrians over every image: (per image pedestrians, wall ms per image)."""
    for _, image in loaded[:warmup]:
        predict(image)
    people, latencies = {}, []
    for image_id, image in loaded:
        start = time.perf_counter()
        people[image_id] = predict(image)
        latencies.append((time.perf_counter() - start) * 1000)
    return people, latencies


def matched_joints(gt: dict, people: dict) -> list[dict]:
    """Every labelled joint of ground-truth people matched (greedy by score, box IoU >= 0.5) to a
    detection: v, per-joint OKS of the predicted joint, the predicted score and occlusion flag."""
    by_image: dict[int, list[dict]] = {}
    for annotation in gt['annotations']:
        if not annotation.get('iscrowd') and annotation.get('num_keypoints', 0) > 0:
            by_image.setdefault(annotation['image_id'], []).append(annotation)
    rows = []
    for image_id, detections in people.items():
        truths = by_image.get(image_id, [])
        if not truths or not detections:
            continue
        truth_boxes = np.array([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                                 a['bbox'][1] + a['bbox'][3]] for a in truths])
        ranked = sorted(detections, key=lambda p: -p.score)
        overlap = box_iou(np.array([p.box for p in ranked]), truth_boxes)
        taken = set()
        for index, person in enumerate(ranked):
            candidates = [(overlap[index, t], t) for t in range(len(truths)) if t not in taken]
            if not candidates:
                break
            best, t = max(candidates)
            if best < 0.5:
                continue
            taken.add(t)
            joints = coco17_to_13(np.asarray(truths[t]['keypoints'], np.float64).reshape(17, 3))
            area = max(float(truths[t].get('area', 0.0)), 1.0)
            for j in range(13):
                v = int(joints[j, 2])
                if v == 0:
                    continue
                squared = float(((person.keypoints[j] - joints[j, :2]) ** 2).sum())
                oks = float(np.exp(-squared / (2 * area * (2 * OKS_SIGMAS[j]) ** 2)))
                rows.append({'v': v, 'oks': oks, 'score': float(person.keypoint_scores[j]),
                             'flag': bool(person.keypoint_occluded[j])})
    return rows


def balanced_accuracy(hidden: np.ndarray, flagged: np.ndarray) -> float:
    """Mean of the hidden joints' recall and the seen joints' recall (0.5 = chance)."""
    if hidden.all() or not hidden.any():
        return float('nan')
    return 0.5 * (float(flagged[hidden].mean()) + float((~flagged[~hidden]).mean()))


def score_flag_accuracy(rows: list[dict], threshold: float) -> float:
    """Balanced accuracy of 'hidden when the joint score is below threshold'."""
    hidden = np.array([r['v'] == 1 for r in rows])
    return balanced_accuracy(hidden, np.array([r['score'] < threshold for r in rows]))


def evaluate(gt: dict, image_ids: list[int], loaded, people: dict, with_masks: bool) -> dict:
    """COCO metrics and the occluded-joint numbers of one model's pedestrians."""
    from occluded_ppe_training.evaluation.coco_eval import evaluate_coco

    sizes = {image_id: image.shape[:2] for image_id, image in loaded}
    results = []
    for image_id, found in people.items():
        results += pedestrians_to_coco_results(image_id, found, sizes[image_id])
    iou_types = ['bbox', 'keypoints'] + (['segm'] if with_masks else [])
    metrics = evaluate_coco(gt, results, iou_types, image_ids)
    rows = matched_joints(gt, people)
    occluded = [r for r in rows if r['v'] == 1]
    hidden = np.array([r['v'] == 1 for r in rows])
    summary = {
        'detections': len(results),
        'box_AP': metrics['bbox'].named['AP'], 'box_AP50': metrics['bbox'].named['AP50'],
        'kp_AP': metrics['keypoints'].named['AP'], 'kp_AP50': metrics['keypoints'].named['AP50'],
        'mask_AP': metrics['segm'].named['AP'] if with_masks else None,
        'mask_AP50': metrics['segm'].named['AP50'] if with_masks else None,
        'matched_labelled_joints': len(rows), 'matched_occluded_joints': len(occluded),
        'occluded_oks50_share': float(np.mean([r['oks'] >= 0.5 for r in occluded])) if occluded else None,
        'flag_balanced_accuracy': balanced_accuracy(hidden, np.array([r['flag'] for r in rows])),
        'score_flag_by_threshold': {float(t): score_flag_accuracy(rows, float(t)) for t in THRESHOLD_GRID},
        'results': results,
    }
    return summary


def main() -> int:
    """Command-line entry point; prints a markdown table and writes the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoints', type=Path, nargs='*',
                        default=[REPO_ROOT / 'models' / 'ppe_default.pt'])
    parser.add_argument('--backend', default='onnxruntime', choices=('onnxruntime', 'torch'))
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--split', choices=('heldout', 'train', 'all'), default='heldout')
    parser.add_argument('--flag-split', choices=('heldout', 'train', 'all'), default='train',
                        help="split where the peers' joint-score threshold flag is chosen")
    parser.add_argument('--peer-dir', type=Path, default=DEFAULT_PEER_DIR)
    parser.add_argument('--no-peers', action='store_true')
    parser.add_argument('--ablate-calibration', action='store_true',
                        help="also each checkpoint's row with its score calibration off (detector scores)")
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--deploy-min-score', type=float, default=0.3)
    parser.add_argument('--save-results', type=Path, default=None,
                        help="folder for each row's COCO results JSON (every reported box: ours at score "
                             "threshold 0, peers at their min score 0.05)")
    parser.add_argument('--output', type=Path,
                        default=REPO_ROOT / 'outputs' / 'bench' / 'pipeline_vs_peers.json')
    args = parser.parse_args()
    require_coco_folder(parser, args.data)
    import torch

    torch.set_num_threads(args.threads)
    from occluded_ppe_ros.inference.predictor import Predictor

    gt, images, loaded = load_split(args.data, args.split)
    image_ids = [r['id'] for r in images]
    flag_gt, _, flag_loaded = load_split(args.data, args.flag_split) if args.flag_split != args.split else (
        gt, images, loaded)
    print(f'{len(images)} images ({args.split}); {args.threads} threads; load {os.getloadavg()[0]:.2f}')
    rows = []

    def add_row(label: str, predict_all, predict_deploy, with_masks: bool, flag_source=None) -> dict:
        people, _ = run_model(predict_all, loaded)
        row = {'model': label, **evaluate(gt, image_ids, loaded, people, with_masks)}
        results = row.pop('results')
        if args.save_results:
            # COCO results JSON, e.g. for benchmarks/operating_point.py
            args.save_results.mkdir(parents=True, exist_ok=True)
            stem = re.sub(r'[^A-Za-z0-9._-]+', '_', label).strip('_')    # one file per row, ablations too
            (args.save_results / f'results_{stem}.json').write_text(json.dumps(results))
        _, latencies = run_model(predict_deploy, loaded)
        row['latency_ms_median'] = statistics.median(latencies)
        row['latency_ms_mean'] = statistics.fmean(latencies)
        if flag_source is not None:
            # the joint-score threshold a deployment would pick: best balanced accuracy on --flag-split
            flag_people, _ = run_model(flag_source, flag_loaded)
            flag_rows = matched_joints(flag_gt, flag_people)
            chosen = max(THRESHOLD_GRID, key=lambda t: score_flag_accuracy(flag_rows, float(t)))
            row['score_flag_threshold'] = float(chosen)
            row['score_flag_balanced_accuracy'] = row['score_flag_by_threshold'][float(chosen)]
            row['score_flag_best_on_split'] = max(v for v in row['score_flag_by_threshold'].values())
        row['load_average_1min'] = round(os.getloadavg()[0], 2)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != 'score_flag_by_threshold'}), flush=True)
        return row

    for checkpoint in args.checkpoints:
        # threshold 0: every box of the graph (its detectors keep scores >= the config's min_score, 0.05,
        # as the peers' min score) gets a pose pass and is reported, whatever its calibrated score
        every = Predictor.from_checkpoint(checkpoint, backend=args.backend, score_threshold=0.0)
        deploy = Predictor.from_checkpoint(checkpoint, backend=args.backend,
                                           score_threshold=args.deploy_min_score)
        add_row(f'{checkpoint.name} ({args.backend})', every.predict, deploy.predict, True)
        if args.ablate_calibration and getattr(every.backend, 'score_calibration', None):
            every.backend.score_calibration = deploy.backend.score_calibration = {}
            add_row(f'{checkpoint.name} ({args.backend}, no score calibration)', every.predict,
                    deploy.predict, True)
    if not args.no_peers:
        present = available_peers(args.peer_dir)
        if 'movenet_multipose' in present:
            peer = create_peer('movenet_multipose', args.peer_dir, args.threads, 384, PeerSettings())
            add_row('movenet_multipose_384', peer.predict, peer.predict, False)
        if 'nanodet_thunder' in present:
            every = create_peer('nanodet_thunder', args.peer_dir, args.threads, 384, PeerSettings())
            deploy = create_peer('nanodet_thunder', args.peer_dir, args.threads, 384,
                                 PeerSettings(min_score=args.deploy_min_score))
            add_row('nanodet_thunder', every.predict, deploy.predict, False, flag_source=every.predict)
        if 'nanodet' in present:
            peer = create_peer('nanodet', args.peer_dir, args.threads, 384, PeerSettings())
            add_row('nanodet', peer.predict, peer.predict, False)

    def fmt(value, digits=3):
        return '-' if value is None else f'{value:.{digits}f}'

    print('\n| model | box AP / AP50 | kp AP / AP50 | mask AP / AP50 | occluded joints OKS>=0.5 | '
          'occlusion flag bal. acc. | latency median ms |')
    print('|---|---|---|---|---|---|---|')
    for row in rows:
        flag = fmt(row['flag_balanced_accuracy'])
        if 'score_flag_threshold' in row:
            flag = (f'score<{row["score_flag_threshold"]}: {fmt(row["score_flag_balanced_accuracy"])} '
                    f'(best on split {fmt(row["score_flag_best_on_split"])})')
        print(f'| {row["model"]} | {fmt(row["box_AP"])} / {fmt(row["box_AP50"])} | {fmt(row["kp_AP"])} / '
              f'{fmt(row["kp_AP50"])} | {fmt(row["mask_AP"])} / {fmt(row["mask_AP50"])} | '
              f'{fmt(row["occluded_oks50_share"])} ({row["matched_occluded_joints"]}) | {flag} | '
              f'{row["latency_ms_median"]:.0f} |')
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({'split': args.split, 'threads': args.threads, 'rows': rows}, indent=2))
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
