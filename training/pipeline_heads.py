"""Train what no imported model gives: the pipeline's visible-mask head and per-joint occlusion head.

The pose stage's MoveNet (imported whole, frozen) runs once over square person crops of real COCO photos
(ground-truth boxes, jittered as a detector's would be, and mirrored); its stride-4 maps are kept in
memory, and the two small heads are trained on them:
    mask head        BCE against the person's own COCO segmentation (a visible-instance mask: other
                     people in the crop are background), resampled into the crop's h x h map
    occlusion head   BCE on every labelled joint: COCO v=1 (labelled, not visible) = hidden, v=2 = seen,
                     read at the joint MoveNet predicts (where it is read at inference); classes weighted
                     to balance, so that the node's occlusion_threshold 0.5 is the balanced operating point
Occluded copies (`--occluded-copies`, default 1): each training crop again with a rectangle of another
crop's pixels pasted over part of the person (training/occluders.py); the seen joints under it become
hidden and the mask loses it, exact labels beside COCO's few v=1 joints. The validation crops get none.
Every epoch writes `last.pt` (heads, optimizer, epoch, RNG) atomically; `--resume` continues from it.
The result is a pipeline checkpoint (contract 3, architecture 'pretrained_pipeline') with the imported
detectors and MoveNet and the trained heads: `--out`.

    python -m occluded_ppe_training.pipeline_heads --data ../shared/data/coco_train2017_person_kp \
        --split train --work runs/pipeline_heads --out models/ppe_default.pt [--pose-variant thunder]
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from occluded_ppe_ros.model.checkpoint import atomic_torch_save
from occluded_ppe_ros.model.pipeline import PipelineConfig, PoseStage
from occluded_ppe_ros.skeleton import FLIP_PERMUTATION
from occluded_ppe_training.datasets.coco import CocoPersonKeypoints
from occluded_ppe_training.datasets.splits import in_split
from occluded_ppe_training.occluders import hide_under, occluder_rectangle, paste_from_donor

MIN_BOX_SIDE = 24.0       # pixels: smaller people carry too few crop pixels to learn a mask from
HEAD_CHECKPOINT_FORMAT = 'occluded_ppe/pipeline_heads/1'
VALIDATION_MODULUS = 5   # a fifth of the training split's images picks the heads' epochs
MASK_IOU_THRESHOLD = 0.3        # the shipped config's mask_threshold
OCCLUDER_RATIOS = (0.15, 0.45)   # share of a person's joint extent one pasted occluder covers


@dataclass
class CropSet:
    """MoveNet's frozen maps over person crops, with the training targets (N crops, h = S / 4).

    Attributes:
        maps: float [N, C, h, h] the heads' input (`PoseStage.instance_maps`).
        keypoints17: float [N, 17, 3] MoveNet's decoded joints (y, x normalised over the crop, score).
        mask_targets: float [N, h, h] the person's visible mask over the crop, in {0, 1}.
        joint_visibility: int64 [N, 13] COCO v of our 13 joints (0 unlabelled, 1 hidden, 2 seen).
        image_ids: int64 [N] where each crop came from.
        crops: uint8 [N, 3, S, S] the crops themselves (RGB), for fine-tuning MoveNet on them.
        joints_crop: float [N, 13, 2] labelled joints' x, y in crop pixels (0 where unlabelled).
    """

    maps: torch.Tensor
    keypoints17: torch.Tensor
    mask_targets: torch.Tensor
    joint_visibility: torch.Tensor
    image_ids: torch.Tensor
    crops: torch.Tensor
    joints_crop: torch.Tensor


def jittered_boxes(box: np.ndarray, count: int, rng: np.random.Generator, scale: float = 0.15,
                   shift: float = 0.08) -> np.ndarray:
    """`count` boxes around `box` (x1, y1, x2, y2).

    The first unchanged, the rest scaled by up to +-`scale` and moved by up to `shift` x the box size
    (a detector's error on a person).
    """
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    out = [box]
    for _ in range(count - 1):
        sx, sy = 1 + rng.uniform(-scale, scale, 2)
        dx, dy = rng.uniform(-shift, shift, 2) * (width, height)
        cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy
        out.append([cx - width * sx / 2, cy - height * sy / 2, cx + width * sx / 2, cy + height * sy / 2])
    return np.asarray(out, np.float32)


@torch.no_grad()
def build_crop_set(stage: PoseStage, dataset: CocoPersonKeypoints, image_ids: set[int], jitters: int,
                   seed: int, batch_size: int = 16, log=print, occluded_copies: int = 0,
                   occluder_ratios: tuple[float, float] = OCCLUDER_RATIOS) -> CropSet:
    """Crops of every non-crowd person (box sides >= MIN_BOX_SIDE) of the chosen images, mirrored too.

    With `occluded_copies` k, each crop also comes k more times with an occluder of real scene texture
    (another crop's pixels) pasted over a fraction in `occluder_ratios` of the person
    (`occluders.occluder_rectangle`): the seen joints under it become hidden and the mask loses it, so
    the heads see hidden joints whose truth is exact, beside COCO's few v = 1 labels.
    """
    rng = np.random.default_rng(seed)
    heat_size = stage.cfg.pose_config.heatmap_size
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]] = []
    for index, info in enumerate(dataset.images):
        if info['id'] not in image_ids:
            continue
        image, target = dataset.load(index)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)[None]
        for person in range(target['boxes'].shape[0]):
            box = target['boxes'][person].numpy()
            if min(box[2] - box[0], box[3] - box[1]) < MIN_BOX_SIDE or not bool(target['has_mask'][person]):
                continue
            mask = target['masks'][person].float()[None, None]
            visibility = target['keypoints'][person, :, 2].long()
            keypoints = target['keypoints'][person]
            for jittered in jittered_boxes(box, jitters, rng):
                rois = torch.cat([torch.zeros(1, 1), torch.from_numpy(jittered)[None]], 1)
                crop, square = stage.crops(tensor, rois)
                mask_rois = square.clone()
                mask_target = roi_align(mask, mask_rois, (heat_size, heat_size), 1.0, 2, True)[0, 0]
                side = float(square[0, 3] - square[0, 1])
                scale = stage.cfg.pose_config.input_size / side
                joints_crop = torch.stack([(keypoints[:, 0] - square[0, 1]) * scale,
                                           (keypoints[:, 1] - square[0, 2]) * scale], dim=1)
                joints_crop = joints_crop * (visibility > 0)[:, None]
                pending.append((crop[0], (mask_target > 0.5).float(), visibility, joints_crop, info['id']))
    if occluded_copies and pending:
        generator = torch.Generator().manual_seed(seed + 1)
        size = stage.cfg.pose_config.input_size
        originals = list(pending)
        for _ in range(occluded_copies):
            for crop, mask_target, visibility, joints_crop, image_id in originals:
                ratio = float(occluder_ratios[0] + (occluder_ratios[1] - occluder_ratios[0])
                              * torch.rand(1, generator=generator))
                rectangle = occluder_rectangle(joints_crop, visibility, ratio, size, generator)
                if rectangle is None:
                    continue
                donor = originals[int(torch.randint(len(originals), (1,), generator=generator))][0]
                occluded = crop.clone()
                paste_from_donor(occluded, donor, rectangle, generator)
                hidden, mask = hide_under(rectangle, joints_crop, visibility, mask_target, size / heat_size)
                pending.append((occluded, mask, hidden, joints_crop, image_id))
    log(f'[pipeline_heads] {len(pending)} crops from {len(image_ids)} images; running frozen MoveNet')
    maps, keypoints17, masks, visibility, ids, crops_out, joints_out = [], [], [], [], [], [], []
    size = stage.cfg.pose_config.input_size
    for start in range(0, len(pending), batch_size):
        chunk = pending[start:start + batch_size]
        crops = torch.stack([item[0] for item in chunk])
        for mirrored in (False, True):
            batch = crops.flip(-1) if mirrored else crops
            heads = stage.crop_maps(batch)
            maps.append(stage.instance_maps(heads, batch))
            keypoints17.append(stage.movenet.decode(heads))
            mask_batch = torch.stack([item[1] for item in chunk])
            vis_batch = torch.stack([item[2] for item in chunk])
            joints_batch = torch.stack([item[3] for item in chunk])
            if mirrored:
                mask_batch = mask_batch.flip(-1)
                vis_batch = vis_batch[:, list(FLIP_PERMUTATION)]
                joints_batch = joints_batch[:, list(FLIP_PERMUTATION)]
                joints_batch[..., 0] = torch.where(vis_batch > 0, size - joints_batch[..., 0],
                                                   torch.zeros_like(joints_batch[..., 0]))
            crops_out.append((batch * 255.0).round().to(torch.uint8))
            joints_out.append(joints_batch)
            masks.append(mask_batch)
            visibility.append(vis_batch)
            ids.append(torch.tensor([item[4] for item in chunk]))
    return CropSet(torch.cat(maps), torch.cat(keypoints17), torch.cat(masks), torch.cat(visibility),
                   torch.cat(ids), torch.cat(crops_out), torch.cat(joints_out))


def head_losses(stage: PoseStage, crops: CropSet, index: torch.Tensor, occluded_weight: float
                ) -> dict[str, torch.Tensor]:
    """Mask BCE and class-balanced occlusion BCE over the crops `index`."""
    mask_logits, occlusion_logits = stage.head_outputs(crops.maps[index], crops.keypoints17[index])
    mask_logits = mask_logits[:, 0]
    # mean over the crops, graph-connected 0 for an empty selection (no NaN)
    loss_mask = (F.binary_cross_entropy_with_logits(mask_logits, crops.mask_targets[index], reduction='sum')
                 / max(mask_logits.numel(), 1))
    visibility = crops.joint_visibility[index]
    labelled = visibility > 0
    hidden = (visibility == 1).float()
    weights = torch.where(visibility == 1, torch.full_like(hidden, occluded_weight), torch.ones_like(hidden))
    per_joint = F.binary_cross_entropy_with_logits(occlusion_logits, hidden, weight=weights, reduction='none')
    # an empty selection still gives a graph-connected zero (no labelled joints in the batch)
    loss_occlusion = (per_joint * labelled).sum() / labelled.sum().clamp(min=1)
    return {'loss_mask': loss_mask, 'loss_occlusion': loss_occlusion}


def read_resume_state(path: Path, expected_format: str) -> dict:
    """The state a run saved in `path` (its `last.pt`), after checking it is this trainer's format."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    if state.get('format') != expected_format:
        raise ValueError(f'{path}: format {state.get("format")!r}, expected {expected_format!r}')
    return state


def cosine_learning_rate(base: float, epoch: int, epochs: int) -> float:
    """Learning rate of `epoch` (0-based) in a cosine decay from `base` to 0 over `epochs`."""
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))


def validation_image(image_id: int, modulus: int = VALIDATION_MODULUS) -> bool:
    """True for the training-split images kept out of the heads' training to pick their epochs.

    A hash of the id independent of the held-out rule, so the held-out photos stay untouched by any choice.
    """
    return int(hashlib.sha256(f'validation/{int(image_id)}'.encode()).hexdigest(), 16) % modulus == 0


@torch.no_grad()
def validation_losses(stage: PoseStage, crops: CropSet, occluded_weight: float, batch_size: int) -> dict:
    """Mean head losses over a whole crop set (no gradient), and what they mean for a user.

    Returns:
        loss_mask, loss_occlusion; flag_balanced_accuracy (the occlusion head's hidden flag at
        probability 0.5 against v = 1 / v = 2, mean of both recalls); mask_iou (mean per crop of the
        mask at probability MASK_IOU_THRESHOLD against the target).
    """
    totals = {'loss_mask': 0.0, 'loss_occlusion': 0.0}
    count = crops.maps.shape[0]
    flagged, hidden, labelled, ious = [], [], [], []
    for start in range(0, count, batch_size):
        index = torch.arange(start, min(start + batch_size, count))
        for key, value in head_losses(stage, crops, index, occluded_weight).items():
            totals[key] += float(value) * len(index) / count
        mask_logits, occlusion_logits = stage.head_outputs(crops.maps[index], crops.keypoints17[index])
        visibility = crops.joint_visibility[index]
        flagged.append(occlusion_logits > 0)
        hidden.append(visibility == 1)
        labelled.append(visibility > 0)
        predicted = torch.sigmoid(mask_logits[:, 0]) > MASK_IOU_THRESHOLD
        target = crops.mask_targets[index] > 0.5
        union = (predicted | target).flatten(1).sum(1)
        ious.append(((predicted & target).flatten(1).sum(1) / union.clamp(min=1))[union > 0])
    flagged, hidden, labelled = torch.cat(flagged), torch.cat(hidden), torch.cat(labelled)
    seen = labelled & ~hidden
    if hidden.any() and seen.any():
        totals['flag_balanced_accuracy'] = 0.5 * (float(flagged[hidden].float().mean())
                                                  + float((~flagged[seen]).float().mean()))
    totals['mask_iou'] = float(torch.cat(ious).mean()) if ious else float('nan')
    return totals


def train_heads(stage: PoseStage, crops: CropSet, work_dir: Path, epochs: int, batch_size: int, lr: float,
                seed: int, resume: bool, validation: CropSet | None = None, log=print) -> dict:
    """Train the mask and occlusion heads with AdamW; returns the per-epoch losses.

    With `validation`, each head ends at its epoch of lowest validation loss (the heads overfit the
    few training people within tens of epochs: the mask head's input has ~100 channels per cell).
    """
    from occluded_ppe_ros.model.checkpoint import remove_stale_checkpoint_temporaries

    work_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_checkpoint_temporaries(work_dir)
    parameters = list(stage.mask_head.parameters()) + list(stage.occlusion_head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    labelled = crops.joint_visibility[crops.joint_visibility > 0]
    occluded_weight = float((labelled == 2).sum()) / max(float((labelled == 1).sum()), 1.0)
    history: list[dict] = []
    best = {'mask_head': (float('inf'), 0, copy.deepcopy(stage.mask_head.state_dict())),
            'occlusion_head': (float('inf'), 0, copy.deepcopy(stage.occlusion_head.state_dict()))}
    start_epoch = 0
    last = work_dir / 'last.pt'
    if resume and last.is_file():
        state = read_resume_state(last, HEAD_CHECKPOINT_FORMAT)
        stage.mask_head.load_state_dict(state['mask_head'])
        stage.occlusion_head.load_state_dict(state['occlusion_head'])
        optimizer.load_state_dict(state['optimizer'])
        torch.set_rng_state(state['rng'])
        start_epoch, history = int(state['epoch']), list(state['history'])
        best = {name: (float(loss), int(epoch), weights) for name, (loss, epoch, weights) in
                ((name, state['best'][name]) for name in best)} if 'best' in state else best
        log(f'[pipeline_heads] resumed from {last} at epoch {start_epoch}')
    else:
        torch.manual_seed(seed)
    count = crops.maps.shape[0]
    for epoch in range(start_epoch, epochs):
        began = time.perf_counter()
        for group in optimizer.param_groups:
            # cosine decay as a pure function of the epoch: a resumed run asked for more epochs than it
            # started with follows the longer schedule from where it is
            group['lr'] = cosine_learning_rate(lr, epoch, epochs)
        order = torch.randperm(count)
        totals = {'loss_mask': 0.0, 'loss_occlusion': 0.0}
        for start in range(0, count, batch_size):
            index = order[start:start + batch_size]
            losses = head_losses(stage, crops, index, occluded_weight)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
            for key, value in losses.items():
                totals[key] += float(value.detach()) * len(index) / count
        record = {'epoch': epoch + 1, **{k: round(v, 5) for k, v in totals.items()},
                  'seconds': round(time.perf_counter() - began, 1)}
        if validation is not None:
            checked = validation_losses(stage, validation, occluded_weight, batch_size)
            record.update({f'val_{k}': round(v, 5) for k, v in checked.items()})
            for name, key in (('mask_head', 'loss_mask'), ('occlusion_head', 'loss_occlusion')):
                if checked[key] < best[name][0]:
                    best[name] = (checked[key], epoch + 1, copy.deepcopy(getattr(stage, name).state_dict()))
        history.append(record)
        log(f'[pipeline_heads] {json.dumps(record)}')
        atomic_torch_save({'format': HEAD_CHECKPOINT_FORMAT, 'mask_head': stage.mask_head.state_dict(),
                           'occlusion_head': stage.occlusion_head.state_dict(),
                           'optimizer': optimizer.state_dict(),
                           'rng': torch.get_rng_state(), 'epoch': epoch + 1, 'history': history,
                           'best': {name: [loss, at, weights] for name, (loss, at, weights) in best.items()}},
                          last)
    chosen = {}
    if validation is not None:
        for name, (loss, at, weights) in best.items():
            getattr(stage, name).load_state_dict(weights)
            chosen[name] = {'epoch': at, 'validation_loss': round(loss, 5)}
        log(f'[pipeline_heads] heads from their best validation epochs: {json.dumps(chosen)}')
    return {'history': history, 'occluded_weight': occluded_weight, 'crops': count, 'chosen': chosen}


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, required=True, help='COCO person-keypoints folder')
    parser.add_argument('--split', default='train', choices=('train', 'heldout'),
                        help='training/datasets/splits.py')
    parser.add_argument('--work', type=Path, required=True, help='folder for last.pt and the log')
    parser.add_argument('--out', type=Path, required=True, help='pipeline checkpoint to write')
    parser.add_argument('--pose-variant', default='thunder', choices=('thunder', 'lightning'))
    parser.add_argument('--detectors', nargs='+', default=['nanodet'])
    parser.add_argument('--mask-prior', default='none', choices=('none', 'selfie'),
                        help="PipelineConfig.mask_prior: 'selfie' adds the imported person segmenter's "
                             "probability to the heads' input; it raised the validation fifth's mask IoU "
                             "0.53 -> 0.61 (Thunder heads, occluded copies 1), as shipped in ppe_default")
    parser.add_argument('--mask-prior-size', type=int, default=0,
                        help='PipelineConfig.mask_prior_size: side of the crop the selfie segmenter reads '
                             '(0 = the pose crop; 128 costs a quarter of 256)')
    parser.add_argument('--jitters', type=int, default=3,
                        help='crops per person (the first unjittered); 5 (ppe_default) lowered the '
                             'validation fifth\'s occlusion loss 0.526 -> 0.428 (flag 0.749 -> 0.771) at '
                             'equal mask IoU (0.611; Thunder heads, selfie prior, occluded copies 1)')
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--occluded-copies', type=int, default=1,
                        help='extra copies of each training crop with a pasted occluder (exact hidden '
                             'joints and mask); the validation crops never get one. 1 raised the '
                             'validation fifth\'s flag balanced accuracy 0.691 -> 0.736 and mask IoU '
                             '0.516 -> 0.531 (Thunder heads, each at its chosen epoch)')
    parser.add_argument('--pose-flip-test', action='store_true',
                        help='the checkpoint runs each crop mirrored as well and averages (PipelineConfig.'
                             'pose_flip_test: inference only, the heads train the same; doubles the pose '
                             'graph\'s time)')
    parser.add_argument('--no-validate', dest='validate', action='store_false',
                        help='train on every image of --split (default: keep a fifth out to pick epochs)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    cfg = PipelineConfig(detectors=tuple(args.detectors), pose_variant=args.pose_variant,
                         mask_prior=args.mask_prior, mask_prior_size=args.mask_prior_size,
                         pose_flip_test=args.pose_flip_test)
    from occluded_ppe_ros.model.movenet import load_movenet_single_pose
    from occluded_ppe_ros.model.pipeline import build_pipeline, import_pretrained_parts

    stage = PoseStage(cfg)
    stage.movenet.load_state_dict(load_movenet_single_pose(cfg.pose_variant).state_dict())
    if stage.selfie is not None:
        from occluded_ppe_ros.model.selfie import load_selfie_segmenter

        stage.selfie.load_state_dict(load_selfie_segmenter().state_dict())
    stage.eval()
    dataset = CocoPersonKeypoints(args.data / 'annotations.json', args.data / 'images')
    image_ids = {info['id'] for info in dataset.images if in_split(info['id'], args.split)}
    held_for_validation = {i for i in image_ids if validation_image(i)} if args.validate else set()
    began = time.perf_counter()
    crops = build_crop_set(stage, dataset, image_ids - held_for_validation, args.jitters, args.seed,
                           occluded_copies=args.occluded_copies)
    validation = (build_crop_set(stage, dataset, held_for_validation, 1, args.seed)
                  if held_for_validation else None)
    summary = train_heads(stage, crops, args.work, args.epochs, args.batch_size, args.lr, args.seed,
                          args.resume, validation)
    net = build_pipeline(cfg)
    import_pretrained_parts(net)
    net.pose.mask_head.load_state_dict(stage.mask_head.state_dict())
    net.pose.occlusion_head.load_state_dict(stage.occlusion_head.state_dict())
    from occluded_ppe_ros.model.pipeline_checkpoint import save_pipeline_checkpoint

    train_config = {key: str(value) if isinstance(value, Path) else value
                    for key, value in vars(args).items()}
    save_pipeline_checkpoint(args.out, net, train_config=train_config, stage=1,
                             iteration=len(summary['history']),
                             metrics={'train_crops': summary['crops'], 'last_epoch': summary['history'][-1],
                                      'chosen_epochs': summary['chosen'],
                                      'train_seconds': round(time.perf_counter() - began, 1)})
    print(f'[pipeline_heads] wrote {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
