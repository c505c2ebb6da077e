"""`ppe infer`: the node's pipeline over files, without a ROS graph.

    ppe infer --images DIR | --video FILE | --mcap FILE --out DIR [--checkpoint PATH] [--backend ...]

Writes into --out:
- results.json: COCO results (`occluded_ppe_ros.inference.coco_results`): bbox, RLE segmentation,
  keypoints in COCO's 17-slot layout (zeros for eyes and ears), score, category_id 1. Loads with
  pycocotools' `COCO.loadRes` against a ground truth that has the same image ids.
- images.json: the image index, COCO style ({'images': [{'id', 'file_name', 'width', 'height'}]}):
  with --coco-gt the ids are the ground truth's (matched by file name); otherwise they are stable
  1-based positions: in the sorted folder, the video's frame index + 1, the message's position among the
  recording's image messages.
- overlays/<name>.png: boxes, visible masks and skeletons drawn by `occluded_ppe_ros.draw` (as the node's
  overlay topic), unless --no-overlays.
- for --mcap: <input stem>_ppe.mcap with, per image message, the node's messages stamped with the input
  header and logged at the input's log time: Detection2DArray, PedestrianPoseArray, the instance-label
  Image, the skeleton MarkerArray and the overlay Image (ros2msg schemas, CDR: replays with
  `ros2 bag play`, opens in Foxglove).
- summary.json: counts, skipped frames with reasons, throughput.
- for --video and --mcap (unless --no-tracking): the pedestrians are tracked across frames as the node
  does (`occluded_ppe_ros.tracking`, the node's default tracking parameters, the frames' clothing colours,
  frame times from the video or the header stamps, one tracker per MCAP image topic). Each result
  record's `track_id` is the person's id (-1 for image folders, which are not sequences), the MCAP
  messages' ids are track ids, and videos also get tracks_mot.txt: MOTChallenge lines
  `frame,id,left,top,width,height,score,-1,-1,-1` (frame = the 1-based image id).

A frame that does not decode (a corrupt image file, a malformed message) is reported by name (file, or
topic and log time) and skipped; the run continues and the summary counts it. A tqdm progress bar shows
images per second. On a busy CPU, `--threads 1` avoids OpenMP threads spinning against each other.
rclpy is only imported for message (de)serialisation (no context, no DDS traffic).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from occluded_ppe_ros.offline import sources
from occluded_ppe_ros.offline.default_model import resolve_checkpoint
from occluded_ppe_ros.ros.parameters import PARAMETERS_BY_NAME
from occluded_ppe_ros.tracking import PedestrianTracker, TrackerConfig
from occluded_ppe_ros.tracking.mot import mot_line, write_lines

BACKENDS = ('auto', 'torch', 'onnxruntime', 'tensorrt')
# The node's output topic names (relative to its namespace) and what each carries.
NODE_OUTPUT_TOPICS: dict[str, str] = {
    'detections': 'vision_msgs/msg/Detection2DArray',
    'poses': 'occluded_ppe_msgs/msg/PedestrianPoseArray',
    'masks': 'sensor_msgs/msg/Image',
    'markers': 'visualization_msgs/msg/MarkerArray',
    'overlay': 'sensor_msgs/msg/Image',
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ppe infer`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--images', type=Path, metavar='DIR', help='folder of image files (jpg, png, ...)')
    source.add_argument('--video', type=Path, metavar='FILE', help='video file (anything OpenCV reads)')
    source.add_argument('--mcap', type=Path, metavar='FILE',
                        help='ROS 2 MCAP recording with sensor_msgs Image or CompressedImage topics')
    parser.add_argument('--out', type=Path, required=True, metavar='DIR', help='output folder (created)')
    parser.add_argument('--checkpoint', type=Path, default=None,
                        help='model checkpoint (.pt), ONNX model or TensorRT engine (default: the shipped '
                             'default model)')
    parser.add_argument('--backend', choices=BACKENDS, default='auto',
                        help="inference backend; 'auto' = TensorRT where available, else ONNX Runtime, "
                             'else torch')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='torch / ONNX Runtime device')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch intra-op threads (0 = torch default: one per core)')
    parser.add_argument('--input-size', type=int, nargs=2, default=None, metavar=('HEIGHT', 'WIDTH'),
                        help="network input size, pixels, multiples of 32 (default: the model's)")
    parser.add_argument('--score-threshold', type=float,
                        default=PARAMETERS_BY_NAME['score_threshold'].default,
                        help='minimum detection score in [0, 1] (default: the node default %(default)s)')
    parser.add_argument('--keypoint-threshold', type=float,
                        default=PARAMETERS_BY_NAME['keypoint_threshold'].default,
                        help='joints scoring below it are not drawn and are NOT_PRESENT in the messages '
                             '(default %(default)s)')
    parser.add_argument('--coco-gt', type=Path, default=None, metavar='JSON',
                        help='COCO annotations whose image ids the results use (images matched by file '
                             'name; images not listed there are skipped and reported)')
    parser.add_argument('--topics', nargs='+', default=None, metavar='TOPIC',
                        help='MCAP image topics to process (default: every Image / CompressedImage topic)')
    parser.add_argument('--output-namespace', default='/ppe',
                        help='MCAP output topics are <namespace>/detections, /poses, /masks, /markers, '
                             '/overlay (plus the input topic when several are processed)')
    parser.add_argument('--frame-step', type=int, default=1, help='video: process every N-th frame')
    parser.add_argument('--limit', type=int, default=0, help='stop after this many frames (0 = all)')
    parser.add_argument('--no-overlays', action='store_true', help='do not write overlay PNGs')
    parser.add_argument('--marker-depth', type=float, default=PARAMETERS_BY_NAME['marker_depth_m'].default,
                        help='MCAP markers: distance of the skeleton plane from the camera, metres')
    parser.add_argument('--no-tracking', action='store_true',
                        help='--video / --mcap: do not track pedestrians across frames (track_id -1)')
    parser.add_argument('--max-coast-s', type=float,
                        default=PARAMETERS_BY_NAME['tracking_max_coast_s'].default,
                        help='tracking: a person hidden longer than this (seconds) gets a new id '
                             '(default: the node default %(default)s)')


@dataclass
class InferSummary:
    """What a run did; written to summary.json."""

    source: str
    checkpoint: str
    backend: str
    frames_total: int = 0
    frames_processed: int = 0
    frames_skipped: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    pedestrians: int = 0
    occluded_joints: int = 0
    inference_seconds: float = 0.0
    tracks: int = 0
    wall_seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with throughput in frames per second."""
        out = dict(self.__dict__)
        out['images_per_second'] = (self.frames_processed / self.wall_seconds) if self.wall_seconds else 0.0
        out['mean_inference_ms'] = (1000.0 * self.inference_seconds / self.frames_processed
                                    if self.frames_processed else 0.0)
        return out


def load_coco_image_ids(path: Path) -> dict[str, int]:
    """file_name -> image id from a COCO annotations file (also keyed by the bare file name).

    Raises:
        ValueError: the file has no 'images' list (names the file).
    """
    with open(path) as stream:
        data = json.load(stream)
    if not isinstance(data, dict) or not isinstance(data.get('images'), list):
        raise ValueError(f'--coco-gt {path}: not a COCO annotations file (no "images" list)')
    ids: dict[str, int] = {}
    for image in data['images']:
        ids[str(image['file_name'])] = int(image['id'])
        ids.setdefault(Path(str(image['file_name'])).name, int(image['id']))
    return ids


def load_predictor(args: argparse.Namespace, checkpoint: Path) -> Any:
    """The Predictor for --checkpoint / --backend / --device / --input-size and the thresholds."""
    from occluded_ppe_ros.inference.predictor import Predictor
    options: dict[str, Any] = {}
    if args.input_size is not None:
        height, width = args.input_size
        if height <= 0 or width <= 0 or height % 32 or width % 32:
            raise ValueError(f'--input-size must be two positive multiples of 32, got {height} {width}')
        options['input_size'] = (height, width)
    for name in ('score_threshold', 'keypoint_threshold'):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f'--{name.replace("_", "-")} must be in [0, 1], got {value}')
    return Predictor.from_checkpoint(checkpoint, backend=args.backend, device=args.device,
                                     score_threshold=args.score_threshold,
                                     keypoint_threshold=args.keypoint_threshold, **options)


class McapOutput:
    """The node's messages for each processed recorded frame, written to an MCAP file."""

    def __init__(self, path: Path, namespace: str, input_topics: list[str], keypoint_threshold: float,
                 marker_depth: float) -> None:
        """Open the output file.

        Args:
            path: the MCAP file to write.
            namespace: output topics go under it (e.g. '/ppe').
            input_topics: the recorded image topics processed; with several, each gets its own outputs.
            keypoint_threshold: joints below it are NOT_PRESENT in poses and markers.
            marker_depth: metres from the camera to the skeleton markers' plane.
        """
        from occluded_ppe_ros.offline.mcap_io import Ros2McapWriter
        self.writer = Ros2McapWriter(path)
        self.namespace = '/' + namespace.strip('/') if namespace.strip('/') else ''
        self.several_inputs = len(input_topics) > 1
        self.keypoint_threshold = keypoint_threshold
        self.marker_depth = marker_depth
        self._drawn_track_ids: dict[str, set[int]] = {}  # per input topic: track ids drawn last frame

    def topic(self, input_topic: str, name: str) -> str:
        """Output topic of `name` (a NODE_OUTPUT_TOPICS key) for frames from `input_topic`."""
        middle = input_topic.rstrip('/') if self.several_inputs else ''
        return f'{self.namespace}{middle}/{name}'

    def write(self, frame: sources.Frame, pedestrians: list, overlay_rgb: np.ndarray,
              ended_track_ids: list[int] | None = None) -> None:
        """Write the five node messages of one frame (header = the input message's header).

        With `ended_track_ids` (not None) the pedestrians are tracked: their ids are track ids and the
        markers are per track as the node publishes them, with DELETEs for the tracks no longer drawn.
        """
        from occluded_ppe_ros.ros import conversions
        from occluded_ppe_ros.ros.markers import Intrinsics, skeleton_markers
        header = frame.message.header
        height, width = frame.rgb.shape[:2]
        intrinsics = Intrinsics.virtual(width, height)
        if frame.camera_info is not None:
            try:
                intrinsics = Intrinsics.from_camera_info(frame.camera_info.k, frame.camera_info.width,
                                                         frame.camera_info.height, width, height)
            except ValueError:
                pass  # an uncalibrated camera_info (zero K): the documented virtual camera instead
        if ended_track_ids is None:
            ids = conversions.detection_ids(header, len(pedestrians))
            markers = skeleton_markers(pedestrians, header, intrinsics, self.marker_depth,
                                       self.keypoint_threshold)
        else:
            from occluded_ppe_ros.ros.markers import track_skeleton_markers
            ids = conversions.track_ids(pedestrians)
            topic = frame.record.topic
            drawn = {int(p.track_id) for p in pedestrians}
            previous = self._drawn_track_ids.get(topic)
            markers = track_skeleton_markers(pedestrians, header, intrinsics, self.marker_depth,
                                             self.keypoint_threshold, sorted((previous or set()) - drawn),
                                             clear_first=previous is None)
            self._drawn_track_ids[topic] = drawn
        messages = {
            'detections': conversions.to_detection_array(pedestrians, header, ids),
            'poses': conversions.to_pose_array(pedestrians, header, ids, (height, width),
                                               self.keypoint_threshold),
            'masks': conversions.to_label_image(pedestrians, header, height, width),
            'markers': markers,
            'overlay': conversions.numpy_to_image(overlay_rgb, header, 'rgb8'),
        }
        log_time = frame.record.log_time_ns
        for name, message in messages.items():
            self.writer.write(self.topic(frame.record.topic, name), message, log_time,
                              frame.record.publish_time_ns)

    def close(self) -> None:
        """Finish the MCAP file."""
        self.writer.close()


def _frames(args: argparse.Namespace) -> tuple[Iterator[sources.Frame], int, str, list[str]]:
    """(frames, expected count (0 = unknown), source description, MCAP image topics)."""
    if args.images is not None:
        paths = sources.list_images(args.images)
        if not paths:
            raise FileNotFoundError(f'--images {args.images}: no image files '
                                    f'({", ".join(sources.IMAGE_SUFFIXES)})')
        return sources.image_folder_frames(paths), len(paths), str(args.images), []
    if args.video is not None:
        if not args.video.is_file():
            raise FileNotFoundError(f'--video {args.video}: no such file')
        total = sources.video_frame_count(args.video)
        total = -(-total // args.frame_step) if total else 0
        return sources.video_frames(args.video, args.frame_step), total, str(args.video), []
    if not args.mcap.is_file():
        raise FileNotFoundError(f'--mcap {args.mcap}: no such file')
    topics = list(sources.mcap_image_topics(args.mcap, args.topics))
    total = sources.mcap_message_count(args.mcap, topics)
    return sources.mcap_frames(args.mcap, topics), total, str(args.mcap), topics


def run(args: argparse.Namespace) -> int:
    """Run `ppe infer`; returns 0 when at least one frame was processed, 1 when none was, 2 on bad input."""
    try:
        if args.limit < 0:
            raise ValueError(f'--limit must be >= 0, got {args.limit}')
        longest_coast = PARAMETERS_BY_NAME['tracking_max_coast_s'].maximum
        if not 0.0 <= args.max_coast_s <= longest_coast:
            raise ValueError(f'--max-coast-s must be in [0, {longest_coast}] seconds, got {args.max_coast_s}')
        if args.threads < 0:
            raise ValueError(f'--threads must be >= 0, got {args.threads}')
        checkpoint = resolve_checkpoint(args.checkpoint)
        gt_ids = load_coco_image_ids(args.coco_gt) if args.coco_gt is not None else None
        frames, total, source, mcap_topics = _frames(args)
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        predictor = load_predictor(args, checkpoint)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        # Bad arguments, unreadable inputs or model: one line naming the value, no traceback. Errors while
        # processing frames are not caught here: a corrupt frame is skipped where it is decoded.
        print(f'ppe infer: error: {error}', file=sys.stderr)
        return 2
    if args.limit:
        total = min(total, args.limit) if total else args.limit
    return _process(args, predictor, checkpoint, gt_ids, frames, total, source, mcap_topics)


def _process(args: argparse.Namespace, predictor: Any, checkpoint: Path, gt_ids: dict[str, int] | None,
             frames: Iterator[sources.Frame], total: int, source: str, mcap_topics: list[str]) -> int:
    """Run the predictor over the frames and write every output; returns run()'s exit code."""
    from tqdm import tqdm

    from occluded_ppe_ros.draw import draw_overlay
    from occluded_ppe_ros.inference.coco_results import pedestrians_to_coco_results

    out_dir: Path = args.out
    overlay_dir = out_dir / 'overlays'
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_overlays:
        overlay_dir.mkdir(exist_ok=True)
    summary = InferSummary(source=source, checkpoint=str(checkpoint),
                           backend=str(predictor.backend.name))
    mcap_out = None
    if args.mcap is not None:
        mcap_path = out_dir / f'{args.mcap.stem}_ppe.mcap'
        mcap_out = McapOutput(mcap_path, args.output_namespace, mcap_topics, args.keypoint_threshold,
                              args.marker_depth)
        summary.outputs['mcap'] = str(mcap_path)

    results: list[dict] = []
    images: list[dict] = []
    used_overlay_names: set[str] = set()
    trackers = _Trackers(args) if (args.video is not None or args.mcap is not None) and not args.no_tracking \
        else None
    mot_lines: list[str] = []
    start = time.perf_counter()
    progress = tqdm(total=total or None, unit='img', desc='ppe infer', dynamic_ncols=True)
    try:
        def process(frame: sources.Frame) -> None:
            if frame.rgb is None:
                _skip(summary, progress, frame.name, frame.error)
                return
            if gt_ids is not None:
                if frame.name not in gt_ids:
                    _skip(summary, progress, frame.name, f'not in --coco-gt {args.coco_gt}')
                    return
                image_id = gt_ids[frame.name]
            else:
                image_id = frame.index + 1
            height, width = frame.rgb.shape[:2]
            tick = time.perf_counter()
            pedestrians = predictor.predict(frame.rgb)
            summary.inference_seconds += time.perf_counter() - tick
            ended = None
            if trackers is not None:
                pedestrians, ended = trackers.update(frame, pedestrians)
                if args.video is not None:
                    mot_lines.extend(mot_line(image_id, p.track_id, p.box, p.score) for p in pedestrians)
            summary.frames_processed += 1
            summary.pedestrians += len(pedestrians)
            summary.occluded_joints += int(sum(
                np.count_nonzero(np.asarray(p.keypoint_occluded)
                                 & (np.asarray(p.keypoint_scores) >= args.keypoint_threshold))
                for p in pedestrians))
            results.extend(pedestrians_to_coco_results(image_id, pedestrians, (height, width)))
            images.append({'id': image_id, 'file_name': frame.name, 'width': width, 'height': height})
            if args.no_overlays and mcap_out is None:
                return
            overlay = draw_overlay(frame.rgb, pedestrians, args.keypoint_threshold)
            if not args.no_overlays:
                name = _overlay_name(frame, args.images is not None, used_overlay_names)
                cv2.imwrite(str(overlay_dir / name), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            if mcap_out is not None:
                mcap_out.write(frame, pedestrians, overlay, ended)

        for frame in frames:
            if args.limit and summary.frames_total >= args.limit:
                break
            summary.frames_total += 1
            process(frame)
            progress.update(1)  # after the work, so that the bar's rate is images per second
    finally:
        progress.close()
        if mcap_out is not None:
            mcap_out.close()
    summary.wall_seconds = time.perf_counter() - start

    (out_dir / 'results.json').write_text(json.dumps(results))
    if trackers is not None:
        summary.tracks = trackers.count
        if args.video is not None:
            summary.outputs['tracks_mot'] = str(write_lines(out_dir / 'tracks_mot.txt', mot_lines))
    (out_dir / 'images.json').write_text(json.dumps({'images': images}, indent=1))
    summary.outputs.update(results=str(out_dir / 'results.json'), images=str(out_dir / 'images.json'))
    if not args.no_overlays:
        summary.outputs['overlays'] = str(overlay_dir)
    (out_dir / 'summary.json').write_text(json.dumps(summary.to_dict(), indent=2))
    _print_summary(summary)
    return 0 if summary.frames_processed else 1


class _Trackers:
    """One pedestrian tracker per source stream (the video, or each MCAP image topic), node defaults."""

    def __init__(self, args: argparse.Namespace) -> None:
        values = {spec.name: spec.default for spec in PARAMETERS_BY_NAME.values()}
        values.update(tracking_max_coast_s=args.max_coast_s, keypoint_threshold=args.keypoint_threshold)
        self.config = TrackerConfig.from_parameters(values)
        self.trackers: dict[str, PedestrianTracker] = {}
        self.ids: set[int] = set()

    def update(self, frame: sources.Frame, pedestrians: list) -> tuple[list, list[int]]:
        """(the frame's pedestrians with track ids, the ids of tracks that ended at this frame)."""
        stream = frame.record.topic if frame.record is not None else ''
        tracker = self.trackers.setdefault(stream, PedestrianTracker(self.config))
        stamp_s = frame.stamp_s if frame.stamp_s is not None else float(frame.index)
        image_size = frame.rgb.shape[:2] if frame.rgb is not None else None
        tracked = tracker.update(pedestrians, stamp_s, image_size, image=frame.rgb)
        self.ids.update((stream, p.track_id) for p in tracked.pedestrians)
        return tracked.pedestrians, tracked.ended_track_ids

    @property
    def count(self) -> int:
        """How many tracks were seen (over all streams)."""
        return len(self.ids)


def _skip(summary: InferSummary, progress: Any, name: str, reason: str) -> None:
    """Count and report one skipped frame (by name) without breaking the progress bar."""
    summary.frames_skipped += 1
    summary.skipped.append({'name': name, 'reason': reason})
    progress.write(f'skipped {name}: {reason}')


def _overlay_name(frame: sources.Frame, from_folder: bool, used: set[str]) -> str:
    """A unique PNG name per frame: the image's stem for folders, the sanitised frame name otherwise."""
    stem = Path(frame.name).stem if from_folder else sources.safe_file_stem(frame.name)
    name = f'{stem}.png'
    if name in used:  # a.jpg and a.png in one folder
        name = f'{stem}_{frame.index}.png'
    used.add(name)
    return name


def _print_summary(summary: InferSummary) -> None:
    data = summary.to_dict()
    print(f'ppe infer: {summary.frames_processed} of {summary.frames_total} frames processed from '
          f'{summary.source} with {summary.checkpoint} ({summary.backend}); '
          f'{summary.pedestrians} pedestrians, {summary.occluded_joints} occluded joints; '
          f'{data["images_per_second"]:.2f} images/s, mean inference {data["mean_inference_ms"]:.1f} ms')
    if summary.frames_skipped:
        print(f'ppe infer: skipped {summary.frames_skipped} frame(s):')
        for item in summary.skipped:
            print(f'  {item["name"]}: {item["reason"]}')
    for kind, path in summary.outputs.items():
        print(f'  {kind}: {path}')
