"""YOLOX-Nano imported into `YOLOXNano`, checked numerically against the original ONNX in ONNX Runtime.

Reference: the published ONNX export (models/peers/yolox_nano_416.onnx, see models/peers/NOTICE) run in
ONNX Runtime on the five sample photos, letterboxed to 416 x 416 as YOLOX's demo does (long side to 416,
bilinear, image at the top-left, padding 114, BGR 0..255). Its raw output is decoded here in plain numpy
(an independent reading of the decoding rule, not `decode_yolox`).
Measured (2026-12-04, 2 threads): raw outputs within 3.0e-4 of the original (values up to 3.8; box offsets
in cells), decoded person boxes of the top-10 detections per photo within 6.1e-5 px, person scores within
6.3e-6. That 3e-4 is float32 rounding on both sides: against our module run in float64, ONNX Runtime is
off by up to 1.0e-4 and our float32 module by up to 2.4e-4.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from occluded_ppe_ros.model.yolox import (CHECKPOINT_FORMAT, YOLOX_PAD_VALUE, YOLOXNano, load_yolox_nano,
                                          yolox_state_dict_from_onnx)

REPO_ROOT = Path(__file__).resolve().parents[1]
ORIGINAL_ONNX = REPO_ROOT / 'models' / 'peers' / 'yolox_nano_416.onnx'
CHECKPOINT = REPO_ROOT / 'models' / 'pretrained' / 'yolox_nano_416.pt'
PHOTOS = sorted((REPO_ROOT / 'samples').glob('*.jpg'))
SIZE = 416
# Same float32 weights on both sides; only the convolution kernels' summation order differs (measured
# 3.0e-4 over the five photos). A wrong weight, layout or slicing order moves outputs by 0.1 or more.
RAW_TOLERANCE = 2e-3
BOX_TOLERANCE_PX = 0.01
SCORE_TOLERANCE = 1e-4
TOP_DETECTIONS = 10           # per photo, by the original's person score

torch.set_num_threads(2)


def require(*paths: Path) -> None:
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        pytest.skip(f'needs {missing}')


def letterbox_bgr(path: Path) -> np.ndarray:
    """uint8 [416, 416, 3] BGR: long side resized to 416 (bilinear), top-left, padded with 114."""
    import cv2

    image = cv2.imread(str(path))
    scale = SIZE / max(image.shape[:2])
    new_w, new_h = round(image.shape[1] * scale), round(image.shape[0] * scale)
    canvas = np.full((SIZE, SIZE, 3), 114, dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas


def original_input(canvases: np.ndarray) -> np.ndarray:
    """uint8 [N, 416, 416, 3] BGR -> the ONNX input: float32 [N, 3, 416, 416] BGR 0..255."""
    return np.ascontiguousarray(canvases.transpose(0, 3, 1, 2).astype(np.float32))


def rgb_unit_input(canvases: np.ndarray) -> torch.Tensor:
    """uint8 [N, 416, 416, 3] BGR -> `YOLOXNano.forward`'s input: float [N, 3, 416, 416] RGB in [0, 1]."""
    return torch.from_numpy(canvases[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def reference_person_boxes(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode one image's raw output [3549, 85] as YOLOX's demo: (boxes [A, 4] x1y1x2y2 px, person scores)."""
    grids, strides = [], []
    for stride in (8, 16, 32):
        cells = SIZE // stride
        xv, yv = np.meshgrid(np.arange(cells), np.arange(cells))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((cells * cells, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    centers = (raw[:, :2] + grid) * stride
    sizes = np.exp(raw[:, 2:4]) * stride
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    return boxes, raw[:, 4] * raw[:, 5]


@pytest.fixture(scope='module')
def canvases() -> np.ndarray:
    if not PHOTOS:
        pytest.skip('no samples/*.jpg')
    return np.stack([letterbox_bgr(path) for path in PHOTOS])


@pytest.fixture(scope='module')
def original_outputs(canvases) -> np.ndarray:
    """The original's raw output per photo, [N, 3549, 85] (its graph takes batch 1 only)."""
    require(ORIGINAL_ONNX)
    session = ort_session(ORIGINAL_ONNX)
    inputs = original_input(canvases)
    return np.concatenate([session.run(['output'], {'images': inputs[k:k + 1]})[0]
                           for k in range(len(inputs))])


@pytest.fixture(scope='module')
def model() -> YOLOXNano:
    require(CHECKPOINT)
    return load_yolox_nano(CHECKPOINT)


def test_shipped_checkpoint_is_the_onnx_weights(model):
    require(ORIGINAL_ONNX)
    checkpoint = torch.load(CHECKPOINT, map_location='cpu', weights_only=True)
    assert checkpoint['format'] == CHECKPOINT_FORMAT
    assert 'Megvii' in checkpoint['attribution'] and 'Apache' in checkpoint['attribution']
    from_onnx = yolox_state_dict_from_onnx(ORIGINAL_ONNX)
    assert set(from_onnx) == set(model.state_dict()) == set(checkpoint['state_dict'])
    for name, value in from_onnx.items():
        assert torch.equal(checkpoint['state_dict'][name].float(), value), name
    # 113 convolutions (weight + bias each; the graph's other two float constants are Resize's roi and
    # scales), 0.904 M parameters: YOLOX-Nano's published size
    assert len(from_onnx) == 226 and sum(v.numel() for v in from_onnx.values()) == 904_463


def test_forward_raw_matches_the_original_on_photos(model, canvases, original_outputs):
    with torch.no_grad():
        ours = model.forward_raw(torch.from_numpy(original_input(canvases))).numpy()   # N = 5 in one batch
    assert ours.shape == original_outputs.shape == (len(PHOTOS), 3549, 85)
    difference = np.abs(ours - original_outputs)
    print(f'\nYOLOX-Nano raw output, max |ours - ONNX Runtime| over {len(PHOTOS)} photos: '
          f'{difference.max():.2e} (box offsets {difference[..., :4].max():.2e}, '
          f'probabilities {difference[..., 4:].max():.2e}); max |value| {np.abs(original_outputs).max():.2f}')
    assert difference.max() < RAW_TOLERANCE


def test_decoded_person_boxes_match_the_original(model, canvases, original_outputs):
    with torch.no_grad():
        boxes, scores = model(rgb_unit_input(canvases))        # RGB in [0, 1] -> decoded person boxes
    assert boxes.shape == (len(PHOTOS), 3549, 4) and scores.shape == (len(PHOTOS), 3549)
    worst_box, worst_score = 0.0, 0.0
    for k, raw in enumerate(original_outputs):
        reference_boxes, reference_scores = reference_person_boxes(raw)
        assert reference_scores.max() > 0.5, PHOTOS[k]           # every sample photo shows people
        top = np.argsort(-reference_scores)[:TOP_DETECTIONS]
        worst_box = max(worst_box, float(np.abs(boxes[k, top].numpy() - reference_boxes[top]).max()))
        worst_score = max(worst_score, float(np.abs(scores[k].numpy() - reference_scores).max()))
    print(f'\nYOLOX-Nano top-{TOP_DETECTIONS} person boxes: max |ours - original| {worst_box:.2e} px, '
          f'scores (all anchors) {worst_score:.2e}')
    assert worst_box < BOX_TOLERANCE_PX
    assert worst_score < SCORE_TOLERANCE


def test_batch_of_two_equals_one_by_one(model, canvases):
    images = rgb_unit_input(canvases[:2])
    with torch.no_grad():
        batch_boxes, batch_scores = model(images)
        for k in range(2):
            boxes, scores = model(images[k:k + 1])
            torch.testing.assert_close(batch_boxes[k:k + 1], boxes, atol=1e-3, rtol=0)
            torch.testing.assert_close(batch_scores[k:k + 1], scores, atol=1e-5, rtol=0)


def test_pad_value_is_the_originals_114():
    assert round(YOLOX_PAD_VALUE * 255, 4) == 114


def test_onnx_export_runs_at_another_batch_size_and_matches(model, canvases, tmp_path):
    path = tmp_path / 'yolox_nano.onnx'
    torch.onnx.export(model, (rgb_unit_input(canvases[:1]),), str(path), dynamo=False, opset_version=18,
                      input_names=['images'], output_names=['boxes', 'person_scores'],
                      dynamic_axes={name: {0: 'batch'} for name in ('images', 'boxes', 'person_scores')})
    images = rgb_unit_input(canvases[2:4])                    # N = 2, other photos than the export's
    boxes, scores = ort_session(path).run(None, {'images': images.numpy()})
    with torch.no_grad():
        torch_boxes, torch_scores = model(images)
    assert boxes.shape == (2, 3549, 4) and scores.shape == (2, 3549)
    np.testing.assert_allclose(boxes, torch_boxes.numpy(), atol=1e-2, rtol=0)
    np.testing.assert_allclose(scores, torch_scores.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize('damage, named', [('drop head.obj_preds.1.bias', 'head.obj_preds.1.bias'),
                                           ('reshape 1178', '1178')])
def test_a_damaged_onnx_file_is_rejected_naming_the_tensor_and_file(tmp_path, damage, named):
    require(ORIGINAL_ONNX)
    import onnx

    onnx_model = onnx.load(str(ORIGINAL_ONNX))
    initializers = onnx_model.graph.initializer
    index = next(i for i, init in enumerate(initializers) if init.name == named)
    if damage.startswith('drop'):
        del initializers[index]
    else:                         # the stem conv's kernel [16, 12, 3, 3] stored as [12, 16, 3, 3]
        initializers[index].dims[:] = [12, 16, 3, 3]
    path = tmp_path / 'damaged.onnx'
    onnx.save(onnx_model, str(path))
    with pytest.raises(ValueError) as error:
        yolox_state_dict_from_onnx(path)
    assert named in str(error.value) and str(path) in str(error.value)
