"""Turn a training checkpoint into a shipped model file (contract 3): weights only, fp16 storage.

Drops what only `--resume` needs (optimizer, scheduler, RNG state), stores floating-point weights as
float16 (halves the file; `load_state_dict` copies them back into the float32 parameters), and records
the stage-1 and stage-2 iterations and wall times plus any metrics given. Optionally overrides the
deployed branch and input size in the model config (what `Predictor.from_checkpoint` and the node use).

Usage (from the repository root):
    python -m occluded_ppe_training.package_model runs/default/stage2/last.pt models/ppe_default.pt \
        [--stage1 runs/default/stage1/last.pt] [--domain coco] [--input-size 256 352] [--metrics FILE.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from occluded_ppe_ros.model.checkpoint import CHECKPOINT_FORMAT
from occluded_ppe_training.trainer import save_checkpoint_atomic

TRAINING_ONLY_KEYS = ('optimizer', 'scheduler', 'rng')


def shipped_checkpoint(checkpoint: dict[str, Any], half: bool = True, domain: str | None = None,
                       input_size: tuple[int, int] | None = None,
                       extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract-3 dict to ship: training-only state removed, weights optionally float16.

    Args:
        checkpoint: a training checkpoint dict (contract 3 plus optimizer / scheduler / rng).
        half: store floating-point tensors as float16 (integer buffers are kept as they are).
        domain: set `model_config['inference']['domain']` (the deployed branch); None keeps it.
        input_size: set the deployed (height, width) in pixels, multiples of 32; None keeps it.
        extra_metrics: merged into `metrics`.

    Returns:
        a new dict with the keys of contract 3.
    """
    if checkpoint.get('format') != CHECKPOINT_FORMAT:
        raise ValueError(f'expected a {CHECKPOINT_FORMAT!r} checkpoint, '
                         f'got format {checkpoint.get("format")!r}')
    state = {name: (tensor.half() if half and tensor.is_floating_point() else tensor).clone()
             for name, tensor in checkpoint['model'].items()}
    model_config = json.loads(json.dumps(checkpoint['model_config']))
    # The backbone file was only the starting point; the shipped weights replace it.
    model_config.setdefault('backbone', {})['pretrained_path'] = ''
    inference = model_config.setdefault('inference', {})
    if domain is not None:
        inference['domain'] = domain
    if input_size is not None:
        height, width = input_size
        if height <= 0 or width <= 0 or height % 32 or width % 32:
            raise ValueError(f'input size must be positive multiples of 32, got {height} x {width}')
        inference['input_height'], inference['input_width'] = int(height), int(width)
    metrics = dict(checkpoint.get('metrics', {}))
    metrics.update(extra_metrics or {})
    return {'format': CHECKPOINT_FORMAT, 'model_config': model_config, 'model': state,
            'train_config': checkpoint['train_config'], 'stage': int(checkpoint['stage']),
            'iteration': int(checkpoint['iteration']), 'metrics': metrics}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description='package a training checkpoint as a shipped model')
    parser.add_argument('checkpoint', type=Path,
                        help='training checkpoint (e.g. runs/default/stage2/last.pt)')
    parser.add_argument('output', type=Path, help='shipped model file (e.g. models/ppe_default.pt)')
    parser.add_argument('--stage1', type=Path, help='the stage-1 checkpoint: its iteration count is recorded')
    parser.add_argument('--domain', choices=('citypersons', 'coco'), help='deployed branch')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'),
                        help='deployed network input size in pixels')
    parser.add_argument('--metrics', type=Path, help='JSON of further metrics to record')
    parser.add_argument('--float32', action='store_true', help='keep float32 weights')
    args = parser.parse_args(argv)
    checkpoint = torch.load(args.checkpoint, map_location='cpu', weights_only=True)
    extra: dict[str, Any] = {}
    if args.stage1 is not None:
        stage1 = torch.load(args.stage1, map_location='cpu', weights_only=True)
        extra['train/stage1_iterations'] = float(stage1['iteration'])
    extra['train/stage2_iterations'] = float(checkpoint['iteration'])
    if args.metrics is not None:
        extra.update(json.loads(args.metrics.read_text()))
    shipped = shipped_checkpoint(checkpoint, half=not args.float32, domain=args.domain,
                                 input_size=tuple(args.input_size) if args.input_size else None,
                                 extra_metrics=extra)
    save_checkpoint_atomic(shipped, args.output)
    print(f'{args.output}: stage {shipped["stage"]}, iteration {shipped["iteration"]}, '
          f'{args.output.stat().st_size / 1e6:.1f} MB, '
          f'domain {shipped["model_config"]["inference"]["domain"]}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
