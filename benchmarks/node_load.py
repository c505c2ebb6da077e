"""Node under load: a 30 Hz camera and a model slower than that; result age and memory over time.

    .venv/bin/python benchmarks/node_load.py [--checkpoint X.pt | --config config/model_resnet18.yaml]
        [--rate 30] [--duration 60] [--size 640x480] [--json out.json]

A `ppe_node` process (loopback SHM DDS profile) receives best-effort bgr8 frames at --rate Hz, each
stamped with the time it is published, for --duration seconds. For every detections message this
process receives, age = arrival time - the frame's stamp (same clock). The latest-frame policy bounds it:
a frame waits at most one model run for the worker (newer frames replace it), then takes one model run,
so every age should stay <= 2 x the model latency (+ the node's overhead). The node's resident memory
(RSS) is sampled every second; it must stay flat (no queue grows, nothing leaks per frame).

Model latency = the node's mean of preprocess + inference + postprocess from /diagnostics.
Bounded: fixed duration, loopback only, the node is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_overhead import REPO, random_checkpoint, start_node, stop_node, wait_for  # noqa: E402

import rclpy  # noqa: E402  (node_overhead applied the loopback DDS environment before this import)
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from occluded_ppe_ros.ros.conversions import numpy_to_image  # noqa: E402

# node_overhead applied the loopback-only DDS environment at import; refuse to run without it.
if os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE') != 'LOCALHOST':
    raise SystemExit('node_load.py: loopback-only DDS (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) is not set')


class LoadClient(Node):
    """Publishes the camera stream and records the age of every result and the latest diagnostics."""

    def __init__(self) -> None:
        super().__init__('ppe_load_client')
        self.lock = threading.Lock()
        self.ages_ms: list[tuple[float, float]] = []  # (seconds since start, age ms)
        self.diagnostics: dict[str, str] = {}
        self.start = time.monotonic()
        self.images = self.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.create_subscription(Detection2DArray, 'detections', self._on_detections, 10)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on_detections(self, message: Detection2DArray) -> None:
        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec
        with self.lock:
            self.ages_ms.append((time.monotonic() - self.start, (now_ns - stamp_ns) / 1e6))

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name.endswith(': pipeline'):
                with self.lock:
                    self.diagnostics = {pair.key: pair.value for pair in status.values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', type=Path, help='model file; default: random init of --config')
    parser.add_argument('--config', type=Path, default=REPO / 'config' / 'model_resnet18.yaml',
                        help='model YAML for the random-initialised checkpoint')
    parser.add_argument('--rate', type=float, default=30.0, help='camera frames per second')
    parser.add_argument('--duration', type=float, default=60.0, help='seconds of streaming')
    parser.add_argument('--warmup', type=float, default=10.0, help='seconds before memory is baselined')
    parser.add_argument('--size', default='640x480', help='WxH of the frames')
    parser.add_argument('--json', type=Path, help='also write the results here')
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split('x'))
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or random_checkpoint(args.config, Path(scratch))
        rclpy.init()
        client = LoadClient()
        executor = SingleThreadedExecutor()
        executor.add_node(client)
        threading.Thread(target=executor.spin, daemon=True).start()
        node = start_node(checkpoint)
        rss_mb: list[tuple[float, float]] = []
        log = ''
        try:
            if not wait_for(lambda: client.count_subscribers('/image') > 0
                            and client.count_publishers('/detections') > 0, 120.0):
                raise RuntimeError('ppe_node did not come up:\n' + stop_node(node))
            node_process = psutil.Process(node.pid)
            message = numpy_to_image(pixels, Header(frame_id='load_camera'), 'bgr8')
            period = 1.0 / args.rate
            client.start = start = time.monotonic()
            next_frame, next_sample, sent = start, start, 0
            while time.monotonic() - start < args.duration:
                now = time.monotonic()
                if now >= next_frame:
                    message.header.stamp = client.get_clock().now().to_msg()
                    client.images.publish(message)
                    sent += 1
                    next_frame += period
                if now >= next_sample:
                    rss_mb.append((now - start, node_process.memory_info().rss / 2**20))
                    next_sample += 1.0
                time.sleep(max(0.0, min(next_frame, next_sample) - time.monotonic()))
            time.sleep(1.0)  # the last result and diagnostics
            with client.lock:
                ages = list(client.ages_ms)
                diagnostics = dict(client.diagnostics)
        finally:
            log = stop_node(node)
            executor.shutdown(timeout_sec=2.0)
            client.destroy_node()
            rclpy.try_shutdown()
    if not ages or not diagnostics:
        print(log)
        raise SystemExit('no results received')
    model_ms = sum(float(diagnostics[f'{stage}_ms_mean']) for stage in
                   ('preprocess', 'inference', 'postprocess'))
    age_values = np.array([age for _, age in ages])
    steady = [(t, rss) for t, rss in rss_mb if t >= args.warmup]
    slope = 0.0
    if len(steady) > 2:  # least-squares MB per minute over the steady part
        slope = float(np.polyfit([t for t, _ in steady], [r for _, r in steady], 1)[0] * 60.0)
    result = {
        'size': args.size, 'rate_hz': args.rate, 'duration_s': args.duration, 'frames_sent': sent,
        'results_received': len(ages), 'model_ms_mean': model_ms,
        'age_ms_mean': float(age_values.mean()), 'age_ms_p95': float(np.percentile(age_values, 95)),
        'age_ms_max': float(age_values.max()), 'age_max_over_model': float(age_values.max() / model_ms),
        'node_counters': {key: int(diagnostics[key]) for key in ('received', 'processed', 'superseded',
                                                                 'too_old', 'rejected')},
        'rss_mb_after_warmup': steady[0][1] if steady else None, 'rss_mb_end': rss_mb[-1][1],
        'rss_mb_max': max(r for _, r in rss_mb), 'rss_slope_mb_per_min': slope,
    }
    print(json.dumps(result, indent=2))
    print(f'\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; '
          f'age max {result["age_ms_max"]:.0f} ms = {result["age_max_over_model"]:.2f} x model latency '
          f'{model_ms:.0f} ms (target <= 2); RSS {result["rss_mb_after_warmup"]:.0f} -> '
          f'{result["rss_mb_end"]:.0f} MB ({slope:+.1f} MB/min)')
    if args.json:
        args.json.write_text(json.dumps({**result, 'ages_ms': ages, 'rss_mb': rss_mb}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
