"""Graph rewrites applied to our ONNX exports before their parity gate.

`fold_pads_into_convs`: PyTorch's Conv2d has one symmetric padding, so a TensorFlow 'SAME' stride-2
convolution imported from MoveNet or the MobileNetV2 body (bottom/right padding only) is exported as
`Pad -> Conv(pads=0)`. ONNX's Conv takes asymmetric `pads` itself. ONNX Runtime 1.32 does not fuse these
pairs here (the pads arrive through a Cast of a Constant), so each stays a separate Pad kernel and, worse,
breaks its blocked-layout (NCHWc) chain: every Pad was wrapped in a ReorderOutput / ReorderInput pair.
Zero padding folded into the Conv is the same arithmetic, so the rewrite is exact; the parity gate that
follows every export still checks it.
"""
from __future__ import annotations

import numpy as np


def _constant_value(name: str, producers: dict, initializers: dict) -> np.ndarray | None:
    """The value of tensor `name` if it depends on constants only (run by onnx.reference), else None.

    The TorchScript exporter computes F.pad's `pads` through a Constant -> Reshape -> Slice -> Transpose
    -> Reshape -> Cast chain, so a plain initializer check would miss every one of them.
    """
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    chain, pending, seen, used_initializers = [], [name], set(), set()
    while pending:
        current = pending.pop()
        if current in seen or current == '':
            continue
        seen.add(current)
        if current in initializers:
            used_initializers.add(current)
            continue
        node = producers.get(current)
        if node is None or len(chain) > 32:
            return None            # a graph input, or too long a chain to be a constant computation
        chain.append(node)
        pending.extend(node.input)
    order = {id(node): index for index, node in enumerate(producers.values())}
    chain = sorted({id(n): n for n in chain}.values(), key=lambda n: order[id(n)])
    graph = helper.make_graph(chain, 'constant', [], [helper.make_tensor_value_info(name, 0, None)],
                              [initializers[i] for i in sorted(used_initializers)])
    try:
        return np.asarray(ReferenceEvaluator(helper.make_model(graph)).run(None, {})[0])
    except Exception:          # an op the reference runtime lacks: leave this Pad alone
        return None


def fold_pads_into_convs(model) -> int:
    """Fold every zero `Pad` of the spatial axes that feeds exactly one 2-D `Conv` into that Conv's pads.

    Args:
        model: an onnx.ModelProto, changed in place.

    Returns:
        how many Pad nodes were removed.
    """
    from onnx import helper

    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in graph.output}
    removed = []
    for pad in graph.node:
        if pad.op_type != 'Pad' or pad.output[0] in graph_outputs:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        if attributes.get('mode', b'constant') not in (b'constant', 'constant'):
            continue
        pads = _constant_value(pad.input[1], producers, initializers) if len(pad.input) > 1 else None
        if pads is None or pads.shape != (8,):
            continue
        if len(pad.input) > 2 and pad.input[2]:
            fill = _constant_value(pad.input[2], producers, initializers)
            if fill is None or np.any(fill != 0):
                continue
        if len(pad.input) > 3 and pad.input[3]:
            continue   # an `axes` input: not produced by our exports, left alone
        # pads = [N_begin, C_begin, H_begin, W_begin, N_end, C_end, H_end, W_end]
        if pads[0] or pads[1] or pads[4] or pads[5] or np.any(pads < 0):
            continue
        users = consumers.get(pad.output[0], [])
        if len(users) != 1 or users[0].op_type != 'Conv' or users[0].input[0] != pad.output[0]:
            continue
        conv = users[0]
        conv_attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if conv_attributes.get('auto_pad', b'NOTSET') not in (b'NOTSET', 'NOTSET'):
            continue
        old = list(conv_attributes.get('pads', [0, 0, 0, 0]))
        if len(old) != 4:
            continue
        new = [old[0] + int(pads[2]), old[1] + int(pads[3]), old[2] + int(pads[6]), old[3] + int(pads[7])]
        kept = [a for a in conv.attribute if a.name != 'pads']
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute('pads', new)])
        conv.input[0] = pad.input[0]
        removed.append(pad)
    for pad in removed:
        graph.node.remove(pad)
    return len(removed)
