"""The training loop: stage 1 and stage 2 of the paper are two configs over this one loop.

One iteration (`train`):
1. draw one batch per domain in the config (CityPersons = target, COCO = source);
2. one forward per domain through the model's training path (contract 2), both in one call of
   `MultiDomainForward` so DistributedDataParallel sees exactly one forward per backward;
3. weight and sum the returned `loss_*` terms (paper eq. 1):
       L_total = L_det_c + L_det_m + alpha (L_seg_c + L_seg_m) + beta L_dc + gamma L_pe
   Stage 1 returns only detection and segmentation terms (each branch on its own domain); stage 2 adds
   the domain-classifier term for both domains and the pose term for source-domain instances. Which
   term each loss key belongs to is written once, next to the losses (`model.losses.loss_term`);
4. one SGD step, the learning-rate schedule, and in stage 2 the mask-and-predict ratio of the next
   iteration (`schedules.py`).

Checkpoints (contract 3) are written atomically (temporary file in the same folder + `os.replace`) every
`checkpoint_every` iterations and at the end, as `<output_dir>/last.pt` (plus `iter_XXXXXXX.pt` with
`keep_checkpoints`). They hold the optimizer, scheduler and RNG states, and `--resume` continues from
`last.pt` at the same iteration: the data order is a pure function of (seed, iteration) through
`InfiniteSampler`, so with `num_workers: 0` a resumed run repeats an uninterrupted one exactly. A run
killed mid-write leaves only its temporary (`.last.pt.<random>.tmp`) beside the intact previous file; the
next start in that folder deletes such temporaries.

Several GPUs (or CPU processes): start with `torchrun --nproc_per_node N -m occluded_ppe_ros.cli train
--config FILE`; each process reads its shard of every domain's data (the sampler interleaves them), the
gradients are averaged by DDP (NCCL on GPUs, gloo on CPU), and rank 0 alone logs and writes checkpoints.
`batch_size` is per process, so the effective batch is batch_size x processes.
"""
from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

from occluded_ppe_ros.cpu_allocator import keep_large_buffers_in_heap
from occluded_ppe_ros.model.checkpoint import CHECKPOINT_FORMAT, remove_stale_checkpoint_temporaries
from occluded_ppe_training.config import SOURCE_DOMAIN, DatasetConfig, OptimizerConfig, TrainConfig
from occluded_ppe_training.schedules import grl_factor, lr_factor, mask_ratio

LAST_CHECKPOINT = 'last.pt'


def weighted_total(losses: dict[str, torch.Tensor], alpha: float, beta: float, gamma: float
                   ) -> torch.Tensor:
    """Paper eq. (1) over the terms of all domains.

    Args:
        losses: '<domain>/<loss name>' -> scalar tensor (as `MultiDomainForward` returns).
        alpha: weight of the segmentation terms.
        beta: weight of the domain-classifier terms.
        gamma: weight of the pose terms.

    Returns:
        scalar tensor: the weighted sum.
    """
    from occluded_ppe_ros.model.losses import loss_term

    weights = {'det': 1.0, 'seg': alpha, 'dc': beta, 'pe': gamma}
    # loss_term: the one table (next to the losses) of which eq. (1) term each loss key belongs to;
    # an unknown key raises, so a new loss is never summed with a silently wrong weight.
    terms = [weights[loss_term(key.split('/', 1)[-1])] * value for key, value in losses.items()]
    if not terms:
        raise ValueError('the model returned no loss terms')
    return torch.stack(terms).sum()


class MultiDomainForward(nn.Module):
    """Every domain's training forward in one call (one DDP forward per backward).

    Args:
        model: the PPENet (contract 2).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batches: dict[str, tuple[torch.Tensor, list[dict[str, torch.Tensor]]]],
                stage: int, mask_ratio: float) -> dict[str, torch.Tensor]:
        """Run the model on each domain's batch.

        Args:
            batches: domain -> (images float32 [B, 3, H, W] RGB in [0, 1], targets per image).
            stage: 1 or 2.
            mask_ratio: mask-and-predict share of each instance (stage 2).

        Returns:
            '<domain>/<loss name>' -> scalar loss tensor.
        """
        losses = {}
        for domain, (images, targets) in batches.items():
            terms = self.model(images, targets, domain=domain, stage=stage, mask_ratio=mask_ratio)
            for name, value in terms.items():
                losses[f'{domain}/{name}'] = value
        return losses


class InfiniteSampler(Sampler[int]):
    """An endless, seeded stream of dataset indices: epoch e is `randperm(size)` seeded with seed + e.

    The stream depends only on (seed, position), so a run resumed at iteration i reads exactly the
    samples an uninterrupted run reads from iteration i on. With several processes, process `rank`
    takes positions rank, rank + world, rank + 2 world, ... of the one stream (disjoint shards).

    Args:
        size: dataset length (> 0).
        seed: stream seed.
        rank: this process's index.
        world_size: number of processes.
        start: how many of this process's indices to skip (iteration x batch size on resume).
        shuffle: False streams 0, 1, ..., size - 1 repeatedly (for overfitting a fixed batch).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True) -> None:
        if size <= 0:
            raise ValueError(f'cannot sample from an empty dataset (size {size})')
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.start, self.shuffle = start, shuffle

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        position = self.start * self.world_size + self.rank
        epoch, order = -1, None
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = self._epoch_order(epoch)
            yield int(order[position % self.size])
            position += self.world_size


class HiddenKeypoints(Dataset):
    """A COCO-format dataset playing the target domain: its pose labels are removed (zeros, no flags).

    Args:
        dataset: yields (image, target) per contract 2.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        target = dict(target)
        target['keypoints'] = torch.zeros_like(target['keypoints'])
        target['has_keypoints'] = torch.zeros_like(target['has_keypoints'])
        return image, target


# ----------------------------------------------------------------------------------------------------
# datasets


def prepare_synthetic(cfg: DatasetConfig) -> Path:
    """The synthetic set's annotations file, generating the set into `cfg.directory` when absent.

    An existing set is used as it is, but one that records other generation settings (seed, number or
    size of images, generator version) is an error naming the folder, so a stale set never silently
    replaces the asked-for one.

    Returns:
        path of the COCO-format annotations JSON (images in `<directory>/images/`).
    """
    from occluded_ppe_training.datasets.synthetic import GENERATOR_VERSION, SynthConfig, generate_dataset

    directory = Path(cfg.directory)
    annotations = directory / 'annotations.json'
    height, width = cfg.synthetic.image_size
    if not annotations.is_file():
        generate_dataset(directory, cfg.synthetic.num_images, cfg.synthetic.seed,
                         SynthConfig(width=width, height=height, **cfg.synthetic.options))
        return annotations
    import json

    with open(annotations, encoding='utf-8') as stream:
        existing = json.load(stream)
    info = existing.get('info', {}) if isinstance(existing, dict) else {}
    if 'seed' in info:
        # sets written before the version stamp are version 1
        recorded = dict(info.get('config', {}), seed=info['seed'], num_images=len(existing.get('images', [])),
                        generator_version=info.get('generator_version', 1))
        wanted = dict(cfg.synthetic.options, seed=cfg.synthetic.seed, num_images=cfg.synthetic.num_images,
                      width=width, height=height, generator_version=GENERATOR_VERSION)
        differing = {key: (recorded.get(key), value) for key, value in wanted.items()
                     if recorded.get(key) != value}
        if differing:
            raise ValueError(f'{annotations} holds a synthetic set generated with other settings '
                             f'(setting: (found, configured)) {differing}; delete {directory} to '
                             f'regenerate it')
    return annotations


def build_transforms(input_size: tuple[int, int], augment: dict[str, Any] | None, train: bool):
    """The training augmentations (paper: flip, scale and crop, blur, brightness/contrast) or the letterbox.

    Args:
        input_size: (height, width) of the network input in pixels.
        augment: the config's `augment` mapping: `enabled` (default True) plus keyword arguments of
            `datasets.transforms.train_transforms` (e.g. scale_range: [0.75, 1.25]).
        train: False gives the evaluation transform (letterbox only) whatever `augment` says.
    """
    from occluded_ppe_training.datasets import transforms

    options = dict(augment or {})
    enabled = bool(options.pop('enabled', True))
    if not train or not enabled:
        return transforms.eval_transforms(input_size)
    if 'scale_range' in options:
        options['scale_range'] = tuple(options['scale_range'])
    return transforms.train_transforms(input_size, **options)


def build_dataset(cfg: DatasetConfig, domain: str, input_size: tuple[int, int],
                  augment: dict[str, Any] | None, train: bool) -> Dataset:
    """One domain's dataset with the training (or evaluation) transforms.

    Args:
        cfg: the dataset section of the config.
        domain: 'coco' or 'citypersons' (the branch whose labels the dataset yields; a COCO-format set
            used for 'citypersons' yields label 0 = pedestrian).
        input_size: (height, width) of the network input in pixels.
        augment: the config's `augment` mapping (ignored when not `train`).
        train: random augmentations (True) or the deterministic letterbox only (False).

    Returns:
        a Dataset of (image float32 [3, H, W] in [0, 1], contract-2 target); bad records stop with
        an error naming the file and record, or are skipped and listed in `.skipped` (skip_invalid).
    """
    transform = build_transforms(input_size, augment, train)
    if cfg.format == 'citypersons':
        from occluded_ppe_training.datasets.citypersons import CityPersons

        dataset = CityPersons(cfg.root, cfg.annotations, split=cfg.split, transforms=transform,
                              skip_invalid=cfg.skip_invalid)
    else:
        from occluded_ppe_training.datasets.coco import CocoPersonKeypoints

        if cfg.format == 'synthetic':
            annotations, images = prepare_synthetic(cfg), Path(cfg.directory) / 'images'
        else:
            annotations, images = Path(cfg.annotations), Path(cfg.images)
        dataset = CocoPersonKeypoints(annotations, images, transforms=transform,
                                      skip_invalid=cfg.skip_invalid)
    if cfg.split_filter is not None:
        from occluded_ppe_training.datasets.splits import in_split

        dataset = Subset(dataset, [index for index, image in enumerate(dataset.images)
                                   if in_split(image['id'], cfg.split_filter)])
    if cfg.max_images is not None:
        dataset = Subset(dataset, range(min(cfg.max_images, len(dataset))))
    # The target domain never trains on pose labels, whatever set plays it.
    if cfg.hide_keypoints or (train and domain != SOURCE_DOMAIN):
        dataset = HiddenKeypoints(dataset)
    if cfg.repeat > 1 or cfg.extra:
        # A sampling weight by repetition: the endless sampler shuffles the whole pool each epoch.
        parts = [dataset] * cfg.repeat
        for extra in cfg.extra:
            parts.append(build_dataset(extra, domain, input_size, augment, train))
        dataset = ConcatDataset(parts)
    return dataset


def skipped_records(dataset: Dataset) -> list:
    """The records a dataset (possibly wrapped in Subset / HiddenKeypoints) left out with skip_invalid."""
    if isinstance(dataset, ConcatDataset):      # several sets of one domain (DatasetConfig.extra)
        unique = {id(part): part for part in dataset.datasets}.values()
        return [record for part in unique for record in skipped_records(part)]
    while not hasattr(dataset, 'skipped') and hasattr(dataset, 'dataset'):
        dataset = dataset.dataset
    return list(getattr(dataset, 'skipped', []))


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
            ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """[(image [3, H, W], target)] -> (images [B, 3, H, W] zero-padded to multiples of 32, [target])."""
    from occluded_ppe_training.datasets.transforms import collate as collate_pairs

    return collate_pairs(batch)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, seed: int, rank: int,
                world_size: int, start_iteration: int, shuffle: bool = True) -> DataLoader:
    """A DataLoader over an endless seeded stream, starting where iteration `start_iteration` reads."""
    sampler = InfiniteSampler(len(dataset), seed, rank, world_size, start=start_iteration * batch_size,
                              shuffle=shuffle)
    # Its own generator: creating the iterator must not draw from the global torch RNG (which the
    # checkpoint restores), and the workers' seeds then depend only on the seed, rank and start.
    generator = torch.Generator().manual_seed(seed * 1000003 + rank * 7919 + start_iteration)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, generator=generator, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available())


def move_batch(batch: tuple[torch.Tensor, list[dict[str, torch.Tensor]]], device: torch.device
               ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """The images and every target tensor on `device`."""
    images, targets = batch
    return (images.to(device, non_blocking=True),
            [{key: value.to(device, non_blocking=True) for key, value in t.items()} for t in targets])


# ----------------------------------------------------------------------------------------------------
# RNG state and checkpoints


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states, in types `torch.load(weights_only=True)` reads."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        'python': random.getstate(),
        'numpy': {'bit_generator': numpy_state['bit_generator'],
                  'key': torch.from_numpy(numpy_state['state']['key'].astype(np.int64)),
                  'pos': int(numpy_state['state']['pos']),
                  'has_gauss': int(numpy_state['has_gauss']), 'gauss': float(numpy_state['gauss'])},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    python_state = state['python']
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state['numpy']
    np.random.set_state({'bit_generator': numpy_state['bit_generator'],
                         'state': {'key': numpy_state['key'].numpy().astype(np.uint32),
                                   'pos': numpy_state['pos']},
                         'has_gauss': numpy_state['has_gauss'], 'gauss': numpy_state['gauss']})
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_checkpoint_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """`torch.save` to a temporary file in the same folder, fsync, then `os.replace` onto `path`.

    A reader (or a run killed mid-write) therefore sees either the previous complete file or the new
    complete file, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(handle, 'wb') as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a contract-3 checkpoint (weights_only) and check its format tag."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get('format') != CHECKPOINT_FORMAT:
        found = checkpoint.get('format') if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f'{path} is not an {CHECKPOINT_FORMAT} checkpoint (format: {found!r})')
    return checkpoint


# ----------------------------------------------------------------------------------------------------
# evaluation


def _instance_area(target: dict[str, torch.Tensor], index: int) -> float:
    """Mask area in pixels where known (COCO's OKS scale), else the box area."""
    if bool(target['has_mask'][index]):
        return float(target['masks'][index].sum())
    x1, y1, x2, y2 = target['boxes'][index].tolist()
    return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: Dataset, domain: str, device: torch.device,
                    max_images: int | None = None, batch_size: int = 4
                    ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Run the model (eval mode) over a dataset; return (targets, predictions), one dict per image.

    Both are in network-input pixels (the dataset's evaluation transform), so no mapping is needed.
    """
    was_training = model.training
    model.eval()
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    targets, predictions = [], []
    for first in range(0, count, batch_size):
        images, batch_targets = collate([dataset[i] for i in range(first, min(first + batch_size, count))])
        outputs = model(images.to(device), domain=domain)
        targets.extend(batch_targets)
        predictions.extend({k: v.detach().cpu() for k, v in out.items()} for out in outputs)
    model.train(was_training)
    return targets, predictions


def coco_keypoint_dicts(targets: list[dict[str, torch.Tensor]], predictions: list[dict[str, torch.Tensor]],
                        input_size: tuple[int, int]) -> tuple[dict, list[dict]]:
    """COCO ground truth (13 joints, one 'person' category) and results lists from targets/predictions.

    Args:
        targets: contract-2 targets per image (network-input pixels).
        predictions: contract-2 inference dicts per image (`boxes`, `scores`, `keypoints` [N, 13, 3]).
        input_size: (height, width) of the network input.

    Returns:
        (ground-truth dict, results list) for pycocotools (image ids = positions in the lists).
    """
    height, width = input_size
    images, annotations, results = [], [], []
    for image_id, (target, prediction) in enumerate(zip(targets, predictions)):
        images.append({'id': image_id, 'width': width, 'height': height})
        for i in range(len(target['boxes'])):
            x1, y1, x2, y2 = target['boxes'][i].tolist()
            keypoints = target['keypoints'][i].clone()
            keypoints[keypoints[:, 2] <= 0] = 0.0
            annotations.append({
                'id': len(annotations) + 1, 'image_id': image_id, 'category_id': 1, 'iscrowd': 0,
                'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': _instance_area(target, i),
                'keypoints': [float(v) for v in keypoints.reshape(-1)],
                'num_keypoints': int((keypoints[:, 2] > 0).sum()),
            })
        for box, score, keypoints in zip(prediction['boxes'], prediction['scores'], prediction['keypoints']):
            x1, y1, x2, y2 = box.tolist()
            flat = keypoints.clone()
            flat[:, 2] = 1.0
            results.append({'image_id': image_id, 'category_id': 1, 'score': float(score),
                            'bbox': [x1, y1, x2 - x1, y2 - y1],
                            'keypoints': [float(v) for v in flat.reshape(-1)]})
    from occluded_ppe_ros.skeleton import KEYPOINT_NAMES

    categories = [{'id': 1, 'name': 'person', 'supercategory': 'person',
                   'keypoints': list(KEYPOINT_NAMES), 'skeleton': []}]
    return {'images': images, 'annotations': annotations, 'categories': categories}, results


def evaluate_keypoint_ap(model: nn.Module, dataset: Dataset, domain: str, input_size: tuple[int, int],
                         device: torch.device, max_images: int | None = None) -> dict[str, float]:
    """COCO keypoint AP (13 joints, pycocotools through the evaluation package) and bbox AP.

    Returns:
        {'keypoint_AP', 'keypoint_AP50', 'bbox_AP', ...}; empty when the evaluation package is absent.
    """
    try:
        from occluded_ppe_training.evaluation.coco_eval import evaluate_coco
    except ImportError:      # the evaluation hook is optional
        return {}
    targets, predictions = predict_dataset(model, dataset, domain, device, max_images)
    ground_truth, results = coco_keypoint_dicts(targets, predictions, input_size)
    metrics = evaluate_coco(ground_truth, results, iou_types=['keypoints', 'bbox'])
    out = {}
    for iou_type, prefix in (('keypoints', 'keypoint'), ('bbox', 'bbox')):
        for name in ('AP', 'AP50', 'AP75'):
            out[f'{prefix}_{name}'] = metrics[iou_type].named[name]
    return out


# ----------------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the trained network (unwrapped from DDP), in train mode.
        iteration: optimizer steps done.
        checkpoint: path of the last checkpoint written (rank 0; None on other ranks).
        metrics: last evaluation and loss values.
        history: per-iteration loss terms (floats) of this process, from the start iteration on.
        iteration_seconds: wall time of each of those iterations (data, forward, backward, step).
    """

    model: nn.Module
    iteration: int
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)


def _setup_distributed(device_kind: str) -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when started by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend='nccl' if device_kind == 'cuda' else 'gloo')
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get('LOCAL_RANK', '0'))


def _resolve_device(kind: str, local_rank: int) -> torch.device:
    if kind == 'auto':
        kind = 'cuda' if torch.cuda.is_available() else 'cpu'
    if kind == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        return torch.device('cuda', local_rank)
    return torch.device('cpu')


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied key by key, recursing into nested mappings (neither is changed)."""
    out = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if nested else value
    return out


def _build_model(cfg: TrainConfig, resume_from: dict[str, Any] | None = None
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """(model, model_config dict) with its starting weights.

    Args:
        cfg: the training config: `model` (may be empty) and `init_checkpoint`.
        resume_from: the run's own last checkpoint when resuming: its config and weights are used
            (`init_checkpoint` is not read again, it may be gone).
    """
    from occluded_ppe_ros.model.config import ModelConfig
    from occluded_ppe_ros.model.network import build_model

    if resume_from is not None:
        model_config = ModelConfig.from_dict(resume_from['model_config'], source='the checkpoint resumed')
        # `model:` keys must agree with what the run was trained with (a stage-2 `model:` holds overrides)
        if cfg.model and ModelConfig.from_dict(_merged(model_config.to_dict(), cfg.model)).to_dict() \
                != model_config.to_dict():
            raise ValueError(f'{cfg.output_dir}/{LAST_CHECKPOINT} was trained with another model config '
                             f'than this config\'s model:')
        model = build_model(model_config)
        model.load_state_dict(resume_from['model'])
        return model, model_config.to_dict()
    init = load_checkpoint(cfg.init_checkpoint) if cfg.init_checkpoint else None
    # The init checkpoint's config, with the keys this config's `model:` gives on top (e.g. a stage-2
    # config changing only pose-training options); without an init checkpoint, `model:` alone.
    model_dict = _merged(init['model_config'], cfg.model) if init else cfg.model
    model_config = ModelConfig.from_dict(model_dict, source='train config model:')
    model = build_model(model_config)
    if init is not None:
        same_config = ModelConfig.from_dict(init['model_config']).to_dict() == model_config.to_dict()
        state = init['model']
        reshaped = []
        if not same_config:
            # a changed head (e.g. another decoder depth) starts from scratch; the rest is reused
            own = model.state_dict()
            reshaped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
            state = {k: v for k, v in state.items() if k not in reshaped}
        result = model.load_state_dict(state, strict=same_config)
        if not same_config and (result.missing_keys or result.unexpected_keys or reshaped):
            print(f'[train] {cfg.init_checkpoint}: model config differs; {len(result.missing_keys)} '
                  f'parameters not in the checkpoint or of another shape ({len(reshaped)}), '
                  f'{len(result.unexpected_keys)} unused')
    return model, model_config.to_dict()


def make_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW (beta1 = momentum), over every parameter of `model`."""
    if cfg.name == 'adamw':
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999),
                                 weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) one training stage as configured.

    Args:
        cfg: the training config.
        resume: continue from `<output_dir>/last.pt` (error if absent) at its iteration, with its
            optimizer, scheduler and RNG states.

    Returns:
        the TrainResult (model, iteration, checkpoint path, metrics, loss history).
    """
    rank, world_size, local_rank = _setup_distributed(
        'cuda' if cfg.device == 'cuda' or (cfg.device == 'auto' and torch.cuda.is_available()) else 'cpu')
    device = _resolve_device(cfg.device, local_rank)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if device.type == 'cpu':
        # every step frees and re-allocates the same large buffers: keep them in the heap (7-10 % per
        # stage-2 step of the tiny preset on this 2-core VM; occluded_ppe_ros/cpu_allocator.py)
        keep_large_buffers_in_heap()
    is_main = rank == 0
    output_dir = Path(cfg.output_dir)
    # Every process seeds the same: the model's initial weights agree (DDP also broadcasts them).
    _seed_everything(cfg.seed)

    if is_main:
        # A run killed while writing a checkpoint leaves its temporary behind (the os.replace never came);
        # the previous complete last.pt is intact and is what --resume reads.
        stale = remove_stale_checkpoint_temporaries(output_dir)
        if stale:
            print(f'[train] removed {len(stale)} unfinished checkpoint write(s) of an interrupted run in '
                  f'{output_dir}: {", ".join(path.name for path in stale)}')
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(output_dir / LAST_CHECKPOINT)
        if checkpoint['stage'] != cfg.stage:
            raise ValueError(f'{output_dir / LAST_CHECKPOINT} is a stage-{checkpoint["stage"]} checkpoint; '
                             f'this config trains stage {cfg.stage}')
    model, model_config = _build_model(cfg, resume_from=checkpoint)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg.optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg.lr_schedule))
    start_iteration, metrics, resume_rng = 0, {}, None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        start_iteration, metrics = int(checkpoint['iteration']), dict(checkpoint.get('metrics', {}))
        resume_rng = checkpoint['rng']
        del checkpoint

    input_size = (cfg.input_size[0], cfg.input_size[1])
    dataset_configs = [c for c in [*cfg.data.values(), cfg.eval.data] if c is not None]
    dataset_configs += [extra for c in dataset_configs for extra in c.extra]
    synthetic_sets = [c for c in dataset_configs if c.format == 'synthetic']
    if is_main:
        for data_cfg in synthetic_sets:      # generated once, by rank 0, before anyone reads it
            prepare_synthetic(data_cfg)
    if world_size > 1:
        dist.barrier()
    loaders = {}
    for domain, data_cfg in cfg.data.items():
        dataset = build_dataset(data_cfg, domain, input_size, cfg.augment, train=True)
        skipped = skipped_records(dataset)
        if skipped:
            metrics[f'skipped_records/{domain}'] = float(len(skipped))
            if is_main:
                print(f'[train] {domain}: skipped {len(skipped)} invalid records (skip_invalid: true); '
                      f'first: {skipped[0].source}: {skipped[0].record}: {skipped[0].reason}')
        loaders[domain] = make_loader(dataset, data_cfg.batch_size or cfg.batch_size, cfg.num_workers,
                                      cfg.seed + 101 * len(loaders),
                                      rank, world_size, start_iteration)
    batches = {domain: iter(loader) for domain, loader in loaders.items()}

    eval_dataset = None
    if cfg.eval.every > 0 and cfg.eval.data is not None and is_main:
        eval_dataset = build_dataset(cfg.eval.data, cfg.eval.domain, input_size, None, train=False)

    step_module: nn.Module = MultiDomainForward(model)
    if world_size > 1:
        # Unused parameters: a stage-1 step never reaches the pose stage, a domain never the other branch.
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[local_rank] if device.type == 'cuda' else None,
            find_unused_parameters=True)

    writer = None
    progress = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        output_dir.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(output_dir / 'tensorboard'), purge_step=start_iteration)
        progress = tqdm(total=cfg.max_iters, initial=start_iteration, disable=not cfg.progress,
                        desc=f'stage {cfg.stage}', unit='it', dynamic_ncols=True)

    def save(iteration: int) -> Path:
        payload = {
            'format': CHECKPOINT_FORMAT, 'model_config': model_config, 'model': model.state_dict(),
            'train_config': cfg.to_dict(), 'stage': cfg.stage, 'iteration': iteration, 'metrics': metrics,
            'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
            'rng': capture_rng_state(),
        }
        if cfg.keep_checkpoints:
            save_checkpoint_atomic(payload, output_dir / f'iter_{iteration:07d}.pt')
        return save_checkpoint_atomic(payload, output_dir / LAST_CHECKPOINT)

    # The RNG state at the top of the loop is what the checkpoint captured (after its last step), so
    # building the model and datasets above cannot shift the draws of a resumed run.
    if resume_rng is not None:
        restore_rng_state(resume_rng)
    if rank:
        # Rank 0 saves the only RNG state; the others draw their own augmentation stream.
        _seed_everything(cfg.seed + 7919 * rank + start_iteration)
    history: list[dict[str, float]] = []
    iteration_seconds: list[float] = []
    checkpoint_path = None
    started = time.perf_counter()
    tick, tick_iteration = started, start_iteration       # for the iterations/s written to TensorBoard
    last_iteration = cfg.max_iters
    grl_lambda = model.pose.gradient_reversal.scale     # the model config's pose.grl_lambda
    for iteration in range(start_iteration, cfg.max_iters):
        iteration_start = time.perf_counter()
        ratio = mask_ratio(iteration, cfg.mask_schedule) if cfg.stage == 2 else 0.0
        model.pose.gradient_reversal.scale = grl_lambda * grl_factor(iteration, cfg.loss.grl_ramp_iters)
        batch = {domain: move_batch(next(stream), device) for domain, stream in batches.items()}
        losses = step_module(batch, stage=cfg.stage, mask_ratio=ratio)
        total = weighted_total(losses, cfg.loss.alpha, cfg.loss.beta, cfg.loss.gamma)
        if not torch.isfinite(total):
            values = {k: float(v) for k, v in losses.items()}
            raise FloatingPointError(f'non-finite loss at iteration {iteration}: {values}')
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        gradient_norm = None
        if cfg.optimizer.grad_clip_norm > 0:
            gradient_norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip_norm))
        optimizer.step()
        lr = optimizer.param_groups[0]['lr']
        scheduler.step()
        done = iteration + 1

        record = {key: value.detach().item() for key, value in losses.items()}
        record['total'] = total.detach().item()
        history.append(record)
        iteration_seconds.append(time.perf_counter() - iteration_start)
        if cfg.time_limit_s > 0:
            out_of_time = torch.tensor(float(time.perf_counter() - started >= cfg.time_limit_s))
            if world_size > 1:      # every rank stops at the same iteration
                dist.broadcast(out_of_time, src=0)
            if out_of_time:
                last_iteration = done
        if not is_main:
            if done == last_iteration:
                break
            continue
        progress.update(1)
        progress.set_postfix({'total': f'{record["total"]:.3f}', 'mask': f'{ratio:.2f}',
                              **{k: f'{v:.3f}' for k, v in grouped_terms(record).items()}}, refresh=False)
        if done % cfg.log_every == 0 or done == last_iteration:
            now = time.perf_counter()
            for key, value in record.items():
                writer.add_scalar(f'loss/{key}', value, done)
            for key, value in grouped_terms(record).items():
                writer.add_scalar(f'term/{key}', value, done)
            writer.add_scalar('train/lr', lr, done)
            writer.add_scalar('train/mask_ratio', ratio, done)
            if gradient_norm is not None:     # before clipping: how often the clip bites
                writer.add_scalar('train/gradient_norm', gradient_norm, done)
            writer.add_scalar('train/iterations_per_second', (done - tick_iteration) / max(now - tick, 1e-9),
                              done)
            tick, tick_iteration = now, done
        if eval_dataset is not None and (done % cfg.eval.every == 0 or done == last_iteration):
            evaluation = evaluate_keypoint_ap(model, eval_dataset, cfg.eval.domain, input_size, device,
                                              cfg.eval.max_images)
            metrics.update(evaluation)
            for key, value in evaluation.items():
                writer.add_scalar(f'eval/{key}', value, done)
        if done % cfg.checkpoint_every == 0 or done == last_iteration:
            metrics.update({f'loss/{key}': value for key, value in record.items()})
            checkpoint_path = save(done)
        if done == last_iteration:
            break
    if is_main:
        progress.close()
        writer.close()
    if world_size > 1:
        dist.barrier()
    return TrainResult(model=model, iteration=start_iteration + len(history), checkpoint=checkpoint_path,
                       metrics=metrics, history=history, iteration_seconds=iteration_seconds)


def grouped_terms(record: dict[str, float]) -> dict[str, float]:
    """Per-domain sums of eq. (1)'s terms, unweighted: {'c.det', 'c.seg', 'm.det', 'm.pe', ...}.

    Args:
        record: '<domain>/<loss name>' -> value (other keys, e.g. 'total', are left out).
    """
    from occluded_ppe_ros.model.losses import loss_term

    grouped: dict[str, float] = {}
    for key, value in record.items():
        if '/' not in key:
            continue
        domain, name = key.split('/', 1)
        label = f'{_DOMAIN_SUBSCRIPTS.get(domain, domain)}.{loss_term(name)}'
        grouped[label] = grouped.get(label, 0.0) + value
    return grouped


# The paper's subscripts: c = CityPersons branch, m = MS COCO branch.
_DOMAIN_SUBSCRIPTS = {'citypersons': 'c', 'coco': 'm'}
