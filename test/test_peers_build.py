"""The peer build helpers that run without TensorFlow: float16 weight storage and the TF.js graph patch."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

TOOLS = Path(__file__).resolve().parents[1] / 'tools'


def load_tool(name: str):
    """Import tools/<name>.py (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    """y = x @ weight + bias with float32 initializers (bias has 2 values: below --min-elements)."""
    graph = helper.make_graph(
        [helper.make_node('MatMul', ['x', 'weight'], ['product']),
         helper.make_node('Add', ['product', 'bias'], ['y'])],
        'matmul',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, weight.shape[0]])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, weight.shape[1]])],
        [numpy_helper.from_array(weight.astype(np.float32), 'weight'),
         numpy_helper.from_array(np.array([0.5, -0.25], np.float32), 'bias')])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])


def run_model(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
    return session.run(None, {'x': x})[0]


def test_fp16_storage_is_exact_for_float16_values():
    tool = load_tool('onnx_fp16_weights')
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 2)).astype(np.float16).astype(np.float32)   # float16-representable
    original = matmul_model(weight)
    converted = matmul_model(weight)
    count, worst = tool.store_weights_as_fp16(converted, min_elements=4)
    assert count == 1 and worst == 0.0
    onnx.checker.check_model(converted)
    stored = {init.name: init.data_type for init in converted.graph.initializer}
    assert stored == {'weight__fp16': TensorProto.FLOAT16, 'bias': TensorProto.FLOAT}
    x = rng.normal(size=(1, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_model(converted, x), run_model(original, x))


def test_fp16_storage_reports_the_rounding_of_other_values():
    tool = load_tool('onnx_fp16_weights')
    weight = np.full((8, 2), 0.1, np.float32)   # 0.1 is not a float16 value
    _, worst = tool.store_weights_as_fp16(matmul_model(weight), min_elements=4)
    assert worst == abs(float(np.float32(np.float16(0.1))) - float(np.float32(0.1)))
    assert worst > 0


def test_tfjs_graph_patch_adds_the_attributes_tensorflow_2_21_requires():
    tool = load_tool('tfjs_to_onnx')
    model = {'modelTopology': {'node': [
        {'name': 'conv', 'op': '_FusedConv2D', 'attr': {'num_args': {'i': '2'}, 'T': {'type': 'DT_FLOAT'}}},
        {'name': 'done', 'op': '_FusedConv2D',
         'attr': {'num_args': {'i': '1'}, 'TArgs': {'list': {'type': ['DT_HALF']}}}},
        {'name': 'topk', 'op': 'TopKV2', 'attr': {'sorted': {'b': True}}},
        {'name': 'x', 'op': 'Placeholder'},
    ]}}
    assert tool.patch_tfjs_graph(model) == 2
    nodes = {node['name']: node for node in model['modelTopology']['node']}
    assert nodes['conv']['attr']['TArgs'] == {'list': {'type': ['DT_FLOAT', 'DT_FLOAT']}}
    assert nodes['done']['attr']['TArgs'] == {'list': {'type': ['DT_HALF']}}   # left as it was
    assert nodes['topk']['attr']['index_type'] == {'type': 'DT_INT32'}
    assert nodes['x']['attr'] == {}
