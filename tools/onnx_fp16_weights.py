"""Store an ONNX model's float32 weights as float16, computing in float32 as before.

Every float32 initializer with at least `--min-elements` values is stored as float16 and followed by a
Cast back to float32 under its original name, so the graph's arithmetic is unchanged (ONNX Runtime
folds the Casts when the session starts). The TF.js models these peers come from already hold their
weights as float16, so for them the round trip is exact; the script checks that and reports the largest
change of any weight.

Usage:
    python tools/onnx_fp16_weights.py IN.onnx OUT.onnx [--min-elements 16]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def store_weights_as_fp16(model: onnx.ModelProto, min_elements: int) -> tuple[int, float]:
    """Convert the large float32 initializers in place.

    Args:
        model: the ONNX model (its main graph is edited).
        min_elements: initializers with fewer values stay float32.

    Returns:
        (number of converted initializers, largest absolute change of any converted value).
    """
    graph = model.graph
    converted, worst = 0, 0.0
    new_initializers, cast_nodes = [], []
    for initializer in graph.initializer:
        array = numpy_helper.to_array(initializer)
        if initializer.data_type != TensorProto.FLOAT or array.size < min_elements:
            new_initializers.append(initializer)
            continue
        half = array.astype(np.float16)
        worst = max(worst, float(np.max(np.abs(half.astype(np.float32) - array))))
        stored_name = f'{initializer.name}__fp16'
        new_initializers.append(numpy_helper.from_array(half, stored_name))
        cast_nodes.append(helper.make_node('Cast', [stored_name], [initializer.name], to=TensorProto.FLOAT,
                                           name=f'{initializer.name}__to_fp32'))
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(new_initializers)
    nodes = cast_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return converted, worst


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('input', type=Path)
    parser.add_argument('output', type=Path)
    parser.add_argument('--min-elements', type=int, default=16)
    parser.add_argument('--max-change', type=float, default=0.0,
                        help='fail when a weight changes by more than this (default 0: must be exact)')
    args = parser.parse_args()
    model = onnx.load(str(args.input))
    converted, worst = store_weights_as_fp16(model, args.min_elements)
    if worst > args.max_change:
        print(f'{args.input}: float16 storage would change a weight by {worst:g} > {args.max_change:g}',
              file=sys.stderr)
        return 1
    onnx.checker.check_model(model)
    onnx.save(model, str(args.output))
    print(f'{args.input.name}: {converted} initializers stored as float16 (largest change {worst:g}), '
          f'{args.input.stat().st_size / 1e6:.1f} MB -> {args.output.stat().st_size / 1e6:.1f} MB')
    return 0


if __name__ == '__main__':
    sys.exit(main())
