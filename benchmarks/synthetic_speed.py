#!/usr/bin/env python3
"""Throughput of the synthetic occluded-pedestrian generator on one core (rendering, JPEG and JSON writing).

Usage:
    taskset -c 0 .venv/bin/python benchmarks/synthetic_speed.py [--num-images 300] [--size 320x240]

Prints one line: images per second, people, and the share of occluded joints. The machine's other
load shows in the figure; `taskset -c 0` keeps the run on one core.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _import_training_from_source() -> None:
    """Import `occluded_ppe_training` from training/ (setup.py's package_dir), not an installed copy."""
    from occluded_ppe_ros.source_tree import import_training_from_source

    import_training_from_source(REPO_ROOT)


def main() -> int:
    _import_training_from_source()
    import cv2

    from occluded_ppe_training.datasets.synthetic import SynthConfig, generate_dataset
    from occluded_ppe_training.datasets.synthetic_cli import parse_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-images', type=int, default=300)
    parser.add_argument('--size', type=parse_size, default=(320, 240), help='WxH')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    width, height = args.size
    with tempfile.TemporaryDirectory() as out:
        summary = generate_dataset(out, args.num_images, args.seed, SynthConfig(width=width, height=height))
    occluded = summary['occluded_joints'] / max(1, summary['joints'])
    rate = summary['images_per_second']
    print(f'{summary["images"]} images {width}x{height}, 1 core: {rate:.1f} images/s; '
          f'{summary["people"]} people, {occluded:.1%} of joints occluded')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
