"""CityPersons (the target domain, E_C branch): the official anno_train.mat / anno_val.mat + Cityscapes.

The official annotation files (Zhang et al., CVPR 2017) hold one MATLAB variable, `anno_train_aligned`
or `anno_val_aligned`: a 1 x N cell array, one cell per image, each a 1 x 1 struct with fields
`cityname`, `im_name` and `bbs`. `bbs` has one row per object:
`[class_label, x1, y1, w, h, instance_id, x1_vis, y1_vis, w_vis, h_vis]` (pixels, (x1, y1) the top-left
corner). Classes: 0 ignore region (fake humans: posters, reflections), 1 pedestrian, 2 rider, 3 sitting
person, 4 other person with an unusual posture, 5 group of people. For classes 1 and 2 the full box is a
well-aligned full-body box (it may extend beyond the image for truncated people) and the visible box
comes from the segmentation; for the others both boxes are the visible box.

Loaded here as:
- classes 1 (pedestrian) -> label 0 and 2 (rider) -> label 1: instances, with full box (clipped to the
  image), visible box, and the Cityscapes instance mask where one is found;
- classes 0, 3, 4, 5 -> `ignore_boxes` (their full box): no loss for detections inside them. This follows
  the CityPersons evaluation protocol, which ignores these classes rather than counting them as
  positives or as background; training on them as pedestrians would teach odd postures and groups as
  single persons, training on them as background would punish correct detections;
- no keypoints (`has_keypoints` False): CityPersons is the target domain;
- `image_id`: the 1-based position of the image's cell in the .mat file.

Images: `<root>/leftImg8bit/<split>/<city>/<im_name>`. Masks: Cityscapes
`<root>/gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png` (16-bit PNG; pixel value = class id * 1000 +
k for things with instances, e.g. person = 24, rider = 25, so 24000, 24001, ... 25000, ...; a bare class
id < 1000 for stuff and for crowd regions). CityPersons was annotated on those instances and its
`instance_id` column holds that same instanceIds pixel value for pedestrians and riders (24xxx / 25xxx).
Because this project cannot check the official files here, the loader also accepts a bare per-class
index k (0 < instance_id < 1000), which it maps to 24000 + k (rider: 25000 + k); an instance_id of 0, a
missing instanceIds file, or an id absent from the PNG gives `has_mask` False (an all-zero mask, no mask
loss) instead of a wrong mask.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import scipy.io
import torch
from torch.utils.data import Dataset

from occluded_ppe_training.datasets.common import (
    RecordChecker, box_outside_image, image_to_tensor, make_target, read_rgb, xywh_to_xyxy)

CLASS_IGNORE, CLASS_PEDESTRIAN, CLASS_RIDER, CLASS_SITTING, CLASS_OTHER, CLASS_GROUP = range(6)
# CityPersons class_label -> label in the CityPersons branch; the other classes become ignore regions.
LABEL_OF_CLASS = {CLASS_PEDESTRIAN: 0, CLASS_RIDER: 1}
IGNORE_CLASSES = (CLASS_IGNORE, CLASS_SITTING, CLASS_OTHER, CLASS_GROUP)
# Cityscapes label ids of the classes CityPersons instances come from (cityscapesScripts labels.py).
CITYSCAPES_PERSON_ID, CITYSCAPES_RIDER_ID = 24, 25
BBS_COLUMNS = 10
# How far (pixels) a visible box may leave the image before the record is rejected.
BORDER_TOLERANCE = 1.0

Transform = Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG from its IHDR chunk, without decoding the image."""
    with open(path, 'rb') as stream:
        header = stream.read(24)
    if len(header) < 24 or header[:8] != b'\x89PNG\r\n\x1a\n' or header[12:16] != b'IHDR':
        raise ValueError(f'{path} is not a PNG file')
    width, height = struct.unpack('>II', header[16:24])
    return int(width), int(height)


def cityscapes_instance_value(instance_id: int, class_label: int) -> int:
    """The instanceIds.png pixel value of a CityPersons instance_id (see the module docstring); 0 = none."""
    if instance_id >= 1000:
        return instance_id
    if instance_id <= 0:
        return 0
    base = CITYSCAPES_RIDER_ID if class_label == CLASS_RIDER else CITYSCAPES_PERSON_ID
    return base * 1000 + instance_id


def _mat_string(value) -> str:
    """A MATLAB char array as loaded by scipy (array(['text']) or nested) -> str."""
    array = np.asarray(value)
    while array.dtype == object and array.size == 1:
        array = np.asarray(array.reshape(-1)[0])
    return str(array.reshape(-1)[0]) if array.size else ''


def read_annotation_file(path: str | Path) -> list[dict]:
    """Read an official CityPersons .mat file.

    Args:
        path: anno_train.mat or anno_val.mat (the variable whose name ends in '_aligned'; a file with
            a single anno_* variable is accepted too).

    Returns:
        one dict per image, in file order: cityname (str), im_name (str), bbs (float64 [N, C]).
    """
    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path))
    except (ValueError, TypeError, OSError, scipy.io.matlab.MatReadError) as error:
        raise ValueError(f'{path}: not a readable MATLAB file: {error}') from error
    names = [k for k in mat if not k.startswith('__')]
    chosen = [k for k in names if k.endswith('_aligned')] or [k for k in names if k.startswith('anno')]
    if len(chosen) != 1:
        raise ValueError(f'{path}: expected one anno_*_aligned variable, found {names}')
    cells = np.asarray(mat[chosen[0]])
    if cells.dtype != object:
        raise ValueError(f'{path}: {chosen[0]} is not a cell array (dtype {cells.dtype})')
    records = []
    for position, cell in enumerate(cells.reshape(-1)):
        struct_array = np.asarray(cell)
        fields = struct_array.dtype.names or ()
        if not {'cityname', 'im_name', 'bbs'} <= set(fields):
            raise ValueError(f'{path}: {chosen[0]}{{{position + 1}}} is not a struct with cityname, im_name, '
                             f'bbs (fields {struct_array.dtype.names})')
        entry = struct_array.reshape(-1)[0]
        bbs = np.asarray(entry['bbs'], dtype=np.float64)
        if bbs.size == 0:
            bbs = np.zeros((0, BBS_COLUMNS))
        elif bbs.ndim == 1:
            bbs = bbs.reshape(1, -1)
        records.append({'cityname': _mat_string(entry['cityname']), 'im_name': _mat_string(entry['im_name']),
                        'bbs': bbs})
    return records


class CityPersons(Dataset):
    """CityPersons as contract-2 targets (domain 'citypersons': 0 pedestrian, 1 rider).

    Args:
        root: folder holding leftImg8bit/ and gtFine/ (Cityscapes layout).
        annotation_file: the official anno_train.mat / anno_val.mat.
        split: 'train' or 'val' (the Cityscapes folder).
        transforms: callable (image, target) -> (image, target).
        skip_invalid: False: a bad record raises `DatasetRecordError` naming the file and record;
            True: bad rows (or images, for a missing image) are left out and listed in `skipped`.
        keep_empty: keep images with no pedestrian or rider.
        load_masks: read the gtFine instanceIds masks (False: all `has_mask` False).
    """

    domain = 'citypersons'
    class_names = ('pedestrian', 'rider')

    def __init__(self, root: str | Path, annotation_file: str | Path, split: str = 'train',
                 transforms: Transform | None = None, skip_invalid: bool = False,
                 keep_empty: bool = True, load_masks: bool = True) -> None:
        self.root = Path(root)
        self.annotation_file = Path(annotation_file)
        self.split = split
        self.transforms = transforms
        self.load_masks = load_masks
        self._checker = RecordChecker(skip_invalid)
        self.records: list[dict] = []
        for position, record in enumerate(read_annotation_file(self.annotation_file)):
            record = self._checked(position, record)
            if record is not None and (keep_empty or record['instances'].size):
                self.records.append(record)

    @property
    def skipped(self):
        """Records left out with `skip_invalid=True` (list of SkippedRecord)."""
        return self._checker.skipped

    def image_path(self, record: dict) -> Path:
        """leftImg8bit/<split>/<city>/<im_name>."""
        return self.root / 'leftImg8bit' / self.split / record['cityname'] / record['im_name']

    def instance_ids_path(self, record: dict) -> Path:
        """gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png, stem = im_name without _leftImg8bit.png."""
        stem = record['im_name'].rsplit('_leftImg8bit', 1)[0]
        return self.root / 'gtFine' / self.split / record['cityname'] / f'{stem}_gtFine_instanceIds.png'

    def _checked(self, position: int, record: dict) -> dict | None:
        """Validate one image's record; returns it with `instances` / `ignore` rows, or None if skipped."""
        name = f'image {position + 1} ({record["cityname"]}/{record["im_name"]})'
        path = self.image_path(record)
        if not path.is_file():
            self._checker.reject(self.annotation_file, name, f'image file {path} is missing')
            return None
        width, height = png_size(path) if path.suffix.lower() == '.png' else read_rgb(path).shape[1::-1]
        bbs = record['bbs']
        if bbs.shape[1] != BBS_COLUMNS:
            self._checker.reject(self.annotation_file, name,
                                 f'bbs rows must have {BBS_COLUMNS} numbers, got {bbs.shape[1]}')
            return None
        good = []
        for row_index, row in enumerate(bbs):
            reason = self._row_problem(row, width, height)
            if reason is None:
                good.append(row)
            else:
                self._checker.reject(self.annotation_file, f'{name} bbs row {row_index + 1}', reason)
        rows = np.asarray(good, np.float64).reshape(-1, BBS_COLUMNS)
        is_instance = np.isin(rows[:, 0], list(LABEL_OF_CLASS))
        return {**record, 'image_id': position + 1, 'width': width, 'height': height,
                'instances': rows[is_instance],
                'ignore': rows[~is_instance]}

    @staticmethod
    def _row_problem(row: np.ndarray, width: int, height: int) -> str | None:
        label = int(row[0])
        if row[0] != label or label not in range(6):
            return f'class_label must be 0..5, got {row[0]}'
        if row[3] <= 0 or row[4] <= 0:
            return f'box [x1, y1, w, h] = {row[1:5].tolist()} has no area'
        full = xywh_to_xyxy(row[1:5])[0]
        if full[2] <= 0 or full[3] <= 0 or full[0] >= width or full[1] >= height:
            return f'box [x1, y1, w, h] = {row[1:5].tolist()} is outside the {width}x{height} image'
        if label in LABEL_OF_CLASS:
            if row[8] <= 0 or row[9] <= 0:
                return f'visible box {row[6:10].tolist()} has no area'
            if box_outside_image(xywh_to_xyxy(row[6:10])[0], width, height, BORDER_TOLERANCE):
                return f'visible box {row[6:10].tolist()} is outside the {width}x{height} image'
        return None

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """Image uint8 [H, W, 3] RGB and its target, before transforms."""
        record = self.records[index]
        path = self.image_path(record)
        image = read_rgb(path)
        height, width = image.shape[:2]
        if (width, height) != (record['width'], record['height']):
            raise ValueError(f'{path}: size changed to {width}x{height} since it was indexed')
        rows = record['instances']
        boxes = xywh_to_xyxy(rows[:, 1:5])
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        visible = xywh_to_xyxy(rows[:, 6:10])
        visible[:, 0::2] = visible[:, 0::2].clip(0, width)
        visible[:, 1::2] = visible[:, 1::2].clip(0, height)
        masks = np.zeros((len(rows), height, width), np.uint8)
        if self.load_masks and len(rows):
            masks = self._masks(record, rows, height, width)
        labels = np.array([LABEL_OF_CLASS[int(c)] for c in rows[:, 0]], np.int64)
        ignore = xywh_to_xyxy(record['ignore'][:, 1:5])
        target = make_target(record['image_id'], height, width, boxes=boxes, labels=labels, masks=masks,
                             has_keypoints=np.zeros(len(rows), bool), visible_boxes=visible,
                             ignore_boxes=ignore)
        return image, target

    def _masks(self, record: dict, rows: np.ndarray, height: int, width: int) -> np.ndarray:
        masks = np.zeros((len(rows), height, width), np.uint8)
        path = self.instance_ids_path(record)
        instance_ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if instance_ids is None:
            return masks
        if instance_ids.shape[:2] != (height, width):
            raise ValueError(f'{path}: instance map is {instance_ids.shape[1]}x{instance_ids.shape[0]}, '
                             f'image is {width}x{height}')
        for i, row in enumerate(rows):
            value = cityscapes_instance_value(int(row[5]), int(row[0]))
            if value:
                masks[i] = instance_ids == value
        return masks

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, target = self.load(index)
        tensor = image_to_tensor(image)
        if self.transforms is not None:
            tensor, target = self.transforms(tensor, target)
        return tensor, target
