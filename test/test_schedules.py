"""Schedule functions against hand-computed values (paper: lr 0.01, /10 every 15k; mask curriculum)."""
from __future__ import annotations

import math

import pytest
import torch

from occluded_ppe_training.schedules import LRSchedule, MaskSchedule, grl_factor, lr_factor, mask_ratio


def test_paper_step_schedule_divides_by_ten_every_15k():
    schedule = LRSchedule(step_size=15000, gamma=0.1)
    base = 0.01
    assert base * lr_factor(0, schedule) == pytest.approx(0.01)
    assert base * lr_factor(14999, schedule) == pytest.approx(0.01)
    assert base * lr_factor(15000, schedule) == pytest.approx(0.001)
    assert base * lr_factor(29999, schedule) == pytest.approx(0.001)
    assert base * lr_factor(30000, schedule) == pytest.approx(0.0001)


def test_warmup_ramps_linearly_then_hands_over_to_the_steps():
    schedule = LRSchedule(step_size=100, gamma=0.5, warmup_iters=10, warmup_factor=0.1)
    # iteration i < 10: 0.1 + 0.9 * i / 10
    assert lr_factor(0, schedule) == pytest.approx(0.1)
    assert lr_factor(5, schedule) == pytest.approx(0.55)
    assert lr_factor(9, schedule) == pytest.approx(0.91)
    assert lr_factor(10, schedule) == pytest.approx(1.0)
    assert lr_factor(150, schedule) == pytest.approx(0.5)


def test_lambda_lr_follows_the_pure_function_and_resumes_from_its_state():
    schedule = LRSchedule(step_size=3, gamma=0.1, warmup_iters=2, warmup_factor=0.5)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, schedule))
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.01 * lr_factor(i, schedule) for i in range(7)])
    # A fresh optimizer + scheduler loaded from the state dicts continues at the same rate.
    state = scheduler.state_dict(), optimizer.state_dict()
    optimizer2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01, momentum=0.9)
    scheduler2 = torch.optim.lr_scheduler.LambdaLR(optimizer2, lambda it: lr_factor(it, schedule))
    scheduler2.load_state_dict(state[0])
    optimizer2.load_state_dict(state[1])
    assert optimizer2.param_groups[0]['lr'] == pytest.approx(0.01 * lr_factor(7, schedule))


def test_linear_mask_curriculum():
    schedule = MaskSchedule(kind='linear', start=0.1, end=0.5, start_iter=100, end_iter=300)
    assert mask_ratio(0, schedule) == pytest.approx(0.1)
    assert mask_ratio(100, schedule) == pytest.approx(0.1)
    assert mask_ratio(200, schedule) == pytest.approx(0.3)
    assert mask_ratio(250, schedule) == pytest.approx(0.4)
    assert mask_ratio(300, schedule) == pytest.approx(0.5)
    assert mask_ratio(10**6, schedule) == pytest.approx(0.5)


def test_cosine_mask_curriculum_is_monotone_and_matches_the_half_cosine():
    schedule = MaskSchedule(kind='cosine', start=0.0, end=0.6, start_iter=0, end_iter=1000)
    values = [mask_ratio(i, schedule) for i in range(0, 1001, 50)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert mask_ratio(500, schedule) == pytest.approx(0.3)
    assert mask_ratio(250, schedule) == pytest.approx(0.6 * (0.5 - 0.5 * math.cos(math.pi / 4)))


def test_step_and_constant_mask_curriculum():
    schedule = MaskSchedule(kind='step', start=0.0, milestones=[10, 20, 30], levels=[0.2, 0.4, 0.6])
    assert [mask_ratio(i, schedule) for i in (0, 9, 10, 19, 20, 29, 30, 999)] == \
        pytest.approx([0.0, 0.0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.6])
    assert mask_ratio(12345, MaskSchedule(kind='constant', start=0.25)) == 0.25


@pytest.mark.parametrize('kwargs, message', [
    ({'kind': 'exponential'}, 'kind'),
    ({'kind': 'linear', 'start': 0.0, 'end': 1.0}, 'end'),
    ({'kind': 'linear', 'start_iter': 5, 'end_iter': 5}, 'start_iter'),
    ({'kind': 'step', 'milestones': [10, 5], 'levels': [0.1, 0.2]}, 'increase'),
    ({'kind': 'step', 'milestones': [10], 'levels': [0.1, 0.2]}, 'same length'),
])
def test_bad_mask_schedules_are_rejected_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskSchedule(**kwargs)


def test_linear_lr_decay_warms_up_then_falls_to_the_final_factor_and_holds():
    schedule = LRSchedule(kind='linear', decay_iters=110, final_factor=0.0, warmup_iters=10,
                          warmup_factor=0.1)
    assert lr_factor(0, schedule) == pytest.approx(0.1)
    assert lr_factor(5, schedule) == pytest.approx(0.55)            # warm-up ramp times the (still 1) decay
    assert lr_factor(10, schedule) == pytest.approx(1.0)
    assert lr_factor(60, schedule) == pytest.approx(0.5)
    assert lr_factor(110, schedule) == pytest.approx(0.0) and lr_factor(500, schedule) == pytest.approx(0.0)
    floor = LRSchedule(kind='linear', decay_iters=100, final_factor=0.05)
    assert lr_factor(100, floor) == pytest.approx(0.05) and lr_factor(50, floor) == pytest.approx(0.525)
    with pytest.raises(ValueError, match="lr kind must be one of .* got 'cosine'"):
        LRSchedule(kind='cosine')
    with pytest.raises(ValueError, match=r'decay_iters > warmup_iters \(10\), got 10'):
        LRSchedule(kind='linear', decay_iters=10, warmup_iters=10)
    with pytest.raises(ValueError, match='final_factor must be in'):
        LRSchedule(kind='linear', decay_iters=10, final_factor=2.0)


def test_bad_lr_schedules_and_iterations_are_rejected():
    with pytest.raises(ValueError, match='step_size'):
        LRSchedule(step_size=0)
    with pytest.raises(ValueError, match='gamma'):
        LRSchedule(gamma=1.5)
    with pytest.raises(ValueError, match='iteration'):
        lr_factor(-1, LRSchedule())
    with pytest.raises(ValueError, match='iteration'):
        mask_ratio(-1, MaskSchedule())


def test_grl_ramp_follows_dann_and_is_full_strength_without_a_ramp():
    assert grl_factor(0, 0) == 1.0 and grl_factor(500, 0) == 1.0
    assert grl_factor(0, 100) == 0.0
    assert grl_factor(50, 100) == pytest.approx(2 / (1 + math.exp(-5.0)) - 1)
    assert grl_factor(100, 100) == pytest.approx(2 / (1 + math.exp(-10.0)) - 1)
    assert grl_factor(10_000, 100) == grl_factor(100, 100)          # held after the ramp
    values = [grl_factor(i, 100) for i in range(0, 101, 5)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match='-1'):
        grl_factor(-1, 100)
