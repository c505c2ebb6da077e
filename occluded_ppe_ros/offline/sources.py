"""Frame sources for `ppe infer`: an image folder, a video file, the image topics of an MCAP recording.

Each source yields `Frame`s in a stable order. A frame that cannot be decoded (a corrupt image file, a
malformed image message) is yielded with `rgb = None` and `error` set, so the caller can report it by
name and carry on; nothing here raises for one bad frame.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from occluded_ppe_ros.offline import mcap_io

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
# Frames above this size are rejected by the message decoders (same guard as the node's).
MAX_IMAGE_PIXELS = 8192 * 8192


@dataclass
class Frame:
    """One input frame.

    Attributes:
        name: stable, unique, human-readable name: the file name relative to the folder, 'frame_000012'
            for a video, '<topic>@<log time ns>' for a recorded message. Used in reports.
        rgb: uint8 [H, W, 3] RGB, or None when the frame could not be decoded.
        error: why the frame could not be decoded ('' when it could).
        index: 0-based position in the source (counting undecodable frames too).
        record: the MCAP record the frame came from (MCAP sources only).
        message: the deserialised image message (MCAP sources only; None if it did not deserialise).
        camera_info: the latest sensor_msgs/CameraInfo recorded before this frame (MCAP sources with a
            CameraInfo topic only), for the skeleton markers' intrinsics.
        stamp_s: when the frame was taken, seconds, for the tracker: a video's frame index / frame rate
            (its position in milliseconds where the container gives no rate), a message's header stamp
            (its log time when unstamped); None for image folders (not a sequence).
    """

    name: str
    rgb: np.ndarray | None
    index: int
    error: str = ''
    record: mcap_io.RecordedMessage | None = None
    message: Any = field(default=None, repr=False)
    camera_info: Any = field(default=None, repr=False)
    stamp_s: float | None = None


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder` (by suffix, case-insensitive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f'--images {folder}: not a directory')
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to uint8 [H, W, 3] RGB (grey and alpha images converted).

    Raises:
        ValueError: the file is empty or does not decode as an image (names the file).
    """
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f'{path}: empty file')
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError(f'{path}: not a decodable image ({data.size} bytes)')
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def image_folder_frames(paths: list[Path]) -> Iterator[Frame]:
    """Frames of a list of image files (from `list_images`), named by file name."""
    for index, path in enumerate(paths):
        try:
            yield Frame(name=path.name, rgb=read_rgb(path), index=index)
        except ValueError as error:
            yield Frame(name=path.name, rgb=None, index=index, error=str(error))


def video_frame_count(path: str | Path) -> int:
    """Frame count from the container's header (0 when unknown); for the progress bar only."""
    capture = cv2.VideoCapture(str(path))
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        capture.release()


def video_frames(path: str | Path, frame_step: int = 1) -> Iterator[Frame]:
    """Every `frame_step`-th frame of a video, named 'frame_<index>' (0-based index in the video).

    Raises:
        ValueError: the file does not open as a video.
    """
    if frame_step < 1:
        raise ValueError(f'--frame-step must be >= 1, got {frame_step}')
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f'--video {path}: cannot be opened as a video')
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        index = 0
        while True:
            position_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
            ok, bgr = capture.read()
            if not ok:
                break  # end of stream (OpenCV does not tell a corrupt tail from the end)
            if index % frame_step == 0:
                stamp_s = index / fps if fps and fps > 0 else position_ms / 1000.0
                yield Frame(name=f'frame_{index:06d}', rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index=index,
                            stamp_s=stamp_s)
            index += 1
    finally:
        capture.release()


def mcap_image_topics(path: str | Path, topics: list[str] | None = None) -> dict[str, str]:
    """Map topic -> type of the image topics to process: `topics` if given (checked), else every image topic.

    Raises:
        ValueError: a requested topic is absent or not an image type, or the file has no image topic.
    """
    types = mcap_io.channel_types(path)
    if topics:
        chosen = {}
        for topic in topics:
            if topic not in types:
                raise ValueError(f'--topics {topic}: not in {path} (topics: {", ".join(sorted(types))})')
            if types[topic] not in IMAGE_TYPES:
                raise ValueError(f'--topics {topic}: type {types[topic]} is not one of '
                                 f'{", ".join(IMAGE_TYPES)}')
            chosen[topic] = types[topic]
        return chosen
    chosen = {topic: kind for topic, kind in types.items() if kind in IMAGE_TYPES}
    if not chosen:
        raise ValueError(f'--mcap {path}: no sensor_msgs Image or CompressedImage topic '
                         f'(topics: {", ".join(f"{t} [{k}]" for t, k in sorted(types.items())) or "none"})')
    return chosen


def mcap_message_count(path: str | Path, topics: list[str]) -> int:
    """Messages on `topics` according to the file's statistics (0 when the file has no summary)."""
    from mcap.reader import make_reader
    with open(path, 'rb') as stream:
        summary = make_reader(stream).get_summary()
    if summary is None or summary.statistics is None:
        return 0
    ids = {cid for cid, channel in summary.channels.items() if channel.topic in topics}
    return sum(count for cid, count in summary.statistics.channel_message_counts.items() if cid in ids)


def decode_image_message(message: Any) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> uint8 [H, W, 3] RGB, with the node's own converters.

    Raises:
        ValueError: the message is malformed (`ImageRejected`, a ValueError, says why).
    """
    from occluded_ppe_ros.ros.conversions import compressed_to_rgb, image_to_rgb
    if hasattr(message, 'format'):
        return compressed_to_rgb(message, MAX_IMAGE_PIXELS)
    return image_to_rgb(message, MAX_IMAGE_PIXELS)


def mcap_frames(path: str | Path, topics: list[str]) -> Iterator[Frame]:
    """Frames of the image messages on `topics`, in log-time order, named '<topic>@<log time ns>'.

    CameraInfo messages recorded in the file are read along the way; each frame carries the latest one
    seen before it (None if none).
    """
    info_topics = [topic for topic, kind in mcap_io.channel_types(path).items() if kind == CAMERA_INFO_TYPE]
    camera_info = None
    index = 0
    for record in mcap_io.iter_recorded_messages(path, list(topics) + info_topics):
        if record.topic in info_topics and record.topic not in topics:
            try:
                camera_info = mcap_io.deserialize(record)
            except ValueError:
                pass  # a broken CameraInfo only costs the markers their calibration
            continue
        name = f'{record.topic}@{record.log_time_ns}'
        frame = Frame(name=name, rgb=None, index=index, record=record, camera_info=camera_info)
        index += 1
        try:
            frame.message = mcap_io.deserialize(record)
        except ValueError as error:
            frame.error = str(error)
            yield frame
            continue
        stamp = frame.message.header.stamp
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        frame.stamp_s = (stamp_ns or record.log_time_ns) * 1e-9
        try:
            frame.rgb = decode_image_message(frame.message)
        except ValueError as error:
            frame.error = f'{record.where}: {record.type_name} rejected: {error}'
        yield frame


def safe_file_stem(name: str) -> str:
    """A frame name as a file name: separators and odd characters become '_' ('/cam/img@5' -> 'cam_img_5')."""
    stem = re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_.')
    return stem or 'frame'
