"""The held-out split of a COCO-format set: one rule, used by training, evaluation and the peer benchmark.

An image is held out when `int(sha256(str(image_id)).hexdigest(), 16) % 3 == 0` (`is_held_out`): about a
third of the images, chosen by the id alone, so the split does not depend on file order, on which other
images are present or on a random seed. On ../shared/data/coco_train2017_person_kp it holds out 42 of
the 130 real photos. The default model trains on the rest (`split_filter: train` in a dataset config)
and is scored on these (`split_filter: heldout`, or the ground-truth file `write_split` writes for
`ppe eval`).

Command line (writes the held-out ground truth that `ppe eval model --gt` reads):
    python -m occluded_ppe_training.datasets.splits ANNOTATIONS.json --split heldout --out FILE.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

HELD_OUT_MODULUS = 3
SPLITS = ('train', 'heldout')


def is_held_out(image_id: int) -> bool:
    """True for the held-out evaluation images (about a third, chosen by a hash of the id).

    Args:
        image_id: the COCO image id (an int, or anything `int()` accepts, e.g. a numpy integer).
    """
    return int(hashlib.sha256(str(int(image_id)).encode()).hexdigest(), 16) % HELD_OUT_MODULUS == 0


def in_split(image_id: int, split: str) -> bool:
    """True when `image_id` belongs to `split` ('train': not held out; 'heldout': held out).

    Raises:
        ValueError: `split` is not one of SPLITS.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    return is_held_out(image_id) == (split == 'heldout')


def split_ids(image_ids: Iterable[int], split: str) -> list[int]:
    """The ids of `image_ids` in `split`, in their given order."""
    return [image_id for image_id in image_ids if in_split(image_id, split)]


def split_coco(data: dict, split: str) -> dict:
    """A COCO annotation dict restricted to the images of `split` (and their annotations).

    Args:
        data: COCO format (`images`, `annotations`, and any other top-level keys, kept as they are).
        split: 'train' or 'heldout'.

    Returns:
        a new dict; `images` and `annotations` are filtered, everything else is shared with `data`.
    """
    kept = {image['id'] for image in data['images'] if in_split(image['id'], split)}
    return dict(data, images=[image for image in data['images'] if image['id'] in kept],
                annotations=[a for a in data['annotations'] if a['image_id'] in kept])


def write_split(annotation_file: str | Path, split: str, output: str | Path) -> dict:
    """Write the `split` part of a COCO annotation file to `output`; returns counts for a log line."""
    annotation_file, output = Path(annotation_file), Path(output)
    with open(annotation_file, encoding='utf-8') as stream:
        data = json.load(stream)
    subset = split_coco(data, split)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(subset))
    persons = [a for a in subset['annotations'] if not a.get('iscrowd')]
    return {'images': len(subset['images']), 'of_images': len(data['images']),
            'images_with_people': len({a['image_id'] for a in persons}),
            'non_crowd_persons': len(persons),
            'with_keypoints': sum(a.get('num_keypoints', 0) > 0 for a in persons)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: write one split of a COCO annotation file."""
    parser = argparse.ArgumentParser(description='write the train or held-out part of a COCO JSON '
                                                 '(held out: sha256(str(image_id)) % 3 == 0)')
    parser.add_argument('annotations', type=Path, help='COCO annotations JSON')
    parser.add_argument('--split', choices=SPLITS, default='heldout')
    parser.add_argument('--out', type=Path, required=True, help='output JSON')
    args = parser.parse_args(argv)
    counts = write_split(args.annotations, args.split, args.out)
    print(f'{args.out}: {counts["images"]} of {counts["of_images"]} images ({args.split}), '
          f'{counts["images_with_people"]} with people, {counts["non_crowd_persons"]} non-crowd persons, '
          f'{counts["with_keypoints"]} with keypoints')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
