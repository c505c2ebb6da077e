"""NanoDet-g imported into `occluded_ppe_ros.model.nanodet.NanoDet`, checked against the original model.

Reference: the ONNX conversion of the TF.js graph (models/peers/nanodet_416.onnx, float16 weights,
float32 compute) in ONNX Runtime, fed exactly as `peers.NanoDetThunderPeer.detect` feeds it, on the five
CC BY sample photos; and that peer's own decoding + NMS (`peers.decode_nanodet`, `detect`).
Our ONNX export (opset 18, dynamic batch) is exported at batch 1 and run at batch 2.
Measured (2026-12-04, 2 threads): forward_raw within 9.8e-6 of ONNX Runtime (scores and distribution
logits); the 100 person boxes after NMS within 6.1e-5 px of the peer's (scores 2.4e-7); the export within
1.2e-4 px (scores 4e-7) of torch.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from occluded_ppe_ros.inference.nms import greedy_nms
from occluded_ppe_ros.model.nanodet import (DEFAULT_CHECKPOINT, NANODET_PAD_VALUE_RGB, NanoDet,
                                            load_nanodet, nanodet_onnx_output_names,
                                            nanodet_state_dict_from_onnx)
from occluded_ppe_ros.peers import (NANODET_MEAN_BGR, NANODET_STD_BGR, NanoDetThunderPeer,
                                    PeerSettings)

REPO_ROOT = Path(__file__).resolve().parents[1]
NANODET_ONNX = REPO_ROOT / 'models' / 'peers' / 'nanodet_416.onnx'
SAMPLES = sorted((REPO_ROOT / 'samples').glob('*.jpg'))
SIZE = 416
# Same float16 weights in float32 on both sides; only summation order differs. Measured 9.8e-6 on
# sigmoid scores and distribution logits (values up to ~15); a wrong weight, layout or resize moves
# them by 1e-2 or more.
RAW_TOLERANCE = 1e-4
BOX_TOLERANCE_PX = 0.01      # measured 6.1e-5 px in input-image pixels
SCORE_TOLERANCE = 1e-5

torch.set_num_threads(2)
pytestmark = pytest.mark.skipif(not NANODET_ONNX.is_file() or not DEFAULT_CHECKPOINT.is_file() or not SAMPLES,
                                reason=f'needs {NANODET_ONNX}, {DEFAULT_CHECKPOINT} and samples/*.jpg')


@pytest.fixture(scope='module')
def model() -> NanoDet:
    return load_nanodet()


@pytest.fixture(scope='module')
def peer() -> NanoDetThunderPeer:
    return NanoDetThunderPeer(NANODET_ONNX, None, threads=2)


@pytest.fixture(scope='module')
def photos() -> list[np.ndarray]:
    return [cv2.imread(str(path))[:, :, ::-1].copy() for path in SAMPLES]   # RGB uint8


def letterbox(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Letterbox as NanoDetThunderPeer.detect.

    Returns:
        (the peer's input: normalised BGR [3, S, S], ours: RGB [3, S, S] in [0, 1], image -> input scale).
    """
    height, width = image.shape[:2]
    scale = SIZE / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized_rgb = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    peer_canvas = np.zeros((SIZE, SIZE, 3), dtype=np.float32)
    resized_bgr = resized_rgb[:, :, ::-1].astype(np.float32)
    peer_canvas[:new_h, :new_w] = (resized_bgr - NANODET_MEAN_BGR) / NANODET_STD_BGR
    our_canvas = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    our_canvas[:] = NANODET_PAD_VALUE_RGB
    our_canvas[:new_h, :new_w] = resized_rgb.astype(np.float32) / 255
    return peer_canvas.transpose(2, 0, 1).copy(), our_canvas.transpose(2, 0, 1).copy(), scale


def person_detections(boxes: np.ndarray, scores: np.ndarray, scale: float, image_shape: tuple[int, int],
                      settings: PeerSettings) -> tuple[np.ndarray, np.ndarray]:
    """The peer's post-processing on our decoded anchors: threshold, greedy NMS, top-k, un-letterbox."""
    selected = np.flatnonzero(scores >= settings.min_score)
    keep = selected[greedy_nms(boxes[selected], scores[selected], settings.nms_iou)][:settings.max_detections]
    height, width = image_shape
    kept = np.clip(boxes[keep] / scale, 0, np.array([width, height, width, height], dtype=np.float32))
    return kept, scores[keep]


def test_checkpoint_holds_the_onnx_weights_unchanged():
    checkpoint = torch.load(DEFAULT_CHECKPOINT, map_location='cpu', weights_only=True)
    assert checkpoint['format'] == 'occluded_ppe/nanodet/1' and 'Apache' in checkpoint['attribution']
    from_onnx = nanodet_state_dict_from_onnx(NANODET_ONNX)
    assert set(checkpoint['state_dict']) == set(from_onnx) == set(NanoDet().state_dict())
    for key, value in from_onnx.items():
        assert value.dtype == torch.float16 and torch.equal(checkpoint['state_dict'][key], value), key
    assert sum(value.numel() for value in from_onnx.values()) == 3_786_068   # NanoDet-g, not NanoDet-m
    onnx_model = load_nanodet(NANODET_ONNX)
    for key, value in load_nanodet().state_dict().items():
        assert torch.equal(value, onnx_model.state_dict()[key]), key


def test_forward_raw_matches_onnx_runtime_on_photos(model, peer, photos):
    names = nanodet_onnx_output_names(NANODET_ONNX)
    flat = [name for pair in names.values() for name in pair]
    worst = 0.0
    for image in photos:
        peer_input, _, _ = letterbox(image)
        reference = dict(zip(flat, peer.detector.run(flat, {peer.detector_input: peer_input[None]})))
        with torch.no_grad():
            ours = model.forward_raw(torch.from_numpy(peer_input)[None])
        for stride, (scores_name, distributions_name) in names.items():
            for part, name in ((0, scores_name), (1, distributions_name)):
                assert ours[stride][part].shape == reference[name].shape, (stride, name)
                worst = max(worst, float(np.abs(ours[stride][part].numpy() - reference[name]).max()))
    print(f'max |forward_raw - ONNX Runtime| over {len(photos)} photos: {worst:.2e}')
    assert worst < RAW_TOLERANCE


def test_decoded_person_boxes_after_nms_equal_the_peers(model, peer, photos):
    worst_box, worst_score, total = 0.0, 0.0, 0
    batch = torch.stack([torch.from_numpy(letterbox(image)[1]) for image in photos])
    with torch.no_grad():
        all_boxes, all_scores = model(batch)
    assert all_boxes.shape == (len(photos), 2704 + 676 + 169, 4) and all_scores.shape == all_boxes.shape[:2]
    for index, image in enumerate(photos):
        expected_boxes, expected_scores = peer.detect(image)
        boxes, scores = person_detections(all_boxes[index].numpy(), all_scores[index].numpy(),
                                          letterbox(image)[2], image.shape[:2], peer.settings)
        assert len(boxes) == len(expected_boxes) > 0, SAMPLES[index].name
        worst_box = max(worst_box, float(np.abs(boxes - expected_boxes).max()))
        worst_score = max(worst_score, float(np.abs(scores - expected_scores).max()))
        total += len(boxes)
    print(f'{total} person boxes on {len(photos)} photos: max box difference {worst_box:.2e} px, '
          f'score {worst_score:.2e}')
    assert worst_box < BOX_TOLERANCE_PX and worst_score < SCORE_TOLERANCE


def test_batch_of_two_equals_two_single_images(model, photos):
    images = torch.stack([torch.from_numpy(letterbox(image)[1]) for image in photos[:2]])
    with torch.no_grad():
        batch_boxes, batch_scores = model(images)
        for index in range(2):
            boxes, scores = model(images[index:index + 1])
            assert torch.allclose(batch_boxes[index], boxes[0], atol=1e-3)
            assert torch.allclose(batch_scores[index], scores[0], atol=1e-6)


def test_pad_value_normalises_to_zero(model):
    pad = torch.tensor(NANODET_PAD_VALUE_RGB).view(1, 3, 1, 1).expand(1, 3, SIZE, SIZE)
    assert model.normalise(pad).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r'\[B, 3, 416, 416\]'):
        model(torch.zeros(1, 3, 320, 320))


def test_onnx_export_runs_at_batch_two_and_matches_torch(model, photos, tmp_path):
    import onnxruntime as ort

    path = tmp_path / 'nanodet.onnx'
    example = torch.from_numpy(letterbox(photos[0])[1])[None]
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=18,
                      input_names=['images'], output_names=['boxes', 'person_scores'],
                      dynamic_axes={name: {0: 'batch'} for name in ('images', 'boxes', 'person_scores')})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    images = torch.stack([torch.from_numpy(letterbox(image)[1]) for image in photos[1:3]])   # batch 2
    boxes, scores = session.run(['boxes', 'person_scores'], {'images': images.numpy()})
    with torch.no_grad():
        expected_boxes, expected_scores = model(images)
    assert boxes.shape == (2, 3549, 4) and scores.shape == (2, 3549)
    print(f'export vs torch at batch 2: boxes {np.abs(boxes - expected_boxes.numpy()).max():.2e} px, '
          f'scores {np.abs(scores - expected_scores.numpy()).max():.2e}')
    assert np.abs(boxes - expected_boxes.numpy()).max() < 1e-3
    assert np.abs(scores - expected_scores.numpy()).max() < 1e-5


def test_import_errors_name_the_file_and_the_node(tmp_path):
    import onnx

    with pytest.raises(FileNotFoundError, match='absent.onnx'):
        nanodet_state_dict_from_onnx(tmp_path / 'absent.onnx')
    model = onnx.load(str(NANODET_ONNX))
    relu = next(node for node in model.graph.node if node.op_type == 'LeakyRelu')
    next(a for a in relu.attribute if a.name == 'alpha').f = 0.2
    broken = tmp_path / 'other_slope.onnx'
    onnx.save(model, str(broken))
    with pytest.raises(ValueError, match=rf'{broken}.*{relu.name}.*slope'):
        nanodet_state_dict_from_onnx(broken)
    not_a_checkpoint = tmp_path / 'other.pt'
    torch.save({'format': 'something/else'}, not_a_checkpoint)
    with pytest.raises(ValueError, match='other.pt is not a occluded_ppe/nanodet/1 checkpoint'):
        load_nanodet(not_a_checkpoint)
