"""`ppe synth`: write a synthetic occluded-pedestrian set (COCO JSON + JPEG images) to a folder."""
from __future__ import annotations

import argparse


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'WxH' into (width, height), both at least 32."""
    try:
        width, height = (int(part) for part in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'--size must be WxH, e.g. 320x240, got {text!r}') from None
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f'--size must be at least 32x32, got {text!r}')
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ppe synth`."""
    parser.add_argument('--out', required=True, help='output folder (images/ and annotations.json)')
    parser.add_argument('--num-images', type=int, default=200, help='how many images')
    parser.add_argument('--seed', type=int, default=0, help='image i depends only on (seed, i)')
    parser.add_argument('--size', type=parse_size, default=(320, 240), help='image size WxH in pixels')
    parser.add_argument('--max-people', type=int, default=4, help='at most this many people per image')
    parser.add_argument('--occluder-probability', type=float, default=0.6,
                        help='chance that a person gets an occluder over part of its body')
    parser.add_argument('--back-view-probability', type=float, default=0.3,
                        help='share of people seen from behind (0-1); the rest are front and side views')
    parser.add_argument('--jpeg-quality', type=int, default=92, help='JPEG quality 0-100')
    parser.add_argument('--videos', type=int, default=0, metavar='N',
                        help='instead of still images: N tracking sequences (people walking behind vans, '
                             'poles and each other; MOTChallenge gt + per-frame COCO annotations), '
                             'see training/datasets/synthetic_video.py; --size, --seed apply')
    parser.add_argument('--people', type=int, default=6, help='--videos: people per sequence')
    parser.add_argument('--duration', type=float, default=8.0, help='--videos: seconds per sequence')
    parser.add_argument('--fps', type=float, default=30.0, help='--videos: frames per second')


def run(args: argparse.Namespace) -> int:
    """Generate the set and print a one-line summary; returns the exit code."""
    from occluded_ppe_training.datasets.synthetic import SynthConfig, generate_dataset

    if args.num_images < 0:
        raise SystemExit(f'--num-images must be >= 0, got {args.num_images}')
    if args.videos:
        from occluded_ppe_training.datasets.synthetic_video import VideoConfig, write_sequence
        if args.people < 1 or args.duration <= 0 or args.fps <= 0:
            raise SystemExit(f'--people, --duration and --fps must be positive, got {args.people}, '
                             f'{args.duration}, {args.fps}')
        width, height = args.size
        config = VideoConfig(width=width, height=height, fps=args.fps, duration_s=args.duration,
                             num_people=args.people, jpeg_quality=args.jpeg_quality)
        for index in range(args.videos):
            summary = write_sequence(args.out, f'synth-{index:02d}', args.seed, index, config)
            print(f'wrote {args.out}/synth-{index:02d}: {summary["frames"]} frames, '
                  f'{summary["people"]} people, {summary["boxes"]} boxes '
                  f'({summary["fully_hidden_boxes"]} fully hidden)')
        return 0
    if not 0.0 <= args.back_view_probability <= 1.0:
        raise SystemExit(f'--back-view-probability must be in [0, 1], got {args.back_view_probability}')
    width, height = args.size
    config = SynthConfig(width=width, height=height, max_people=args.max_people,
                         occluder_probability=args.occluder_probability,
                         back_view_probability=args.back_view_probability, jpeg_quality=args.jpeg_quality)
    summary = generate_dataset(args.out, args.num_images, args.seed, config, progress=True)
    occluded_share = summary['occluded_joints'] / max(1, summary['joints'])
    print(f'wrote {summary["images"]} images, {summary["people"]} people, {summary["joints"]} joints '
          f'({occluded_share:.1%} occluded) to {args.out} in {summary["seconds"]:.1f} s '
          f'({summary["images_per_second"]:.1f} images/s)')
    return 0
