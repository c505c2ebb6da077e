"""The training loop on real data files: learning, D_Pose isolation, kill + `--resume`, DDP on gloo.

Fixtures are tiny COCO person-keypoints sets written here (JPEG images, RLE masks, 17-joint keypoints)
of stick-figure pedestrians, some behind an occluding box, so nothing needs ../shared. Runs of
`ppe train` happen in subprocesses with `occluded_ppe_training` imported from this source tree.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as mask_utils

from occluded_ppe_ros.skeleton import COCO17_INDEX, LIMBS, NUM_KEYPOINTS
from occluded_ppe_training.config import TrainConfig
from occluded_ppe_training.trainer import (
    MultiDomainForward, build_dataset, collate, load_checkpoint, train, weighted_total)

REPO_ROOT = Path(__file__).resolve().parents[1]

# A front-facing pedestrian in a unit box (x right, y down); "left" is the person's own left.
POSE_TEMPLATE = np.array([
    (0.50, 0.08),                  # nose
    (0.66, 0.22), (0.34, 0.22),    # left, right shoulder
    (0.74, 0.40), (0.26, 0.40),    # elbows
    (0.78, 0.56), (0.22, 0.56),    # wrists
    (0.60, 0.55), (0.40, 0.55),    # hips
    (0.62, 0.76), (0.38, 0.76),    # knees
    (0.63, 0.96), (0.37, 0.96),    # ankles
])

TINY_MODEL = {
    'backbone': {'name': 'resnet18'},
    'fpn': {'channels': 32, 'output_stride': 4},
    'detection': {'head_channels': 32},
    'mask': {'roi_size': 7, 'resolution': 14, 'channels': 16, 'num_convs': 1},
    'pose': {'roi_height': 8, 'roi_width': 6, 'encoder_channels': 32, 'encoder_convs': 2,
             'decoder_channels': 16, 'decoder_deconvs': 2, 'domain_hidden': 32, 'max_train_instances': 4},
    'inference': {'domain': 'coco', 'input_height': 64, 'input_width': 64},
}


def write_coco_fixture(folder: Path, num_images: int, size: int, seed: int) -> Path:
    """Write a COCO person-keypoints set: images/*.jpg and annotations.json; returns the JSON path.

    Each image holds one or two stick-figure people on a noisy background; every other person stands
    behind a grey box covering its legs, whose joints are then labelled occluded (v = 1) and whose
    mask (RLE) holds only the visible pixels.
    """
    rng = np.random.default_rng(seed)
    (folder / 'images').mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        canvas = rng.integers(60, 200, size=(size, size, 3), dtype=np.uint8)
        canvas = cv2.GaussianBlur(canvas, (5, 5), 0)
        for person in range(int(rng.integers(1, 3))):
            height = rng.uniform(0.45, 0.8) * size
            width = 0.45 * height
            x0 = rng.uniform(0, size - width)
            y0 = rng.uniform(0, size - height)
            joints = POSE_TEMPLATE * [width, height] + [x0, y0]
            joints += rng.normal(0, 0.02 * height, joints.shape)
            body = np.zeros((size, size), np.uint8)
            thickness = max(2, int(height / 14))
            for a, b in LIMBS:
                start, end = (tuple(int(v) for v in joints[j]) for j in (a, b))
                cv2.line(body, start, end, 1, thickness)
            cv2.circle(body, tuple(int(v) for v in joints[0]), max(2, int(height / 12)), 1, -1)
            colour = rng.integers(0, 256, 3)
            canvas[body > 0] = colour
            visibility = np.full(NUM_KEYPOINTS, 2)
            if (image_id + person) % 2 == 0:          # an occluder over the legs
                top = int(y0 + 0.62 * height)
                occluder = np.zeros_like(body)
                occluder[top:int(y0 + height) + 2, max(int(x0) - 3, 0):int(x0 + width) + 3] = 1
                canvas[occluder > 0] = (128, 128, 128)
                body[occluder > 0] = 0
                visibility[joints[:, 1] >= top] = 1
            keypoints17 = np.zeros((17, 3))
            keypoints17[list(COCO17_INDEX), :2] = joints
            keypoints17[list(COCO17_INDEX), 2] = visibility
            rle = mask_utils.encode(np.asfortranarray(body))
            rle['counts'] = rle['counts'].decode('ascii')
            x1, y1 = joints.min(axis=0) - thickness
            x2, y2 = joints.max(axis=0) + thickness
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, size), min(y2, size)
            annotations.append({
                'id': len(annotations) + 1, 'image_id': image_id, 'category_id': 1, 'iscrowd': 0,
                'bbox': [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                'area': float(body.sum()), 'segmentation': rle,
                'keypoints': [float(v) for v in keypoints17.reshape(-1)],
                'num_keypoints': int((visibility > 0).sum()),
            })
        name = f'{image_id:06d}.jpg'
        cv2.imwrite(str(folder / 'images' / name), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        images.append({'id': image_id, 'file_name': name, 'width': size, 'height': size})
    categories = [{'id': 1, 'name': 'person', 'supercategory': 'person',
                   'keypoints': ['nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder',
                                 'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
                                 'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle',
                                 'right_ankle'], 'skeleton': []}]
    path = folder / 'annotations.json'
    path.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': categories}))
    return path


def tiny_config(folder: Path, stage: int, **overrides) -> dict:
    """A tiny two-domain config dict: the fixture set as source, a second fixture set as target."""
    source = folder / 'source'
    target = folder / 'target'
    if not (source / 'annotations.json').is_file():
        write_coco_fixture(source, num_images=8, size=64, seed=1)
        write_coco_fixture(target, num_images=8, size=64, seed=2)
    config = {
        'stage': stage,
        'model': TINY_MODEL,
        'data': {
            'coco': {'format': 'coco', 'annotations': str(source / 'annotations.json'),
                     'images': str(source / 'images')},
            'citypersons': {'format': 'coco', 'annotations': str(target / 'annotations.json'),
                            'images': str(target / 'images')},
        },
        'input_size': [64, 64], 'batch_size': 2, 'num_workers': 0, 'augment': {'enabled': False},
        'optimizer': {'lr': 0.01, 'momentum': 0.9, 'weight_decay': 0.0001, 'grad_clip_norm': 10.0},
        'lr_schedule': {'step_size': 1000, 'gamma': 0.1, 'warmup_iters': 0},
        'mask_schedule': {'kind': 'linear', 'start': 0.0, 'end': 0.4, 'start_iter': 0, 'end_iter': 10},
        'max_iters': 6, 'seed': 0, 'output_dir': str(folder / f'run_stage{stage}'),
        'checkpoint_every': 2, 'log_every': 1, 'device': 'cpu', 'threads': 1, 'progress': False,
    }
    config.update(overrides)
    return config


def source_tree_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a child Python importing occluded_ppe_ros / occluded_ppe_training from this tree."""
    shim = tmp_path / 'pythonpath'
    shim.mkdir(exist_ok=True)
    link = shim / 'occluded_ppe_training'
    if not link.exists():
        link.symlink_to(REPO_ROOT / 'training', target_is_directory=True)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(shim), str(REPO_ROOT), env.get('PYTHONPATH', '')])
    env['OMP_NUM_THREADS'] = '1'
    return env


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fixture_reads_through_the_coco_loader(tmp_path):
    cfg = TrainConfig.from_dict(tiny_config(tmp_path, stage=2))
    source = build_dataset(cfg.data['coco'], 'coco', (64, 64), None, train=True)
    target = build_dataset(cfg.data['citypersons'], 'citypersons', (64, 64), None, train=True)
    images, targets = collate([source[0], source[1]])
    assert images.shape == (2, 3, 64, 64)
    assert all(bool(t['has_keypoints'].all()) and bool(t['has_mask'].all()) for t in targets)
    occluded = torch.cat([t['keypoints'][..., 2] for _, t in (source[i] for i in range(len(source)))])
    assert bool((occluded == 1).any()) and bool((occluded == 2).any())
    # the target domain's pose labels are hidden, its boxes and masks kept
    _, hidden = target[0]
    assert len(hidden['boxes']) > 0 and not bool(hidden['has_keypoints'].any())
    assert float(hidden['keypoints'].abs().sum()) == 0.0


def test_target_domain_gives_d_pose_no_gradient_and_source_does(tmp_path):
    from occluded_ppe_ros.model.config import ModelConfig
    from occluded_ppe_ros.model.network import build_model

    cfg = TrainConfig.from_dict(tiny_config(tmp_path, stage=2))
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(TINY_MODEL))
    step = MultiDomainForward(model)
    batches = {}
    for domain in ('citypersons', 'coco'):
        dataset = build_dataset(cfg.data[domain], domain, (64, 64), None, train=True)
        batches[domain] = collate([dataset[0], dataset[1]])

    def gradients(domains):
        model.zero_grad(set_to_none=True)
        losses = step({d: batches[d] for d in domains}, stage=2, mask_ratio=0.3)
        weighted_total(losses, 0.5, 1.0, 1.0).backward()
        return losses, {name: p.grad for name, p in model.pose.named_parameters()}

    losses, grads = gradients(['citypersons'])
    assert losses['citypersons/loss_dc_domain'].item() > 0      # the domain loss applies to the target
    decoder = {n: g for n, g in grads.items() if n.startswith('decoder.')}
    assert decoder and all(g is None or float(g.abs().max()) == 0.0 for g in decoder.values())
    # ... while E_Pose and D_C learn from the target domain through the domain classifier
    assert any(g is not None and float(g.abs().max()) > 0
               for n, g in grads.items() if n.startswith('encoder.'))
    assert any(g is not None and float(g.abs().max()) > 0
               for n, g in grads.items() if n.startswith('domain_classifier.'))
    losses, grads = gradients(['coco'])
    assert losses['coco/loss_pe_heatmap'].item() > 0
    assert all(g is not None and float(g.abs().max()) > 0
               for n, g in grads.items() if n.startswith('decoder.') and n.endswith('weight'))


def test_stage1_returns_only_detection_and_segmentation_terms(tmp_path):
    cfg = TrainConfig.from_dict(tiny_config(tmp_path, stage=1, max_iters=1, checkpoint_every=1))
    result = train(cfg)
    terms = {key.split('/')[1] for key in result.history[0] if '/' in key}
    assert terms == {'loss_det_heatmap', 'loss_det_box', 'loss_seg_mask'}
    checkpoint = load_checkpoint(result.checkpoint)
    assert checkpoint['stage'] == 1 and checkpoint['iteration'] == 1
    assert checkpoint['train_config'] == cfg.to_dict()
    assert {'optimizer', 'scheduler', 'rng', 'model_config', 'metrics'} <= set(checkpoint)


def test_a_domain_can_draw_its_own_batch_size(tmp_path, monkeypatch):
    import occluded_ppe_training.trainer as trainer_module

    seen: dict[str, list[int]] = {}

    class Recording(MultiDomainForward):
        def forward(self, batches, stage, mask_ratio):
            for domain, (images, targets) in batches.items():
                seen.setdefault(domain, []).append(images.shape[0])
                assert len(targets) == images.shape[0]
            return super().forward(batches, stage, mask_ratio)

    monkeypatch.setattr(trainer_module, 'MultiDomainForward', Recording)
    data = tiny_config(tmp_path, stage=1)['data']
    data['citypersons']['batch_size'] = 1
    train(TrainConfig.from_dict(tiny_config(tmp_path, stage=1, data=data, max_iters=2, checkpoint_every=2)))
    assert seen == {'coco': [2, 2], 'citypersons': [1, 1]}
    data['citypersons']['batch_size'] = 0
    with pytest.raises(ValueError, match='batch_size must be >= 1 or null, got 0'):
        TrainConfig.from_dict(tiny_config(tmp_path, stage=1, data=data))


def test_overfitting_a_fixed_batch_lowers_every_trained_term(tmp_path):
    """Stage 2 on a fixed batch (no augmentation, no masking): the total and each supervised term fall.

    The domain-classifier term is adversarial (E_Pose ascends it through the gradient reversal layer),
    so it is only required to stay finite.
    """
    stage1 = TrainConfig.from_dict(tiny_config(tmp_path, stage=1, max_iters=1, checkpoint_every=1))
    train(stage1)
    data = tiny_config(tmp_path, stage=2)['data']
    for domain in data:
        data[domain]['max_images'] = 2
    cfg = TrainConfig.from_dict(tiny_config(
        tmp_path, stage=2, model={}, init_checkpoint=str(Path(stage1.output_dir) / 'last.pt'), data=data,
        max_iters=40, checkpoint_every=40, mask_schedule={'kind': 'constant', 'start': 0.0},
        optimizer={'lr': 0.02, 'momentum': 0.9, 'weight_decay': 0.0, 'grad_clip_norm': 10.0}))
    history = train(cfg).history
    assert len(history) == 40

    def mean(key, rows):
        return float(np.mean([row[key] for row in rows]))

    first, last = history[:4], history[-4:]
    assert mean('total', last) < 0.6 * mean('total', first)
    for key in history[0]:
        assert all(np.isfinite(row[key]) for row in history), key
        if key == 'total' or 'loss_dc' in key:
            continue
        if key.startswith('citypersons/loss_pe'):
            # no pose loss on the target domain (its keypoints are hidden): exactly zero throughout
            assert all(row[key] == 0.0 for row in history), key
            continue
        assert mean(key, last) < mean(key, first), (key, mean(key, first), mean(key, last))


def test_stage2_ramps_the_gradient_reversal_and_merges_model_overrides(tmp_path, monkeypatch):
    """Stage 2 with AdamW, a partial `model:` and loss.grl_ramp_iters (DANN's ramp, per iteration)."""
    from occluded_ppe_ros.model import ops
    from occluded_ppe_training.schedules import grl_factor

    stage1 = TrainConfig.from_dict(tiny_config(tmp_path, stage=1, max_iters=1, checkpoint_every=1))
    train(stage1)
    scales_seen = []
    original_forward = ops.GradientReversal.forward

    def recording_forward(self, x):
        scales_seen.append(self.scale)
        return original_forward(self, x)

    monkeypatch.setattr(ops.GradientReversal, 'forward', recording_forward)
    # a stage-2 `model:` holds only the keys it changes; the rest comes from the init checkpoint
    cfg = TrainConfig.from_dict(tiny_config(
        tmp_path, stage=2, model={'pose': {'samples_per_instance': 2}},
        init_checkpoint=str(Path(stage1.output_dir) / 'last.pt'), max_iters=3,
        checkpoint_every=3, loss={'alpha': 0.5, 'beta': 1.0, 'gamma': 1.0, 'grl_ramp_iters': 10},
        optimizer={'name': 'adamw', 'lr': 0.001, 'momentum': 0.9, 'weight_decay': 0.0001,
                   'grad_clip_norm': 10.0}))
    result = train(cfg)
    assert result.model.cfg.pose.samples_per_instance == 2
    assert result.model.cfg.pose.encoder_channels == TINY_MODEL['pose']['encoder_channels']
    assert result.model.cfg.fpn.channels == TINY_MODEL['fpn']['channels']
    lambda_ = result.model.cfg.pose.grl_lambda
    # two domains per iteration, each one forward through the reversal
    expected = [lambda_ * grl_factor(iteration, 10) for iteration in range(3) for _ in range(2)]
    assert scales_seen == pytest.approx(expected)
    assert scales_seen[0] == 0.0 and scales_seen[-1] > 0.0
    assert isinstance(torch.load(Path(cfg.output_dir) / 'last.pt', weights_only=False)['optimizer'], dict)
    # --resume with the same partial `model:` continues; one contradicting the run is refused
    more = TrainConfig.from_dict({**cfg.to_dict(), 'max_iters': 4})
    assert train(more, resume=True).iteration == 4
    other = TrainConfig.from_dict({**cfg.to_dict(), 'max_iters': 5,
                                   'model': {'pose': {'samples_per_instance': 3}}})
    with pytest.raises(ValueError, match='another model config'):
        train(other, resume=True)
    with pytest.raises(ValueError, match="'adam'"):
        TrainConfig.from_dict(tiny_config(tmp_path, stage=2, optimizer={'name': 'adam'}))


def _run_train(config_path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, '-m', 'occluded_ppe_ros.cli', 'train', '--config', str(config_path), *extra]
    return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_kill_then_resume_continues_at_the_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    """SIGKILL a `ppe train` after its first checkpoint, `--resume`: same weights as a run never stopped.

    Augmentations are on (random flips, crops, blur, colour from the global torch RNG), so this also
    checks that the RNG state and the data order are restored.
    """
    env = source_tree_env(tmp_path)
    reference = tiny_config(tmp_path, stage=2, max_iters=6, checkpoint_every=2,
                            augment={'enabled': True}, output_dir=str(tmp_path / 'reference'))
    # in a process of its own too: the same thread settings as the runs below give bit-equal floats
    reference_path = tmp_path / 'reference.yaml'
    reference_path.write_text(yaml.safe_dump(reference))
    done = _run_train(reference_path, env)
    assert done.returncode == 0, done.stderr[-3000:]

    interrupted = dict(reference, output_dir=str(tmp_path / 'interrupted'), max_iters=400)
    interrupted_path = tmp_path / 'interrupted.yaml'
    interrupted_path.write_text(yaml.safe_dump(interrupted))
    last = tmp_path / 'interrupted' / 'last.pt'
    child = subprocess.Popen([sys.executable, '-m', 'occluded_ppe_ros.cli', 'train', '--config',
                              str(interrupted_path)], env=env, cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert last.exists(), 'no checkpoint written before the deadline'
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(last)['iteration']
    assert killed_at % 2 == 0 and killed_at < 400
    # the interrupted run now stops at 6 iterations, like the reference
    interrupted_path.write_text(yaml.safe_dump(dict(interrupted, max_iters=6)))
    resumed = _run_train(interrupted_path, env, '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if killed_at >= 6:
        pytest.skip(f'the kill came late (iteration {killed_at}); nothing left to resume')

    a, b = load_checkpoint(tmp_path / 'reference' / 'last.pt'), load_checkpoint(last)
    assert a['iteration'] == b['iteration'] == 6
    assert b['scheduler']['last_epoch'] == a['scheduler']['last_epoch'] == 6
    for name, value in a['model'].items():
        torch.testing.assert_close(b['model'][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for index, state in a['optimizer']['state'].items():
        torch.testing.assert_close(b['optimizer']['state'][index]['momentum_buffer'],
                                   state['momentum_buffer'], rtol=1e-5, atol=1e-6)
    assert torch.equal(a['rng']['torch'], b['rng']['torch'])


def test_bad_records_stop_training_naming_the_file_or_are_skipped_and_counted(tmp_path, capsys):
    from occluded_ppe_training.datasets.common import DatasetRecordError

    config = tiny_config(tmp_path, stage=1, max_iters=1, checkpoint_every=1)
    (tmp_path / 'source' / 'images' / '000003.jpg').unlink()
    with pytest.raises(DatasetRecordError, match=r'annotations\.json: image id 3 .*000003\.jpg'):
        train(TrainConfig.from_dict(config))
    config['data']['coco']['skip_invalid'] = True
    result = train(TrainConfig.from_dict(config))
    assert result.iteration == 1
    assert result.metrics['skipped_records/coco'] == 1.0
    assert load_checkpoint(result.checkpoint)['metrics']['skipped_records/coco'] == 1.0
    assert 'coco: skipped 1 invalid records' in capsys.readouterr().out


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    cfg = TrainConfig.from_dict(tiny_config(tmp_path, stage=1))
    with pytest.raises(FileNotFoundError, match='last.pt does not exist'):
        train(cfg, resume=True)


def test_a_restart_removes_unfinished_checkpoint_writes_and_resumes_from_the_intact_last_pt(tmp_path, capsys):
    """What `kill -9` during a checkpoint write leaves: '.last.pt.<random>.tmp' (and one per iter_ file) next
    to the previous complete last.pt. The next start deletes them and --resume continues from last.pt."""
    cfg = TrainConfig.from_dict(tiny_config(tmp_path, stage=1, max_iters=2, checkpoint_every=2,
                                            keep_checkpoints=True))
    train(cfg)
    output_dir = Path(cfg.output_dir)
    complete = (output_dir / 'last.pt').read_bytes()
    half_written = [output_dir / '.last.pt.k2j4_x9q.tmp', output_dir / '.iter_0000004.pt.a1B2c3D4.tmp']
    for path in half_written:
        path.write_bytes(complete[: len(complete) // 3])
    unrelated = [output_dir / '.notes.tmp', output_dir / 'last.pt.tmp', output_dir / '.last.pt.backup']
    for path in unrelated:
        path.write_text('not a checkpoint temporary')
    capsys.readouterr()
    resumed = train(TrainConfig.from_dict({**cfg.to_dict(), 'max_iters': 3}), resume=True)
    assert resumed.iteration == 3
    assert not any(path.exists() for path in half_written)
    assert all(path.exists() for path in unrelated)
    assert 'removed 2 unfinished checkpoint write(s)' in capsys.readouterr().out
    assert torch.load(output_dir / 'last.pt', weights_only=False)['iteration'] == 3


DDP_SCRIPT = '''
import sys
import torch
import torch.distributed as dist
from occluded_ppe_training.config import load_config
from occluded_ppe_training.trainer import train

result = train(load_config(sys.argv[1]))
parameters = {name: p.detach().clone() for name, p in result.model.named_parameters()}
torch.save({'parameters': parameters, 'history': result.history}, f'{sys.argv[2]}/rank{dist.get_rank()}.pt')
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_the_ranks_in_step(tmp_path):
    env = source_tree_env(tmp_path)
    config = tiny_config(tmp_path, stage=2, max_iters=2, checkpoint_every=2, batch_size=1)
    config_path = tmp_path / 'ddp.yaml'
    config_path.write_text(yaml.safe_dump(config))
    script = tmp_path / 'ddp_train.py'
    script.write_text(DDP_SCRIPT)
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               str(script), str(config_path), str(tmp_path)]
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    # the ranks read different shards (different losses) ...
    assert rank0['history'][0]['total'] != rank1['history'][0]['total']
    # ... but after the averaged steps hold identical parameters, equal to rank 0's checkpoint
    checkpoint = load_checkpoint(Path(config['output_dir']) / 'last.pt')
    assert checkpoint['iteration'] == 2
    for name, value in rank0['parameters'].items():
        torch.testing.assert_close(rank1['parameters'][name], value, rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(checkpoint['model'][name], value, rtol=0, atol=0, msg=name)
    # and the steps did change the weights the run started from (seeded like the trainer seeds)
    from occluded_ppe_ros.model.config import ModelConfig
    from occluded_ppe_ros.model.network import build_model

    torch.manual_seed(config['seed'])
    initial = dict(build_model(ModelConfig.from_dict(TINY_MODEL)).named_parameters())
    changed = [name for name, value in rank0['parameters'].items() if not torch.equal(value, initial[name])]
    assert len(changed) > len(initial) // 2
