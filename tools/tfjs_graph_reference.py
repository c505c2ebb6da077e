"""A plain interpreter of a TF.js graph model (model.json `modelTopology`), node by node, for tests.

The reference for the MoveNet single-pose import where no ONNX conversion of the original is at hand
(Lightning): it runs Google's graph itself, TensorFlow semantics spelled out op by op (NHWC tensors, TF
'SAME' padding computed from the sizes, fused BiasAdd / Relu / Relu6, GatherNd, ArgMax, ...), with the
weights as `pretrained_import.read_tfjs_model` decodes them. It shares no code with the torch module
under test beyond torch's primitive convolution and resize kernels, and its faithfulness is itself
checked against the ONNX Runtime conversion of Thunder in test/test_movenet_import.py.
Used by tools/make_single_pose_reference.py and test/test_movenet_import.py.
Also the selfie segmenter's graph (MediaPipe selfie segmentation: plain Conv2D, Add / AddN, Relu,
Relu6, AvgPool and a Conv2DBackpropInput, i.e. a transposed convolution, computed here as TF defines it:
the gradient of a 'SAME' convolution with respect to its input). Reference for test/test_selfie_import.py
and tools/make_selfie_reference.py.
Only the ops these models use are implemented; any other raises NotImplementedError.
"""
from __future__ import annotations

import base64
import math

import numpy as np
import torch
import torch.nn.functional as F


def _attr_str(node: dict, key: str) -> str:
    return base64.b64decode(node['attr'][key]['s']).decode()


def _attr_ints(node: dict, key: str) -> list[int]:
    return [int(v) for v in node['attr'][key]['list'].get('i', [])]


def _fused_ops(node: dict) -> list[str]:
    encoded = node['attr'].get('fused_ops', {}).get('list', {}).get('s', [])
    return [base64.b64decode(v).decode() for v in encoded]


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'SAME': output ceil(size / stride); the extra row/column goes after (bottom/right)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _conv_nhwc(x: torch.Tensor, kernel: torch.Tensor, node: dict, depthwise: bool) -> torch.Tensor:
    """TF Conv2D / DepthwiseConv2dNative on NHWC input with an HWIO ([kh, kw, C, mult]) kernel."""
    if _attr_str(node, 'data_format') != 'NHWC':
        raise NotImplementedError(f'{node["name"]}: data_format {_attr_str(node, "data_format")}')
    _, stride_h, stride_w, _ = _attr_ints(node, 'strides')
    dilations = _attr_ints(node, 'dilations') or [1, 1, 1, 1]
    kh, kw = kernel.shape[:2]
    nchw = x.permute(0, 3, 1, 2)
    padding = _attr_str(node, 'padding')
    if padding == 'SAME':
        top, bottom = _same_padding(nchw.shape[2], kh, stride_h, dilations[1])
        left, right = _same_padding(nchw.shape[3], kw, stride_w, dilations[2])
        nchw = F.pad(nchw, (left, right, top, bottom))
    elif padding != 'VALID':
        raise NotImplementedError(f'{node["name"]}: padding {padding}')
    if depthwise:      # [kh, kw, C, mult] -> [C * mult, 1, kh, kw]
        channels, mult = kernel.shape[2], kernel.shape[3]
        weight = kernel.permute(2, 3, 0, 1).reshape(channels * mult, 1, kh, kw)
        groups = channels
    else:              # [kh, kw, in, out] -> [out, in, kh, kw]
        weight = kernel.permute(3, 2, 0, 1)
        groups = 1
    out = F.conv2d(nchw, weight.contiguous(), stride=(stride_h, stride_w),
                   dilation=(dilations[1], dilations[2]), groups=groups)
    return out.permute(0, 2, 3, 1)


def _avg_pool_nhwc(x: torch.Tensor, node: dict) -> torch.Tensor:
    """TF AvgPool, 'VALID' padding only (what the selfie graph uses: a window over the whole map)."""
    if _attr_str(node, 'padding') != 'VALID' or _attr_str(node, 'data_format') != 'NHWC':
        raise NotImplementedError(f'{node["name"]}: AvgPool {_attr_str(node, "padding")}')
    _, kh, kw, _ = _attr_ints(node, 'ksize')
    _, sh, sw, _ = _attr_ints(node, 'strides')
    return F.avg_pool2d(x.permute(0, 3, 1, 2), (kh, kw), (sh, sw)).permute(0, 2, 3, 1)


def _conv_backprop_input_nhwc(input_sizes: torch.Tensor, kernel: torch.Tensor, grad: torch.Tensor,
                              node: dict) -> torch.Tensor:
    """TF Conv2DBackpropInput: d(conv2d(x, kernel, strides, padding)) / dx applied to `grad`.

    Computed literally as that gradient (autograd through `_conv_nhwc` on a zero input of
    `input_sizes`), not with a transposed-convolution kernel, so the padding and kernel layout follow
    from the forward convolution's definition.
    """
    shape = [int(v) for v in input_sizes.reshape(-1)]
    with torch.enable_grad():
        x = torch.zeros(shape, dtype=grad.dtype, requires_grad=True)
        y = _conv_nhwc(x, kernel, node, depthwise=False)
        if tuple(y.shape) != tuple(grad.shape):
            raise ValueError(f'{node["name"]}: forward conv of {shape} gives {tuple(y.shape)}, '
                             f'the gradient is {tuple(grad.shape)}')
        (dx,) = torch.autograd.grad(y, x, grad_outputs=grad)
    return dx.detach()


def _apply_fused(y: torch.Tensor, node: dict, extra: list[torch.Tensor]) -> torch.Tensor:
    for op in _fused_ops(node):
        if op == 'BiasAdd':
            y = y + extra[0]
        elif op == 'Relu':
            y = torch.relu(y)
        elif op == 'Relu6':
            y = torch.clamp(y, 0, 6)
        else:
            raise NotImplementedError(f'{node["name"]}: fused op {op}')
    return y


def run_tfjs_graph(model_json: dict, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
                   outputs: list[str]) -> list[np.ndarray]:
    """Evaluate `outputs` ('node' or 'node:k') of the graph on `inputs` (placeholder name -> array)."""
    nodes = {node['name']: node for node in model_json['modelTopology']['node']}
    values: dict[str, list] = {}

    def tensor(ref: str):
        name, _, index = ref.partition(':')
        if name not in values:
            evaluate(name)
        return values[name][int(index or 0)]

    def evaluate(root: str) -> None:
        stack = [root]
        while stack:             # iterative post-order: the graph is deeper than Python's recursion limit
            name = stack[-1]
            if name in values:
                stack.pop()
                continue
            pending = [ref.partition(':')[0] for ref in nodes[name].get('input', [])
                       if not ref.startswith('^') and ref.partition(':')[0] not in values]
            if pending:
                stack.extend(pending)
                continue
            values[name] = compute(nodes[name])
            stack.pop()

    def compute(node: dict) -> list:
        op, name = node['op'], node['name']
        args = [tensor(ref) for ref in node.get('input', []) if not ref.startswith('^')]
        if op == 'Const':
            return [torch.from_numpy(np.array(weights[name]))]
        if op == 'Placeholder':
            return [torch.from_numpy(np.array(inputs[name]))]
        if op == 'Identity':
            return [args[0]]
        if op == 'Cast':
            dtype = {'DT_FLOAT': torch.float32, 'DT_INT32': torch.int32}[node['attr']['DstT']['type']]
            return [args[0].to(dtype)]
        if op == 'Unpack':
            return list(args[0].unbind(int(node['attr']['axis']['i'])))
        if op == 'Pack':
            return [torch.stack(args, int(node['attr'].get('axis', {}).get('i', 0)))]
        if op == 'ExpandDims':
            return [args[0].unsqueeze(int(args[1]))]
        if op == 'Squeeze':
            dims = sorted(_attr_ints(node, 'squeeze_dims'), reverse=True)
            out = args[0]
            for dim in dims:
                out = out.squeeze(dim)
            return [out]
        if op == 'Reshape':
            return [args[0].reshape([int(v) for v in args[1].reshape(-1)])]
        if op == 'ConcatV2':
            return [torch.cat(args[:-1], int(args[-1]))]
        if op in ('Add', 'AddV2', 'Sub', 'Mul', 'RealDiv'):
            a, b = args
            return [{'Add': a + b, 'AddV2': a + b, 'Sub': a - b, 'Mul': a * b, 'RealDiv': a / b}[op]]
        if op == 'AddN':
            total = args[0]
            for arg in args[1:]:
                total = total + arg
            return [total]
        if op == 'Relu':
            return [torch.relu(args[0])]
        if op == 'Relu6':
            return [torch.clamp(args[0], 0, 6)]
        if op == 'AvgPool':
            return [_avg_pool_nhwc(args[0], node)]
        if op == 'Conv2DBackpropInput':
            return [_conv_backprop_input_nhwc(args[0], args[1], args[2], node)]
        if op == 'SquaredDifference':
            difference = args[0] - args[1]
            return [difference * difference]
        if op == 'FloorDiv':
            return [torch.div(args[0], args[1], rounding_mode='floor')]
        if op == 'Sigmoid':
            return [torch.sigmoid(args[0])]
        if op == 'Sqrt':
            return [torch.sqrt(args[0])]
        if op == 'ArgMax':
            return [args[0].argmax(int(args[1])).to(torch.int32)]
        if op == 'GatherNd':
            params, indices = args
            depth = indices.shape[-1]
            flat = indices.reshape(-1, depth).long()
            gathered = params[tuple(flat[:, k] for k in range(depth))]
            return [gathered.reshape(*indices.shape[:-1], *params.shape[depth:])]
        if op == 'ResizeBilinear':
            if not node['attr']['half_pixel_centers']['b'] or node['attr']['align_corners']['b']:
                raise NotImplementedError(f'{name}: only half-pixel-centre bilinear resizing')
            size = [int(v) for v in args[1]]
            resized = F.interpolate(args[0].permute(0, 3, 1, 2), size=size, mode='bilinear',
                                    align_corners=False)
            return [resized.permute(0, 2, 3, 1)]
        if op in ('_FusedConv2D', 'Conv2D', 'FusedDepthwiseConv2dNative', 'DepthwiseConv2dNative'):
            y = _conv_nhwc(args[0], args[1], node, depthwise=op not in ('_FusedConv2D', 'Conv2D'))
            return [_apply_fused(y, node, args[2:])]
        raise NotImplementedError(f'TF.js op {op} (node {name})')

    with torch.no_grad():
        return [tensor(ref).numpy() for ref in outputs]
