"""Synthetic tracking sequences and `ppe eval tracking`: ground truth layout, motmetrics scores on exact and
on id-swapped tracks, occlusion events."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from occluded_ppe_ros.cli import main as ppe_main
from occluded_ppe_ros.tracking.mot import mot_line, read_mot, write_lines
from occluded_ppe_training.datasets.synthetic_video import (FULLY_HIDDEN_VISIBILITY, VideoConfig,
                                                            render_sequence, sequence_rng)
from occluded_ppe_training.evaluation.tracking import evaluate_sequences, occlusion_events


def test_sequence_is_deterministic_with_moving_people_and_full_occlusions():
    config = VideoConfig(width=320, height=180, duration_s=4.0, fps=15.0, num_people=5)
    first = [[(p.track_id, p.visibility) for p in truths]
             for _, truths in render_sequence(sequence_rng(3, 0), config, draw=False)]
    second = [[(p.track_id, p.visibility) for p in truths]
              for _, truths in render_sequence(sequence_rng(3, 0), config, draw=False)]
    assert first == second and len(first) == config.num_frames == 60
    ids = {track_id for frame in first for track_id, _ in frame}
    assert ids <= set(range(1, 6)) and len(ids) >= 3
    image, truths = next(render_sequence(sequence_rng(3, 0), config))
    assert image.shape == (180, 320, 3) and image.dtype == np.uint8
    for person in truths:
        assert person.truth.keypoints.shape == (13, 2) and 0.0 <= person.visibility <= 1.0
    visibilities = [v for frame in first for _, v in frame]
    assert min(visibilities) < FULLY_HIDDEN_VISIBILITY  # somebody passes fully behind something


def _gt(rows):
    return np.array([[f, i, x, 10, 20, 60, 1, 1, v, -1] for f, i, x, v in rows], np.float64)


def test_scores_of_exact_and_swapped_tracks_and_switches_across_an_occlusion():
    # Person 1 walks right, fully hidden in frames 4-6; person 2 stands far away.
    truth = [(f, 1, 10 * f, 0.0 if 4 <= f <= 6 else 1.0) for f in range(1, 11)]
    truth += [(f, 2, 300, 1.0) for f in range(1, 11)]
    gt = _gt(truth)
    exact = np.array([[f, i + 10, x, 10, 20, 60, 0.9, -1, -1, -1] for f, i, x, v in truth if v > 0],
                     np.float64)
    scores = evaluate_sequences([('seq', gt, exact, 10.0)])
    assert scores.metrics['mota'] == 1.0 and scores.metrics['idf1'] == 1.0
    assert scores.metrics['num_switches'] == 0
    assert scores.occlusion_summary() == {'events': 1, 'resolved': 1, 'switches': 0,
                                          'switches_per_event': 0.0}
    # After the occlusion person 1 comes back under a new id: one switch, counted against the event.
    swapped = exact.copy()
    swapped[(swapped[:, 1] == 11) & (swapped[:, 0] > 6), 1] = 99
    scores = evaluate_sequences([('seq', gt, swapped, 10.0)])
    assert scores.metrics['num_switches'] == 1 and scores.metrics['idf1'] < 1.0
    assert scores.occlusion_summary()['switches'] == 1
    (event,) = occlusion_events(gt, fps=10.0)
    assert (event.person, event.first_frame, event.last_frame, event.duration_s) == (1, 4, 6, 0.3)


def test_synth_videos_then_eval_tracking_cli(tmp_path, capsys):
    out = tmp_path / 'synth'
    assert ppe_main(['synth', '--out', str(out), '--videos', '1', '--duration', '1', '--fps', '10',
                     '--people', '5', '--size', '192x108']) == 0
    sequence = out / 'synth-00'
    gt = read_mot(sequence / 'gt' / 'gt.txt')
    assert len(list((sequence / 'img1').glob('*.jpg'))) == 10 and (sequence / 'video.avi').is_file()
    annotations = json.loads((sequence / 'annotations.json').read_text())
    assert len(annotations['annotations']) == len(gt)
    assert {a['track_id'] for a in annotations['annotations']} == set(gt[:, 1].astype(int))
    # The ground truth itself as tracker output: perfect scores.
    seen = gt[gt[:, 8] >= FULLY_HIDDEN_VISIBILITY]
    lines = [mot_line(int(r[0]), int(r[1]), [r[2], r[3], r[2] + r[4], r[3] + r[5]], 1.0) for r in seen]
    write_lines(tmp_path / 'tracks.txt', lines)
    assert ppe_main(['eval', 'tracking', '--gt', str(sequence / 'gt' / 'gt.txt'), '--results',
                     str(tmp_path / 'tracks.txt'), '--out', str(tmp_path / 'eval')]) == 0
    metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['metrics']
    assert metrics['idf1'] == 1.0 and metrics['mota'] == 1.0
    assert 'MOTA 1.000' in capsys.readouterr().out
    assert ppe_main(['eval', 'tracking', '--gt', str(tmp_path / 'missing.txt'), '--results',
                     str(tmp_path / 'tracks.txt'), '--out', str(tmp_path / 'eval')]) == 2


def test_tracking_benchmark_set_names_a_bad_field_in_one_line(capsys):
    script = Path(__file__).resolve().parents[1] / 'benchmarks' / 'tracking.py'
    spec = importlib.util.spec_from_file_location('tracking_benchmark', script)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    config = benchmark.node_default_config({'min_similarity': '0.2', 'noise.acceleration_std': '0.4'})
    assert config.min_similarity == 0.2 and config.noise.acceleration_std == 0.4
    for item, message in (('min_simlarity=0.2', '--set min_simlarity: no such field'),
                          ('noise.accel=1', '--set noise.accel: no such field'),
                          ('min_similarity=abc', '--set min_similarity=abc: not a float')):
        assert benchmark.main(['--set', item]) == 2
        error = capsys.readouterr().err
        assert error.count('\n') == 1 and message in error, error
