"""Pure schedule functions of the iteration: learning-rate factor and mask-and-predict ratio.

Each function maps an iteration count (0-based: the number of optimizer steps already taken) to a
number, with no state, so the trainer, its `--resume` path and the tests all read the same value for
the same iteration. `torch.optim.lr_scheduler.LambdaLR` wraps `lr_factor` for the optimizer.

- Learning rate (paper section 3.1): SGD with momentum 0.9, base rate 0.01 divided by 10 every 15k
  iterations. We add an optional linear warm-up (not in the paper): a randomly initialised detection
  head at lr 0.01 can diverge in its first steps; `warmup_iters: 0` gives the paper's schedule exactly.
- Mask-and-predict curriculum (paper section 3.1, "Curriculum Learning for Mask and Predict"): the share
  of each instance that is masked before the pose stage grows as training progresses. The paper gives
  no numbers; the shape ('constant', 'linear', 'cosine' or 'step') and the start/end values and
  iterations come from the config.
- Gradient-reversal strength (not in the paper, which gives none): DANN's ramp
  lambda_p = 2 / (1 + exp(-10 p)) - 1 over the first `grl_ramp_iters` iterations of stage 2, so that the
  domain classifier's reversed gradient does not scramble E_Pose's features before D_Pose has learned
  anything from them; `grl_ramp_iters: 0` keeps the full strength from the first step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

MASK_SCHEDULE_KINDS = ('constant', 'linear', 'cosine', 'step')


LR_SCHEDULE_KINDS = ('step', 'linear')


@dataclass
class LRSchedule:
    """Learning-rate decay with an optional linear warm-up (the optimizer's base rate times `lr_factor`).

    Attributes:
        kind: 'step' (the paper: x gamma every `step_size` iterations) or 'linear' (from 1 down to
            `final_factor` at `decay_iters`, then held; Li et al., "Budgeted training", ICLR 2020: under
            a fixed iteration budget a linear decay beat step decays).
        step_size: iterations between two decays (paper: 15000); 'step' only.
        gamma: factor applied at each decay (paper: 0.1); 'step' only.
        decay_iters: the iteration at which a 'linear' decay reaches `final_factor` (the run's length).
        final_factor: the factor a 'linear' decay ends at.
        warmup_iters: iterations of linear warm-up from `warmup_factor` to 1 (0: none, the paper).
        warmup_factor: factor at iteration 0 when warming up.
    """

    kind: str = 'step'
    step_size: int = 15000
    gamma: float = 0.1
    decay_iters: int = 0
    final_factor: float = 0.0
    warmup_iters: int = 0
    warmup_factor: float = 0.001

    def __post_init__(self) -> None:
        if self.kind not in LR_SCHEDULE_KINDS:
            raise ValueError(f'lr kind must be one of {LR_SCHEDULE_KINDS}, got {self.kind!r}')
        if self.kind == 'linear' and self.decay_iters <= self.warmup_iters:
            raise ValueError(f'a linear lr schedule needs decay_iters > warmup_iters ({self.warmup_iters}), '
                             f'got {self.decay_iters}')
        if not 0.0 <= self.final_factor <= 1.0:
            raise ValueError(f'lr final_factor must be in [0, 1], got {self.final_factor}')
        if self.step_size <= 0:
            raise ValueError(f'lr step_size must be > 0, got {self.step_size}')
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f'lr gamma must be in (0, 1], got {self.gamma}')
        if self.warmup_iters < 0:
            raise ValueError(f'lr warmup_iters must be >= 0, got {self.warmup_iters}')
        if not 0.0 < self.warmup_factor <= 1.0:
            raise ValueError(f'lr warmup_factor must be in (0, 1], got {self.warmup_factor}')


def lr_factor(iteration: int, schedule: LRSchedule) -> float:
    """Multiplier of the base learning rate at `iteration`.

    Args:
        iteration: optimizer steps taken so far (>= 0).
        schedule: the step/warm-up parameters.

    Returns:
        'step': gamma ** (iteration // step_size); 'linear': 1 at the end of the warm-up falling linearly
        to final_factor at decay_iters; either times the linear warm-up ramp while iteration < warmup_iters.
    """
    if iteration < 0:
        raise ValueError(f'iteration must be >= 0, got {iteration}')
    if schedule.kind == 'linear':
        decay_length = schedule.decay_iters - schedule.warmup_iters
        progress = min(max(iteration - schedule.warmup_iters, 0) / decay_length, 1.0)
        factor = 1.0 - (1.0 - schedule.final_factor) * progress
    else:
        factor = schedule.gamma ** (iteration // schedule.step_size)
    if iteration < schedule.warmup_iters:
        progress = iteration / schedule.warmup_iters
        factor *= schedule.warmup_factor + (1.0 - schedule.warmup_factor) * progress
    return factor


@dataclass
class MaskSchedule:
    """Curriculum of the masked share of each instance (0 = nothing masked, 1 = everything).

    Attributes:
        kind: 'constant' (always `start`), 'linear' or 'cosine' ramp from `start` to `end` between
            `start_iter` and `end_iter`, or 'step' (`levels[i]` from `milestones[i]` on; `start` before).
        start: ratio up to `start_iter`.
        end: ratio from `end_iter` on.
        start_iter: first iteration of the ramp.
        end_iter: iteration where the ramp reaches `end`.
        milestones: iterations where a 'step' schedule moves to the next level (increasing).
        levels: the ratio from each milestone on ('step' only; same length as milestones).
    """

    kind: str = 'constant'
    start: float = 0.0
    end: float = 0.0
    start_iter: int = 0
    end_iter: int = 1
    milestones: list[int] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in MASK_SCHEDULE_KINDS:
            raise ValueError(f'mask schedule kind must be one of {MASK_SCHEDULE_KINDS}, got {self.kind!r}')
        for name in ('start', 'end'):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f'mask schedule {name} must be in [0, 1), got {value}')
        if self.kind in ('linear', 'cosine') and not 0 <= self.start_iter < self.end_iter:
            raise ValueError(f'mask schedule needs 0 <= start_iter < end_iter, got start_iter='
                             f'{self.start_iter}, end_iter={self.end_iter}')
        if self.kind == 'step':
            if len(self.milestones) != len(self.levels):
                raise ValueError(f'mask schedule milestones ({len(self.milestones)}) and levels '
                                 f'({len(self.levels)}) must have the same length')
            if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
                raise ValueError(f'mask schedule milestones must increase, got {self.milestones}')
            for level in self.levels:
                if not 0.0 <= level < 1.0:
                    raise ValueError(f'mask schedule levels must be in [0, 1), got {level}')


def mask_ratio(iteration: int, schedule: MaskSchedule) -> float:
    """Share of each instance to mask at `iteration` (mask-and-predict curriculum).

    Args:
        iteration: optimizer steps taken so far (>= 0).
        schedule: the curriculum.

    Returns:
        ratio in [0, 1).
    """
    if iteration < 0:
        raise ValueError(f'iteration must be >= 0, got {iteration}')
    if schedule.kind == 'constant':
        return schedule.start
    if schedule.kind == 'step':
        ratio = schedule.start
        for milestone, level in zip(schedule.milestones, schedule.levels):
            if iteration >= milestone:
                ratio = level
        return ratio
    progress = (iteration - schedule.start_iter) / (schedule.end_iter - schedule.start_iter)
    progress = min(max(progress, 0.0), 1.0)
    if schedule.kind == 'cosine':
        # Half-cosine: slow at both ends, so the hardest masking arrives gradually.
        progress = 0.5 - 0.5 * math.cos(math.pi * progress)
    return schedule.start + (schedule.end - schedule.start) * progress


def grl_factor(iteration: int, ramp_iters: int) -> float:
    """Multiplier of the gradient-reversal scale at `iteration` (DANN's ramp; 1 with no ramp).

    Args:
        iteration: optimizer steps taken so far (>= 0).
        ramp_iters: iterations over which the factor rises from 0 towards 1 (0: no ramp).

    Returns:
        2 / (1 + exp(-10 p)) - 1 with p = iteration / ramp_iters clamped to [0, 1]; in [0, 1).
    """
    if iteration < 0:
        raise ValueError(f'iteration must be >= 0, got {iteration}')
    if ramp_iters <= 0:
        return 1.0
    progress = min(iteration / ramp_iters, 1.0)
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
