"""benchmarks/latency_interleaved.py: models take turns photo by photo, and the ratios pair the same calls."""
from __future__ import annotations

import time

import pytest

from benchmarks.latency_interleaved import interleaved_times, summarise


def test_every_model_runs_every_photo_in_rotating_order():
    calls: list[tuple[str, int]] = []

    def model(label):
        return lambda image: calls.append((label, image))

    models = {name: model(name) for name in ('a', 'b', 'c')}
    times = interleaved_times(models, images=[10, 11, 12, 13], repeats=2, warmup=1)
    warmup, timed = calls[:3], calls[3:]
    assert sorted(warmup) == [('a', 10), ('b', 10), ('c', 10)]
    assert len(timed) == 3 * 4 * 2 and all(len(values) == 8 for values in times.values())
    # each photo goes through all three models before the next photo, and who goes first rotates
    groups = [timed[k:k + 3] for k in range(0, len(timed), 3)]
    assert all({image for _, image in group} == {group[0][1]} for group in groups)
    assert [group[0][0] for group in groups[:4]] == ['a', 'b', 'c', 'a']
    assert all(sorted(name for name, _ in group) == ['a', 'b', 'c'] for group in groups)


def test_ratios_pair_the_same_calls_and_take_medians():
    times = {'ours': [10.0, 30.0, 20.0], 'peer': [20.0, 20.0, 10.0]}
    summary = summarise(times, reference='peer')
    assert summary['ours']['median_ms'] == 20.0 and summary['peer']['median_ms'] == 20.0
    # per call: 0.5, 1.5, 2.0 -> median 1.5; the ratio of medians is 20 / 20
    assert summary['ours']['paired_ratio_median'] == pytest.approx(1.5)
    assert summary['ours']['ratio_of_medians'] == pytest.approx(1.0)
    assert 'paired_ratio_median' not in summary['peer']
    assert 'ratio_of_medians' not in summarise(times, reference=None)['ours']


def test_times_are_wall_milliseconds_of_each_call():
    times = interleaved_times({'sleeper': lambda image: time.sleep(0.02)}, images=[0], repeats=2, warmup=0)
    assert all(15.0 <= value < 200.0 for value in times['sleeper'])
