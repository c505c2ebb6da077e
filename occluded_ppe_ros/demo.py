"""`ppe demo`: the real node on the sample photos over real (loopback-only) DDS.

What it does, in order:
1. applies the loopback shared-memory DDS profile (`ros/dds_env.py`) to this process, before rclpy is
   imported, and gives the node the same environment (same random ROS_DOMAIN_ID): nothing leaves the
   machine, and real-size best-effort images arrive whole;
2. picks the model: --checkpoint, else the shipped default model, else a random-initialised checkpoint
   built on the fly from the shipped model config (said in the printout: its detections are noise);
3. starts the node as a separate process (the installed `lib/occluded_ppe_ros/ppe_node`, or
   `python -m occluded_ppe_ros.ros.node` from this source tree) in namespace /ppe_demo;
4. publishes each photo as sensor_msgs/Image (rgb8) with a CameraInfo, one at a time, and waits for the
   node's outputs on every topic: detections, poses, masks, markers, overlay (a photo that got no output
   at all within RESEND_AFTER_S is published once more: the node's input QoS is best effort); then
   waits for a /diagnostics message;
5. writes <out>/<photo>_overlay.png and <out>/<photo>_masks.png (instance labels 0..N, as received),
   <out>/summary.json and <out>/node.log, prints per photo the pedestrians, occluded joints and the
   latency (publish -> detections received), and stops the node (SIGINT, then kill).

Exit code 0 when every photo got every output topic and diagnostics arrived, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occluded_ppe_ros.offline.default_model import (
    REPO_ROOT, default_checkpoint_path, default_model_config_path)
from occluded_ppe_ros.skeleton import KEYPOINT_NAMES

NAMESPACE = '/ppe_demo'
NODE_NAME = 'ppe_node'
INPUT_TOPIC = f'{NAMESPACE}/image'
CAMERA_INFO_TOPIC = f'{NAMESPACE}/camera_info'
DIAGNOSTICS_TOPIC = '/diagnostics'
FRAME_ID = 'demo_camera_optical'
# Output topic (relative to the node's namespace) -> message type (module, class).
OUTPUT_TOPICS: dict[str, tuple[str, str]] = {
    'detections': ('vision_msgs.msg', 'Detection2DArray'),
    'poses': ('occluded_ppe_msgs.msg', 'PedestrianPoseArray'),
    'masks': ('sensor_msgs.msg', 'Image'),
    'markers': ('visualization_msgs.msg', 'MarkerArray'),
    'overlay': ('sensor_msgs.msg', 'Image'),
}
STATE_OCCLUDED = 2  # occluded_ppe_msgs/Keypoint2D.STATE_OCCLUDED
STATE_VISIBLE = 1
# Seconds without any output for a photo before it is published once more.
RESEND_AFTER_S = 20.0


# Run from a checkout (`python -m occluded_ppe_ros.cli demo`), this module lives in the repository;
# installed (`.venv/bin/ppe demo`, as scripts/demo.sh runs it), it lives in site-packages.
SOURCE_CHECKOUT = (REPO_ROOT / 'setup.py').is_file()


def default_samples_dir() -> Path:
    """The sample photos: the checkout's samples/, else ./samples, else share/occluded_ppe_ros/samples."""
    candidates = [REPO_ROOT / 'samples', Path.cwd() / 'samples',
                  Path(sys.prefix) / 'share' / 'occluded_ppe_ros' / 'samples']
    return next((path for path in candidates if path.is_dir()), candidates[0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `ppe demo`."""
    parser.add_argument('--images', type=Path, default=default_samples_dir(),
                        help='folder of photos to feed (default: the shipped samples, %(default)s)')
    parser.add_argument('--out', type=Path, default=Path('outputs') / 'demo',
                        help='output folder: overlays, masks, summary.json, node.log (default %(default)s)')
    parser.add_argument('--checkpoint', type=Path, default=None,
                        help='model for the node (default: the shipped default model, else a random-init '
                             'checkpoint from the shipped model config)')
    parser.add_argument('--random-init', action='store_true',
                        help='use a random-init checkpoint of --model-config even where a default model '
                             'is shipped')
    parser.add_argument('--model-config', type=Path, default=None,
                        help='model config for the random-init stand-in (default: the shipped one)')
    parser.add_argument('--backend', choices=('auto', 'torch', 'onnxruntime', 'tensorrt'), default='torch',
                        help='node backend (default %(default)s: no export step at start-up)')
    parser.add_argument('--limit', type=int, default=0, help='feed only the first N photos (0 = all)')
    parser.add_argument('--node-param', action='append', default=[], metavar='NAME:=VALUE',
                        help='extra node parameter (repeatable), e.g. input_height:=256')
    parser.add_argument('--node-from-source', action='store_true',
                        help='run `python -m occluded_ppe_ros.ros.node` from this tree even when the '
                             'installed lib/occluded_ppe_ros/ppe_node exists')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID for this demo and its node (default: a random one in [1, 100], '
                             'isolating concurrent runs)')
    parser.add_argument('--startup-timeout', type=float, default=180.0,
                        help='seconds to wait for the node to load the model and connect')
    parser.add_argument('--frame-timeout', type=float, default=60.0,
                        help='seconds to wait for one photo\'s outputs')


@dataclass
class FrameOutcome:
    """What came back for one photo."""

    file: str
    width: int
    height: int
    stamp: str
    received: dict[str, bool] = field(default_factory=dict)
    latency_ms: float | None = None
    pedestrians: list[dict[str, Any]] = field(default_factory=list)
    detections: int = 0
    marker_count: int = 0
    overlay_png: str = ''
    masks_png: str = ''
    mask_labels: int = 0


def ensure_checkpoint(args: argparse.Namespace) -> tuple[Path, str]:
    """(checkpoint, how it was chosen); builds a random-init one in --out when nothing is shipped."""
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise FileNotFoundError(f'--checkpoint {args.checkpoint}: no such file')
        return args.checkpoint.resolve(), 'given with --checkpoint'
    shipped = default_checkpoint_path()
    if shipped is not None and not args.random_init:
        return shipped, 'the shipped default model'
    config = args.model_config if args.model_config is not None else default_model_config_path()
    if not Path(config).is_file():
        raise FileNotFoundError(f'--model-config {config}: no such file')
    target = (args.out / 'random_init.pt').resolve()
    reason = '--random-init' if args.random_init else 'no default model is shipped yet'
    print(f'[demo] {reason}: building a RANDOM-INIT checkpoint from {config} '
          f'(detections will be noise; this shows the pipeline, not accuracy)', flush=True)
    command = [sys.executable, '-m', 'occluded_ppe_ros.model.checkpoint', '--config', str(config),
               '--out', str(target)]
    completed = subprocess.run(command, cwd=REPO_ROOT if SOURCE_CHECKOUT else None, capture_output=True,
                               text=True)
    if completed.returncode != 0 or not target.is_file():
        raise RuntimeError(f'building the random-init checkpoint failed ({" ".join(command)}):\n'
                           f'{completed.stdout}{completed.stderr}')
    return target, f'RANDOM-INIT from {config} ({reason})'


def node_command(args: argparse.Namespace, checkpoint: Path) -> list[str]:
    """The node's command line: executable, then rclpy arguments (namespace, parameters)."""
    installed = Path(sys.prefix) / 'lib' / 'occluded_ppe_ros' / 'ppe_node'
    if installed.is_file() and os.access(installed, os.X_OK) and not args.node_from_source:
        command = [str(installed)]
    else:
        command = [sys.executable, '-m', 'occluded_ppe_ros.ros.node']
    command += ['--ros-args', '-r', f'__node:={NODE_NAME}', '-r', f'__ns:={NAMESPACE}',
                '-p', f'model_path:={checkpoint}', '-p', f'backend:={args.backend}',
                '-p', 'autostart:=true',
                # Photos are fed one at a time and stamped when sent: no frame is stale, but a loaded
                # machine may take longer than the live-camera default allows before the model is free.
                '-p', 'max_frame_age_ms:=0.0']
    for item in args.node_param:
        if ':=' not in item:
            raise ValueError(f'--node-param {item!r}: expected NAME:=VALUE')
        command += ['-p', item]
    return command


def _wait(node: Any, predicate: Any, timeout: float, child: subprocess.Popen | None = None) -> bool:
    """Spin `node` until `predicate()` holds or `timeout` seconds pass (or the child process exits)."""
    import rclpy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if child is not None and child.poll() is not None:
            return predicate()
        rclpy.spin_once(node, timeout_sec=0.05)
    return predicate()


def _stamp_key(stamp: Any) -> str:
    return f'{stamp.sec}.{stamp.nanosec:09d}'


def _message_stamp(name: str, message: Any) -> str | None:
    """Header stamp of an output message ('sec.nanosec'); MarkerArray: of its first marker."""
    if name == 'markers':
        return _stamp_key(message.markers[0].header.stamp) if message.markers else None
    return _stamp_key(message.header.stamp)


def _pedestrian_summary(pose: Any) -> dict[str, Any]:
    states = [int(k.state) for k in pose.keypoints]
    return {
        'id': pose.id, 'class': pose.class_id, 'score': round(float(pose.score), 4),
        'full_box': [round(float(v), 1) for v in (pose.full_box.x_min, pose.full_box.y_min,
                                                  pose.full_box.x_max, pose.full_box.y_max)],
        'visibility_ratio': round(float(pose.visibility_ratio), 3),
        'visible_joints': [KEYPOINT_NAMES[k] for k, s in enumerate(states) if s == STATE_VISIBLE],
        'occluded_joints': [KEYPOINT_NAMES[k] for k, s in enumerate(states) if s == STATE_OCCLUDED],
    }


def _stop(child: subprocess.Popen, timeout: float = 10.0) -> int:
    """Stop the node: SIGINT (clean lifecycle shutdown), then kill if it does not exit in time."""
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
    try:
        return child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait(timeout=timeout)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 when every photo got every output and diagnostics arrived, else 1."""
    try:
        return _run(args)
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as error:
        print(f'ppe demo: error: {error}', file=sys.stderr, flush=True)
        return 1


def _run(args: argparse.Namespace) -> int:
    from occluded_ppe_ros.ros.dds_env import apply_loopback_env

    # Before rclpy is imported: loopback-only discovery, SHM profile, a random domain shared with the node.
    if args.domain_id is not None and not 0 <= args.domain_id <= 232:
        raise ValueError(f'--domain-id must be in [0, 232], got {args.domain_id}')
    env = apply_loopback_env('shm', domain_id=args.domain_id)
    if args.limit < 0:
        raise ValueError(f'--limit must be >= 0, got {args.limit}')
    from occluded_ppe_ros.offline.sources import list_images, read_rgb
    photos = list_images(args.images)
    if not photos:
        raise FileNotFoundError(f'--images {args.images}: no image files')
    if args.limit:
        photos = photos[:args.limit]
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint, model_note = ensure_checkpoint(args)
    print(f'[demo] model: {checkpoint} ({model_note})', flush=True)

    node_env = dict(env)
    prefix = str(Path(sys.prefix))
    ament = node_env.get('AMENT_PREFIX_PATH', '')
    if prefix not in ament.split(os.pathsep):
        node_env['AMENT_PREFIX_PATH'] = prefix + (os.pathsep + ament if ament else '')
    command = node_command(args, checkpoint)
    log_path = args.out / 'node.log'
    print(f'[demo] starting the node (ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]}, loopback SHM profile): '
          f'{" ".join(command)}', flush=True)
    log_file = open(log_path, 'w')
    child = subprocess.Popen(command, env=node_env, cwd=REPO_ROOT if SOURCE_CHECKOUT else None,
                             stdout=log_file, stderr=subprocess.STDOUT)
    try:
        outcome = _feed(args, photos, read_rgb, child, checkpoint, model_note, command)
    finally:
        code = _stop(child)
        log_file.close()
        print(f'[demo] node stopped (exit code {code}); its log: {log_path}', flush=True)
    return outcome


def _feed(args: argparse.Namespace, photos: list[Path], read_rgb: Any, child: subprocess.Popen,
          checkpoint: Path, model_note: str, command: list[str]) -> int:
    """The ROS side of the demo: connect, feed every photo, collect outputs, write the summary."""
    import importlib

    import cv2
    import numpy as np
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from occluded_ppe_ros.ros.conversions import image_to_rgb, numpy_to_image

    rclpy.init(args=None)
    node = rclpy.create_node('ppe_demo_feeder', namespace=NAMESPACE)
    try:
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        image_publisher = node.create_publisher(Image, INPUT_TOPIC, reliable)
        info_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)
        info_publisher = node.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, info_qos)

        # 1. Wait for the node: its input subscription and a publisher on every output topic.
        started = time.monotonic()
        topics = {name: f'{NAMESPACE}/{name}' for name in OUTPUT_TOPICS}

        def node_ready() -> bool:
            return (image_publisher.get_subscription_count() > 0
                    and all(node.count_publishers(topic) > 0 for topic in topics.values()))

        if not _wait(node, node_ready, args.startup_timeout, child):
            missing = [t for t in topics.values() if node.count_publishers(t) == 0]
            state = 'exited' if child.poll() is not None else 'running'
            raise RuntimeError(f'the node ({state}) did not connect within {args.startup_timeout:.0f} s '
                               f'(input subscribed: {image_publisher.get_subscription_count() > 0}; '
                               f'no publisher on: {", ".join(missing) or "-"}); see {args.out / "node.log"}')
        print(f'[demo] node ready after {time.monotonic() - started:.1f} s', flush=True)

        # 2. Subscribe to every output with the reliability its publisher offers (best effort accepts
        # both, but a reliable subscription gets retransmissions where the node offers them).
        received: dict[str, dict[str, Any]] = {name: {} for name in OUTPUT_TOPICS}
        counts = dict.fromkeys(list(OUTPUT_TOPICS) + ['diagnostics'], 0)
        arrival: dict[str, float] = {}
        diagnostics: list[Any] = []

        def on_output(name: str):
            def callback(message: Any) -> None:
                counts[name] += 1
                stamp = _message_stamp(name, message)
                if stamp is not None:
                    received[name][stamp] = message
                    if name == 'detections':
                        arrival.setdefault(stamp, time.monotonic())
            return callback

        for name, (module, class_name) in OUTPUT_TOPICS.items():
            infos = node.get_publishers_info_by_topic(topics[name])
            offered = infos[0].qos_profile.reliability if infos else ReliabilityPolicy.BEST_EFFORT
            qos = QoSProfile(depth=10, reliability=offered)
            message_type = getattr(importlib.import_module(module), class_name)
            node.create_subscription(message_type, topics[name], on_output(name), qos)

        def on_diagnostics(message: Any) -> None:
            counts['diagnostics'] += 1
            diagnostics.append(message)

        node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, on_diagnostics,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        # Let the subscriptions match the node's publishers before the first frame.
        _wait(node, lambda: all(node.count_subscribers(t) > 0 for t in topics.values()), 10.0, child)

        # 3. Feed the photos one at a time.
        outcomes: list[FrameOutcome] = []
        for photo in photos:
            rgb = read_rgb(photo)
            height, width = rgb.shape[:2]
            header = Header(frame_id=FRAME_ID, stamp=node.get_clock().now().to_msg())
            key = _stamp_key(header.stamp)
            info = CameraInfo(header=header, width=width, height=height, distortion_model='plumb_bob')
            focal = float(width)  # a plausible pinhole for an unknown photo camera
            info.k = [focal, 0.0, width / 2.0 - 0.5, 0.0, focal, height / 2.0 - 0.5, 0.0, 0.0, 1.0]
            info.p = [focal, 0.0, width / 2.0 - 0.5, 0.0, 0.0, focal, height / 2.0 - 0.5, 0.0,
                      0.0, 0.0, 1.0, 0.0]
            info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            info.d = [0.0] * 5
            info_publisher.publish(info)
            image = numpy_to_image(rgb, header, 'rgb8')
            sent = time.monotonic()
            image_publisher.publish(image)

            def complete_for(key: str = key) -> bool:
                return all(key in received[n] for n in OUTPUT_TOPICS)

            # The node's input is best effort (REP-2003): a lost frame is sent once more (same stamp, so
            # the outputs are still matched to it) when nothing at all came back for a while.
            resend_after = min(RESEND_AFTER_S, args.frame_timeout / 2)

            def anything_for(key: str = key) -> bool:
                return any(key in received[n] for n in received)

            _wait(node, anything_for, resend_after, child)
            if not anything_for() and child.poll() is None:
                print(f'[demo] no output for {photo.name} after {resend_after:.0f} s: sending it again',
                      flush=True)
                image_publisher.publish(image)
            complete = _wait(node, complete_for, args.frame_timeout - resend_after, child)
            outcome = FrameOutcome(file=photo.name, width=width, height=height, stamp=key,
                                   received={n: key in received[n] for n in OUTPUT_TOPICS})
            if key in arrival:
                outcome.latency_ms = round(1000.0 * (arrival[key] - sent), 1)
            if key in received['detections']:
                outcome.detections = len(received['detections'][key].detections)
            if key in received['poses']:
                outcome.pedestrians = [_pedestrian_summary(p) for p in received['poses'][key].pedestrians]
            if key in received['markers']:
                outcome.marker_count = len(received['markers'][key].markers)
            stem = photo.stem
            if key in received['overlay']:
                overlay = image_to_rgb(received['overlay'][key], 2 ** 28)
                outcome.overlay_png = str(args.out / f'{stem}_overlay.png')
                cv2.imwrite(outcome.overlay_png, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            if key in received['masks']:
                mask_message = received['masks'][key]
                dtype = np.uint16 if mask_message.encoding in ('16UC1', 'mono16') else np.uint8
                row_length = mask_message.step // np.dtype(dtype).itemsize
                labels = np.frombuffer(mask_message.data, dtype=dtype).reshape(
                    mask_message.height, row_length)[:, :mask_message.width]
                outcome.mask_labels = int(labels.max()) if labels.size else 0
                outcome.masks_png = str(args.out / f'{stem}_masks.png')
                cv2.imwrite(outcome.masks_png, np.ascontiguousarray(labels))
            outcomes.append(outcome)
            _print_frame(outcome, complete)

        # 4. Diagnostics are periodic: wait for one published after the last frame.
        diagnostics_before = len(diagnostics)
        _wait(node, lambda: len(diagnostics) > diagnostics_before, 15.0, child)
        diagnostics_summary = _diagnostics_summary(diagnostics[-1]) if diagnostics else []

        ok = all(all(o.received.values()) for o in outcomes) and bool(diagnostics)
        summary = {
            'ok': ok,
            'checkpoint': str(checkpoint),
            'model': model_note,
            'node_command': command,
            'ros_domain_id': int(os.environ['ROS_DOMAIN_ID']),
            'dds_profile': os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE', ''),
            'topics': {**{name: topics[name] for name in OUTPUT_TOPICS}, 'diagnostics': DIAGNOSTICS_TOPIC},
            'messages_received': counts,
            'images': [o.__dict__ for o in outcomes],
            'diagnostics': diagnostics_summary,
        }
        summary_path = args.out / 'summary.json'
        summary_path.write_text(json.dumps(summary, indent=2))
        for status in diagnostics_summary:
            values = status['values']
            print(f'[demo] /diagnostics "{status["name"]}": {status["message"]}; inference mean '
                  f'{values.get("inference_ms_mean", "?")} ms, total mean {values.get("total_ms_mean", "?")} '
                  f'ms, received {values.get("received", "?")}, processed {values.get("processed", "?")}',
                  flush=True)
        total_pedestrians = sum(len(o.pedestrians) for o in outcomes)
        print(f'[demo] {len(outcomes)} photos, {total_pedestrians} pedestrians; messages received per topic: '
              f'{", ".join(f"{k} {v}" for k, v in counts.items())}', flush=True)
        print(f'[demo] summary: {summary_path}; overlays: {args.out}/*_overlay.png', flush=True)
        if not ok:
            missing = sorted({n for o in outcomes for n, got in o.received.items() if not got}
                             | (set() if diagnostics else {'diagnostics'}))
            print(f'[demo] FAILED: no output on {", ".join(missing)} for some photos; '
                  f'see {args.out / "node.log"}', flush=True)
        return 0 if ok else 1
    finally:
        node.destroy_node()
        rclpy.shutdown()


def _diagnostics_summary(message: Any) -> list[dict[str, Any]]:
    """The statuses of one DiagnosticArray as plain dicts."""
    return [{'name': status.name, 'level': int.from_bytes(status.level, 'little')
             if isinstance(status.level, bytes) else int(status.level),
             'message': status.message, 'values': {kv.key: kv.value for kv in status.values}}
            for status in message.status]


def _print_frame(outcome: FrameOutcome, complete: bool) -> None:
    occluded = sum(len(p['occluded_joints']) for p in outcome.pedestrians)
    latency = f'{outcome.latency_ms:.0f} ms' if outcome.latency_ms is not None else 'n/a'
    line = (f'[demo] {outcome.file} ({outcome.width}x{outcome.height}): {len(outcome.pedestrians)} '
            f'pedestrians, {occluded} occluded joints, latency {latency}')
    if outcome.pedestrians:
        best = max(outcome.pedestrians, key=lambda p: p['score'])
        line += f'; best score {best["score"]:.2f}'
        if best['occluded_joints']:
            line += f' (occluded: {", ".join(best["occluded_joints"])})'
    if not complete:
        line += f'; MISSING: {", ".join(n for n, got in outcome.received.items() if not got)}'
    print(line, flush=True)
