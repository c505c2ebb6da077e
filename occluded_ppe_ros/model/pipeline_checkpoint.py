"""Checkpoints of the pretrained pipeline network (contract 3 with `model_config.architecture`).

Same outer format as PPENet checkpoints (`'format': 'occluded_ppe/1'`, `model_config`, `model`,
`train_config`, `stage`, `iteration`, `metrics`); `model_config['architecture'] == 'pretrained_pipeline'`
tells readers to build `PipelineNet` instead of PPENet. Floating-point weights are stored as float16
(the imported TF.js weights are float16 already; the trained heads lose nothing measurable) and loaded
as float32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


from occluded_ppe_ros.model.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, load_checkpoint
from occluded_ppe_ros.model.pipeline import PipelineConfig, PipelineNet, build_pipeline, is_pipeline_config


def save_pipeline_checkpoint(path: str | Path, net: PipelineNet, *, train_config: dict | None = None,
                             stage: int = 0, iteration: int = 0, metrics: dict | None = None,
                             half: bool = True) -> Path:
    """Write `net` as a contract-3 checkpoint (float16 storage unless `half` is False), atomically."""
    state = {name: (value.half() if half and value.is_floating_point() else value).clone()
             for name, value in net.state_dict().items()}
    payload: dict[str, Any] = {
        'format': CHECKPOINT_FORMAT,
        'model_config': net.cfg.to_dict(),
        'model': state,
        'train_config': dict(train_config or {}),
        'stage': int(stage),
        'iteration': int(iteration),
        'metrics': dict(metrics or {}),
    }
    return atomic_torch_save(payload, path)


def checkpoint_is_pipeline(path: str | Path) -> bool:
    """True when the checkpoint at `path` holds a PipelineNet (reads the whole file: small models)."""
    return is_pipeline_config(load_checkpoint(path)['model_config'])


def pipeline_from_checkpoint(path: str | Path, checkpoint: dict | None = None) -> tuple[PipelineNet, dict]:
    """Build the PipelineNet of a checkpoint and load its weights (strict, as float32), in eval mode.

    Raises:
        ValueError: the checkpoint is not a pipeline checkpoint, or its weights do not fit its config
            (the message names the file and the first missing / unexpected keys).
    """
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(path)
    if not is_pipeline_config(checkpoint['model_config']):
        raise ValueError(f'checkpoint {path} is not a pretrained-pipeline checkpoint '
                         f"(model_config.architecture = {checkpoint['model_config'].get('architecture')!r})")
    cfg = PipelineConfig.from_dict(checkpoint['model_config'], source=f'{path} model_config')
    net = build_pipeline(cfg)
    state = {name: value.float() if value.is_floating_point() else value
             for name, value in checkpoint['model'].items()}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as error:     # shapes that do not fit (e.g. written by another version of a head)
        first = str(error).strip().splitlines()[-1].strip()
        raise ValueError(f'checkpoint {path} does not fit its pipeline config: {first}') from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f'checkpoint {path} does not fit its pipeline config: missing '
                         f'{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}')
    return net.eval(), checkpoint

