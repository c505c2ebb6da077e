"""Use the training package of a source checkout instead of the venv's installed snapshot.

setup.py installs training/ under the name `occluded_ppe_training` (package_dir), and scripts/setup.sh
installs the project non-editable (pip's editable mode would skip the ament data files). The venv's copy
is therefore a snapshot of the last setup run. Tests and benchmarks that run from a checkout call
`import_training_from_source` so they use the code beside them.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TRAINING_PACKAGE = 'occluded_ppe_training'


def import_training_from_source(repo_root: Path) -> None:
    """Register `<repo_root>/training` as `occluded_ppe_training` unless it is imported already.

    Args:
        repo_root: the checkout's root folder (the one holding training/__init__.py).
    """
    if TRAINING_PACKAGE in sys.modules:
        return
    init_file = Path(repo_root) / 'training' / '__init__.py'
    if not init_file.is_file():
        raise FileNotFoundError(f'no training package at {init_file}')
    spec = importlib.util.spec_from_file_location(
        TRAINING_PACKAGE, init_file, submodule_search_locations=[str(init_file.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[TRAINING_PACKAGE] = module
    spec.loader.exec_module(module)
