"""Lint: ruff (pyflakes + pycodestyle + bugbear), pep257 docstrings, package.xml validity."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON_DIRS = ['occluded_ppe_ros', 'training', 'test', 'launch', 'setup.py']
# Scripts kept beside the package: linted by ruff too (their docstrings are usage text, not API docs).
SCRIPT_DIRS = ['benchmarks', 'tools']
PACKAGE_XMLS = [REPO_ROOT / 'package.xml',
                REPO_ROOT / 'interfaces/occluded_ppe_msgs/package.xml',
                REPO_ROOT / 'interfaces/vision_msgs/package.xml']
# Google-style docstring sections (Args:, Returns:); missing docstrings are not errors (as ament_pep257).
PEP257_ADD_IGNORE = 'D100,D101,D102,D103,D104,D105,D106,D107'


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f'{name} is not installed (it is in requirements/venv.txt; run scripts/setup.sh)')
    return found


def test_ruff():
    result = subprocess.run([_tool('ruff'), 'check', '--no-cache', *PYTHON_DIRS, *SCRIPT_DIRS], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pep257():
    result = subprocess.run([_tool('pydocstyle'), '--convention=google', f'--add-ignore={PEP257_ADD_IGNORE}',
                             '--match=(?!test_).*\\.py', *PYTHON_DIRS], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('path', PACKAGE_XMLS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_package_xml(path):
    """Well-formed XML (xmllint where installed, lxml otherwise), then ROS's own format-3 parser."""
    xmllint = shutil.which('xmllint')
    if xmllint:
        result = subprocess.run([xmllint, '--noout', str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    else:
        from lxml import etree
        etree.parse(str(path))
    from catkin_pkg.package import parse_package
    package = parse_package(str(path))
    package.validate()
    assert package.package_format == 3
    expected = 'occluded_ppe_ros' if path.parent == REPO_ROOT else path.parent.name
    assert package.name == expected
