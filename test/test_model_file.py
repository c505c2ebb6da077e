"""Bad model files: a missing, empty, truncated, corrupt or wrong-format checkpoint (.pt) or ONNX model gives
ONE line naming the file and what is wrong: from the load points (ModelFileError), from `ppe` commands
(non-zero exit, no traceback) and from the node's configure transition (FAILURE, stays unconfigured)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_infer import write_tiny_checkpoint

from occluded_ppe_ros.cli import main as ppe_main
from occluded_ppe_ros.inference.model_file import ModelFileError, check_model_file

KINDS = ('missing', 'empty', 'truncated', 'corrupt', 'json')
# What the one line says for each kind (a fragment of it), by suffix.
EXPECTED = {
    ('.pt', 'missing'): 'does not exist', ('.onnx', 'missing'): 'does not exist',
    ('.pt', 'empty'): 'is empty (0 bytes)', ('.onnx', 'empty'): 'is empty (0 bytes)',
    ('.pt', 'truncated'): 'truncated or corrupt PyTorch checkpoint',
    ('.onnx', 'truncated'): 'ONNX model',
    ('.pt', 'corrupt'): 'corrupt PyTorch checkpoint',
    ('.onnx', 'corrupt'): 'ONNX model',
    ('.pt', 'json'): 'not a PyTorch checkpoint (a torch.save zip archive); it looks like JSON',
    ('.onnx', 'json'): 'ONNX model',
}


@pytest.fixture(scope='module')
def good_files(tmp_path_factory) -> dict[str, Path]:
    """A real tiny checkpoint and a real small ONNX model (two Conv nodes), generated here."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp('good_models')
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), 'w')
    weight2 = numpy_helper.from_array(rng.normal(size=(4, 8, 1, 1)).astype(np.float32), 'w2')
    graph = helper.make_graph(
        [helper.make_node('Conv', ['x', 'w'], ['h'], pads=[1, 1, 1, 1]),
         helper.make_node('Conv', ['h', 'w2'], ['y'])],
        'tiny', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4, 16, 16])], [weight, weight2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)])
    onnx.checker.check_model(model)
    onnx_path = folder / 'tiny.onnx'
    onnx.save(model, onnx_path)
    return {'.pt': write_tiny_checkpoint(folder), '.onnx': onnx_path}


def make_bad(kind: str, good: Path, folder: Path) -> Path:
    """A damaged copy of `good` (same suffix) of the given kind."""
    path = folder / f'{kind}_model{good.suffix}'
    data = good.read_bytes()
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        path.write_bytes(data[:len(data) // 2])
    elif kind == 'corrupt':  # the size is right, bytes in the middle are garbage (a bad disk, a bad copy)
        middle = len(data) // 2
        flipped = bytes(255 - b for b in data[middle:middle + 4096])
        path.write_bytes(data[:middle] + flipped + data[middle + 4096:])
    elif kind == 'json':
        path.write_text(json.dumps({'model': 'this is a JSON file renamed'}))
    return path


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize('suffix', ['.pt', '.onnx'])
@pytest.mark.parametrize('kind', KINDS)
def test_each_kind_of_bad_file_raises_one_line_naming_it(tmp_path, good_files, suffix, kind):
    bad = make_bad(kind, good_files[suffix], tmp_path)
    with pytest.raises(ModelFileError) as caught:
        check_model_file(bad)
    message = _one_line(str(caught.value))
    assert str(bad) in message and EXPECTED[(suffix, kind)] in message
    assert check_model_file(good_files[suffix]) == good_files[suffix]


def test_unknown_suffix_and_the_backends_load_point(tmp_path, good_files):
    from occluded_ppe_ros.inference.backends import create_backend
    from occluded_ppe_ros.model.checkpoint import load_checkpoint

    odd = tmp_path / 'model.bin'
    odd.write_bytes(b'\0' * 10)
    with pytest.raises(ModelFileError, match=r"unknown model file type '\.bin'"):
        check_model_file(odd)
    truncated = make_bad('truncated', good_files['.pt'], tmp_path)
    for backend in ('torch', 'onnxruntime'):
        with pytest.raises(ModelFileError, match='truncated or corrupt PyTorch checkpoint'):
            create_backend(backend, truncated)
    with pytest.raises(ModelFileError, match='corrupt PyTorch checkpoint'):
        load_checkpoint(make_bad('corrupt', good_files['.pt'], tmp_path))
    # A valid ONNX model that is not ours: the loader's complaint, wrapped in the same one-line error.
    with pytest.raises(ModelFileError, match=r'tiny\.onnx: loading it with the onnxruntime backend failed'):
        create_backend('onnxruntime', good_files['.onnx'])


@pytest.mark.parametrize('kind', ['missing', 'truncated', 'corrupt', 'json'])
def test_ppe_commands_print_one_line_and_fail(tmp_path, good_files, capfd, kind):
    import cv2
    import numpy as np

    images = tmp_path / 'images'
    images.mkdir()
    cv2.imwrite(str(images / 'a.png'), np.zeros((32, 48, 3), np.uint8))
    bad_pt = make_bad(kind, good_files['.pt'], tmp_path)
    bad_onnx = make_bad(kind, good_files['.onnx'], tmp_path)
    commands = [
        ['infer', '--images', str(images), '--out', str(tmp_path / 'o1'), '--checkpoint', str(bad_pt),
         '--backend', 'torch'],
        ['infer', '--images', str(images), '--out', str(tmp_path / 'o2'), '--checkpoint', str(bad_onnx),
         '--backend', 'onnxruntime'],
        ['export', '--checkpoint', str(bad_pt), '--out', str(tmp_path / 'x.onnx')],
    ]
    for command in commands:
        capfd.readouterr()
        code = ppe_main(command)
        captured = capfd.readouterr()
        assert code != 0, command
        line = _one_line(captured.err + captured.out)  # ppe export reports on stdout, the others on stderr
        bad = bad_onnx if str(bad_onnx) in command else bad_pt
        assert str(bad) in line and line.startswith(f'ppe {command[0]}: error: '), line
        assert 'Traceback' not in captured.out + captured.err


@pytest.mark.ros
def test_node_configure_fails_with_one_line_and_stays_usable(spinning_executor, good_files, tmp_path):
    """A real ppe_node: configure with a truncated checkpoint returns FAILURE, the node is unconfigured
    and alive; with a good model_path set afterwards the same node configures."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from test_node import start_node

    bad = make_bad('truncated', good_files['.pt'], tmp_path)
    node = start_node(spinning_executor, bad)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    line = _one_line(node.configure_error)
    assert str(bad) in line and 'truncated or corrupt PyTorch checkpoint' in line
    assert node._lifecycle_state == 'unconfigured' and node._predictor is None
    assert node.set_parameters([Parameter('model_path', value=str(good_files['.pt']))])[0].successful
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
