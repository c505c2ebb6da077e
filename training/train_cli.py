"""`ppe train --config FILE [--resume] [--set key=value ...]`: run one training stage.

Examples (from the repository root):
    ppe train --config config/train_tiny_stage1.yaml            # CPU-sized, synthetic data
    ppe train --config config/train_tiny_stage2.yaml            # starts from the stage-1 result
    ppe train --config config/train_tiny_stage1.yaml --resume   # continue from <output_dir>/last.pt
    ppe train --config config/train_stage1.yaml --set batch_size=4 --set output_dir=runs/s1
    torchrun --nproc_per_node 2 -m occluded_ppe_ros.cli train --config config/train_stage2.yaml
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `ppe train` arguments."""
    parser.add_argument('--config', required=True, help='training YAML (config/train_*.yaml)')
    parser.add_argument('--resume', action='store_true',
                        help='continue from <output_dir>/last.pt at its iteration, optimizer, scheduler '
                             'and RNG state')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                        help='override a config key (dotted path, YAML value), e.g. max_iters=100 or '
                             'data.coco.max_images=8; repeatable')


def run(args: argparse.Namespace) -> int:
    """Load the config, train, print where the checkpoint went; returns the exit code."""
    from occluded_ppe_training.config import load_config
    from occluded_ppe_training.datasets.common import DatasetRecordError
    from occluded_ppe_training.trainer import train

    try:
        cfg = load_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as error:
        print(f'ppe train: {error}', file=sys.stderr)
        return 2
    try:
        result = train(cfg, resume=args.resume)
    except (FileNotFoundError, DatasetRecordError) as error:
        # a missing file (dataset, checkpoint to start or resume from) or a bad record: one clear line
        print(f'ppe train: {error}', file=sys.stderr)
        return 1
    if result.checkpoint is not None:
        shown = {k: round(v, 4) for k, v in result.metrics.items() if not k.startswith('loss/')}
        print(f'[train] stage {cfg.stage}: {result.iteration} iterations; checkpoint {result.checkpoint}'
              + (f'; metrics {shown}' if shown else ''))
    return 0
