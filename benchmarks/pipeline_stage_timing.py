"""Where the pipeline's whole-Predictor time goes, stage by stage, next to NanoDet -> Thunder's stages.

Per held-out photo at the deployment min score (0.3), median milliseconds of:
    ours: Predictor preprocess (letterbox to the network input), detector graph, pose graph (and per
          person: pose graph / N), postprocess (masks pasted, joints mapped back), total;
    peer: NanoDet (letterbox + graph + decode), Thunder per person (crop + graph), total.
Both run in ONNX Runtime with the same thread count and spin-waiting off (as our backends run; give
`--peer-spin default` for the peer as ONNX Runtime runs it by default), one after the other on the same
photos; benchmarks/latency_interleaved.py gives the whole-call ratio with the models taking turns.

    .venv/bin/python benchmarks/pipeline_stage_timing.py --checkpoint models/ppe_default.pt \
        [--split heldout] [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_vs_peers import DEFAULT_DATA, load_split  # noqa: E402

from occluded_ppe_ros.peers import DEFAULT_PEER_DIR, PeerSettings, create_peer  # noqa: E402


class TimedRunner:
    """Wraps a graph runner; appends each run's wall milliseconds to `times`."""

    def __init__(self, runner) -> None:
        self.runner, self.times = runner, []

    def run(self, feeds):
        """The wrapped runner's run, timed."""
        start = time.perf_counter()
        out = self.runner.run(feeds)
        self.times.append((time.perf_counter() - start) * 1e3)
        return out


def median(values: list[float]) -> float | None:
    """Median, or None for no values."""
    return statistics.median(values) if values else None


def time_ours(checkpoint: Path, loaded, threads: int, min_score: float, repeats: int) -> dict:
    """Per-stage medians of our Predictor over ONNX Runtime."""
    from occluded_ppe_ros.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, backend='onnxruntime', score_threshold=min_score)
    backend = predictor.backend
    backend.detector, backend.pose = TimedRunner(backend.detector), TimedRunner(backend.pose)
    for _, image in loaded[:2]:
        predictor.predict(image)
    backend.detector.times.clear()
    backend.pose.times.clear()
    rows = []
    for _ in range(repeats):
        for _, image in loaded:
            pose_runs = len(backend.pose.times)
            predictor.predict(image)
            timings = dict(predictor.last_timings)
            timings['detector_ms'] = backend.detector.times[-1]
            posed = len(backend.pose.times) > pose_runs
            timings['pose_ms'] = backend.pose.times[-1] if posed else 0.0
            timings['people'] = backend.last_pose_count
            rows.append(timings)
    per_person = [r['pose_ms'] / r['people'] for r in rows if r['people']]
    return {
        'preprocess_ms': median([r['preprocess_ms'] for r in rows]),
        'detector_ms': median([r['detector_ms'] for r in rows]),
        'pose_ms': median([r['pose_ms'] for r in rows]),
        'pose_ms_per_person': median(per_person),
        'postprocess_ms': median([r['postprocess_ms'] for r in rows]),
        'total_ms': median([r['total_ms'] for r in rows]),
        'people_mean': statistics.fmean(r['people'] for r in rows),
    }


def time_peer(loaded, threads: int, min_score: float, repeats: int, spin_wait: bool = False) -> dict:
    """Per-stage medians of NanoDet -> Thunder (the peer of occluded_ppe_ros/peers.py)."""
    peer = create_peer('nanodet_thunder', DEFAULT_PEER_DIR, threads, 384,
                       PeerSettings(min_score=min_score, spin_wait=spin_wait))
    for _, image in loaded[:2]:
        peer.predict(image)
    detect, per_person, totals, people = [], [], [], []
    for _ in range(repeats):
        for _, image in loaded:
            start = time.perf_counter()
            boxes, _ = peer.detect(image)
            detected = time.perf_counter()
            for box in boxes:
                peer.estimate_pose(image, box)
            done = time.perf_counter()
            detect.append((detected - start) * 1e3)
            totals.append((done - start) * 1e3)
            people.append(len(boxes))
            if len(boxes):
                per_person.append((done - detected) * 1e3 / len(boxes))
    return {'detector_ms': median(detect), 'pose_ms_per_person': median(per_person),
            'total_ms': median(totals), 'people_mean': statistics.fmean(people)}


def main() -> int:
    """Command-line entry point: prints both stage tables and writes JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', type=Path, default=REPO_ROOT / 'models' / 'ppe_default.pt')
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--split', choices=('heldout', 'train', 'all'), default='heldout')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--min-score', type=float, default=0.3)
    parser.add_argument('--repeats', type=int, default=3, help='passes over the split (medians over all)')
    parser.add_argument('--no-peer', action='store_true')
    parser.add_argument('--peer-spin', choices=('default', 'off'), default='off',
                        help="the peer's ONNX Runtime spin-waiting: off, as our backends, or ONNX Runtime's "
                             'default')
    parser.add_argument('--output', type=Path,
                        default=REPO_ROOT / 'outputs' / 'bench' / 'pipeline_stages.json')
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault('OMP_NUM_THREADS', str(args.threads))
    _, _, loaded = load_split(args.data, args.split)
    print(f'{len(loaded)} images ({args.split}); {args.threads} threads; load {os.getloadavg()[0]:.2f}')
    report = {'checkpoint': str(args.checkpoint), 'split': args.split, 'threads': args.threads,
              'min_score': args.min_score}
    report['ours'] = time_ours(args.checkpoint, loaded, args.threads, args.min_score, args.repeats)
    print('ours', json.dumps({k: round(v, 2) for k, v in report['ours'].items()}), flush=True)
    if not args.no_peer:
        report['peer'] = time_peer(loaded, args.threads, args.min_score, args.repeats,
                                   spin_wait=args.peer_spin == 'default')
        report['peer_spin_wait'] = args.peer_spin
        print('peer', json.dumps({k: round(v, 2) for k, v in report['peer'].items()}), flush=True)
        report['ratio_total'] = report['ours']['total_ms'] / report['peer']['total_ms']
        print(f'ratio ours / peer (median totals): {report["ratio_total"]:.2f}')
    report['load_average_1min'] = round(os.getloadavg()[0], 2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
