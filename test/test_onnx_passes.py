"""The Pad -> Conv folding of our ONNX exports (occluded_ppe_ros/inference/onnx_passes.py)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from occluded_ppe_ros.inference.onnx_passes import fold_pads_into_convs
from occluded_ppe_ros.model.backbone import TFSamePadConv2d


class _SamePadNet(nn.Module):
    """Two TF-'SAME' stride-2 convs (bottom/right padding, as MoveNet's body) and a 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = TFSamePadConv2d(3, 8, 3, stride=2, padding=0)
        self.second = TFSamePadConv2d(8, 8, 3, stride=2, padding=0, groups=8)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.second(F.relu(self.first(x)))))


class _PadTwiceNet(nn.Module):
    """A Pad whose output feeds a Conv and an Add, and a Pad with a non-zero value: neither may fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = F.pad(x, (1, 1, 1, 1))
        filled = F.pad(x, (1, 1, 1, 1), value=0.5)
        return self.conv(shared) + shared[..., 1:-1, 1:-1] + self.conv(filled)


def _export(module: nn.Module, path) -> onnx.ModelProto:
    example = torch.rand(1, 3, 32, 32)
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=18,
                      input_names=['x'], output_names=['y'], do_constant_folding=True)
    return onnx.load(str(path))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
    return session.run(None, {'x': x})[0]


def test_same_padding_pads_fold_into_their_convs_and_outputs_stay_identical(tmp_path):
    module = _SamePadNet()
    model = _export(module, tmp_path / 'same.onnx')
    assert sum(node.op_type == 'Pad' for node in model.graph.node) == 2
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    before = _run(model, x)

    assert fold_pads_into_convs(model) == 2
    onnx.checker.check_model(model)
    assert not [node for node in model.graph.node if node.op_type == 'Pad']
    convs = [node for node in model.graph.node if node.op_type == 'Conv']
    pads = [list(onnx.helper.get_attribute_value(a)) for node in convs for a in node.attribute
            if a.name == 'pads']
    # ONNX pads are [top, left, bottom, right]: TF 'SAME' pads bottom/right only
    assert pads[:2] == [[0, 0, 1, 1], [0, 0, 1, 1]]
    after = _run(model, x)
    np.testing.assert_array_equal(after, before)
    with torch.no_grad():
        np.testing.assert_allclose(after, module(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_shared_or_nonzero_pads_are_left_alone(tmp_path):
    model = _export(_PadTwiceNet(), tmp_path / 'shared.onnx')
    count = sum(node.op_type == 'Pad' for node in model.graph.node)
    assert count == 2
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    before = _run(model, x)
    assert fold_pads_into_convs(model) == 0
    assert sum(node.op_type == 'Pad' for node in model.graph.node) == count
    np.testing.assert_array_equal(_run(model, x), before)


def test_every_pad_of_imported_movenet_thunder_folds_exactly(tmp_path):
    variant = 'thunder'
    from occluded_ppe_ros.model.movenet import load_movenet_single_pose, resolve_checkpoint

    try:
        resolve_checkpoint(variant)
    except FileNotFoundError:
        pytest.skip(f'no imported MoveNet {variant} in models/pretrained')
    net = load_movenet_single_pose(variant).eval()

    class Heatmaps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            return self.net.forward_features(crops)['heatmap']

    example = torch.rand(1, 3, 256, 256)
    path = tmp_path / 'movenet.onnx'
    torch.onnx.export(Heatmaps().eval(), (example,), str(path), dynamo=False, opset_version=18,
                      input_names=['x'], output_names=['y'], do_constant_folding=True)
    model = onnx.load(str(path))
    pads = sum(node.op_type == 'Pad' for node in model.graph.node)
    assert pads >= 4     # MobileNetV2's stride-2 convs
    x = example.numpy()
    before = _run(model, x)
    assert fold_pads_into_convs(model) == pads
    np.testing.assert_array_equal(_run(model, x), before)
