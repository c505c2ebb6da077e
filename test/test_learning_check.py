"""benchmarks/learning_check.py fits each stage's iteration count to the time left, from a probe."""
from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.learning_check import fitted_iterations
from occluded_ppe_training.trainer import TrainResult


def _probe(iteration_seconds: list[float]) -> TrainResult:
    return TrainResult(model=torch.nn.Identity(), iteration=len(iteration_seconds),
                       checkpoint=Path('last.pt'), iteration_seconds=iteration_seconds)


def test_the_count_uses_the_median_iteration_after_warm_up_and_pays_start_up_again():
    # two slow warm-up iterations, then 0.5 s each; the probe took 3 s of start-up beyond its iterations
    probe = _probe([2.0, 1.0, 0.5, 0.5, 0.6, 0.5, 0.4, 0.5, 0.5, 0.5])
    probe_wall_s = sum(probe.iteration_seconds) + 3.0
    # 100 s left: 3 s of start-up again, then (100 - 3) / 0.5 = 194 more iterations after the probe's 10
    assert fitted_iterations(probe, probe_wall_s, seconds_left=100.0) == 10 + 194


def test_a_stage_with_no_time_left_still_runs_one_iteration_past_the_probe():
    probe = _probe([0.5] * 10)
    assert fitted_iterations(probe, probe_wall_s=8.0, seconds_left=1.0) == 11
