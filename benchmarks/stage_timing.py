"""Stage-2 vs stage-1 iteration time on CPU (the tiny presets, same data, batch and threads).

One stage-1 run of `--iters` iterations from random weights, then one stage-2 run of `--iters` from its
checkpoint (the pose stage, the domain classifier and mask-and-predict added). Each iteration is timed by
the trainer (data loading, both domains' forward, backward, SGD step); the first `--warmup` are dropped
and the median and mean of the rest are reported, with the ratio stage 2 / stage 1.

Usage (from the repository root):
    .venv/bin/python benchmarks/stage_timing.py [--iters 30] [--warmup 5] [--threads 1] [--batch-size N]
        [--out runs/stage_timing]
The CPU of this machine is shared: run it on an otherwise idle machine for stable numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_check import _import_source_tree  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time both stages, print and write a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=30, help='timed iterations per stage (after warm-up)')
    parser.add_argument('--warmup', type=int, default=5, help='iterations dropped from the statistics')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--batch-size', type=int, default=None,
                        help="source images per iteration (default: the presets'; the target domain keeps "
                             "its data.citypersons.batch_size)")
    parser.add_argument('--out', default='runs/stage_timing', help='output folder')
    args = parser.parse_args(argv)
    _import_source_tree()
    import torch

    from occluded_ppe_training.config import load_config
    from occluded_ppe_training.trainer import train

    out = Path(args.out)
    total = args.iters + args.warmup
    common = [f'threads={args.threads}', 'progress=false', f'max_iters={total}',
              f'checkpoint_every={total}', 'eval.every=0']
    if args.batch_size is not None:
        common.append(f'batch_size={args.batch_size}')
    stage1 = load_config(REPO_ROOT / 'config' / 'train_tiny_stage1.yaml',
                         [*common, f'output_dir={out / "stage1"}'])
    first = train(stage1)
    # stage 2 masks as at the middle of its curriculum, so the masking cost is included
    stage2 = load_config(REPO_ROOT / 'config' / 'train_tiny_stage2.yaml', [
        *common, f'output_dir={out / "stage2"}', f'init_checkpoint={first.checkpoint}',
        'mask_schedule={kind: constant, start: 0.3}'])
    second = train(stage2)

    def stats(seconds: list[float]) -> dict:
        timed = seconds[args.warmup:]
        return {'median_s': statistics.median(timed), 'mean_s': statistics.fmean(timed),
                'iterations': len(timed)}

    from occluded_ppe_ros.bench import machine_after_run

    summary = {
        'command': ' '.join([sys.executable, *sys.argv]),
        'machine': machine_after_run(args.threads),
        'threads': args.threads,
        'images_per_iteration': {domain: data.batch_size or stage2.batch_size
                                 for domain, data in stage2.data.items()},
        'input_size': stage1.input_size, 'torch': torch.__version__,
        'stage1': stats(first.iteration_seconds), 'stage2': stats(second.iteration_seconds),
    }
    summary['stage2_over_stage1_median'] = summary['stage2']['median_s'] / summary['stage1']['median_s']
    out.mkdir(parents=True, exist_ok=True)
    (out / 'stage_timing.json').write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
