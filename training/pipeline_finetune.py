"""Mask-and-predict fine-tuning of the imported MoveNet, with the adversarial domain classifier (paper §2.2).

Starts from a pipeline checkpoint (imported MoveNet + trained heads, `pipeline_heads`). Each iteration:
    source batch   real COCO person crops (training split); an occluder patch (a region cut from another
                   crop: real texture) is pasted over a random part of the person, covering a fraction
                   of the box that grows over training (curriculum: 0 -> --max-mask-ratio); MoveNet's
                   keypoint heatmaps and offsets learn every labelled joint, hidden ones included
                   (CenterNet's penalty-reduced focal loss on the heatmaps, L1 on the offsets at the
                   joint's cell)
    target batch   crops of the street-domain set (no pose labels): only the domain loss
    domain loss    the domain classifier on the mask-gated stride-4 features, through gradient reversal
                   (DANN ramp), source = 0, target = 1: the pyramid learns features the classifier cannot
                   tell apart
    keep           the centre and regression heads (not trained) are held to the imported model's
                   outputs on the same crops, so the decoding that picks the person does not drift
Trained: MoveNet's pyramid + heatmap head (`movenet.decoder`), its offset head and the domain classifier;
the body stays as imported (88 photos would pull it toward themselves). Checkpoints every
--save-every iterations (`last.pt`, with optimizer and RNG); `--resume` continues from it.

Whether it helps is measured, not assumed: `benchmarks/pipeline_vs_peers.py` on the held-out photos for
the start and the result (occluded joints within OKS 0.5, keypoint AP).

    python -m occluded_ppe_training.pipeline_finetune --checkpoint runs/pipeline_heads/ppe_pipeline.pt \
        --data ../shared/data/coco_train2017_person_kp --target-data runs/street_synth \
        --work runs/pipeline_finetune --out runs/pipeline_finetune/ppe_pipeline_ft.pt
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from occluded_ppe_ros.model.checkpoint import atomic_torch_save, remove_stale_checkpoint_temporaries
from occluded_ppe_ros.model.pipeline_checkpoint import pipeline_from_checkpoint, save_pipeline_checkpoint
from occluded_ppe_ros.skeleton import COCO17_INDEX
from occluded_ppe_training.datasets.coco import CocoPersonKeypoints
from occluded_ppe_training.datasets.splits import in_split
from occluded_ppe_training.occluders import paste_occluders
from occluded_ppe_training.pipeline_heads import CropSet, build_crop_set, read_resume_state

FINETUNE_FORMAT = 'occluded_ppe/pipeline_finetune/1'


def heatmap_targets(joints: torch.Tensor, visibility: torch.Tensor, heat_size: int, stride: float,
                    sigma: float = 1.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian heatmap targets in MoveNet's convention (cell (r, c) sits at crop pixel (stride c, stride r)).

    Returns:
        heat float [N, 17, h, h] (COCO-17 channels; our 13 joints filled, eyes/ears left 0 and masked out),
        cells int64 [N, 13, 2] (column, row of each joint's cell), offsets float [N, 13, 2] (dx, dy cells).
    """
    count = joints.shape[0]
    position = joints / stride                                              # [N, 13, 2] in cells
    cells = position.round().clamp(0, heat_size - 1)
    offsets = position - cells
    grid = torch.arange(heat_size, dtype=joints.dtype)
    gx = torch.exp(-((grid[None, None, :] - position[..., 0:1]) ** 2) / (2 * sigma ** 2))
    gy = torch.exp(-((grid[None, None, :] - position[..., 1:2]) ** 2) / (2 * sigma ** 2))
    gaussian = gy[..., :, None] * gx[..., None, :] * (visibility > 0)[..., None, None]
    heat = joints.new_zeros(count, 17, heat_size, heat_size)
    heat[:, list(COCO17_INDEX)] = gaussian
    return heat, cells.long(), offsets


def focal_heatmap_loss(predicted: torch.Tensor, target: torch.Tensor,
                       channel_mask: torch.Tensor) -> torch.Tensor:
    """Penalty-reduced focal loss (CenterNet, alpha 2, beta 4) over the channels in channel_mask [N, 17]."""
    predicted = predicted.clamp(1e-4, 1 - 1e-4)
    positive = target.ge(0.99).float()
    positive_loss = -torch.log(predicted) * (1 - predicted) ** 2 * positive
    negative_loss = -torch.log(1 - predicted) * predicted ** 2 * (1 - target) ** 4 * (1 - positive)
    weight = channel_mask[..., None, None].float()
    count = (positive * weight).sum().clamp(min=1.0)
    return ((positive_loss + negative_loss) * weight).sum() / count


def finetune(net, source: CropSet, target: CropSet, work_dir: Path, iterations: int, batch_size: int,
             lr: float, max_mask_ratio: float, domain_weight: float, reversal_ramp: int, save_every: int,
             seed: int, resume: bool, log=print) -> list[dict]:
    """The loop described in the module docstring; returns the logged records."""
    work_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_checkpoint_temporaries(work_dir)
    pose = net.pose
    movenet = pose.movenet
    trainable = (list(movenet.decoder.parameters()) + list(movenet.offset_head.parameters())
                 + list(pose.domain_classifier.parameters()))
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-4)
    # MoveNet's centre and regression heads choose the person and seed each joint's search; they read the
    # pyramid being fine-tuned, so they are held to the imported model's outputs (distillation): without
    # this a first run moved them and the decoding picked wrong joints (held-out keypoint AP 0.370 ->
    # 0.049 after 150 iterations)
    # (copied before a resume loads the fine-tuned weights: the teacher is always the imported model)
    teacher = copy.deepcopy(movenet).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    start = 0
    last = work_dir / 'last.pt'
    if resume and last.is_file():
        state = read_resume_state(last, FINETUNE_FORMAT)
        net.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        generator.set_state(state['generator'])
        start, history = int(state['iteration']), list(state['history'])
        log(f'[pipeline_finetune] resumed from {last} at iteration {start}')
    size = movenet.cfg.input_size
    heat_size = movenet.cfg.heatmap_size
    stride = size / heat_size
    movenet.body.eval()          # frozen batch norm and no gradient: the body stays as imported
    began = time.perf_counter()
    for iteration in range(start, iterations):
        ratio = max_mask_ratio * min(1.0, iteration / max(1, iterations * 0.6))
        index = torch.randint(source.crops.shape[0], (batch_size,), generator=generator)
        crops = source.crops[index].float() / 255.0
        joints, visibility = source.joints_crop[index], source.joint_visibility[index]
        crops = paste_occluders(crops, joints, visibility, ratio, generator)
        target_index = torch.randint(target.crops.shape[0], (batch_size,), generator=generator)
        target_crops = target.crops[target_index].float() / 255.0
        both = torch.cat([crops, target_crops])
        maps = movenet.forward_features(both)
        with torch.no_grad():
            reference = teacher.forward_features(both)
            if pose.selfie is not None:      # frozen, like the detectors: an input of the heads only
                maps['person_prior'] = pose.selfie(both)
        loss_keep = (F.mse_loss(maps['center'], reference['center']) * 100.0
                     + F.l1_loss(maps['regress'], reference['regress']))
        source_maps = {key: value[:batch_size] for key, value in maps.items()}
        heat, cells, offsets = heatmap_targets(joints, visibility, heat_size, stride)
        channel_mask = torch.zeros(batch_size, 17, dtype=torch.bool)
        channel_mask[:, list(COCO17_INDEX)] = visibility > 0
        loss_heatmap = focal_heatmap_loss(source_maps['heatmap'], heat, channel_mask)
        offset_map = source_maps['offset'].view(batch_size, 17, 2, heat_size, heat_size)
        offset_map = offset_map[:, list(COCO17_INDEX)]
        flat = (cells[..., 1] * heat_size + cells[..., 0])                 # [N, 13] row-major cell
        picked = offset_map.flatten(3).gather(3, flat[:, :, None, None].expand(-1, -1, 2, 1))[..., 0]
        # MoveNet's offsets are (dy, dx); ours (dx, dy)
        offset_error = (picked - offsets.flip(-1)).abs().sum(-1)
        labelled = (visibility > 0).float()
        loss_offset = (offset_error * labelled).sum() / labelled.sum().clamp(min=1.0)
        all_crops = torch.cat([crops, target_crops])
        mask_probs = torch.sigmoid(pose.mask_head(pose.instance_maps(maps, all_crops))).detach()
        progress = min(1.0, iteration / max(1, reversal_ramp))
        reversal = 2.0 / (1.0 + math.exp(-10 * progress)) - 1.0           # DANN's ramp 0 -> 1
        domain_logits = pose.domain_classifier(maps['features'], mask_probs, reversal)
        domain_labels = torch.cat([torch.zeros(batch_size), torch.ones(batch_size)])
        loss_domain = F.binary_cross_entropy_with_logits(domain_logits, domain_labels)
        loss = loss_heatmap + loss_offset + domain_weight * loss_domain + loss_keep
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 5.0)
        optimizer.step()
        if (iteration + 1) % 10 == 0 or iteration + 1 == iterations:
            record = {'iteration': iteration + 1, 'mask_ratio': round(ratio, 3),
                      'loss_heatmap': round(float(loss_heatmap.detach()), 4),
                      'loss_offset': round(float(loss_offset.detach()), 4),
                      'loss_domain': round(float(loss_domain.detach()), 4),
                      'loss_keep': round(float(loss_keep.detach()), 4), 'reversal': round(reversal, 3),
                      'seconds': round(time.perf_counter() - began, 1)}
            history.append(record)
            log(f'[pipeline_finetune] {json.dumps(record)}')
        if (iteration + 1) % save_every == 0 or iteration + 1 == iterations:
            atomic_torch_save({'format': FINETUNE_FORMAT, 'model': net.state_dict(),
                               'optimizer': optimizer.state_dict(), 'generator': generator.get_state(),
                               'iteration': iteration + 1, 'history': history}, last)
    return history


def crop_set_of(net, data: Path, split: str | None, jitters: int, seed: int) -> CropSet:
    """Person crops (and frozen-MoveNet maps) of a COCO-format folder, optionally one split of it."""
    dataset = CocoPersonKeypoints(data / 'annotations.json', data / 'images')
    ids = {info['id'] for info in dataset.images if split is None or in_split(info['id'], split)}
    return build_crop_set(net.pose, dataset, ids, jitters, seed)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', type=Path, required=True, help='pipeline checkpoint to start from')
    parser.add_argument('--data', type=Path, required=True, help='source: COCO person-keypoints folder')
    parser.add_argument('--target-data', type=Path, required=True,
                        help='target domain: COCO-format folder (`ppe synth` street scenes); labels unused')
    parser.add_argument('--work', type=Path, required=True)
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--iterations', type=int, default=200)
    parser.add_argument('--batch-size', type=int, default=8, help='crops per domain per iteration')
    parser.add_argument('--lr', type=float, default=1e-4)
    parser.add_argument('--max-mask-ratio', type=float, default=0.3)
    parser.add_argument('--domain-weight', type=float, default=1.0, help='beta of the paper eq. 1')
    parser.add_argument('--reversal-ramp', type=int, default=100)
    parser.add_argument('--save-every', type=int, default=25)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--resume', action='store_true')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    net, checkpoint = pipeline_from_checkpoint(args.checkpoint)
    start_state = copy.deepcopy(net.state_dict())
    began = time.perf_counter()
    source = crop_set_of(net, args.data, 'train', 2, args.seed)
    target = crop_set_of(net, args.target_data, None, 1, args.seed + 1)
    net.load_state_dict(start_state)
    history = finetune(net, source, target, args.work, args.iterations, args.batch_size, args.lr,
                       args.max_mask_ratio, args.domain_weight, args.reversal_ramp, args.save_every,
                       args.seed, args.resume)
    train_config = {**checkpoint.get('train_config', {}),
                    'finetune': {key: str(value) if isinstance(value, Path) else value
                                 for key, value in vars(args).items()}}
    save_pipeline_checkpoint(args.out, net.eval(), train_config=train_config, stage=2,
                             iteration=args.iterations,
                             metrics={**checkpoint.get('metrics', {}), 'finetune_last': history[-1],
                                      'finetune_seconds': round(time.perf_counter() - began, 1)})
    print(f'[pipeline_finetune] wrote {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
