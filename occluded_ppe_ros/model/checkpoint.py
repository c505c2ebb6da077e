"""Self-describing checkpoints (docs/architecture.md, contract 3) and a random-init checkpoint maker.

A checkpoint is a dict loadable with `torch.load(path, weights_only=True)`:
`{'format': 'occluded_ppe/1', 'model_config': dict, 'model': state_dict, 'train_config': dict,
'stage': int, 'iteration': int, 'metrics': dict}` (training adds optimizer/scheduler/rng).

`python -m occluded_ppe_ros.model.checkpoint --config config/model_resnet18.yaml --out /tmp/x.pt`
writes a randomly initialised model's checkpoint (stage 0, iteration 0): everything downstream (export,
backends, node) works on it before any trained model exists.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from occluded_ppe_ros.inference.model_file import as_model_file_error, check_model_file
from occluded_ppe_ros.model.config import ModelConfig
from occluded_ppe_ros.model.network import PPENet, build_model

CHECKPOINT_FORMAT = 'occluded_ppe/1'
# The temporary file an atomic checkpoint write (here and in the trainer) goes through before os.replace:
# '.<target name>.<mkstemp's random part>.tmp', e.g. '.last.pt.k2j4_x9q.tmp'.
_CHECKPOINT_TEMPORARY = re.compile(r'^\.(?P<target>.+\.pt)\.[A-Za-z0-9_]+\.tmp$')
_REQUIRED_KEYS = ('format', 'model_config', 'model')


def save_checkpoint(path: str | Path, model: PPENet, *, train_config: dict | None = None, stage: int = 0,
                    iteration: int = 0, metrics: dict | None = None, **extra: Any) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then os.replace).

    Args:
        path: destination file.
        model: the network (its `cfg` is stored as `model_config`).
        train_config: the training configuration as a plain dict ({} when none).
        stage: training stage (0 = untrained, 1, 2).
        iteration: training iteration.
        metrics: evaluation results as plain numbers.
        **extra: further entries (e.g. optimizer, scheduler, rng for resuming).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        'format': CHECKPOINT_FORMAT,
        'model_config': model.cfg.to_dict(),
        'model': model.state_dict(),
        'train_config': dict(train_config or {}),
        'stage': int(stage),
        'iteration': int(iteration),
        'metrics': dict(metrics or {}),
        **extra,
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(payload: dict, path: str | Path) -> Path:
    """Save `payload` with torch.save through a temporary file in the target's folder and os.replace.

    A reader (or a resume after `kill -9`) sees the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def remove_stale_checkpoint_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries of checkpoint writes that never finished.

    They are left by a `kill -9` or power loss between mkstemp and os.replace; the complete checkpoints
    next to them are untouched.

    Call it when a run starts, before anything writes into `folder`: a write in progress in another
    process would lose its temporary (two runs writing one folder is already an error).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if _CHECKPOINT_TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = 'cpu') -> dict[str, Any]:
    """Read a checkpoint dict (weights_only=True) and check its format and keys.

    Raises:
        ModelFileError: missing, empty, truncated, corrupt or not a torch checkpoint (one line).
        ValueError: not an occluded_ppe checkpoint (names the missing key or the format found).
    """
    path = check_model_file(path)  # missing, empty, truncated, corrupt or not a checkpoint: ModelFileError
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling raises many kinds on a damaged file
        raise as_model_file_error(path, error, 'torch.load') from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f'checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict')
    missing = [key for key in _REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f'checkpoint {path} lacks {missing}; keys present: {sorted(checkpoint)}')
    if checkpoint['format'] != CHECKPOINT_FORMAT:
        raise ValueError(f'checkpoint {path} has format {checkpoint["format"]!r}, '
                         f'expected {CHECKPOINT_FORMAT!r}')
    return checkpoint


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = 'cpu') -> tuple[PPENet, dict]:
    """Build the network from a checkpoint's config and load its weights (strict).

    Returns:
        (model in eval mode, the checkpoint dict).
    """
    checkpoint = load_checkpoint(path, map_location)
    cfg = ModelConfig.from_dict(checkpoint['model_config'], source=f'{path} model_config')
    # The backbone file was only an initialisation; the checkpoint's weights replace it.
    cfg.backbone.pretrained_path = ''
    model = build_model(cfg)
    model.load_state_dict(checkpoint['model'])
    model.to(map_location)
    model.eval()
    return model, checkpoint


def main(argv: list[str] | None = None) -> int:
    """Command line: write a random-init checkpoint for a model config."""
    parser = argparse.ArgumentParser(description='Write a randomly initialised checkpoint of a model config.')
    parser.add_argument('--config', required=True, help='model YAML, e.g. config/model_resnet18.yaml')
    parser.add_argument('--out', required=True, help='checkpoint file to write')
    parser.add_argument('--seed', type=int, default=0, help='torch seed of the initialisation')
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = build_model(ModelConfig.from_yaml(args.config))
    path = save_checkpoint(args.out, model, stage=0, iteration=0, metrics={})
    print(f'wrote {path} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, random init)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
