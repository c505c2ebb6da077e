"""`ppe demo` end to end: the real node in its own process, the sample photos over real loopback DDS.

Runs the demo as a subprocess (as scripts/demo.sh does) with a tiny random-init model built on the fly
from a small model config (the path a fresh clone without a shipped model takes), on two of the shipped
sample photos at their real size, and checks that every output topic came back for every photo.
"""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest
import yaml

from tiny_models import TINY_STRIDE8, tiny_model_config

from occluded_ppe_ros.offline.default_model import REPO_ROOT

pytestmark = pytest.mark.ros


def test_samples_are_attributed():
    attribution = (REPO_ROOT / 'samples' / 'ATTRIBUTION.md').read_text()
    photos = sorted(p.name for p in (REPO_ROOT / 'samples').glob('*.jpg'))
    assert 4 <= len(photos) <= 6
    for name in photos:
        assert f'`{name}`' in attribution, f'{name} has no attribution row'
        assert cv2.imread(str(REPO_ROOT / 'samples' / name)) is not None


def test_demo_feeds_the_node_and_receives_every_topic(tmp_path, ros_env):
    config = tmp_path / 'tiny_model.yaml'
    model = tiny_model_config(TINY_STRIDE8, 'citypersons', 128, 160, max_detections=5)
    config.write_text(yaml.safe_dump(model))
    out = tmp_path / 'demo'
    command = [sys.executable, '-m', 'occluded_ppe_ros.cli', 'demo', '--out', str(out), '--limit', '2',
               '--random-init', '--model-config', str(config), '--backend', 'torch', '--node-from-source',
               '--node-param', 'score_threshold:=0.0', '--frame-timeout', '60']
    env = ros_env('shm')
    command += ['--domain-id', env['ROS_DOMAIN_ID']]  # this test run's domain (conftest)
    env['OMP_NUM_THREADS'] = '1'  # the node's torch: one thread (see test_infer.write_tiny_checkpoint)
    completed = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    log = completed.stdout + completed.stderr
    node_log = (out / 'node.log').read_text() if (out / 'node.log').exists() else '(no node log)'
    assert completed.returncode == 0, f'{log}\n--- node log ---\n{node_log}'
    assert 'RANDOM-INIT' in log
    assert 'node stopped' in log

    summary = json.loads((out / 'summary.json').read_text())
    assert summary['ok'] is True
    for topic in ('detections', 'poses', 'masks', 'markers', 'overlay', 'diagnostics'):
        assert summary['messages_received'][topic] >= (1 if topic == 'diagnostics' else 2), topic
    assert summary['diagnostics'], 'a DiagnosticArray with at least one status'
    photos = sorted(p for p in (REPO_ROOT / 'samples').glob('*.jpg'))[:2]
    assert [image['file'] for image in summary['images']] == [p.name for p in photos]
    for image, photo in zip(summary['images'], photos):
        assert all(image['received'].values()), image['received']
        assert image['latency_ms'] is not None and image['latency_ms'] > 0
        assert image['detections'] == len(image['pedestrians'])
        assert image['mask_labels'] <= image['detections']
        assert image['marker_count'] >= 1  # the DELETEALL marker comes first in every frame
        source = cv2.imread(str(photo))
        overlay = cv2.imread(image['overlay_png'])
        assert overlay is not None and overlay.shape == source.shape
        masks = cv2.imread(image['masks_png'], cv2.IMREAD_UNCHANGED)
        assert masks is not None and masks.shape == source.shape[:2]
        assert f'[demo] {photo.name}' in log
