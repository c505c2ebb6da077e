"""Where the shipped default model lives, and a stand-in when it is absent.

The one constant naming the default model is the node's `model_path` default,
`occluded_ppe_ros.ros.parameters.DEFAULT_MODEL_PATH` (relative to the repository root in a checkout and
to share/occluded_ppe_ros/ once installed; setup.py installs models/ there). `ppe infer` and `ppe demo`
resolve it through `default_checkpoint_path()`. The default-model work drops its trained checkpoint
(contract 3 of docs/architecture.md) at exactly that path. Until then the demo builds a
random-initialised checkpoint from `DEFAULT_MODEL_CONFIG` and says so: its outputs exercise the
pipeline, not the accuracy.
"""
from __future__ import annotations

import sys
from pathlib import Path

from occluded_ppe_ros.ros.parameters import DEFAULT_MODEL_PATH

PACKAGE_NAME = 'occluded_ppe_ros'
# Paths relative to the repository root (source tree) or to share/occluded_ppe_ros (installed).
DEFAULT_CHECKPOINT = Path(DEFAULT_MODEL_PATH)
DEFAULT_MODEL_CONFIG = Path('config') / 'model_resnet18.yaml'

REPO_ROOT = Path(__file__).resolve().parents[2]


def _candidates(relative: Path) -> list[Path]:
    """The source-tree path first (a checkout), then the install prefix's share/ copy."""
    return [REPO_ROOT / relative, Path(sys.prefix) / 'share' / PACKAGE_NAME / relative]


def find_shipped_file(relative: str | Path) -> Path | None:
    """A file the package ships (models/, samples/, config/): the checkout's copy, else the installed one."""
    return next((path for path in _candidates(Path(relative)) if path.is_file()), None)


def default_checkpoint_path() -> Path | None:
    """The shipped default checkpoint, or None when no default model has been shipped yet."""
    return find_shipped_file(DEFAULT_CHECKPOINT)


def default_model_config_path() -> Path:
    """The model config the default model is trained from (for a random-init stand-in)."""
    path = find_shipped_file(DEFAULT_MODEL_CONFIG)
    if path is not None:
        return path
    tried = ' or '.join(str(path) for path in _candidates(DEFAULT_MODEL_CONFIG))
    raise FileNotFoundError(f'model config not found at {tried}')


def resolve_checkpoint(path: str | Path | None) -> Path:
    """An explicit checkpoint path (must exist), or the shipped default when `path` is None.

    Raises:
        FileNotFoundError: the given file does not exist, or no default model is shipped (the message
            says how to make a random-init checkpoint).
    """
    if path is not None:
        checkpoint = Path(path)
        if not checkpoint.is_file():
            raise FileNotFoundError(f'--checkpoint {checkpoint}: no such file')
        return checkpoint
    shipped = default_checkpoint_path()
    if shipped is None:
        raise FileNotFoundError(
            f'no default model shipped (expected {DEFAULT_CHECKPOINT}); pass --checkpoint, e.g. a '
            f'random-init one from `python -m occluded_ppe_ros.model.checkpoint --config '
            f'{DEFAULT_MODEL_CONFIG} --out random_init.pt`')
    return shipped
