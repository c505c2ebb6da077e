"""Trainer building blocks without a network: configs, data order, RNG state, atomic checkpoints, eq. (1)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from occluded_ppe_training.config import TrainConfig, apply_override, load_config
from occluded_ppe_training.trainer import (
    InfiniteSampler, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint_atomic,
    weighted_total)

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS = ('train_stage1.yaml', 'train_stage2.yaml', 'train_tiny_stage1.yaml', 'train_tiny_stage2.yaml')


@pytest.mark.parametrize('name', PRESETS)
def test_shipped_presets_load_and_follow_the_paper(name):
    cfg = load_config(REPO_ROOT / 'config' / name)
    assert cfg.optimizer.momentum == 0.9
    assert cfg.loss.alpha == 0.5 and cfg.loss.beta == 1.0 and cfg.loss.gamma == 1.0
    assert cfg.lr_schedule.gamma == pytest.approx(0.1)
    if 'tiny' not in name:
        assert cfg.optimizer.lr == 0.01 and cfg.lr_schedule.step_size == 15000
    assert cfg.stage == (2 if 'stage2' in name else 1)
    if cfg.stage == 2:
        assert cfg.init_checkpoint, 'stage 2 starts from a stage-1 checkpoint'
        assert cfg.mask_schedule.kind != 'constant', 'stage 2 uses the mask-and-predict curriculum'
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_keys_and_bad_values_name_the_file_and_key(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('stage: 1\nmodel: {}\ninit_checkpoint: x.pt\n'
                    'data: {coco: {format: synthetic, directory: d, hide_keypoint: true}}\n')
    with pytest.raises(ValueError, match=r"bad\.yaml.*data.*hide_keypoint"):
        load_config(path)
    path.write_text('stage: 3\ninit_checkpoint: x.pt\ndata: {coco: {format: synthetic, directory: d}}\n')
    with pytest.raises(ValueError, match='stage must be 1 or 2, got 3'):
        load_config(path)
    path.write_text('init_checkpoint: x.pt\ninput_size: [100, 128]\n'
                    'data: {coco: {format: synthetic, directory: d}}\n')
    with pytest.raises(ValueError, match=r'multiples of 32, got \[100, 128\]'):
        load_config(path)
    path.write_text('init_checkpoint: x.pt\nbatch_size: two\n'
                    'data: {coco: {format: synthetic, directory: d}}\n')
    with pytest.raises(ValueError, match="batch_size: expected int, got 'two'"):
        load_config(path)


def test_overrides_reach_nested_keys():
    data = {'data': {'coco': {'format': 'synthetic', 'directory': 'a'}}, 'max_iters': 10}
    apply_override(data, 'max_iters=7')
    apply_override(data, 'data.coco.max_images=3')
    apply_override(data, 'optimizer.lr=0.5')
    assert data['max_iters'] == 7 and data['data']['coco']['max_images'] == 3
    assert data['optimizer'] == {'lr': 0.5}
    with pytest.raises(ValueError, match='key=value'):
        apply_override(data, 'max_iters')


def _take(sampler, count):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_infinite_sampler_resumes_exactly_and_shards_disjointly():
    whole = _take(InfiniteSampler(10, seed=3), 35)
    # every epoch is a permutation of the dataset
    for epoch in range(3):
        assert sorted(whole[10 * epoch:10 * epoch + 10]) == list(range(10))
    # resuming at position 13 reads what the uninterrupted stream read from 13 on
    assert _take(InfiniteSampler(10, seed=3, start=13), 22) == whole[13:35]
    # two ranks take alternate positions of the same stream
    rank0 = _take(InfiniteSampler(10, seed=3, rank=0, world_size=2), 10)
    rank1 = _take(InfiniteSampler(10, seed=3, rank=1, world_size=2), 10)
    assert rank0 == whole[0:20:2] and rank1 == whole[1:20:2]
    assert _take(InfiniteSampler(10, seed=3, rank=1, world_size=2, start=4), 3) == whole[9:15:2]
    assert _take(InfiniteSampler(4, seed=0, shuffle=False), 6) == [0, 1, 2, 3, 0, 1]
    with pytest.raises(ValueError, match='empty dataset'):
        InfiniteSampler(0, seed=0)


def _draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    save_checkpoint_atomic({'format': 'occluded_ppe/1', 'rng': capture_rng_state()}, tmp_path / 'c.pt')
    expected = [_draws() for _ in range(3)]
    np.random.randn()   # leaves numpy's cached Gaussian set: restored state must not depend on it
    restore_rng_state(load_checkpoint(tmp_path / 'c.pt')['rng'])
    assert [_draws() for _ in range(3)] == expected


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / 'run' / 'last.pt'
    save_checkpoint_atomic({'format': 'occluded_ppe/1', 'iteration': 1}, path)
    assert load_checkpoint(path)['iteration'] == 1

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('cannot pickle')

    with pytest.raises(RuntimeError, match='cannot pickle'):
        save_checkpoint_atomic({'format': 'occluded_ppe/1', 'iteration': 2, 'bad': Unpicklable()}, path)
    # the failed write left the previous complete file and no temporary file behind
    assert load_checkpoint(path)['iteration'] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ['last.pt']
    torch.save({'format': 'something else'}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match="other.pt is not an occluded_ppe/1 checkpoint"):
        load_checkpoint(tmp_path / 'other.pt')


def test_weighted_total_is_equation_1():
    values = {
        'citypersons/loss_det_heatmap': 1.0, 'citypersons/loss_det_box': 2.0,
        'citypersons/loss_seg_mask': 4.0, 'citypersons/loss_dc_domain': 8.0,
        'coco/loss_det_heatmap': 16.0, 'coco/loss_det_box': 32.0, 'coco/loss_seg_mask': 64.0,
        'coco/loss_dc_domain': 128.0, 'coco/loss_pe_heatmap': 256.0, 'coco/loss_pe_occlusion': 512.0,
    }
    losses = {key: torch.tensor(value) for key, value in values.items()}
    alpha, beta, gamma = 0.5, 0.25, 2.0
    # L_det_c + L_det_m + alpha (L_seg_c + L_seg_m) + beta L_dc + gamma L_pe, by hand:
    expected = (1 + 2 + 16 + 32) + alpha * (4 + 64) + beta * (8 + 128) + gamma * (256 + 512)
    assert float(weighted_total(losses, alpha, beta, gamma)) == pytest.approx(expected)
    with pytest.raises(KeyError, match='loss_unheard_of'):
        weighted_total({'coco/loss_unheard_of': torch.tensor(1.0)}, alpha, beta, gamma)


def test_train_cli_reports_bad_configs_and_missing_checkpoints_in_one_line(tmp_path, capsys):
    import argparse

    from occluded_ppe_training import train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    assert train_cli.run(parser.parse_args(['--config', str(tmp_path / 'absent.yaml')])) == 2
    assert 'absent.yaml does not exist' in capsys.readouterr().err
    args = parser.parse_args(['--config', str(REPO_ROOT / 'config' / 'train_tiny_stage2.yaml'),
                              '--set', f'init_checkpoint={tmp_path / "stage1.pt"}',
                              '--set', f'output_dir={tmp_path / "run"}'])
    assert train_cli.run(args) == 1
    assert f'checkpoint {tmp_path / "stage1.pt"} does not exist' in capsys.readouterr().err


def _target_with_people(keypoints: torch.Tensor) -> dict[str, torch.Tensor]:
    """A contract-2 target of N people [N, 13, 3] on a 64 x 64 input, boxes around the joints."""
    from occluded_ppe_training.datasets.common import make_target

    boxes = torch.cat([keypoints[..., :2].amin(dim=1) - 2, keypoints[..., :2].amax(dim=1) + 2], dim=1)
    masks = np.zeros((len(keypoints), 64, 64), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
        masks[i, y1:y2, x1:x2] = 1
    return make_target(0, 64, 64, boxes=boxes.numpy(), masks=masks, keypoints=keypoints.numpy())


def test_periodic_evaluation_scores_perfect_and_wrong_keypoints_like_pycocotools():
    from occluded_ppe_training.evaluation.coco_eval import evaluate_coco
    from occluded_ppe_training.trainer import coco_keypoint_dicts

    generator = torch.Generator().manual_seed(0)
    keypoints = torch.cat([torch.rand(2, 13, 2, generator=generator) * 40 + 10,
                           torch.full((2, 13, 1), 2.0)], dim=2)
    keypoints[0, 12, 2] = 1.0                 # an occluded joint still counts (v > 0)
    target = _target_with_people(keypoints)
    perfect = {'boxes': target['boxes'], 'scores': torch.tensor([0.9, 0.8]),
               'keypoints': torch.cat([keypoints[..., :2], torch.ones(2, 13, 1)], dim=2)}
    ground_truth, results = coco_keypoint_dicts([target], [perfect], (64, 64))
    assert [a['num_keypoints'] for a in ground_truth['annotations']] == [13, 13]
    assert ground_truth['annotations'][0]['area'] == float(target['masks'][0].sum())
    metrics = evaluate_coco(ground_truth, results, ['keypoints'])['keypoints'].named
    assert metrics['AP'] == pytest.approx(1.0)
    shifted = dict(perfect, keypoints=perfect['keypoints'] + torch.tensor([20.0, 20.0, 0.0]))
    ground_truth, results = coco_keypoint_dicts([target], [shifted], (64, 64))
    assert evaluate_coco(ground_truth, results, ['keypoints'])['keypoints'].named['AP'] == pytest.approx(0.0)


def test_a_synthetic_set_from_an_older_generator_is_refused_by_name(tmp_path):
    import json

    from occluded_ppe_training.config import DatasetConfig, SyntheticConfig
    from occluded_ppe_training.datasets.synthetic import GENERATOR_VERSION
    from occluded_ppe_training.trainer import prepare_synthetic

    directory = tmp_path / 'synthetic_set'
    cfg = DatasetConfig(format='synthetic', directory=str(directory),
                        synthetic=SyntheticConfig(num_images=2, image_size=[64, 96], seed=4))
    annotations = prepare_synthetic(cfg)                       # generated on first use
    data = json.loads(annotations.read_text())
    assert data['info']['generator_version'] == GENERATOR_VERSION
    assert prepare_synthetic(cfg) == annotations               # reused as is
    del data['info']['generator_version']                      # as written before the stamp existed
    annotations.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"synthetic_set.*'generator_version': \(1, {GENERATOR_VERSION}\)"):
        prepare_synthetic(cfg)
