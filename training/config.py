"""Training configuration: typed dataclasses loaded from a YAML file (`ppe train --config FILE`).

Stage 1 and stage 2 are two configs over one loop (config/train_stage1.yaml, config/train_stage2.yaml,
and the CPU-sized config/train_tiny_stage*.yaml). Every key is documented in those files; unknown keys
are errors naming the key and the file, so a typo never silently falls back to a default.

Relative paths in a config (datasets, output_dir, init_checkpoint) are resolved against the current
working directory, so the shipped presets run from the repository root.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from occluded_ppe_training.datasets.splits import SPLITS as SPLIT_FILTERS
from occluded_ppe_training.schedules import LRSchedule, MaskSchedule

DOMAINS = ('citypersons', 'coco')       # the network's branches (contract 2): target, source
SOURCE_DOMAIN = 'coco'                  # has pose labels
DATASET_FORMATS = ('coco', 'citypersons', 'synthetic')


@dataclass
class SyntheticConfig:
    """How to generate the synthetic occluded-pedestrian set when its folder holds none yet.

    Attributes:
        num_images: images to generate.
        image_size: [height, width] of each generated image in pixels.
        seed: generator seed (the same seed gives the same set).
        options: further fields of `datasets.synthetic.SynthConfig` (max_people, occluder_probability,
            min_person_height, ...).
    """

    num_images: int = 64
    image_size: list[int] = field(default_factory=lambda: [128, 128])
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetConfig:
    """One domain's dataset.

    Attributes:
        format: 'coco' (annotations JSON + image folder), 'citypersons' (anno_<split>.mat + leftImg8bit +
            gtFine), or 'synthetic' (COCO format in `directory`, generated there first if absent).
        annotations: COCO annotations JSON ('coco'), or the CityPersons anno_<split>.mat ('citypersons';
            default <root>/annotations/anno_<split>.mat).
        images: COCO image folder ('coco').
        root: CityPersons root holding leftImg8bit/ and gtFine/ ('citypersons').
        split: CityPersons split ('train' or 'val').
        directory: folder of the synthetic set ('synthetic'): annotations.json and images/.
        synthetic: generation settings when `directory` holds no set yet ('synthetic').
        hide_keypoints: drop pose labels. A training set of the target domain ('citypersons') always
            has them dropped, so a COCO-format set (real COCO or synthetic) can stand in for CityPersons
            where no CityPersons data is at hand.
        skip_invalid: skip and count bad records (missing image, wrong keypoint count, box outside the
            image) instead of stopping at the first one with an error naming the file and record id.
        max_images: use only the first N images (None: all).
        split_filter: keep only one part of a COCO-format set ('coco' or 'synthetic') by the held-out
            rule of datasets/splits.py: 'train' (not held out) or 'heldout' (None: every image).
            Applied before `max_images`.
        repeat: how many times this set's images enter the domain's sampling pool (a sampling weight
            relative to the `extra` sets; 1: once).
        extra: further datasets of the same domain, concatenated with this one (each with its own
            format, split_filter and repeat), e.g. the real COCO train split plus synthetic pedestrians.
        batch_size: images of this domain per process per iteration (None: the config's `batch_size`).
            A smaller target-domain batch spends less of a short CPU run on the branch that no pose
            metric reads; the paper uses one batch size for both.
    """

    format: str = 'coco'
    annotations: Optional[str] = None
    images: Optional[str] = None
    root: Optional[str] = None
    split: str = 'train'
    directory: Optional[str] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    hide_keypoints: bool = False
    skip_invalid: bool = False
    max_images: Optional[int] = None
    split_filter: Optional[str] = None
    repeat: int = 1
    extra: list[DatasetConfig] = field(default_factory=list)
    batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f'batch_size must be >= 1 or null, got {self.batch_size}')
        if self.split_filter is not None and self.split_filter not in SPLIT_FILTERS:
            raise ValueError(f'split_filter must be one of {SPLIT_FILTERS} or null, '
                             f'got {self.split_filter!r}')
        if self.split_filter is not None and self.format == 'citypersons':
            raise ValueError('split_filter applies to COCO-format sets (coco, synthetic), not citypersons '
                             '(choose its split with split:)')
        if self.repeat < 1:
            raise ValueError(f'repeat must be >= 1, got {self.repeat}')
        if self.format == 'citypersons' and self.root and not self.annotations:
            self.annotations = str(Path(self.root) / 'annotations' / f'anno_{self.split}.mat')
        if self.format not in DATASET_FORMATS:
            raise ValueError(f'dataset format must be one of {DATASET_FORMATS}, got {self.format!r}')
        required = {'coco': ('annotations', 'images'), 'citypersons': ('root',),
                    'synthetic': ('directory',)}[self.format]
        for name in required:
            if not getattr(self, name):
                raise ValueError(f'a {self.format!r} dataset needs {name!r}')


OPTIMIZERS = ('sgd', 'adamw')


@dataclass
class OptimizerConfig:
    """SGD with momentum (paper section 3.1), or AdamW for short runs.

    Attributes:
        name: 'sgd' (the paper) or 'adamw' (not in the paper: adaptive steps bring a randomly initialised
            pose decoder along in far fewer iterations, which matters for the minutes-long CPU presets).
        lr: base learning rate (paper: 0.01), for a total batch of `batch_size` x processes.
        momentum: SGD momentum (paper: 0.9); AdamW's beta1 is this too.
        weight_decay: L2 weight decay (not in the paper; 1e-4 is the usual detection setting).
        grad_clip_norm: clip the global gradient norm to this (0: no clipping).
    """

    name: str = 'sgd'
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f'optimizer.name must be one of {OPTIMIZERS}, got {self.name!r}')


@dataclass
class LossConfig:
    """Weights of paper eq. (1): L_det + alpha L_seg + beta L_dc + gamma L_pe, summed over both domains.

    Attributes:
        alpha: instance-segmentation weight (paper: 0.5).
        beta: domain-classifier weight (paper: 1).
        gamma: pose weight (paper: 1).
        grl_ramp_iters: stage 2 raises the gradient-reversal scale from 0 to the model's
            `pose.grl_lambda` over this many iterations with DANN's schedule (schedules.grl_factor);
            0 = the full scale from the first iteration.
    """

    alpha: float = 0.5
    beta: float = 1.0
    gamma: float = 1.0
    grl_ramp_iters: int = 0


@dataclass
class EvalConfig:
    """Optional periodic keypoint AP on a held-out split (skipped when `every` is 0 or no data).

    Attributes:
        every: evaluate every N iterations and at the end (0: never).
        data: the held-out split (a COCO-format set with keypoints, or a synthetic set).
        domain: the branch to evaluate.
        max_images: evaluate on at most this many images.
    """

    every: int = 0
    data: Optional[DatasetConfig] = None
    domain: str = SOURCE_DOMAIN
    max_images: Optional[int] = None


@dataclass
class TrainConfig:
    """Everything one training run needs; saved into every checkpoint as `train_config`.

    Attributes:
        stage: 1 (the two MTL branches, detection + segmentation) or 2 (adds the pose stage, the domain
            classifier and mask-and-predict).
        model: ModelConfig as a dict (contract 2); empty: taken from `init_checkpoint`.
        init_checkpoint: checkpoint whose weights start this run (stage 2: the stage-1 result).
        data: one dataset per domain, keyed 'coco' (source, with pose) and/or 'citypersons' (target).
        input_size: [height, width] of the network input in pixels (multiples of 32).
        batch_size: images per domain per process per iteration.
        num_workers: DataLoader worker processes per domain (0: load in the training process; needed
            for bit-exact `--resume` when augmentations draw random numbers).
        augment: keyword arguments of the training transforms (flip, scale, blur, colour).
        optimizer: SGD settings.
        lr_schedule: learning-rate decay.
        loss: the weights of eq. (1).
        mask_schedule: mask-and-predict curriculum (stage 2; stage 1 never masks).
        max_iters: optimizer steps in the run.
        time_limit_s: also stop once this many seconds of training have passed (0: no limit; the
            schedules still follow iterations; for time-budgeted benchmarks).
        seed: seeds python, numpy, torch and the data order.
        output_dir: where checkpoints (last.pt, iter_XXXXXXX.pt) and TensorBoard logs go.
        checkpoint_every: write a checkpoint every N iterations (and always at the end).
        keep_checkpoints: also keep iter_XXXXXXX.pt snapshots (False: only last.pt).
        log_every: TensorBoard scalars every N iterations.
        eval: periodic evaluation.
        device: 'cpu', 'cuda' or 'auto' (cuda where available).
        threads: torch intra-op threads on CPU (0: leave torch's default).
        progress: show the tqdm progress bar.
    """

    stage: int = 1
    model: dict[str, Any] = field(default_factory=dict)
    init_checkpoint: Optional[str] = None
    data: dict[str, DatasetConfig] = field(default_factory=dict)
    input_size: list[int] = field(default_factory=lambda: [512, 1024])
    batch_size: int = 1
    num_workers: int = 2
    augment: dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LRSchedule = field(default_factory=LRSchedule)
    loss: LossConfig = field(default_factory=LossConfig)
    mask_schedule: MaskSchedule = field(default_factory=MaskSchedule)
    max_iters: int = 45000
    time_limit_s: float = 0.0
    seed: int = 0
    output_dir: str = 'runs/train'
    checkpoint_every: int = 1000
    keep_checkpoints: bool = False
    log_every: int = 20
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: str = 'auto'
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f'stage must be 1 or 2, got {self.stage}')
        if not self.data:
            raise ValueError(f'data must name at least one domain of {DOMAINS}')
        for domain in self.data:
            if domain not in DOMAINS:
                raise ValueError(f'data domain must be one of {DOMAINS}, got {domain!r}')
        if self.stage == 2 and SOURCE_DOMAIN not in self.data:
            raise ValueError(f'stage 2 needs the source domain {SOURCE_DOMAIN!r} (pose labels) in data')
        if self.eval.domain not in DOMAINS:
            raise ValueError(f'eval.domain must be one of {DOMAINS}, got {self.eval.domain!r}')
        if len(self.input_size) != 2 or any(s <= 0 or s % 32 for s in self.input_size):
            raise ValueError(f'input_size must be [height, width], multiples of 32, got {self.input_size}')
        for name in ('batch_size', 'max_iters', 'checkpoint_every', 'log_every'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
        if self.num_workers < 0:
            raise ValueError(f'num_workers must be >= 0, got {self.num_workers}')
        if self.device not in ('cpu', 'cuda', 'auto'):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if not self.model and not self.init_checkpoint:
            raise ValueError('give the model config (model:) or a checkpoint to take it from '
                             '(init_checkpoint:)')

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON/checkpoint-safe) of the whole config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = 'config') -> TrainConfig:
        """Build from a dict (YAML contents), rejecting unknown keys.

        Args:
            data: the config dict.
            where: where the dict came from, for error messages (e.g. the file path).
        """
        return _build(cls, data, where)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training YAML file, apply `key.sub=value` overrides, and validate.

    Args:
        path: the YAML file.
        overrides: strings `dotted.key=value`, the value parsed as YAML (e.g. `max_iters=50`,
            `data.coco.max_images=8`).

    Returns:
        the validated TrainConfig.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'training config {path} does not exist')
    with open(path, encoding='utf-8') as stream:
        data = yaml.safe_load(stream) or {}
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected a mapping at the top level, got {type(data).__name__}')
    for override in overrides or []:
        apply_override(data, override)
    return TrainConfig.from_dict(data, where=str(path))


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `dotted.key=value` in a nested dict in place (value parsed as YAML)."""
    if '=' not in override:
        raise ValueError(f'override {override!r} is not of the form key=value')
    key, text = override.split('=', 1)
    parts = key.strip().split('.')
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f'override {override!r}: {part!r} is not a mapping')
        node = child
    node[parts[-1]] = yaml.safe_load(text)


def _build(cls: type, data: Any, where: str) -> Any:
    """Construct dataclass `cls` from `data`, recursing into nested dataclass fields."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f'{where}: expected a mapping for {cls.__name__}, got {data!r}')
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f'{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}')
    kwargs = {name: _convert(hints[name], value, f'{where}:{name}') for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f'{where}: {error}') from error


def _convert(hint: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to a field's annotated type (nested dataclasses, dicts of them, Optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        hint, origin = args[0], typing.get_origin(args[0])
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is dict:
        _, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ValueError(f'{where}: expected a mapping, got {value!r}')
        return {key: _convert(value_type, item, f'{where}.{key}') for key, item in value.items()}
    if origin is list and not isinstance(value, list):
        raise ValueError(f'{where}: expected a list, got {value!r}')
    if origin is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        item_type = typing.get_args(hint)[0]
        return [_build(item_type, item, f'{where}[{index}]') for index, item in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, bool, str) and not isinstance(value, hint):
        raise ValueError(f'{where}: expected {hint.__name__}, got {value!r}')
    return value
