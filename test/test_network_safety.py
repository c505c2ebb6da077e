"""Static check: nothing in the repository starts rclpy without the loopback-only DDS setting.

Tests get it from test/conftest.py (applied at import, before any test module imports rclpy). Any other
file that calls `rclpy.init` (demo, benchmarks, tools) must apply occluded_ppe_ros/ros/dds_env.py itself
or be the product node, which a vehicle runs with the vehicle's own DDS configuration.
"""
from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The node executable: deployed on vehicles, where DDS is the integrator's choice; tests and the demo
# start it with the loopback environment.
PRODUCT_ENTRY_POINTS = {Path('occluded_ppe_ros/ros/node.py')}
STARTS_RCLPY = re.compile(r'\brclpy\.(init|create_node)\s*\(|\bfrom rclpy import init\b')
APPLIES_LOOPBACK = re.compile(r'apply_loopback_env|loopback_env\(|ROS_AUTOMATIC_DISCOVERY_RANGE')


def _python_files() -> list[Path]:
    roots = ['occluded_ppe_ros', 'training', 'benchmarks', 'tools', 'scripts', 'launch']
    files = [path for root in roots for path in (REPO_ROOT / root).rglob('*.py')]
    return [path for path in files if '__pycache__' not in path.parts]


def test_every_rclpy_starter_outside_tests_applies_loopback_dds():
    offenders = []
    for path in _python_files():
        relative = path.relative_to(REPO_ROOT)
        text = path.read_text(encoding='utf-8')
        if relative in PRODUCT_ENTRY_POINTS or not STARTS_RCLPY.search(text):
            continue
        if not APPLIES_LOOPBACK.search(text):
            offenders.append(str(relative))
    assert not offenders, f'these files start rclpy without loopback-only DDS: {offenders}'


def test_shell_entry_points_set_loopback_discovery():
    for script in ('scripts/test.sh', 'scripts/demo.sh', '.ci/run'):
        text = (REPO_ROOT / script).read_text(encoding='utf-8')
        assert 'ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST' in text, script


def test_conftest_applies_loopback_before_tests_import_rclpy():
    text = (REPO_ROOT / 'test/conftest.py').read_text(encoding='utf-8')
    apply_at = text.index("\napply_loopback_env('udp'")
    assert not re.search(r'^\s*(import rclpy|from rclpy)', text[:apply_at], re.MULTILINE)
