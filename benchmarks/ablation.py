"""Ablation of stage 2: with / without mask-and-predict, with / without the domain classifier.

Every variant starts from the same tiny stage-1 checkpoint and trains config/train_tiny_stage2.yaml for
the same number of iterations with the same seed (so the same batches), changing only:
- mask-and-predict: the preset's curriculum (linear ramp 0 -> 0.4 of each instance masked, rescaled to
  the run length) vs no masking (`mask_schedule: constant 0`);
- domain classifier: beta = 1 (paper) vs beta = 0 (no L_dc: D_C and the gradient reversal get no signal).
Each result is scored, as `ppe eval synthetic` does, on two held-out synthetic splits never trained on:
- `source`: the source distribution (the preset's eval split, seed 3), through the 'coco' branch;
- `target`: the target distribution (the target set's generator settings, seed 4), through the
  'citypersons' branch, whose pose comes only through domain adaptation (no target pose labels).
Reported: PCK@0.1 (distance <= 0.1 x the larger side of the ground-truth box) separately for occluded
and visible joints, over all ground-truth instances (an unmatched instance's joints count as misses),
and keypoint AP (13 joints, pycocotools).

Usage (from the repository root):
    .venv/bin/python benchmarks/ablation.py [--iters 300] [--stage1-iters 300 | --stage1-checkpoint PATH]
        [--threads 1] [--out runs/ablation] [--variants full no_mask no_dc neither]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_check import _import_source_tree, evaluate_synthetic  # noqa: E402

VARIANTS = ('full', 'no_mask', 'no_dc', 'neither')


def variant_overrides(name: str, iters: int) -> list[str]:
    """Config overrides of one variant for a run of `iters` iterations."""
    ramp = (f'mask_schedule={{kind: linear, start: 0.0, end: 0.4, start_iter: {max(iters // 10, 0)}, '
            f'end_iter: {max(7 * iters // 10, 1)}}}')
    no_mask = 'mask_schedule={kind: constant, start: 0.0}'
    return {
        'full': [ramp, 'loss.beta=1.0'],
        'no_mask': [no_mask, 'loss.beta=1.0'],
        'no_dc': [ramp, 'loss.beta=0.0'],
        'neither': [no_mask, 'loss.beta=0.0'],
    }[name]


def fmt(value: float | None) -> str:
    """A fraction as a percentage with one decimal ('-' when undefined)."""
    return '-' if value is None else f'{100 * value:.1f}'


def main(argv: list[str] | None = None) -> int:
    """Train and score every variant; print a markdown table and write JSON + markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=300, help='stage-2 iterations of every variant')
    parser.add_argument('--stage1-iters', type=int, default=300, help='stage-1 iterations (shared start)')
    parser.add_argument('--stage1-checkpoint', help='use this stage-1 checkpoint instead of training one')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--out', default='runs/ablation', help='output folder')
    parser.add_argument('--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    _import_source_tree()
    from occluded_ppe_training.config import DatasetConfig, load_config
    from occluded_ppe_training.trainer import prepare_synthetic, train

    out = Path(args.out)
    common = [f'threads={args.threads}', 'progress=false', 'eval.every=0']
    if args.stage1_checkpoint:
        stage1_checkpoint = Path(args.stage1_checkpoint)
    else:
        stage1 = load_config(REPO_ROOT / 'config' / 'train_tiny_stage1.yaml', [
            *common, f'max_iters={args.stage1_iters}', f'output_dir={out / "stage1"}'])
        stage1_checkpoint = train(stage1).checkpoint

    base = load_config(REPO_ROOT / 'config' / 'train_tiny_stage2.yaml', common)
    source_split = base.eval.data
    target_train = base.data['citypersons']
    target_split = DatasetConfig(format='synthetic', directory=str(out / 'heldout_target'),
                                 synthetic=type(target_train.synthetic)(
                                     num_images=source_split.synthetic.num_images,
                                     image_size=list(target_train.synthetic.image_size), seed=4,
                                     options=dict(target_train.synthetic.options)))
    for split in (source_split, target_split):
        prepare_synthetic(split)

    results = {}
    for name in args.variants:
        cfg = load_config(REPO_ROOT / 'config' / 'train_tiny_stage2.yaml', [
            *common, *variant_overrides(name, args.iters), f'max_iters={args.iters}',
            f'lr_schedule.step_size={max(4 * args.iters // 5, 1)}', f'checkpoint_every={args.iters}',
            f'loss.grl_ramp_iters={args.iters // 4}', f'init_checkpoint={stage1_checkpoint}',
            f'output_dir={out / name}'])
        run = train(cfg)
        results[name] = {
            'iterations': run.iteration, 'final_total_loss': run.history[-1]['total'],
            'source': evaluate_synthetic(run.checkpoint, Path(source_split.directory), args.threads, 'coco'),
            'target': evaluate_synthetic(run.checkpoint, Path(target_split.directory), args.threads,
                                         'citypersons'),
        }
        print(f'[ablation] {name}: {json.dumps(results[name])}', flush=True)

    rows = ['| variant | mask-and-predict | D_C | split | PCK occluded (%) | PCK visible (%) | keypoint AP |',
            '|---|---|---|---|---|---|---|']
    for name, result in results.items():
        for split in ('source', 'target'):
            metrics = result[split]
            rows.append(f'| {name} | {"yes" if name in ("full", "no_dc") else "no"} | '
                        f'{"yes" if name in ("full", "no_mask") else "no"} | {split} | '
                        f'{fmt(metrics["pck_occluded"])} | {fmt(metrics["pck_visible"])} | '
                        f'{metrics["keypoint_AP"]:.3f} |')
    table = '\n'.join(rows)
    summary = {'command': ' '.join([sys.executable, *sys.argv]), 'iters': args.iters,
               'stage1_checkpoint': str(stage1_checkpoint), 'results': results, 'table': table}
    out.mkdir(parents=True, exist_ok=True)
    (out / 'ablation.json').write_text(json.dumps(summary, indent=2))
    (out / 'ablation.md').write_text(table + '\n')
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
