"""Predictor: letterbox pre-processing and the mapping back (hand-computed), mask pasting (slow
reference), post-processing of hand-made backend outputs, and the whole path on a random ResNet-18."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torchvision

from occluded_ppe_ros.inference.backends.torch_backend import TorchBackend
from occluded_ppe_ros.inference.nms import greedy_nms
from occluded_ppe_ros.inference.postprocess import paste_mask, to_pedestrians
from occluded_ppe_ros.inference.predictor import Predictor
from occluded_ppe_ros.inference.preprocess import letterbox, letterbox_geometry
from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_ros.model.checkpoint import save_checkpoint
from occluded_ppe_ros.model.config import ModelConfig
from occluded_ppe_ros.model.network import build_model

torch.set_num_threads(2)
INPUT_H, INPUT_W = 192, 256
SMALL_HEADS = {
    'backbone': {'name': 'resnet18'},
    'fpn': {'channels': 64},
    'detection': {'head_channels': 32, 'pre_nms_topk': 50},
    'mask': {'channels': 32},
    'pose': {'encoder_channels': 64, 'encoder_convs': 2, 'decoder_channels': 32, 'domain_hidden': 32},
    'inference': {'input_height': INPUT_H, 'input_width': INPUT_W, 'max_detections': 8},
}


@pytest.fixture(scope='module')
def checkpoint_path(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(SMALL_HEADS))
    return save_checkpoint(tmp_path_factory.mktemp('predictor') / 'random_resnet18.pt', model)


# ----------------------------------------------------------------- pre-processing
def test_letterbox_geometry_hand_computed():
    # 300 x 500 image into 192 x 256: scale min(0.64, 0.512) = 0.512 -> 153.6 rows round to 154, 256 columns.
    geometry = letterbox_geometry(300, 500, 192, 256)
    assert (geometry.resized_height, geometry.resized_width) == (154, 256)
    assert geometry.scale_x == pytest.approx(0.512) and geometry.scale_y == pytest.approx(154 / 300)
    # Network point (128, 77) -> image (128 / 0.512, 77 * 300 / 154) = (250, 150).
    assert geometry.to_image(np.array([128.0, 77.0])).tolist() == pytest.approx([250.0, 150.0])
    # Boxes map the same way and are clipped to the image (the padding lies below row 154).
    boxes = geometry.boxes_to_image(np.array([[25.6, 15.4, 256.0, 192.0]]))
    assert boxes[0].tolist() == pytest.approx([50.0, 30.0, 500.0, 300.0])
    # A tall image fills the height: 480 x 270 into 480 x 640 -> 480 x 270, scale exactly 1.
    tall = letterbox_geometry(480, 270, 480, 640)
    assert (tall.resized_height, tall.resized_width) == (480, 270) and tall.scale_x == 1.0


def test_letterbox_pixels_resize_pad_and_scale():
    image = np.zeros((100, 50, 3), dtype=np.uint8)
    image[:, :, 0] = 255
    image[:, :, 1] = 51
    tensor, geometry = letterbox(image, (64, 64))
    assert tensor.shape == (3, 64, 64) and tensor.dtype == np.float32
    assert (geometry.resized_height, geometry.resized_width) == (64, 32)
    np.testing.assert_allclose(tensor[0, :, :32], 1.0)
    np.testing.assert_allclose(tensor[1, :, :32], 0.2, atol=1e-6)
    assert float(np.abs(tensor[:, :, 32:]).max()) == 0.0            # right padding
    gradient = np.tile(np.arange(0, 250, 5, dtype=np.uint8)[None, :, None], (100, 1, 3))
    tensor, _ = letterbox(gradient, (64, 64), pad_value=0.5)
    expected = cv2.resize(gradient, (32, 64), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(tensor[:, :, :32], expected, atol=1e-6)
    np.testing.assert_allclose(tensor[:, :, 32:], 0.5)


def test_letterbox_rejects_non_rgb_uint8_images():
    with pytest.raises(ValueError, match='uint8'):
        letterbox(np.zeros((10, 10, 3), dtype=np.float32), (32, 32))
    with pytest.raises(ValueError, match=r'\(10, 10\)'):
        letterbox(np.zeros((10, 10), dtype=np.uint8), (32, 32))


# ----------------------------------------------------------------- post-processing
def paste_reference(mask: np.ndarray, box, height: int, width: int, threshold: float):
    """Per pixel: 0 if its centre is outside the box, else the mask read bilinearly at the box fraction
    of the centre, coordinates clamped to the border cells."""
    x1, y1, x2, y2 = box
    x0, y0 = max(int(math.floor(x1)), 0), max(int(math.floor(y1)), 0)
    xe, ye = min(int(math.ceil(x2)), width), min(int(math.ceil(y2)), height)
    m = mask.shape[0]
    out = np.zeros((ye - y0, xe - x0), dtype=bool)
    for row in range(y0, ye):
        for col in range(x0, xe):
            u = (col + 0.5 - x1) / (x2 - x1) * m - 0.5
            v = (row + 0.5 - y1) / (y2 - y1) * m - 0.5
            if not (-0.5 <= u <= m - 0.5 and -0.5 <= v <= m - 0.5):
                continue
            u, v = min(max(u, 0.0), m - 1.0), min(max(v, 0.0), m - 1.0)
            cu, cv = min(math.floor(u), m - 1), min(math.floor(v), m - 1)
            nu, nv = min(cu + 1, m - 1), min(cv + 1, m - 1)
            fu, fv = u - cu, v - cv
            value = ((1 - fv) * ((1 - fu) * mask[cv, cu] + fu * mask[cv, nu])
                     + fv * ((1 - fu) * mask[nv, cu] + fu * mask[nv, nu]))
            out[row - y0, col - x0] = value > threshold
    return out, np.array([x0, y0])


def test_paste_mask_hand_computed_and_against_slow_reference():
    ones = np.ones((4, 4), dtype=np.float32)
    mask, origin = paste_mask(ones, np.array([2.0, 3.0, 6.0, 9.0]), 20, 20, 0.5)
    assert mask.shape == (6, 4) and mask.all() and origin.tolist() == [2, 3]
    # Half-pixel box 2.5..6.5: pixel column 2 (centre 2.5) sits on the box edge and reads the border cell;
    # column 6 (centre 6.5) too; nothing lies outside the box, so the whole 5-wide crop is on.
    mask, origin = paste_mask(ones, np.array([2.5, 3.0, 6.5, 9.0]), 20, 20, 0.5)
    assert mask.shape == (6, 5) and origin.tolist() == [2, 3] and mask.all()
    # Box 2.6..6.4: the centres 2.5 and 6.5 of the crop's outer columns are outside the box -> off.
    mask, _ = paste_mask(ones, np.array([2.6, 3.0, 6.4, 9.0]), 20, 20, 0.5)
    assert not mask[:, 0].any() and mask[:, 1:4].all() and not mask[:, 4].any()
    # A left/right split mask: columns 0-1 on, 2-3 off over a 4 px box -> pixels 0, 1 on, 2, 3 off
    # (pixel 1's centre reads cell 1 exactly: u = 1.5 / 4 * 4 - 0.5 = 1).
    split = np.zeros((4, 4), dtype=np.float32)
    split[:, :2] = 1.0
    mask, _ = paste_mask(split, np.array([0.0, 0.0, 4.0, 4.0]), 10, 10, 0.5)
    assert mask[0].tolist() == [True, True, False, False]
    rng = np.random.default_rng(0)
    for _ in range(20):
        probs = rng.random((7, 7)).astype(np.float32)
        x1, y1 = rng.uniform(-5, 30, size=2)
        box = np.array([x1, y1, x1 + rng.uniform(2, 20), y1 + rng.uniform(2, 30)])
        mask, origin = paste_mask(probs, box, 40, 36, 0.5)
        ref_mask, ref_origin = paste_reference(probs, box, 40, 36, 0.5)
        assert origin.tolist() == ref_origin.tolist()
        # Float rounding may flip a pixel sitting exactly on the threshold; allow none here.
        np.testing.assert_array_equal(mask, ref_mask)


def test_greedy_nms_matches_torchvision_batched_nms():
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, 80, size=(40, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 40, size=(40, 2))], 1).astype(np.float32)
    scores = rng.random(40).astype(np.float32)
    labels = rng.integers(0, 2, size=40)
    expected = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                           torch.from_numpy(labels), 0.4).numpy()
    assert greedy_nms(boxes, scores, 0.4, labels=labels).tolist() == expected.tolist()


def hand_outputs() -> dict[str, np.ndarray]:
    """Three rows of contract-4 outputs in a 192 x 256 input: a good detection, a weak one, padding."""
    keypoints = np.zeros((3, 13, 3), dtype=np.float32)
    keypoints[0, :, 0] = np.linspace(30, 70, 13)
    keypoints[0, :, 1] = np.linspace(20, 150, 13)
    keypoints[0, :, 2] = 0.9
    occluded = np.zeros((3, 13), dtype=np.float32)
    occluded[0, 11:] = 0.8
    masks = np.zeros((3, 4, 4), dtype=np.float32)
    masks[0, :2] = 1.0                                          # upper half visible
    return {
        'boxes': np.array([[25.6, 15.4, 76.8, 154.0], [100, 10, 120, 60], [0, 0, 0, 0]], dtype=np.float32),
        'scores': np.array([0.9, 0.2, 0.0], dtype=np.float32),
        'labels': np.array([1, 0, 0], dtype=np.int64),
        'valid': np.array([True, True, False]),
        'masks': masks,
        'keypoints': keypoints,
        'keypoint_occluded': occluded,
    }


def test_to_pedestrians_thresholds_and_maps_back_to_image_pixels():
    geometry = letterbox_geometry(300, 500, 192, 256)           # scale_x 0.512, scale_y 154 / 300
    outputs = hand_outputs()
    pedestrians = to_pedestrians(outputs, geometry, ('pedestrian', 'rider'), score_threshold=0.5)
    assert len(pedestrians) == 1
    person = pedestrians[0]
    assert isinstance(person, Pedestrian)
    assert person.class_id == 1 and person.class_name == 'rider' and person.score == pytest.approx(0.9)
    assert person.box.tolist() == pytest.approx([50.0, 30.0, 150.0, 300.0])
    expected_x = np.linspace(30, 70, 13) / 0.512
    expected_y = np.linspace(20, 150, 13) * 300 / 154
    np.testing.assert_allclose(person.keypoints[:, 0], expected_x, rtol=1e-5)
    np.testing.assert_allclose(person.keypoints[:, 1], expected_y, rtol=1e-5)
    np.testing.assert_allclose(person.keypoint_scores, 0.9)
    assert person.keypoint_occluded.tolist() == [False] * 11 + [True, True]
    # Mask: box 50..150 x 30..300 in the image; the upper half of the mask is on.
    assert person.mask_origin.tolist() == [50, 30] and person.mask.shape == (270, 100)
    assert person.mask[:130].all() and not person.mask[140:].any()      # rows 0-134 read the upper half
    assert len(to_pedestrians(outputs, geometry, ('pedestrian', 'rider'), score_threshold=0.1)) == 2
    assert to_pedestrians(outputs, geometry, ('pedestrian', 'rider'), score_threshold=0.95) == []
    flags = to_pedestrians(outputs, geometry, ('pedestrian', 'rider'), 0.5, occlusion_threshold=0.9)
    assert not flags[0].keypoint_occluded.any()


# ----------------------------------------------------------------- the whole path
def test_predictor_end_to_end_on_random_resnet18(checkpoint_path):
    predictor = Predictor.from_checkpoint(checkpoint_path, backend='torch', score_threshold=0.0)
    assert predictor.input_size == (INPUT_H, INPUT_W)
    assert predictor.class_names == ['pedestrian', 'rider']
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(300, 500, 3), dtype=np.uint8)
    pedestrians = predictor.predict(image)
    assert len(pedestrians) == 8                                # score 0 keeps all K rows NMS kept
    scores = [p.score for p in pedestrians]
    assert scores == sorted(scores, reverse=True)
    for person in pedestrians:
        assert 0 <= person.box[0] <= person.box[2] <= 500 and 0 <= person.box[1] <= person.box[3] <= 300
        assert person.class_name in ('pedestrian', 'rider')
        assert person.keypoints.shape == (13, 2) and person.keypoint_scores.shape == (13,)
        assert person.keypoint_occluded.dtype == bool and person.mask.dtype == bool
        x0, y0 = person.mask_origin
        assert x0 == math.floor(person.box[0]) or x0 == 499
        assert y0 == math.floor(person.box[1]) or y0 == 299
    assert set(predictor.last_timings) == {'preprocess_ms', 'inference_ms', 'postprocess_ms', 'total_ms',
                                           'batch_size'}
    assert predictor.last_timings['inference_ms'] > 0

    # The mapping back, checked against the backend's raw network-pixel output and the hand-made scale.
    raw = predictor.backend.run(letterbox(image, (INPUT_H, INPUT_W))[0][None])
    best = int(np.argmax(np.where(raw['valid'][0], raw['scores'][0], -1)))
    np.testing.assert_allclose(pedestrians[0].box, np.clip(
        raw['boxes'][0, best] / np.array([0.512, 154 / 300, 0.512, 154 / 300]), 0, [500, 300, 500, 300]),
        rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(pedestrians[0].keypoints,
                               raw['keypoints'][0, best, :, :2] / np.array([0.512, 154 / 300]),
                               rtol=1e-4, atol=1e-3)

    # A batch of two cameras of different sizes gives the same as one at a time.
    small = rng.integers(0, 256, size=(120, 90, 3), dtype=np.uint8)
    batch = predictor.predict_batch([image, small])
    single = predictor.predict(small)
    assert len(batch) == 2 and len(batch[1]) == len(single)
    for a, b in zip(batch[1], single):
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-2)
    assert predictor.last_timings['batch_size'] == 1.0


def test_predictor_thresholds_are_validated_and_applied(checkpoint_path):
    with pytest.raises(ValueError, match='score_threshold.*1.5'):
        Predictor.from_checkpoint(checkpoint_path, backend='torch', score_threshold=1.5)
    backend = TorchBackend.from_checkpoint(checkpoint_path)
    predictor = Predictor(backend, score_threshold=0.0)
    with pytest.raises(ValueError, match='nms_threshold'):
        predictor.set_thresholds(nms_threshold=0.0)
    with pytest.raises(ValueError, match='scor_threshold'):
        predictor.set_thresholds(scor_threshold=0.3)
    with pytest.raises(ValueError, match='image 0'):
        predictor.predict(np.zeros((20, 20, 3), dtype=np.float32))
    with pytest.raises(ValueError, match='fixed by a backend'):
        Predictor(backend, input_size=(64, 64))
    image = np.random.default_rng(2).integers(0, 256, size=(192, 256, 3), dtype=np.uint8)
    everything = predictor.predict(image)
    cut = sorted(p.score for p in everything)[len(everything) // 2]
    predictor.set_thresholds(score_threshold=cut)
    assert [p.score for p in predictor.predict(image)] == [p.score for p in everything if p.score >= cut]
    predictor.set_thresholds(score_threshold=0.0, nms_threshold=0.05)
    fewer = predictor.predict(image)
    boxes = np.array([p.box for p in fewer])
    assert len(fewer) <= len(everything)
    assert greedy_nms(boxes, np.array([p.score for p in fewer]), 0.05,
                      labels=np.array([p.class_id for p in fewer])).size == len(fewer)


def test_predictor_wraps_a_network_directly_at_another_input_size():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(SMALL_HEADS))
    predictor = Predictor(model, domain='coco', input_size=(96, 128), max_detections=3, score_threshold=0.0)
    pedestrians = predictor.predict(np.zeros((48, 64, 3), dtype=np.uint8))
    assert predictor.class_names == ['person'] and len(pedestrians) <= 3
    assert all(p.class_name == 'person' for p in pedestrians)


def test_create_backend_errors_name_the_bad_value(checkpoint_path, tmp_path):
    from occluded_ppe_ros.inference.backends import create_backend

    with pytest.raises(ValueError, match='openvino'):
        create_backend('openvino', checkpoint_path)
    with pytest.raises(FileNotFoundError, match='absent.pt'):
        create_backend('torch', tmp_path / 'absent.pt')
    onnx_name = tmp_path / 'model.onnx'
    onnx_name.write_bytes(b'')
    with pytest.raises(ValueError, match='model.onnx'):
        create_backend('torch', onnx_name)
    backend = create_backend('torch', checkpoint_path, domain='coco', input_size=(64, 96), max_detections=2)
    assert backend.name == 'torch' and backend.input_size == (64, 96) and backend.class_names == ['person']
    outputs = backend.run(np.zeros((1, 3, 64, 96), dtype=np.float32))
    assert outputs['boxes'].shape == (1, 2, 4) and outputs['valid'].dtype == bool
