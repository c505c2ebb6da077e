"""Score the CPU peers on the held-out real photos: box AP / AP50, 13-joint keypoint AP, CPU latency.

Peers (occluded_ppe_ros/peers.py, ONNX files from tools/build_peers.sh): MoveNet MultiPose at each
`--long-sides`, NanoDet -> MoveNet Thunder, and NanoDet alone (boxes). Each runs in ONNX Runtime with
`--threads` intra-op threads (2 by default: the deployment CPU budget). The same COCO results format as
`ppe infer` writes is scored by occluded_ppe_training.evaluation.coco_eval (pycocotools; keypoints over
the 13 joints with skeleton.OKS_SIGMAS).

Held-out split (the default model trains on the rest): the images of
../shared/data/coco_train2017_person_kp whose id satisfies
    int(sha256(str(image_id).encode()).hexdigest(), 16) % 3 == 0
(`is_held_out`, training/datasets/splits.py): 42 of the 130 photos, 21 of them with people (81
non-crowd persons, 56 with keypoints). Person-free held-out photos stay in: false positives on them count.

Latency: wall time of `predict` (pre-processing, ONNX Runtime, decoding) per image, after 2 warm-up
images; median and mean over the split, plus the median process CPU time (all threads; less sensitive
to other processes on a shared machine) and the load average. NanoDet -> Thunder's time grows with the
number of boxes (every box scoring >= PeerSettings.min_score, at most 20, gets a Thunder pass).

Usage:
    .venv/bin/python benchmarks/peers.py [--data DIR] [--peer-dir models/peers] [--threads 2]
        [--long-sides 256 384 512] [--output outputs/bench/peers.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from occluded_ppe_ros.inference.coco_results import pedestrians_to_coco_results  # noqa: E402
from occluded_ppe_ros.source_tree import import_training_from_source  # noqa: E402
from occluded_ppe_ros.peers import DEFAULT_PEER_DIR, PeerSettings, available_peers, create_peer  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / 'shared' / 'data' / 'coco_train2017_person_kp'


def _load_training_package():
    """Import occluded_ppe_training from this checkout's training/ (the venv may hold an older copy)."""
    import_training_from_source(REPO_ROOT)


def is_held_out(image_id: int) -> bool:
    """True for the held-out evaluation images: the one rule in training/datasets/splits.py."""
    _load_training_package()
    from occluded_ppe_training.datasets.splits import is_held_out as rule

    return rule(image_id)


def _evaluate_coco():
    """`evaluate_coco` from this checkout's training/ (the venv may hold an older installed copy)."""
    _load_training_package()
    from occluded_ppe_training.evaluation.coco_eval import evaluate_coco

    return evaluate_coco


def run_peer(peer, images: list[dict], image_dir: Path,
             warmup: int = 2) -> tuple[list[dict], list[float], list[float]]:
    """Run `peer` over `images`; returns (COCO results, per-image wall ms, per-image process CPU ms)."""
    loaded = []
    for record in images:
        bgr = cv2.imread(str(image_dir / record['file_name']))
        if bgr is None:
            raise FileNotFoundError(f'cannot read {image_dir / record["file_name"]}')
        loaded.append((record['id'], np.ascontiguousarray(bgr[:, :, ::-1])))
    for _, rgb in loaded[:warmup]:
        peer.predict(rgb)
    results, latencies, cpu_times = [], [], []
    for image_id, rgb in loaded:
        start, start_cpu = time.perf_counter(), time.process_time()
        people = peer.predict(rgb)
        latencies.append((time.perf_counter() - start) * 1000)
        cpu_times.append((time.process_time() - start_cpu) * 1000)
        results += pedestrians_to_coco_results(image_id, people, rgb.shape[:2])
    return results, latencies, cpu_times


def main() -> int:
    """Command-line entry point; prints a markdown table and writes the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA,
                        help='COCO person-keypoints folder (annotations.json + images/)')
    parser.add_argument('--peer-dir', type=Path, default=DEFAULT_PEER_DIR)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--long-sides', type=int, nargs='+', default=[384],
                        help='MultiPose input long sides to score')
    parser.add_argument('--split', choices=('held_out', 'all'), default='held_out')
    parser.add_argument('--deploy-min-score', type=float, default=0.3,
                        help='box score threshold of the extra NanoDet -> Thunder row (deployment latency)')
    parser.add_argument('--output', type=Path, default=REPO_ROOT / 'outputs' / 'bench' / 'peers.json')
    args = parser.parse_args()
    annotations = args.data / 'annotations.json'
    if not annotations.is_file():
        parser.error(f'no {annotations}: --data must be a COCO person-keypoints folder')
    peers_present = available_peers(args.peer_dir)
    if not peers_present:
        parser.error(f'no peer ONNX files in {args.peer_dir}: run tools/build_peers.sh')
    gt = json.loads(annotations.read_text())
    images = [r for r in gt['images'] if args.split == 'all' or is_held_out(r['id'])]
    image_ids = [r['id'] for r in images]
    persons = [a for a in gt['annotations'] if a['image_id'] in set(image_ids) and not a.get('iscrowd')]
    print(f'{len(images)} images ({args.split}), {len(persons)} non-crowd persons, '
          f'{sum(a["num_keypoints"] > 0 for a in persons)} with keypoints; {args.threads} threads')
    evaluate_coco = _evaluate_coco()
    # (label, peer name, MultiPose long side, settings): AP wants every candidate (min_score 0.05);
    # a deployment keeps fewer boxes, which is what bounds NanoDet -> Thunder's latency.
    setups = []
    if 'movenet_multipose' in peers_present:
        setups += [(f'movenet_multipose_{side}', 'movenet_multipose', side, PeerSettings())
                   for side in args.long_sides]
    if 'nanodet_thunder' in peers_present:
        setups += [('nanodet_thunder', 'nanodet_thunder', None, PeerSettings()),
                   (f'nanodet_thunder_min{args.deploy_min_score}', 'nanodet_thunder', None,
                    PeerSettings(min_score=args.deploy_min_score))]
    if 'nanodet' in peers_present:
        setups += [('nanodet', 'nanodet', None, PeerSettings())]
    rows = []
    for label, name, side, settings in setups:
        peer = create_peer(name, args.peer_dir, args.threads, side or 384, settings)
        results, latencies, cpu_times = run_peer(peer, images, args.data / 'images')
        iou_types = ['bbox', 'keypoints'] if name != 'nanodet' else ['bbox']
        metrics = evaluate_coco(gt, results, iou_types, image_ids)
        row = {
            'peer': label, 'min_score': settings.min_score, 'images': len(images),
            'detections': len(results),
            'box_AP': metrics['bbox'].named['AP'], 'box_AP50': metrics['bbox'].named['AP50'],
            'kp_AP': metrics['keypoints'].named['AP'] if 'keypoints' in metrics else None,
            'kp_AP50': metrics['keypoints'].named['AP50'] if 'keypoints' in metrics else None,
            'latency_ms_median': statistics.median(latencies), 'latency_ms_mean': statistics.fmean(latencies),
            'cpu_ms_median': statistics.median(cpu_times), 'threads': args.threads,
            'load_average_1min': round(os.getloadavg()[0], 2),
        }
        rows.append(row)
        print(json.dumps(row))
    print('\n| peer | box AP / AP50 | 13-joint kp AP / AP50 | latency median (mean), ms/img | CPU ms/img |')
    print('|---|---|---|---|---|')
    for row in rows:
        kp = '-' if row['kp_AP'] is None else f'{row["kp_AP"]:.3f} / {row["kp_AP50"]:.3f}'
        print(f'| {row["peer"]} | {row["box_AP"]:.3f} / {row["box_AP50"]:.3f} | {kp} | '
              f'{row["latency_ms_median"]:.0f} ({row["latency_ms_mean"]:.0f}) | {row["cpu_ms_median"]:.0f} |')
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({'split': args.split, 'held_out_rule': 'sha256(str(id)) % 3 == 0',
                                       'rows': rows}, indent=2))
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
