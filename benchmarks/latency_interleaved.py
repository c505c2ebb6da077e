"""Whole-call latency of our Predictors and the peers, interleaved photo by photo.

On a shared 2-core machine the load from other tenants drifts over minutes, so timing one model over
all photos and then the next puts the drift into their ratio (runs of `pipeline_vs_peers.py` minutes
apart gave the same peer 25 and 43 ms medians). Here every photo is run through every model in turn
(the order rotates from photo to photo), so each model sees the same load; the figures are

    median ms of each model's whole call (Predictor.predict / peer.predict at min score 0.3, ONNX
        Runtime, `--threads` threads) over repeats x photos;
    paired ratio: the median over photos of (model ms / reference ms) on the same photo and pass;
    ratio of medians: median model ms / median reference ms (issue 17's latency figure).

Our ONNX Runtime sessions run with spin-waiting off (inference/backends/onnxruntime_backend.py,
cpu_session_options), and so do the peers here by default (`--peer-spin off`): a session that spins keeps
its threads busy after its run, which would slow whichever model runs next in the interleaving. To time
the peers as ONNX Runtime runs them by default (spinning), give `--peer-spin default` and time one model
per invocation (`--checkpoints --peers nanodet_thunder`). `--our-spin default` times our Predictors
with spin-waiting on (one checkpoint per invocation, no peers), to measure what turning it off gave.

    .venv/bin/python benchmarks/latency_interleaved.py --checkpoints models/ppe_default.pt \
        models/ppe_fast.pt [--peers movenet_multipose nanodet_thunder] [--split heldout] [--repeats 3]
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

from pipeline_vs_peers import DEFAULT_DATA, load_split, require_coco_folder  # noqa: E402

from occluded_ppe_ros.peers import DEFAULT_PEER_DIR, PeerSettings, available_peers, create_peer  # noqa: E402

PEER_LABELS = {'movenet_multipose': 'movenet_multipose_384', 'nanodet_thunder': 'nanodet_thunder',
               'nanodet': 'nanodet'}


def interleaved_times(models: dict, images: list, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall milliseconds of each model's call on each image, models taking turns photo by photo.

    Args:
        models: label -> predict(image RGB uint8 [H, W, 3]).
        images: the photos.
        repeats: passes over `images`.
        warmup: photos run through every model first, untimed.

    Returns:
        label -> times in ms, in the same (pass, photo) order for every label (pairable).
    """
    labels = list(models)
    for image in images[:warmup]:
        for label in labels:
            models[label](image)
    times: dict[str, list[float]] = {label: [] for label in labels}
    turn = 0
    for _ in range(repeats):
        for image in images:
            order = labels[turn % len(labels):] + labels[:turn % len(labels)]
            turn += 1
            for label in order:
                start = time.perf_counter()
                models[label](image)
                times[label].append((time.perf_counter() - start) * 1e3)
    return times


def summarise(times: dict[str, list[float]], reference: str | None) -> dict[str, dict]:
    """Median ms per label and, against `reference`, the paired median ratio and the ratio of medians."""
    summary = {}
    for label, values in times.items():
        row = {'median_ms': statistics.median(values), 'mean_ms': statistics.fmean(values),
               'calls': len(values)}
        if reference is not None and reference in times and label != reference:
            paired = [ours / theirs for ours, theirs in zip(values, times[reference]) if theirs > 0]
            row['paired_ratio_median'] = statistics.median(paired)
            row['ratio_of_medians'] = row['median_ms'] / statistics.median(times[reference])
        summary[label] = row
    return summary


def main() -> int:
    """Command-line entry point: prints a markdown table and writes JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoints', type=Path, nargs='*',
                        default=[REPO_ROOT / 'models' / name for name in ('ppe_default.pt', 'ppe_fast.pt')])
    parser.add_argument('--peers', nargs='*', default=['movenet_multipose', 'nanodet_thunder'],
                        choices=sorted(PEER_LABELS))
    parser.add_argument('--peer-spin', choices=('default', 'off'), default='off',
                        help="the peers' ONNX Runtime spin-waiting: off (as ours) or ONNX Runtime's default")
    parser.add_argument('--our-spin', choices=('default', 'off'), default='off',
                        help="our ONNX Runtime sessions' spin-waiting: off (as shipped) or ONNX Runtime's "
                             'default, to measure what turning it off gave')
    parser.add_argument('--reference', default='nanodet_thunder',
                        help='label the ratios are taken against (a peer name or a checkpoint file name)')
    parser.add_argument('--backend', default='onnxruntime', choices=('onnxruntime', 'torch'))
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--split', choices=('heldout', 'train', 'all'), default='heldout')
    parser.add_argument('--peer-dir', type=Path, default=DEFAULT_PEER_DIR)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--min-score', type=float, default=0.3)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--output', type=Path,
                        default=REPO_ROOT / 'outputs' / 'bench' / 'latency_interleaved.json')
    args = parser.parse_args()
    require_coco_folder(parser, args.data)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault('OMP_NUM_THREADS', str(args.threads))
    from occluded_ppe_ros.inference.predictor import Predictor

    _, _, loaded = load_split(args.data, args.split)
    images = [image for _, image in loaded]
    models = {}
    for checkpoint in args.checkpoints:
        if args.our_spin == 'default' and args.backend == 'onnxruntime':
            from occluded_ppe_ros.inference.backends.pipeline_backend import pipeline_onnxruntime_backend

            backend = pipeline_onnxruntime_backend(checkpoint.with_suffix('.onnx'), 'cpu', spin_wait=True)
            models[checkpoint.name] = Predictor(backend, score_threshold=args.min_score).predict
            continue
        models[checkpoint.name] = Predictor.from_checkpoint(checkpoint, backend=args.backend,
                                                            score_threshold=args.min_score).predict
    present = available_peers(args.peer_dir)
    for name in args.peers:
        if name not in present:
            print(f'peer {name} missing under {args.peer_dir}: skipped')
            continue
        peer = create_peer(name, args.peer_dir, args.threads, 384,
                           PeerSettings(min_score=args.min_score, spin_wait=args.peer_spin == 'default'))
        models[PEER_LABELS[name]] = peer.predict
    reference = PEER_LABELS.get(args.reference, args.reference)
    load_before = os.getloadavg()[0]
    print(f'{len(images)} images ({args.split}) x {args.repeats} passes; {args.threads} threads; '
          f'load {load_before:.2f}', flush=True)
    times = interleaved_times(models, images, args.repeats)
    summary = summarise(times, reference)
    print(f'| model | median ms | mean ms | paired ratio to {reference} | ratio of medians |')
    print('|---|---:|---:|---:|---:|')
    for label, row in summary.items():
        paired = f'{row["paired_ratio_median"]:.2f}' if 'paired_ratio_median' in row else '-'
        ratio = f'{row["ratio_of_medians"]:.2f}' if 'ratio_of_medians' in row else '-'
        print(f'| {label} | {row["median_ms"]:.1f} | {row["mean_ms"]:.1f} | {paired} | {ratio} |')
    report = {'split': args.split, 'threads': args.threads, 'min_score': args.min_score,
              'peer_spin_wait': args.peer_spin, 'our_spin_wait': args.our_spin,
              'repeats': args.repeats, 'backend': args.backend, 'reference': reference,
              'load_average_1min': {'before': round(load_before, 2), 'after': round(os.getloadavg()[0], 2)},
              'models': summary}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
