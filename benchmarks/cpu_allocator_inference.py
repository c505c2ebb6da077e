"""CPU inference of the torch backend with glibc's default malloc thresholds against the tuned ones.

`TorchBackend` on the CPU calls `keep_large_buffers_in_heap()` (occluded_ppe_ros/cpu_allocator.py). This
benchmark measures what that buys: each repeat starts two fresh processes, one with the setting replaced
by a no-op (glibc's default, dynamic mmap threshold) and one as shipped, in alternating order. Each
process opens the model with `Predictor.from_checkpoint(..., backend='torch')`, runs `--warmup` untimed
calls on one synthetic image, then `--runs` timed calls, and reports the median latency in milliseconds
(image in -> pedestrians out, letterbox and post-processing included) and the minor page faults per call.

Usage (from the repository root):
    .venv/bin/python benchmarks/cpu_allocator_inference.py [--model models/ppe_default.pt]
        [--height 480] [--width 640] [--threads 2] [--warmup 3] [--runs 40] [--repeats 3]
        [--out runs/cpu_allocator_inference]
The CPU of this machine is shared: run it on an otherwise idle machine for stable numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

SETTINGS = ('default', 'tuned')


def _measure_in_this_process(args: argparse.Namespace) -> dict:
    """One setting, timed here. Returns {'median_ms', 'faults_per_call', 'latencies_ms'}."""
    import resource
    import time

    import numpy as np
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    if args.child == 'default':
        # the control: the backend's call into cpu_allocator does nothing, glibc keeps its defaults
        import occluded_ppe_ros.inference.backends.torch_backend as torch_backend

        torch_backend.keep_large_buffers_in_heap = lambda: False
    from occluded_ppe_ros.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.model, backend='torch', device='cpu')
    image = (np.random.default_rng(0).random((args.height, args.width, 3)) * 255).astype(np.uint8)
    for _ in range(args.warmup):
        predictor.predict(image)
    latencies_ms = []
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.runs):
        start = time.perf_counter()
        predictor.predict(image)
        latencies_ms.append(1000.0 * (time.perf_counter() - start))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    return {'median_ms': statistics.median(latencies_ms), 'faults_per_call': faults / args.runs,
            'latencies_ms': latencies_ms}


def _measure_in_child(setting: str, args: argparse.Namespace) -> dict:
    # glibc's own MALLOC_* variables would override both settings, so the children run without them
    env = {key: value for key, value in os.environ.items() if not key.startswith('MALLOC_')}
    command = [sys.executable, __file__, '--child', setting, '--model', str(args.model),
               '--height', str(args.height), '--width', str(args.width), '--threads', str(args.threads),
               '--warmup', str(args.warmup), '--runs', str(args.runs)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f'the {setting} run failed (exit {done.returncode}):\n{done.stderr[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Alternate default and tuned processes, print a table and write a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', type=Path, default=REPO_ROOT / 'models' / 'ppe_default.pt',
                        help='contract-3 checkpoint (.pt)')
    parser.add_argument('--height', type=int, default=480, help='image height in pixels')
    parser.add_argument('--width', type=int, default=640, help='image width in pixels')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--warmup', type=int, default=3, help='untimed calls before timing')
    parser.add_argument('--runs', type=int, default=40, help='timed calls per process')
    parser.add_argument('--repeats', type=int, default=3, help='process pairs (default, tuned)')
    parser.add_argument('--out', type=Path, default=Path('runs/cpu_allocator_inference'),
                        help='output folder')
    parser.add_argument('--child', choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure_in_this_process(args)))
        return 0
    if not args.model.is_file():
        parser.error(f'--model {args.model} does not exist')

    runs: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
    for repeat in range(args.repeats):
        # alternate which setting goes first, so that a drift of the machine's load hits both alike
        order = SETTINGS if repeat % 2 == 0 else tuple(reversed(SETTINGS))
        for setting in order:
            result = _measure_in_child(setting, args)
            runs[setting].append(result)
            print(f'repeat {repeat} {setting:>7}: median {result["median_ms"]:6.1f} ms, '
                  f'{result["faults_per_call"]:8.0f} minor faults per call', flush=True)
    summary = {
        'model': str(args.model), 'image': [args.height, args.width], 'threads': args.threads,
        'runs_per_process': args.runs, 'repeats': args.repeats,
        'settings': {setting: {
            'median_of_process_medians_ms': statistics.median(r['median_ms'] for r in results),
            'process_medians_ms': [round(r['median_ms'], 1) for r in results],
            'faults_per_call': [round(r['faults_per_call']) for r in results],
        } for setting, results in runs.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'summary.json').write_text(json.dumps(summary, indent=2))
    print('| setting | median of process medians (ms) | process medians (ms) | faults per call |')
    print('|---|---|---|---|')
    for setting, row in summary['settings'].items():
        print(f'| {setting} | {row["median_of_process_medians_ms"]:.1f} | '
              f'{", ".join(f"{v:.1f}" for v in row["process_medians_ms"])} | '
              f'{", ".join(str(v) for v in row["faults_per_call"])} |')
    print(f'wrote {args.out / "summary.json"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
