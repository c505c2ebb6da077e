"""`ppe bench` plumbing: interleaved timing, ratios against targets, the markdown page, CLI settings.

The benchmark itself (ResNet-50 models, minutes) runs as `ppe bench`, not as a unit test.
"""
from __future__ import annotations

import argparse

import pytest

from occluded_ppe_ros import bench


def test_time_interleaved_runs_rows_round_robin_after_warmup():
    calls = []
    specs = [bench.RowSpec('a', 'A', lambda: calls.append('a')),
             bench.RowSpec('b', 'B', lambda: calls.append('b'))]
    timings = bench.time_interleaved(specs, warmup=1, runs=3)
    assert calls == ['a', 'b'] + ['a', 'b'] * 3
    assert set(timings) == {'a', 'b'}
    for wall, cpu in timings.values():
        assert len(wall) == len(cpu) == 3 and min(wall) >= 0 and min(cpu) >= 0


def _row(key: str, wall: list[float], cpu: list[float]) -> bench.Row:
    return bench.Row(key, key, wall, cpu)


def test_ratios_use_medians_and_compare_with_the_targets():
    rows = {'ours_torch': _row('ours_torch', [100, 300, 200], [380, 400, 420]),
            'keypointrcnn': _row('keypointrcnn', [500, 450, 1000], [1000, 1000, 1000]),
            'ours_floor': _row('ours_floor', [150, 150, 150], [300, 300, 300])}
    ratios = {r['ratio']: r for r in bench.ratios_of(rows)}
    # medians: ours 200, keypointrcnn 500, floor 150 (wall); 400, 1000, 300 (CPU)
    assert ratios['ours / keypointrcnn alone']['value'] == pytest.approx(0.4)
    assert ratios['ours / keypointrcnn alone']['cpu_value'] == pytest.approx(0.4)
    assert ratios['ours / keypointrcnn alone']['min_value'] == pytest.approx(100 / 450, abs=1e-3)
    assert ratios['ours / keypointrcnn alone']['met'] is True
    assert ratios['ours full / encoder floor']['value'] == pytest.approx(1.333, abs=1e-3)
    assert ratios['ours full / encoder floor']['met'] is True
    assert 'ours ONNX Runtime / PyTorch eager' not in ratios          # its row did not run
    rows['ours_floor'] = _row('ours_floor', [100, 100, 100], [300, 300, 300])
    assert {r['ratio']: r for r in bench.ratios_of(rows)}['ours full / encoder floor']['met'] is False


def test_markdown_lists_every_row_and_ratio():
    rows = {'ours_torch': _row('ours_torch', [10.0], [20.0]),
            'keypointrcnn': _row('keypointrcnn', [40.0], [80.0])}
    report = {'command': 'ppe bench', 'date': 'today', 'settings': vars(bench.BenchSettings()),
              'machine': {'cpu_model': 'x'}, 'matmul_peak_gflops': 100.0, 'matmul_peak_gflops_after': 90.0,
              'load_average_1min_at_end': 1.0, 'skipped': {'ours_onnxruntime': 'no onnxruntime'},
              'ratios': bench.ratios_of(rows), 'profile_ours': [],
              'rows': [{'label': 'ours', 'median_ms': 10.0, 'median_cpu_ms': 20.0, 'min_ms': 10.0,
                        'detections': 10, 'flops': 2e9, 'utilisation': 0.5, 'note': ''}]}
    page = bench.to_markdown(report)
    assert '| ours | 10.0 | 20.0 | 10.0 | 10 | 2.0 | 50% |  |' in page
    assert '| ours / keypointrcnn alone | 0.25 | 0.25 | 0.25 | <= 0.5 | yes |' in page
    assert '- ours_onnxruntime: no onnxruntime' in page


def _args(**values) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = []
    for name, value in values.items():
        argv += [f'--{name}'] if value is True else [f'--{name}', str(value)]
    return parser.parse_args(argv)


def test_settings_defaults_quick_and_bad_values():
    full = bench.settings_from_args(_args())
    assert (full.height, full.width, full.threads) == (480, 640, 2)
    assert (full.backbone, full.detections) == ('resnet50', 10)
    quick = bench.settings_from_args(_args(quick=True))
    assert (quick.height, quick.width, quick.runs) == (256, 320, 2)
    with pytest.raises(ValueError, match='--height must be a positive multiple of 32, got 100'):
        bench.settings_from_args(_args(height=100))
    with pytest.raises(ValueError, match='--runs'):
        bench.settings_from_args(_args(runs=0))


def test_shipped_files_resolve_in_the_checkout_then_the_install_prefix(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from occluded_ppe_ros.offline import default_model

    checkout = Path(bench.__file__).resolve().parents[1]
    assert default_model.find_shipped_file(bench.DEFAULT_MODEL_PHOTO) == checkout / bench.DEFAULT_MODEL_PHOTO
    assert default_model.find_shipped_file('samples/no_such_photo.jpg') is None
    # an installed package (no checkout around it) finds the copy setup.py put under share/
    installed = tmp_path / 'share' / default_model.PACKAGE_NAME / 'samples'
    installed.mkdir(parents=True)
    (installed / 'only_installed.jpg').write_bytes(b'jpeg')
    monkeypatch.setattr(sys, 'prefix', str(tmp_path))
    assert default_model.find_shipped_file('samples/only_installed.jpg') == installed / 'only_installed.jpg'


def test_machine_after_run_names_the_cpu_its_peak_and_the_load_at_the_end():
    info = bench.machine_after_run(threads=1)
    assert info['cpu_model'] and info['threads_used'] == 1
    assert info['matmul_peak_gflops'] > 0.0
    assert 'load_average_1min_at_end' in info and 'load_average_1min_at_start' not in info
