"""The network: configs, backbones, training losses (both domains, both stages, empty targets), the
domain-adaptation gradient rules, the deployed graph's fixed-K outputs and checkpoints."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from occluded_ppe_ros.model.backbone import Body, InputNormalization, TFSamePadConv2d
from occluded_ppe_ros.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from occluded_ppe_ros.model.checkpoint import main as checkpoint_main
from occluded_ppe_ros.model.config import BackboneConfig, DetectionConfig, ModelConfig
from occluded_ppe_ros.model.deploy import OUTPUT_NAMES, DeployModel
from occluded_ppe_ros.model.detection import detection_loss
from occluded_ppe_ros.model.losses import LOSS_TERMS, facing_labels, loss_term
from occluded_ppe_ros.model.network import build_model

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 64, 96
TINY = {
    'fpn': {'channels': 32},
    'detection': {'head_channels': 16, 'pre_nms_topk': 20},
    'mask': {'channels': 16, 'roi_size': 7, 'resolution': 14, 'num_convs': 1},
    'pose': {'roi_height': 8, 'roi_width': 6, 'encoder_channels': 32, 'encoder_convs': 2,
             'decoder_channels': 16, 'domain_hidden': 16},
    'inference': {'input_height': HEIGHT, 'input_width': WIDTH, 'max_detections': 5},
}
STAGE1_KEYS = {'loss_det_heatmap', 'loss_det_box', 'loss_seg_mask'}
STAGE2_KEYS = STAGE1_KEYS | {'loss_dc_domain', 'loss_pe_heatmap', 'loss_pe_occlusion'}


def tiny_model(seed: int = 0, freeze_bodies: bool = True, **pose) -> torch.nn.Module:
    """A small-headed ResNet-18 network; the bodies' weight gradients (the bulk of a backward pass on a
    CPU) are switched off unless a test needs them: the heads, FPN and pose stage still train."""
    data = copy.deepcopy(TINY)
    data['pose'].update(pose)
    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_dict(data))
    if freeze_bodies:
        for branch in model.branches.values():
            branch.encoder.body.requires_grad_(False)
    return model


def make_target(count: int, with_keypoints: bool = True, ignore: bool = False) -> dict[str, torch.Tensor]:
    """`count` pedestrians (<= 2) in a 64 x 96 image, with masks over their upper 2/3 and 13 joints."""
    boxes = torch.tensor([[8.0, 6.0, 30.0, 60.0], [50.0, 10.0, 70.0, 58.0]])[:count]
    masks = torch.zeros((count, HEIGHT, WIDTH), dtype=torch.uint8)
    keypoints = torch.zeros((count, 13, 3))
    for index, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        masks[index, int(y1):int(y1 + (y2 - y1) * 2 / 3), int(x1):int(x2)] = 1
        keypoints[index, :, 0] = torch.linspace(x1 + 1, x2 - 1, 13)
        keypoints[index, :, 1] = torch.linspace(y1 + 1, y2 - 1, 13)
        keypoints[index, :, 2] = 2.0
        keypoints[index, 11:, 2] = 1.0                            # ankles labelled but occluded
        keypoints[index, 3, 2] = 0.0                              # one joint unlabelled
    if not with_keypoints:
        keypoints.zero_()
    return {
        'boxes': boxes, 'labels': torch.zeros(count, dtype=torch.int64), 'masks': masks,
        'has_mask': torch.ones(count, dtype=torch.bool), 'keypoints': keypoints,
        'has_keypoints': torch.full((count,), with_keypoints, dtype=torch.bool),
        'visible_boxes': boxes.clone(),
        'ignore_boxes': torch.tensor([[75.0, 0.0, 96.0, 30.0]]) if ignore else torch.zeros((0, 4)),
        'image_id': torch.tensor(7),
    }


# ----------------------------------------------------------------- configs
def test_config_round_trips_and_shipped_yaml_files_load():
    for name in ('resnet18', 'resnet50', 'mobilenet_v2'):
        cfg = ModelConfig.from_yaml(REPO / 'config' / f'model_{name}.yaml')
        assert cfg.backbone.name == name
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    mobile = ModelConfig.from_yaml(REPO / 'config' / 'model_mobilenet_v2.yaml')
    assert mobile.backbone.width_mult == 1.5 and mobile.backbone.tf_same_padding
    assert mobile.backbone.resolved_normalization() == 'symmetric'
    assert ModelConfig().backbone.resolved_normalization() == 'imagenet'
    assert ModelConfig.class_names('citypersons') == ('pedestrian', 'rider')
    assert ModelConfig.class_names('coco') == ('person',)


def test_config_errors_name_the_bad_value(tmp_path):
    with pytest.raises(ValueError, match='resnet19'):
        ModelConfig.from_dict({'backbone': {'name': 'resnet19'}})
    with pytest.raises(ValueError, match='input_height.*100'):
        ModelConfig.from_dict({'inference': {'input_height': 100}})
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model:\n  fpn:\n    chanels: 3\n')
    with pytest.raises(ValueError, match=r"chanels.*bad\.yaml"):
        ModelConfig.from_yaml(bad)
    with pytest.raises(ValueError, match='kitti'):
        ModelConfig.class_names('kitti')
    with pytest.raises(ValueError, match=r"movenet_keypoint_features needs .* got 'resnet18' and 4"):
        ModelConfig.from_dict({'fpn': {'movenet_keypoint_features': True}})
    with pytest.raises(ValueError, match=r"movenet_keypoint_features needs .* got 'mobilenet_v2' and 8"):
        ModelConfig.from_dict({'backbone': {'name': 'mobilenet_v2'},
                               'fpn': {'movenet_keypoint_features': True, 'output_stride': 8}})
    with pytest.raises(ValueError, match=r'encoder_dilations.*\[1, 2\]'):
        ModelConfig.from_dict({'pose': {'encoder_convs': 3, 'encoder_dilations': [1, 2]}})


# ----------------------------------------------------------------- backbones
def test_every_backbone_has_the_documented_stage_channels():
    # Built on the meta device: shapes without allocating or initialising ResNeXt-101's weights.
    expected = {'resnet18': (64, 128, 256, 512), 'resnet50': (256, 512, 1024, 2048),
                'resnet101': (256, 512, 1024, 2048), 'resnext101_32x8d': (256, 512, 1024, 2048)}
    with torch.device('meta'):
        for name, channels in expected.items():
            assert Body(BackboneConfig(name=name)).out_channels == channels
        wide = Body(BackboneConfig(name='mobilenet_v2', width_mult=1.5))
    assert wide.out_channels == (40, 48, 144, 1280)
    assert tuple(wide.features[18][0].weight.shape) == (1280, 480, 1, 1)


def test_body_stage_strides_and_mobilenet_key_names():
    body = Body(BackboneConfig(name='mobilenet_v2'))
    reference = torchvision.models.mobilenet_v2(weights=None)
    assert set(body.state_dict()) == {k for k in reference.state_dict() if k.startswith('features.')}
    with torch.no_grad():
        outputs = body(torch.rand(1, 3, 64, 96))
    assert [tuple(o.shape[2:]) for o in outputs] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [o.shape[1] for o in outputs] == list(body.out_channels)


@pytest.mark.parametrize('name', ['mobilenet_v2', 'resnet18'])
def test_frozen_stages_get_no_gradient_and_the_rest_trains(name):
    body = Body(BackboneConfig(name=name, frozen_stages=2))
    frozen = {id(p) for stage in (0, 1) for p in body.stage_parameters(stage)}
    trained = {id(p) for stage in (2, 3) for p in body.stage_parameters(stage)}
    every = {id(p) for p in body.parameters()}
    assert frozen and trained and frozen | trained == every and not frozen & trained
    sum(o.sum() for o in body(torch.rand(1, 3, 64, 64))).backward()
    for parameter in body.parameters():
        assert (parameter.grad is None) == (id(parameter) in frozen)
    with pytest.raises(ValueError, match='frozen_stages must be in 0..4, got 5'):
        ModelConfig.from_dict({'backbone': {'frozen_stages': 5}})


def test_tf_same_padding_pads_bottom_right_before_stride_two_convs():
    conv = TFSamePadConv2d(3, 4, 3, stride=2, padding=0)
    x = torch.rand(1, 3, 8, 10)
    reference = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), reference)
    body = Body(BackboneConfig(name='mobilenet_v2', tf_same_padding=True))
    assert isinstance(body.features[0][0], TFSamePadConv2d)
    assert all(not isinstance(m, TFSamePadConv2d) or m.stride == (2, 2) for m in body.modules())
    assert sum(isinstance(m, TFSamePadConv2d) for m in body.modules()) == 5   # the 5 stride-2 convs


def test_pretrained_path_loads_torchvision_named_weights(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / 'mobilenet.pt'
    torch.save(source.state_dict(), path)                      # includes classifier.* (ignored)
    body = Body(BackboneConfig(name='mobilenet_v2', pretrained_path=str(path)))
    torch.testing.assert_close(body.features[5].conv[1][0].weight, source.features[5].conv[1][0].weight)
    torch.save({'features.0.0.weight': torch.zeros(1)}, path)
    with pytest.raises(ValueError, match='do not fit'):
        Body(BackboneConfig(name='mobilenet_v2', pretrained_path=str(path)))
    with pytest.raises(FileNotFoundError, match='missing.pt'):
        Body(BackboneConfig(name='resnet18', pretrained_path=str(tmp_path / 'missing.pt')))


def test_input_normalization_per_backbone():
    x = torch.full((1, 3, 2, 2), 0.75)
    torch.testing.assert_close(InputNormalization('symmetric')(x), torch.full_like(x, 0.5))
    expected = (0.75 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(InputNormalization('imagenet')(x)[0, :, 0, 0], expected)


# ----------------------------------------------------------------- training forward
@pytest.mark.parametrize('domain', ['citypersons', 'coco'])
def test_training_forward_returns_named_finite_losses_for_both_stages(domain):
    model = tiny_model().train()
    images = torch.rand(2, 3, HEIGHT, WIDTH)
    targets = [make_target(2, with_keypoints=domain == 'coco', ignore=True), make_target(0)]
    losses1 = model(images, targets, domain=domain, stage=1)
    assert set(losses1) == STAGE1_KEYS
    losses2 = model(images, targets, domain=domain, stage=2, mask_ratio=0.3)
    assert set(losses2) == STAGE2_KEYS and set(losses2) <= set(LOSS_TERMS)
    for name, value in losses2.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    sum(losses2.values()).backward()
    if domain == 'coco':
        assert float(losses2['loss_pe_heatmap'].detach()) > 0
        assert float(losses2['loss_pe_occlusion'].detach()) > 0
    else:
        assert float(losses2['loss_pe_heatmap'].detach()) == 0.0


def test_facing_labels_follow_the_left_right_order_of_shoulders_then_hips():
    keypoints = torch.zeros((4, 13, 3))
    boxes = torch.tensor([[0.0, 0.0, 20.0, 60.0]]).expand(4, 4)
    keypoints[0, [1, 2], 0] = torch.tensor([15.0, 5.0])         # left shoulder on the image right: facing
    keypoints[1, [1, 2], 0] = torch.tensor([5.0, 15.0])         # on the image left: seen from behind
    keypoints[2, [1, 2], 0] = torch.tensor([10.5, 10.0])        # side view (0.5 px apart): no label
    keypoints[2, [7, 8], 0] = torch.tensor([4.0, 12.0])         # ... unless the hips decide: behind
    keypoints[:3, [1, 2, 7, 8], 2] = 2.0
    keypoints[3, [1, 2], 0] = torch.tensor([15.0, 5.0])         # not labelled (v = 0): no label
    faces, labelled = facing_labels(keypoints, boxes)
    assert labelled.tolist() == [True, True, True, False]
    assert faces[:3].tolist() == [1.0, 0.0, 0.0]


def test_facing_loss_is_a_pose_term_trained_only_when_weighted():
    images = torch.rand(2, 3, HEIGHT, WIDTH)
    targets = [make_target(2), make_target(1)]
    for target in targets:   # spread the shoulders so every person has a facing label (facing the camera)
        target['keypoints'][:, 1, 0] = target['boxes'][:, 2] - 2.0
        target['keypoints'][:, 2, 0] = target['boxes'][:, 0] + 2.0
    plain = tiny_model().train()(images, targets, domain='coco', stage=2)
    assert 'loss_pe_facing' not in plain and tiny_model().pose.facing is None
    model = tiny_model(facing_loss_weight=0.5, global_context=True).train()
    losses = model(images, targets, domain='coco', stage=2)
    assert set(losses) == STAGE2_KEYS | {'loss_pe_facing'} and loss_term('loss_pe_facing') == 'pe'
    assert float(losses['loss_pe_facing'].detach()) > 0
    losses['loss_pe_facing'].backward()
    assert model.pose.facing.weight.grad.abs().sum() > 0
    assert model.pose.encoder[0].weight.grad.abs().sum() > 0     # it trains E_Pose, not only its own layer
    target_losses = model(images, [make_target(2, with_keypoints=False)] * 2, domain='citypersons', stage=2)
    assert float(target_losses['loss_pe_facing'].detach()) == 0.0   # no keypoints, no facing label


def test_coordinate_loss_is_a_pose_term_trained_only_when_weighted():
    images = torch.rand(2, 3, HEIGHT, WIDTH)
    targets = [make_target(2), make_target(1)]
    assert 'loss_pe_coordinate' not in tiny_model().train()(images, targets, domain='coco', stage=2)
    model = tiny_model(coordinate_loss_weight=0.5).train()
    losses = model(images, targets, domain='coco', stage=2)
    assert set(losses) == STAGE2_KEYS | {'loss_pe_coordinate'} and loss_term('loss_pe_coordinate') == 'pe'
    assert float(losses['loss_pe_coordinate'].detach()) > 0
    losses['loss_pe_coordinate'].backward()
    assert model.pose.decoder[-1].weight.grad.abs().sum() > 0
    target_losses = model(images, [make_target(2, with_keypoints=False)] * 2, domain='citypersons', stage=2)
    assert float(target_losses['loss_pe_coordinate'].detach()) == 0.0
    with pytest.raises(ValueError, match='coordinate_loss_weight.*focal'):
        ModelConfig.from_dict({'pose': {'coordinate_loss_weight': 1.0, 'heatmap_loss': 'focal'}})
    with pytest.raises(ValueError, match='coordinate_loss_weight must be >= 0, got -1'):
        ModelConfig.from_dict({'pose': {'coordinate_loss_weight': -1.0}})


def test_detail_skip_reads_the_gated_pixels_of_each_box_and_trains_only_from_the_source():
    model = tiny_model(detail_channels=8).train()
    assert 'pose.detail.0.weight' in model.state_dict()
    assert 'pose.detail.0.weight' not in tiny_model().state_dict()
    images = torch.rand(2, 3, HEIGHT, WIDTH)
    losses = model(images, [make_target(2), make_target(1)], domain='coco', stage=2, mask_ratio=0.2)
    assert set(losses) == STAGE2_KEYS
    sum(losses.values()).backward()
    for part in (model.pose.detail, model.pose.fuse):
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in part.parameters())
    model.zero_grad(set_to_none=True)
    losses = model(images, [make_target(2)] * 2, domain='citypersons', stage=2, mask_ratio=0.2)
    sum(losses.values()).backward()          # the target domain never reaches D_Pose, nor its skip
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0
               for p in [*model.pose.detail.parameters(), *model.pose.fuse.parameters()])
    # the crops are the box's pixels at the heatmap grid, zero wherever the gate is zero
    rois = torch.tensor([[0.0, 8.0, 6.0, 30.0, 60.0]])
    gate = torch.ones(1, 1, 8, 6)
    gate[:, :, 4:] = 0.0
    crops = model.pose.pool_detail(images, rois, gate)
    assert crops.shape == (1, 3, model.pose.heatmap_height, model.pose.heatmap_width)
    assert float(crops[:, :, -8:].abs().max()) == 0.0 and float(crops[:, :, :8].abs().max()) > 0.0
    model.eval()
    with torch.no_grad():
        (result,) = model(images[:1], domain='coco')
    assert result['keypoints'].shape[1:] == (13, 3)
    with pytest.raises(ValueError, match='detail_channels must be >= 0, got -2'):
        ModelConfig.from_dict({'pose': {'detail_channels': -2}})


def test_subcell_decoding_is_validated_against_the_heatmap_loss():
    pose = ModelConfig.from_dict({'pose': {'subcell_decoding': 'window_mean'}}).pose
    assert pose.subcell_decoding == 'window_mean'
    with pytest.raises(ValueError, match="subcell_decoding 'centroid' is not one of"):
        ModelConfig.from_dict({'pose': {'subcell_decoding': 'centroid'}})
    with pytest.raises(ValueError, match="'window_mean' needs pose.heatmap_loss softmax, got 'focal'"):
        ModelConfig.from_dict({'pose': {'subcell_decoding': 'window_mean', 'heatmap_loss': 'focal'}})


def test_empty_batch_still_gives_finite_losses_with_a_graph():
    model = tiny_model().train()
    losses = model(torch.rand(2, 3, HEIGHT, WIDTH), [make_target(0), make_target(0)], domain='coco', stage=2)
    assert set(losses) == STAGE2_KEYS
    for name, value in losses.items():
        assert torch.isfinite(value), name
        assert value.requires_grad, name
    assert float(losses['loss_det_box'].detach()) == 0.0 and float(losses['loss_seg_mask'].detach()) == 0.0
    sum(losses.values()).backward()                             # no error on an empty batch


def test_pose_decoder_gets_no_gradient_from_the_target_domain():
    model = tiny_model().train()
    images = torch.rand(1, 3, HEIGHT, WIDTH)
    # Even with keypoints present, a CityPersons (target-domain) batch must not update D_Pose.
    losses = model(images, [make_target(2, with_keypoints=True)], domain='citypersons', stage=2,
                   mask_ratio=0.2)
    sum(losses.values()).backward()
    decoder_grads = [p.grad for p in model.pose.decoder.parameters()]
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in decoder_grads)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.pose.encoder.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in model.pose.domain_classifier.parameters())
    model.zero_grad(set_to_none=True)
    losses = model(images, [make_target(2)], domain='coco', stage=2)
    sum(losses.values()).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.pose.decoder.parameters())


@pytest.mark.parametrize('heatmap_loss', ['softmax', 'focal'])
def test_every_instance_goes_through_the_pose_stage_samples_per_instance_times(heatmap_loss):
    model = tiny_model(samples_per_instance=3, heatmap_loss=heatmap_loss, gate_dilation=1).train()
    rows_seen = []
    model.pose.encoder.register_forward_hook(lambda module, args, output: rows_seen.append(output.shape[0]))
    losses = model(torch.rand(2, 3, HEIGHT, WIDTH), [make_target(2), make_target(1)], domain='coco', stage=2,
                   mask_ratio=0.2)
    assert rows_seen == [3 * (2 + 1)]
    assert all(torch.isfinite(value) for value in losses.values())
    assert float(losses['loss_pe_heatmap']) > 0.0
    model.eval()
    with torch.no_grad():
        (result,) = model(torch.rand(1, 3, HEIGHT, WIDTH), domain='coco')
    scores = result['keypoints'][..., 2]
    assert bool(((scores >= 0) & (scores <= 1)).all())


def test_domain_loss_reaches_the_pose_encoder_reversed():
    """E_Pose's gradient from L_dc with the GRL (lambda 1) is minus the one without reversal (lambda -1)."""
    images = torch.rand(1, 3, HEIGHT, WIDTH)
    grads = []
    for grl_lambda in (1.0, -1.0):
        model = tiny_model(seed=3, grl_lambda=grl_lambda).train()
        losses = model(images, [make_target(2)], domain='coco', stage=2, mask_ratio=0.0)
        losses['loss_dc_domain'].backward()
        grads.append(model.pose.encoder[0].weight.grad.clone())
        classifier_grad = model.pose.domain_classifier[0].weight.grad
        assert classifier_grad is not None and float(classifier_grad.abs().sum()) > 0
    torch.testing.assert_close(grads[0], -grads[1])
    assert float(grads[0].abs().sum()) > 0


def test_ignore_regions_give_no_negative_detection_loss():
    cfg = DetectionConfig()
    target = make_target(1, ignore=True)                       # ignore box: x 75..96, y 0..30
    logits = torch.full((1, 2, HEIGHT // 4, WIDTH // 4), -3.0)
    distances = torch.full((1, 4, HEIGHT // 4, WIDTH // 4), 4.0)
    base = detection_loss(logits, distances, [target], 2, 4, cfg)['loss_det_heatmap']
    confident = logits.clone()
    confident[0, :, 0:7, 19:24] = 5.0                          # cells whose centres lie in the ignore box
    inside = detection_loss(confident, distances, [target], 2, 4, cfg)['loss_det_heatmap']
    assert float(inside) == pytest.approx(float(base), rel=1e-6)
    outside = logits.clone()
    outside[0, :, 10:14, 19:24] = 5.0                          # same cells count, outside the ignore box
    changed = detection_loss(outside, distances, [target], 2, 4, cfg)['loss_det_heatmap']
    assert float(changed) > float(base) + 1


def test_training_input_errors_name_the_value():
    model = tiny_model()
    with pytest.raises(ValueError, match='kitti'):
        model(torch.rand(1, 3, HEIGHT, WIDTH), [make_target(1)], domain='kitti')
    with pytest.raises(ValueError, match='multiples of 32'):
        model(torch.rand(1, 3, 60, WIDTH), [make_target(1)], domain='coco')
    with pytest.raises(ValueError, match='stage'):
        model(torch.rand(1, 3, HEIGHT, WIDTH), [make_target(1)], domain='coco', stage=3)


# ----------------------------------------------------------------- inference and deploy
def test_deploy_model_outputs_fixed_k_rows_with_contract_shapes_and_dtypes():
    model = tiny_model().eval()
    deploy = DeployModel(model, 'citypersons', max_detections=5)
    with torch.no_grad():
        outputs = deploy(torch.rand(2, 3, HEIGHT, WIDTH))
    shapes = {name: tuple(value.shape) for name, value in zip(OUTPUT_NAMES, outputs)}
    assert shapes == {'boxes': (2, 5, 4), 'scores': (2, 5), 'labels': (2, 5), 'valid': (2, 5),
                      'masks': (2, 5, 14, 14), 'keypoints': (2, 5, 13, 3), 'keypoint_occluded': (2, 5, 13)}
    dtypes = {name: value.dtype for name, value in zip(OUTPUT_NAMES, outputs)}
    assert dtypes == {'boxes': torch.float32, 'scores': torch.float32, 'labels': torch.int64,
                      'valid': torch.bool, 'masks': torch.float32, 'keypoints': torch.float32,
                      'keypoint_occluded': torch.float32}
    result = dict(zip(OUTPUT_NAMES, outputs))
    assert float(result['masks'].min()) >= 0 and float(result['masks'].max()) <= 1
    boxes, keypoints = result['boxes'], result['keypoints']
    # Keypoints lie inside their boxes (heatmaps span the box).
    assert bool((keypoints[..., 0] >= boxes[..., None, 0] - 1e-4).all())
    assert bool((keypoints[..., 0] <= boxes[..., None, 2] + 1e-4).all())
    assert bool((keypoints[..., 1] >= boxes[..., None, 1] - 1e-4).all())
    assert bool((keypoints[..., 1] <= boxes[..., None, 3] + 1e-4).all())


def test_deploy_model_pads_rows_nms_removed():
    """A flat heatmap and huge boxes: every candidate box is the whole image, NMS keeps one -> 1 valid row."""
    model = tiny_model().eval()
    head = model.branches['citypersons'].detection
    with torch.no_grad():
        head.heatmap[-1].weight.zero_()
        head.box[-1].weight.zero_()
        head.box[-1].bias.fill_(5.0)
        boxes, scores, _, valid, *_ = DeployModel(model, 'citypersons', 5)(torch.rand(1, 3, HEIGHT, WIDTH))
    assert valid[0].tolist() == [True, False, False, False, False]
    assert float(scores[0, 0]) > 0 and scores[0, 1:].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert boxes[0, 0].tolist() == [0.0, 0.0, float(WIDTH), float(HEIGHT)]


def test_eval_forward_returns_the_valid_rows_of_the_deployed_graph():
    model = tiny_model().eval()
    images = torch.rand(2, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        detections = model(images, domain='coco')
        padded = dict(zip(OUTPUT_NAMES, DeployModel(model, 'coco', 5)(images)))
    assert len(detections) == 2
    for index, result in enumerate(detections):
        assert set(result) == {'boxes', 'scores', 'labels', 'masks', 'keypoints', 'keypoint_occluded'}
        keep = padded['valid'][index]
        torch.testing.assert_close(result['boxes'], padded['boxes'][index][keep])
        torch.testing.assert_close(result['keypoints'], padded['keypoints'][index][keep])
        assert bool((result['labels'] == 0).all())                 # the COCO branch has one class


# ----------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_atomic_and_reproduces_outputs(tmp_path):
    model = tiny_model().eval()
    path = save_checkpoint(tmp_path / 'sub' / 'model.pt', model, stage=2, iteration=10, metrics={'ap': 0.5})
    assert [p.name for p in path.parent.iterdir()] == ['model.pt']      # no temporary file left
    raw = torch.load(path, weights_only=True)
    assert raw['format'] == 'occluded_ppe/1' and raw['stage'] == 2 and raw['iteration'] == 10
    assert raw['metrics'] == {'ap': 0.5} and raw['train_config'] == {}
    loaded, checkpoint = model_from_checkpoint(path)
    assert checkpoint['model_config'] == model.cfg.to_dict()
    images = torch.rand(1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        expected = DeployModel(model, 'citypersons', 5)(images)
        for a, b in zip(expected, DeployModel(loaded, 'citypersons', 5)(images)):
            torch.testing.assert_close(a, b)


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    path = tmp_path / 'other.pt'
    torch.save({'state_dict': {}}, path)
    with pytest.raises(ValueError, match='lacks'):
        load_checkpoint(path)
    torch.save({'format': 'x/9', 'model_config': {}, 'model': {}}, path)
    with pytest.raises(ValueError, match='x/9'):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / 'none.pt')


def test_random_init_checkpoint_command(tmp_path):
    config = tmp_path / 'tiny.yaml'
    import yaml
    config.write_text(yaml.safe_dump({'model': TINY}))
    out = tmp_path / 'random.pt'
    assert checkpoint_main(['--config', str(config), '--out', str(out), '--seed', '1']) == 0
    model, checkpoint = model_from_checkpoint(out)
    assert checkpoint['stage'] == 0 and model.cfg.inference.input_width == WIDTH
