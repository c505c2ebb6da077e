"""Message conversions for the node: images in, results out. Pure functions (no node, no rclpy).

Inputs: sensor_msgs/Image and sensor_msgs/CompressedImage -> uint8 [H, W, 3] RGB, honouring `step`
(padded rows) and `is_bigendian` (16-bit encodings); every malformed message raises `ImageRejected`
with a reason naming the bad value.

Outputs, each stamped with the input image's header:
- vision_msgs/Detection2DArray: one Detection2D per pedestrian (bbox centre and size in input pixels,
  one hypothesis with the class name and score), `id` = the pedestrian's track id (`track_ids`) with
  tracking, else `detection_ids(header, n)[k]` (unique within the frame only);
- occluded_ppe_msgs/PedestrianPoseArray with the same ids, keypoint states and RLE masks;
- sensor_msgs/Image instance-label image (0 = background, k = the k-th detection, 1-based).

Units: pixels of the input image. ROS message float fields are always assigned Python floats: an int
assigned to a float32/float64 field is accepted by the setter but serialised as 0.0.
"""
from __future__ import annotations

import array
import struct
import sys
from collections.abc import Sequence

import cv2
import numpy as np
from occluded_ppe_msgs.msg import PedestrianPose, PedestrianPoseArray
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from occluded_ppe_ros.draw import keypoint_states
from occluded_ppe_ros.inference.results import Pedestrian

# encoding -> (channels, numpy dtype of one channel (byte order applied later), channel order)
IMAGE_ENCODINGS: dict[str, tuple[int, str, str]] = {
    'rgb8': (3, 'u1', 'rgb'),
    'bgr8': (3, 'u1', 'bgr'),
    'rgba8': (4, 'u1', 'rgb'),
    'bgra8': (4, 'u1', 'bgr'),
    'mono8': (1, 'u1', 'mono'),
    'rgb16': (3, 'u2', 'rgb'),
    'bgr16': (3, 'u2', 'bgr'),
    'mono16': (1, 'u2', 'mono'),
}
COMPRESSED_FORMATS = ('jpeg', 'jpg', 'png')


class ImageRejected(ValueError):
    """An input image message that cannot be used; the message says why (shown in the node's warning)."""


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageRejected(f'zero size: width={width} height={height}')
    if width * height > max_pixels:
        raise ImageRejected(f'too many pixels: {width}x{height} = {width * height} > max_image_pixels '
                            f'{max_pixels}')


def check_image(msg: Image, max_pixels: int) -> tuple[int, str, str]:
    """Validate a sensor_msgs/Image's metadata in O(1) (no pixel is read).

    Args:
        msg: the message.
        max_pixels: frames with more than this many pixels are rejected (protects memory and latency).

    Returns:
        (channels, numpy sample type 'u1' or 'u2', channel order 'rgb' | 'bgr' | 'mono').

    Raises:
        ImageRejected: unknown encoding, zero size, too many pixels, step shorter than a row, or data
            shorter than step x height.
    """
    encoding = msg.encoding.strip().lower()
    if encoding not in IMAGE_ENCODINGS:
        raise ImageRejected(f'unknown encoding {msg.encoding!r} (accepted: {", ".join(IMAGE_ENCODINGS)})')
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_size(width, height, max_pixels)
    channels, sample, order = IMAGE_ENCODINGS[encoding]
    row_bytes = width * channels * int(sample[1])
    if step < row_bytes:
        raise ImageRejected(f'step {step} is smaller than one row ({width} px x {channels} channels x '
                            f'{sample[1]} bytes = {row_bytes}) for {encoding}')
    if len(msg.data) < step * height:
        raise ImageRejected(f'data has {len(msg.data)} bytes, fewer than step x height = {step} x {height} '
                            f'= {step * height}')
    return channels, sample, order


def image_to_rgb(msg: Image, max_pixels: int) -> np.ndarray:
    """Convert a sensor_msgs/Image to RGB.

    Args:
        msg: encodings rgb8, bgr8, rgba8, bgra8, mono8 (and rgb16, bgr16, mono16, reduced to their high
            byte); rows `step` bytes apart; 16-bit samples in the byte order `is_bigendian` gives.
        max_pixels: frames with more than this many pixels are rejected.

    Returns:
        uint8 [height, width, 3] RGB, C-contiguous (a view of the message's buffer for unpadded rgb8).

    Raises:
        ImageRejected: see `check_image`.
    """
    channels, sample, order = check_image(msg, max_pixels)
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    sample_bytes = int(sample[1])
    row_bytes = width * channels * sample_bytes
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=step * height).reshape(height, step)[:, :row_bytes]
    if sample_bytes == 2:
        dtype = np.dtype(('>' if msg.is_bigendian else '<') + sample)
        # The high byte of each 16-bit sample, read in the message's byte order.
        pixels = (np.ascontiguousarray(rows).view(dtype) >> 8).astype(np.uint8)
    else:
        pixels = rows
    pixels = pixels.reshape(height, width, channels)
    if order == 'rgb' and channels == 3:
        return np.ascontiguousarray(pixels)  # no copy unless the rows are padded
    # OpenCV's colour conversions read padded rows directly and are ~7x faster than numpy's reordering.
    code = {('mono', 1): cv2.COLOR_GRAY2RGB, ('bgr', 3): cv2.COLOR_BGR2RGB, ('bgr', 4): cv2.COLOR_BGRA2RGB,
            ('rgb', 4): cv2.COLOR_RGBA2RGB}[(order, channels)]
    return cv2.cvtColor(pixels, code)


def compressed_image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None when not found."""
    head = bytes(data[:24])
    if head.startswith(b'\x89PNG\r\n\x1a\n') and len(head) >= 24 and head[12:16] == b'IHDR':
        width, height = struct.unpack('>II', head[16:24])
        return int(width), int(height)
    if not head.startswith(b'\xff\xd8'):
        return None
    # JPEG: walk the marker segments to the first start-of-frame (SOF0..SOF15 except DHT/JPG/DAC).
    view = memoryview(data)
    offset = 2
    while offset + 9 <= len(view):
        if view[offset] != 0xFF:
            return None
        marker = view[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack('>HH', bytes(view[offset + 5:offset + 9]))
            return int(width), int(height)
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            offset += 2
            continue
        segment_length = struct.unpack('>H', bytes(view[offset + 2:offset + 4]))[0]
        offset += 2 + segment_length
    return None


def check_compressed(msg: CompressedImage, max_pixels: int) -> None:
    """Validate a sensor_msgs/CompressedImage without decoding it (format, data, size in the header).

    Raises:
        ImageRejected: unsupported format, empty data, or more pixels than `max_pixels`.
    """
    fmt = msg.format.lower()
    if not any(name in fmt for name in COMPRESSED_FORMATS):
        raise ImageRejected(f'unsupported compressed format {msg.format!r} (accepted: jpeg, png)')
    if len(msg.data) == 0:
        raise ImageRejected('zero size: compressed image with no data')
    size = compressed_image_size(msg.data)
    if size is not None:
        _check_size(size[0], size[1], max_pixels)


def compressed_to_rgb(msg: CompressedImage, max_pixels: int) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG) to RGB.

    Args:
        msg: `format` as image_transport writes it ("jpeg", "png", "rgb8; jpeg compressed bgr8", ...).
        max_pixels: images whose header declares more pixels are rejected before decoding.

    Returns:
        uint8 [H, W, 3] RGB.

    Raises:
        ImageRejected: see `check_compressed`, or undecodable data.
    """
    check_compressed(msg, max_pixels)
    decoded = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageRejected(f'undecodable {msg.format!r} data ({len(msg.data)} bytes)')
    _check_size(decoded.shape[1], decoded.shape[0], max_pixels)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def numpy_to_image(pixels: np.ndarray, header: Header, encoding: str) -> Image:
    """Wrap an array as a sensor_msgs/Image (one copy of the pixels).

    Args:
        pixels: uint8 [H, W, 3] for rgb8/bgr8, uint8 [H, W] for mono8, uint16 [H, W] for 16UC1/mono16.
        header: copied into the message.
        encoding: the sensor_msgs encoding string of `pixels`.

    Returns:
        The message; 16-bit data in this machine's byte order (is_bigendian set accordingly).
    """
    pixels = np.ascontiguousarray(pixels)
    buffer = array.array('B')
    buffer.frombytes(pixels.reshape(-1).view(np.uint8).data)
    return image_message(buffer, header, int(pixels.shape[0]), int(pixels.shape[1]), encoding,
                         int(pixels.strides[0]), int(pixels.dtype.itemsize > 1 and sys.byteorder == 'big'))


# Jazzy's generated messages check field values only with check_fields (ROS_PYTHON_CHECK_FIELDS=1, off by
# default); unchecked, a uint8[] setter copies what it is given, even an array.array('B'). Checked, it
# keeps that array as it is: a full frame is then copied once (into the array), not twice.
_IMAGE_CHECK_FIELDS = {'check_fields': True} if '_check_fields' in Image.__slots__ else {}


def image_message(data: array.array, header: Header, height: int, width: int, encoding: str, step: int,
                  is_bigendian: int = 0) -> Image:
    """A sensor_msgs/Image that takes `data` (array.array('B'), step x height bytes) without copying it."""
    message = Image(**_IMAGE_CHECK_FIELDS)
    message.header = header
    message.height, message.width = height, width
    message.encoding = encoding
    message.is_bigendian = is_bigendian
    message.step = step
    message.data = data
    return message


def detection_ids(header: Header, count: int) -> list[str]:
    """Ids of a frame's detections, unique within the frame: "<sec>.<nanosec>/<index>"."""
    stamp = f'{header.stamp.sec}.{header.stamp.nanosec:09d}'
    return [f'{stamp}/{index}' for index in range(count)]


def track_ids(pedestrians: Sequence[Pedestrian]) -> list[str]:
    """Ids of tracked pedestrians: the decimal track id ("17"), the same for a person across frames.

    Raises:
        ValueError: a pedestrian has no track id (the tracker did not see the frame).
    """
    untracked = [index for index, pedestrian in enumerate(pedestrians) if pedestrian.track_id < 1]
    if untracked:
        raise ValueError(f'pedestrians {untracked} have no track id (track_id < 1)')
    return [str(int(pedestrian.track_id)) for pedestrian in pedestrians]


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Row-major run lengths of a binary mask (InstanceMask.msg's encoding).

    Args:
        mask: bool [H, W].

    Returns:
        Alternating background / foreground run lengths starting with background (possibly 0), summing
        to H x W; [] for an empty (0-pixel) mask.
    """
    return rle_counts(mask).tolist()


# numpy's type of InstanceMask.counts' array.array('I') items (4 bytes on every platform ROS supports).
_COUNTS_DTYPE = np.dtype(f'u{array.array("I").itemsize}')


def rle_counts(mask: np.ndarray) -> np.ndarray:
    """`mask_to_rle` as an unsigned array (the dtype of array.array('I')), without Python ints."""
    flat = np.asarray(mask, dtype=bool).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, _COUNTS_DTYPE)
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    # Run boundaries 0, changes + 1, size (with an empty first run when the mask starts in the foreground).
    first = 1 if flat[0] else 0
    boundaries = np.empty(len(changes) + 2 + first, np.int64)
    boundaries[:first + 1] = 0
    boundaries[first + 1:-1] = changes + 1
    boundaries[-1] = flat.size
    return (boundaries[1:] - boundaries[:-1]).astype(_COUNTS_DTYPE)


def rle_to_mask(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Inverse of `mask_to_rle`: bool [height, width]."""
    counts = [int(c) for c in counts]
    if sum(counts) != height * width:
        raise ValueError(f'RLE counts sum to {sum(counts)}, expected {height} x {width} = {height * width}')
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(height, width)


def clipped_mask(pedestrian: Pedestrian, height: int, width: int) -> tuple[int, int, np.ndarray]:
    """The pedestrian's mask crop cut to the image: (x_offset, y_offset, bool [h, w]) (h or w may be 0)."""
    x0, y0 = (int(v) for v in pedestrian.mask_origin)
    mask_height, mask_width = pedestrian.mask.shape
    cx0, cy0 = min(max(x0, 0), width), min(max(y0, 0), height)
    cx1, cy1 = max(min(x0 + mask_width, width), cx0), max(min(y0 + mask_height, height), cy0)
    return cx0, cy0, pedestrian.mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]


def _set_box(box, values: np.ndarray) -> None:
    box.x_min, box.y_min, box.x_max, box.y_max = (float(v) for v in values)


def to_detection_array(pedestrians: Sequence[Pedestrian], header: Header,
                       ids: Sequence[str]) -> Detection2DArray:
    """vision_msgs/Detection2DArray: bbox centre/size of the full box, class name and score."""
    message = Detection2DArray(header=header)
    for pedestrian, detection_id in zip(pedestrians, ids, strict=True):
        x1, y1, x2, y2 = (float(v) for v in pedestrian.box)
        detection = Detection2D(header=header, id=detection_id)
        detection.bbox.center.position.x = (x1 + x2) / 2.0
        detection.bbox.center.position.y = (y1 + y2) / 2.0
        detection.bbox.size_x = x2 - x1
        detection.bbox.size_y = y2 - y1
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = pedestrian.class_name
        hypothesis.hypothesis.score = float(pedestrian.score)
        detection.results = [hypothesis]
        message.detections.append(detection)
    return message


def to_pose_array(pedestrians: Sequence[Pedestrian], header: Header, ids: Sequence[str],
                  image_size: tuple[int, int], keypoint_threshold: float) -> PedestrianPoseArray:
    """occluded_ppe_msgs/PedestrianPoseArray.

    Args:
        pedestrians: the frame's results.
        header: the input image's header.
        ids: `detection_ids(header, len(pedestrians))`, shared with the Detection2DArray.
        image_size: (height, width) of the input image; masks are cut to it.
        keypoint_threshold: joints scoring below it get STATE_NOT_PRESENT.

    Returns:
        The message, one PedestrianPose per pedestrian in the same order.
    """
    height, width = image_size
    message = PedestrianPoseArray(header=header)
    for pedestrian, detection_id in zip(pedestrians, ids, strict=True):
        pose = PedestrianPose(id=detection_id, class_id=pedestrian.class_name,
                              score=float(pedestrian.score),
                              visibility_ratio=float(pedestrian.visibility_ratio))
        _set_box(pose.full_box, pedestrian.box)
        _set_box(pose.visible_box, pedestrian.visible_box)
        states = keypoint_states(pedestrian.keypoint_scores, pedestrian.keypoint_occluded, keypoint_threshold)
        # tolist() converts to Python floats/ints in one call (per-element numpy scalars are slower).
        rows = zip(pose.keypoints, pedestrian.keypoints.astype(np.float64).tolist(),
                   pedestrian.keypoint_scores.astype(np.float64).tolist(), states.tolist(), strict=True)
        for keypoint, (x, y), score, state in rows:
            keypoint.x, keypoint.y, keypoint.score, keypoint.state = x, y, score, state
        x_offset, y_offset, crop = clipped_mask(pedestrian, height, width)
        if crop.size:
            # The pose's own (zero) InstanceMask is filled in; the run lengths go from numpy into the
            # uint32[] field's array.array in one copy (a list of Python ints cost ~40 us per mask).
            mask = pose.mask
            mask.x_offset, mask.y_offset = x_offset, y_offset
            mask.width, mask.height = int(crop.shape[1]), int(crop.shape[0])
            mask.counts = array.array('I', rle_counts(crop).tobytes())
        message.pedestrians.append(pose)
    return message


def label_image(pedestrians: Sequence[Pedestrian], height: int, width: int) -> np.ndarray:
    """Instance labels: 0 background, k + 1 for the k-th pedestrian; earlier (better) ones win overlaps.

    Returns:
        uint8 [height, width] for up to 255 pedestrians, else uint16.
    """
    dtype = np.uint8 if len(pedestrians) <= 255 else np.uint16
    labels = np.zeros((height, width), dtype=dtype)
    for index in range(len(pedestrians) - 1, -1, -1):
        x_offset, y_offset, crop = clipped_mask(pedestrians[index], height, width)
        if not crop.size:
            continue
        region = labels[y_offset:y_offset + crop.shape[0], x_offset:x_offset + crop.shape[1]]
        # OpenCV's masked copy writes into the view ~3x faster than numpy's boolean assignment.
        cv2.copyTo(np.full_like(region, index + 1), crop.view(np.uint8), region)
    return labels


def to_label_image(pedestrians: Sequence[Pedestrian], header: Header, height: int, width: int) -> Image:
    """sensor_msgs/Image of `label_image`: mono8 (<= 255 pedestrians) or 16UC1, aligned with the input."""
    labels = label_image(pedestrians, height, width)
    return numpy_to_image(labels, header, 'mono8' if labels.dtype == np.uint8 else '16UC1')

