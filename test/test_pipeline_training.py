"""Training of the pretrained pipeline's heads (training/pipeline_heads.py) and MoveNet's mask-and-predict
fine-tuning (training/pipeline_finetune.py), on a tiny synthetic COCO set written by the generator.

References: the crop geometry against the peers' square_crop_transform (independent code: an affine
matrix, not RoIAlign boxes) applied to the annotation file's own joints; the losses against NumPy
formulas; resume against an uninterrupted run; paste_occluders against the joint-extent band its
docstring describes; heatmap targets against a NumPy Gaussian.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from occluded_ppe_ros.model.movenet import load_movenet_single_pose
from occluded_ppe_ros.model.pipeline import PipelineConfig, PoseStage
from occluded_ppe_ros.skeleton import COCO17_INDEX, FLIP_PERMUTATION, coco17_to_13
from occluded_ppe_training.datasets.coco import CocoPersonKeypoints
from occluded_ppe_training.datasets.synthetic import SynthConfig, generate_dataset
from occluded_ppe_training.pipeline_heads import (MIN_BOX_SIDE, CropSet, build_crop_set, head_losses,
                                                  train_heads)

pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')
torch.set_num_threads(2)
CONFIG = PipelineConfig(pose_variant='lightning', detectors=('yolox',))
SIZE = CONFIG.pose_config.input_size            # 192
HEAT = CONFIG.pose_config.heatmap_size          # 48


def quiet(*_args, **_kwargs) -> None:
    pass


def fresh_stage() -> PoseStage:
    torch.manual_seed(0)
    stage = PoseStage(CONFIG)
    stage.movenet.load_state_dict(load_movenet_single_pose('lightning').state_dict())
    return stage.eval()


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp('synthetic_people')
    generate_dataset(out, 3, seed=4, config=SynthConfig(width=256, height=192, max_people=2,
                                                        occluder_probability=0.8))
    return out, json.loads((out / 'annotations.json').read_text())


@pytest.fixture(scope='module')
def crop_set(synthetic):
    out, _ = synthetic
    dataset = CocoPersonKeypoints(out / 'annotations.json', out / 'images')
    stage = fresh_stage()
    crops = build_crop_set(stage, dataset, {info['id'] for info in dataset.images}, jitters=1, seed=0,
                           log=quiet)
    return crops, dataset


# ----------------------------------------------------------------------------------------------------
# the crop set
# ----------------------------------------------------------------------------------------------------

def test_crop_set_geometry_matches_an_affine_reference(synthetic, crop_set):
    from occluded_ppe_ros.peers import square_crop_transform

    _, data = synthetic
    crops, _ = crop_set
    people = [a for a in data['annotations'] if min(a['bbox'][2:]) >= MIN_BOX_SIDE]
    count = len(people)
    assert count >= 2
    # every person once, then mirrored (one chunk: all plain crops first, then all mirrored ones)
    assert crops.maps.shape[0] == 2 * count and crops.crops.shape == (2 * count, 3, SIZE, SIZE)
    assert crops.crops.dtype == torch.uint8 and crops.maps.shape[-2:] == (HEAT, HEAT)
    assert crops.image_ids.tolist() == [a['image_id'] for a in people] * 2
    for index, annotation in enumerate(people):
        x, y, w, h = annotation['bbox']
        transform = square_crop_transform(np.array([x, y, x + w, y + h]), SIZE, CONFIG.crop_margin)
        joints = coco17_to_13(np.array(annotation['keypoints'], np.float32).reshape(17, 3))
        labelled = joints[:, 2] > 0
        expected = joints[:, :2] @ transform[:, :2].T + transform[:, 2]
        expected[~labelled] = 0
        np.testing.assert_array_equal(crops.joint_visibility[index].numpy(), joints[:, 2].astype(np.int64))
        np.testing.assert_allclose(crops.joints_crop[index].numpy(), expected, atol=1e-2)
        # mirrored: joints swap sides and x -> S - x (continuous coordinates)
        mirrored = crops.joints_crop[count + index].numpy()
        flipped = expected[list(FLIP_PERMUTATION)]
        flipped_labelled = labelled[list(FLIP_PERMUTATION)]
        flipped[flipped_labelled, 0] = SIZE - flipped[flipped_labelled, 0]
        np.testing.assert_allclose(mirrored, flipped, atol=1e-2)
        np.testing.assert_array_equal(crops.crops[count + index].numpy(),
                                      crops.crops[index].numpy()[..., ::-1])
        np.testing.assert_array_equal(crops.mask_targets[count + index].numpy(),
                                      crops.mask_targets[index].numpy()[:, ::-1])
    # mask targets are binary and hold the person (its visible area, in crop cells, is not empty)
    assert set(np.unique(crops.mask_targets.numpy())) <= {0.0, 1.0}
    assert (crops.mask_targets.sum((1, 2)) > 20).all()


def test_mask_targets_are_the_visible_mask_in_the_crop(synthetic, crop_set):
    """Against the annotation's RLE mask warped by the affine reference into the h x h crop grid."""
    import cv2
    from pycocotools import mask as mask_utils

    from occluded_ppe_ros.peers import square_crop_transform

    _, data = synthetic
    crops, _ = crop_set
    people = [a for a in data['annotations'] if min(a['bbox'][2:]) >= MIN_BOX_SIDE]
    for index, annotation in enumerate(people):
        x, y, w, h = annotation['bbox']
        transform = square_crop_transform(np.array([x, y, x + w, y + h]), HEAT, CONFIG.crop_margin)
        # warpAffine maps pixel centres: shift by half a pixel on both sides of the map
        transform[:, 2] += transform[:, :2].sum(1) * 0.5 - 0.5
        mask = mask_utils.decode(annotation['segmentation']).astype(np.float32)
        expected = cv2.warpAffine(mask, transform, (HEAT, HEAT), flags=cv2.INTER_LINEAR) > 0.5
        got = crops.mask_targets[index].numpy() > 0.5
        iou = (expected & got).sum() / max((expected | got).sum(), 1)
        assert iou > 0.85, (index, iou)


# ----------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------

def test_head_losses_match_numpy_and_are_finite(crop_set):
    crops, _ = crop_set
    stage = fresh_stage()
    index = torch.arange(crops.maps.shape[0])
    losses = head_losses(stage, crops, index, occluded_weight=3.0)
    assert set(losses) == {'loss_mask', 'loss_occlusion'}
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())
    with torch.no_grad():
        mask_logits, occlusion_logits = stage.head_outputs(crops.maps, crops.keypoints17)
    z, t = mask_logits[:, 0].double().numpy(), crops.mask_targets.double().numpy()
    bce = lambda z, t: np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))   # noqa: E731
    assert losses['loss_mask'].item() == pytest.approx(bce(z, t).mean(), rel=1e-5)
    v = crops.joint_visibility.numpy()
    per_joint = bce(occlusion_logits.double().numpy(), (v == 1).astype(float)) * np.where(v == 1, 3.0, 1.0)
    expected = (per_joint * (v > 0)).sum() / (v > 0).sum()
    assert losses['loss_occlusion'].item() == pytest.approx(expected, rel=1e-5)


def test_a_batch_without_labelled_joints_gives_a_graph_connected_zero(crop_set):
    crops, _ = crop_set
    unlabelled = CropSet(crops.maps, crops.keypoints17, crops.mask_targets,
                         torch.zeros_like(crops.joint_visibility), crops.image_ids, crops.crops,
                         torch.zeros_like(crops.joints_crop))
    stage = fresh_stage()
    losses = head_losses(stage, unlabelled, torch.arange(3), occluded_weight=2.0)
    assert losses['loss_occlusion'].item() == 0.0 and torch.isfinite(losses['loss_mask'])
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in stage.occlusion_head.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.mask_head.parameters())


# ----------------------------------------------------------------------------------------------------
# train_heads and resume
# ----------------------------------------------------------------------------------------------------

class Interrupted(Exception):
    pass


def test_train_heads_resumes_where_it_stopped(crop_set, tmp_path):
    crops, _ = crop_set
    # 1) two epochs, then the same work folder resumed to three
    stage = fresh_stage()
    first = train_heads(stage, crops, tmp_path / 'a', epochs=2, batch_size=4, lr=2e-3, seed=0, resume=False,
                        log=quiet)
    assert [r['epoch'] for r in first['history']] == [1, 2]
    assert all(math.isfinite(r['loss_mask']) and math.isfinite(r['loss_occlusion']) for r in first['history'])
    assert first['crops'] == crops.maps.shape[0]
    saved = torch.load(tmp_path / 'a' / 'last.pt', weights_only=True)
    assert saved['epoch'] == 2 and saved['format'] == 'occluded_ppe/pipeline_heads/1'
    lines = []
    resumed = train_heads(fresh_stage(), crops, tmp_path / 'a', epochs=3, batch_size=4, lr=2e-3, seed=0,
                          resume=True, log=lines.append)
    assert any('resumed' in line and 'epoch 2' in line for line in lines)
    assert len(resumed['history']) == 3 and resumed['history'][:2] == first['history']
    assert resumed['history'][2]['epoch'] == 3

    # 2) an interrupted three-epoch run (killed while writing epoch 3's log line, i.e. after epoch 2 was
    #    saved), resumed, ends where the uninterrupted run ends
    straight_stage = fresh_stage()
    straight = train_heads(straight_stage, crops, tmp_path / 'b', epochs=3, batch_size=4, lr=2e-3, seed=0,
                           resume=False, log=quiet)

    def stop_at_epoch_3(line):
        if '"epoch": 3' in line:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_heads(fresh_stage(), crops, tmp_path / 'c', epochs=3, batch_size=4, lr=2e-3, seed=0,
                    resume=False, log=stop_at_epoch_3)
    stage_c = fresh_stage()
    again = train_heads(stage_c, crops, tmp_path / 'c', epochs=3, batch_size=4, lr=2e-3, seed=0, resume=True,
                        log=quiet)
    strip = lambda history: [{k: v for k, v in r.items() if k != 'seconds'} for r in history]  # noqa: E731
    assert strip(again['history']) == strip(straight['history'])
    for name, value in straight_stage.mask_head.state_dict().items():
        torch.testing.assert_close(stage_c.mask_head.state_dict()[name], value, rtol=0, atol=0)
    for name, value in straight_stage.occlusion_head.state_dict().items():
        torch.testing.assert_close(stage_c.occlusion_head.state_dict()[name], value, rtol=0, atol=0)


def test_train_heads_extended_by_resume_still_learns(crop_set, tmp_path):
    """Two epochs, then `--resume --epochs 3`: the added epoch must train the heads (a learning rate > 0)."""
    crops, _ = crop_set
    stage = fresh_stage()
    train_heads(stage, crops, tmp_path, epochs=2, batch_size=4, lr=2e-3, seed=0, resume=False, log=quiet)
    after_two = copy.deepcopy(stage.mask_head.state_dict())
    resumed_stage = fresh_stage()
    train_heads(resumed_stage, crops, tmp_path, epochs=3, batch_size=4, lr=2e-3, seed=0, resume=True,
                log=quiet)
    resumed = resumed_stage.mask_head.state_dict()
    change = max(float((resumed[k] - v).abs().max()) for k, v in after_two.items())
    assert change > 0, 'the resumed epoch 3 left the mask head unchanged (learning rate 0?)'


def test_resume_rejects_a_foreign_last_pt(crop_set, tmp_path):
    crops, _ = crop_set
    torch.save({'format': 'something/else', 'epoch': 1}, tmp_path / 'last.pt')
    with pytest.raises(ValueError, match=r"last\.pt.*'something/else'"):
        train_heads(fresh_stage(), crops, tmp_path, epochs=2, batch_size=4, lr=1e-3, seed=0, resume=True,
                    log=quiet)


# ----------------------------------------------------------------------------------------------------
# fine-tuning parts (training/pipeline_finetune.py)
# ----------------------------------------------------------------------------------------------------

def finetune_module():
    return pytest.importorskip('occluded_ppe_training.pipeline_finetune')


def occluder_inputs(count=8, size=64, seed=0):
    rng = np.random.default_rng(seed)
    crops = torch.from_numpy(rng.random((count, 3, size, size), dtype=np.float32))
    joints = torch.from_numpy(rng.uniform(14, 44, (count, 13, 2)).astype(np.float32))
    visibility = torch.from_numpy(rng.integers(1, 3, (count, 13)))
    visibility[:, :3] = 0
    joints[:, :3] = torch.tensor([1.0, 62.0])            # unlabelled joints far away: must not count
    visibility[-1] = 0
    visibility[-1, 5] = 2                                 # one labelled joint: left alone
    return crops, joints, visibility


def test_paste_occluders_changes_pixels_only_in_the_joint_extent_band():
    paste_occluders = finetune_module().paste_occluders
    crops, joints, visibility = occluder_inputs()
    size = crops.shape[-1]
    assert paste_occluders(crops, joints, visibility, 0.0, torch.Generator().manual_seed(0)) is crops
    changed_any = 0
    for seed in range(6):
        out = paste_occluders(crops, joints, visibility, 0.3, torch.Generator().manual_seed(seed))
        again = paste_occluders(crops, joints, visibility, 0.3, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out, again, rtol=0, atol=0)            # reproducible from the generator
        assert out.shape == crops.shape and crops.data_ptr() != out.data_ptr()
        for n in range(crops.shape[0]):
            changed = (out[n] != crops[n]).any(0).numpy()
            labelled = visibility[n] > 0
            if labelled.sum() < 2:
                assert not changed.any()
                continue
            low = joints[n][labelled].min(0).values.clamp(0, size - 1).numpy()
            high = joints[n][labelled].max(0).values.clamp(1, size).numpy()
            extent = np.maximum(high - low, 8.0)
            # the band: the side, bottom and block occluders of the docstring, in whole pixels
            x_lo, x_hi = low[0] - 0.1 * extent[0] - 1, low[0] + 1.1 * extent[0] + 1
            y_lo, y_hi = min(low[1], high[1] - extent[1]) - 1, low[1] + 1.1 * extent[1] + 1
            rows, cols = np.nonzero(changed)
            assert (cols >= x_lo).all() and (cols < x_hi).all(), (seed, n)
            assert (rows >= y_lo).all() and (rows < y_hi).all(), (seed, n)
            # pasted pixels come from some crop of the batch (a real texture), not noise
            changed_any += changed.any()
    assert changed_any >= 30       # nearly every (seed, labelled crop) got an occluder (6 x 7 = 42)


def test_heatmap_targets_peak_at_the_joint_cell():
    heatmap_targets = finetune_module().heatmap_targets
    stride, heat, sigma = 4.0, 48, 1.5
    rng = np.random.default_rng(2)
    joints = torch.from_numpy(rng.uniform(0, 190, (3, 13, 2)).astype(np.float32))
    visibility = torch.from_numpy(rng.integers(0, 3, (3, 13)))
    target, cells, offsets = heatmap_targets(joints, visibility, heat, stride, sigma)
    assert target.shape == (3, 17, heat, heat)
    position = joints.double().numpy() / stride
    grid = np.arange(heat)
    for n in range(3):
        for j in range(13):
            channel = target[n, COCO17_INDEX[j]].double().numpy()
            if visibility[n, j] == 0:
                assert not channel.any()
                continue
            px, py = position[n, j]
            expected = np.exp(-((grid[None, :] - px) ** 2 + (grid[:, None] - py) ** 2) / (2 * sigma ** 2))
            np.testing.assert_allclose(channel, expected, atol=1e-6)
            row, col = np.unravel_index(channel.argmax(), channel.shape)
            assert (col, row) == (round(px), round(py)) == tuple(cells[n, j].tolist())
            np.testing.assert_allclose(offsets[n, j].numpy(), [px - col, py - row], atol=1e-5)
    others = [c for c in range(17) if c not in COCO17_INDEX]
    assert not target[:, others].any()


def test_focal_heatmap_loss_matches_the_centernet_formula():
    focal_heatmap_loss = finetune_module().focal_heatmap_loss
    rng = np.random.default_rng(7)
    predicted = rng.uniform(0, 1, (2, 17, 6, 6))
    target = rng.uniform(0, 0.9, (2, 17, 6, 6))
    target[0, 3, 2, 4] = target[1, 5, 0, 0] = target[1, 9, 5, 5] = 1.0
    mask = rng.random((2, 17)) > 0.3
    mask[0, 3] = mask[1, 5] = True
    mask[1, 9] = False                                   # a peak in a masked-out channel does not count
    p = np.clip(predicted, 1e-4, 1 - 1e-4)
    positive = target >= 0.99
    loss = np.where(positive, -np.log(p) * (1 - p) ** 2, -np.log(1 - p) * p ** 2 * (1 - target) ** 4)
    expected = (loss * mask[..., None, None]).sum() / 2
    got = focal_heatmap_loss(torch.from_numpy(predicted), torch.from_numpy(target), torch.from_numpy(mask))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # no positive cell at all: divided by 1, still finite
    none = focal_heatmap_loss(torch.from_numpy(predicted), torch.zeros(2, 17, 6, 6), torch.from_numpy(mask))
    assert torch.isfinite(none)


def test_finetune_resumes_where_it_stopped(crop_set, tmp_path, monkeypatch):
    """Two iterations straight vs. killed right after the iteration-1 checkpoint and resumed: same
    weights, same records; the trained parts moved, the body and the detector did not."""
    module = finetune_module()
    from occluded_ppe_ros.model.pipeline import build_pipeline

    crops, _ = crop_set

    def fresh_net():
        torch.manual_seed(0)
        net = build_pipeline(CONFIG)
        net.pose.movenet.load_state_dict(load_movenet_single_pose('lightning').state_dict())
        return net

    settings = {'iterations': 2, 'batch_size': 2, 'lr': 1e-3, 'max_mask_ratio': 0.3, 'domain_weight': 1.0,
                'reversal_ramp': 1, 'save_every': 1, 'seed': 3, 'log': quiet}
    straight = fresh_net()
    start = copy.deepcopy(straight.state_dict())
    history = module.finetune(straight, crops, crops, tmp_path / 'a', resume=False, **settings)
    assert history and history[-1]['iteration'] == 2
    assert all(math.isfinite(history[-1][k]) for k in ('loss_heatmap', 'loss_offset', 'loss_domain'))
    moved = lambda prefix: any(not torch.equal(v, start[k]) for k, v in straight.state_dict().items()  # noqa: E731
                               if k.startswith(prefix))
    assert moved('pose.movenet.decoder.') and moved('pose.domain_classifier.')
    assert not moved('pose.movenet.body.') and not moved('detector.') and not moved('pose.mask_head.')

    original_save = module.atomic_torch_save

    def save_then_die(payload, path):
        original_save(payload, path)
        if payload['iteration'] == 1:
            raise Interrupted

    monkeypatch.setattr(module, 'atomic_torch_save', save_then_die)
    with pytest.raises(Interrupted):
        module.finetune(fresh_net(), crops, crops, tmp_path / 'b', resume=False, **settings)
    monkeypatch.setattr(module, 'atomic_torch_save', original_save)
    resumed = fresh_net()
    again = module.finetune(resumed, crops, crops, tmp_path / 'b', resume=True, **settings)
    strip = lambda records: [{k: v for k, v in r.items() if k != 'seconds'} for r in records]  # noqa: E731
    assert strip(again) == strip(history)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_hide_under_hides_the_seen_joints_and_mask_cells_under_the_occluder_only():
    from occluded_ppe_training.occluders import hide_under

    joints = torch.tensor([[10.0, 10.0], [30.0, 30.0], [31.0, 45.0], [60.0, 60.0]])
    visibility = torch.tensor([2, 2, 1, 0])
    mask = torch.ones(16, 16)
    stride = 4.0                                           # a 64-pixel crop, 16 x 16 mask cells
    hidden, covered = hide_under((24, 24, 40, 48), joints, visibility, mask, stride)
    assert hidden.tolist() == [2, 1, 1, 0]                 # seen under it -> hidden; v=1 and v=0 kept
    assert visibility.tolist() == [2, 2, 1, 0]             # inputs untouched
    # pixels 24..39 x 24..47 are cells 6..9 x 6..11 (cell c spans [4c, 4c + 4))
    expected = torch.ones(16, 16)
    expected[6:12, 6:10] = 0.0
    torch.testing.assert_close(covered, expected, rtol=0, atol=0)
    assert mask.all()


def test_occluded_copies_add_crops_whose_hidden_joints_lie_under_pasted_texture(synthetic):
    out, _ = synthetic
    dataset = CocoPersonKeypoints(out / 'annotations.json', out / 'images')
    ids = {info['id'] for info in dataset.images}
    plain = build_crop_set(fresh_stage(), dataset, ids, jitters=1, seed=0, log=quiet)
    both = build_crop_set(fresh_stage(), dataset, ids, jitters=1, seed=0, log=quiet, occluded_copies=1)
    count = plain.maps.shape[0]                        # originals and their mirrors, in chunks of 16
    assert count < both.maps.shape[0] <= 2 * count
    # the copies only add hidden joints and remove mask: more v=1, fewer mask pixels in total
    assert int((both.joint_visibility == 1).sum()) > int((plain.joint_visibility == 1).sum())
    extra = both.maps.shape[0] - count
    # each extra crop is an original's pixels with one rectangle replaced: find its original by its joints
    changed_joints = 0
    for index in range(both.maps.shape[0]):
        matches = [o for o in range(count) if torch.equal(plain.joints_crop[o], both.joints_crop[index])
                   and not torch.equal(plain.crops[o], both.crops[index])]
        if not matches:
            continue
        original = matches[0]
        differs = (both.crops[index] != plain.crops[original]).any(0)
        rows, cols = torch.nonzero(differs, as_tuple=True)
        now_hidden = (both.joint_visibility[index] == 1) & (plain.joint_visibility[original] == 2)
        for x, y in both.joints_crop[index][now_hidden].tolist():
            # a newly hidden joint lies inside the pasted rectangle's bounds
            assert cols.min() - 1 <= x <= cols.max() + 1 and rows.min() - 1 <= y <= rows.max() + 1
            changed_joints += 1
        assert float(both.mask_targets[index].sum()) <= float(plain.mask_targets[original].sum())
    assert extra > 0 and changed_joints > 0
