"""Floor of the node's overhead: how long rclpy + Fast DDS take to carry one sensor_msgs/Image between two
processes on this machine, with no model and no node in between.

    .venv/bin/python benchmarks/dds_image_latency.py [--sizes 64x64,640x480,2048x1024] [--frames 30]
        [--json out.json]

A publisher process (this one) and a subscriber process (this script with --subscribe), both on the
loopback SHM DDS profile that benchmarks/node_overhead.py and the demo use (random ROS_DOMAIN_ID,
discovery on localhost only). Each rgb8 frame is stamped with the wall clock just before `publish`; the
subscriber's callback takes its wall clock on arrival (one computer: one clock) and prints the difference.
Frames go 0.2 s apart, so none queues behind another. Reported per size: median and max latency (ms),
the median time of the `publish` call itself, and ms per MiB.

Why it matters: node_overhead's end-to-end time includes carrying the input image to the node and the
mask / overlay images back; this script measures that part alone, which no change inside the node can
remove (it is paid by any Python ROS 2 node that receives or sends those images).
"""
from __future__ import annotations

import argparse
import array
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from occluded_ppe_ros.ros.dds_env import apply_loopback_env  # noqa: E402

if '--subscribe' not in sys.argv:
    apply_loopback_env('shm')  # before rclpy is imported; the subscriber inherits this environment

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

TOPIC = 'dds_latency_image'
_PERIOD_S = 0.2


def wall_stamp(message: Image) -> None:
    """Stamp `message` with the wall clock (seconds since the epoch, split as ROS time)."""
    now_ns = time.time_ns()
    message.header.stamp.sec, message.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)


def subscribe() -> int:
    """Subscriber role: print one latency (ms) per received frame as `<width>x<height> <ms>`."""
    rclpy.init()
    node = Node('dds_latency_subscriber')

    def on_image(message: Image) -> None:
        sent_ns = message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec
        print(f'{message.width}x{message.height} {(time.time_ns() - sent_ns) / 1e6:.3f}', flush=True)

    node.create_subscription(Image, TOPIC, on_image, 5)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='64x64,640x480,2048x1024', help='comma-separated WxH (rgb8)')
    parser.add_argument('--frames', type=int, default=30, help='frames per size')
    parser.add_argument('--json', type=Path, help='also write the results here')
    parser.add_argument('--subscribe', action='store_true', help='internal: run as the subscriber process')
    args = parser.parse_args(argv)
    if args.subscribe:
        return subscribe()
    sizes = [tuple(int(v) for v in size.split('x')) for size in args.sizes.split(',')]
    subscriber = subprocess.Popen([sys.executable, __file__, '--subscribe'], env=dict(os.environ),
                                  stdout=subprocess.PIPE, text=True)
    rclpy.init()
    node = Node('dds_latency_publisher')
    publisher = node.create_publisher(Image, TOPIC, 5)
    results = []
    try:
        deadline = time.monotonic() + 60.0
        while publisher.get_subscription_count() == 0:
            if time.monotonic() > deadline or subscriber.poll() is not None:
                raise RuntimeError('the subscriber process did not match within 60 s')
            time.sleep(0.05)
        time.sleep(1.0)  # let the subscriber's writer/reader matching settle
        for width, height in sizes:
            message = Image(height=height, width=width, encoding='rgb8', step=width * 3)
            message.data = array.array('B', bytes(width * height * 3))
            publish_ms = []
            for _ in range(args.frames):
                wall_stamp(message)
                start = time.perf_counter()
                publisher.publish(message)
                publish_ms.append((time.perf_counter() - start) * 1e3)
                time.sleep(_PERIOD_S)
            latencies = []
            while len(latencies) < args.frames:
                line = subscriber.stdout.readline()
                if not line:
                    raise RuntimeError('the subscriber process stopped')
                size, milliseconds = line.split()
                if size == f'{width}x{height}':
                    latencies.append(float(milliseconds))
            mebibytes = width * height * 3 / 2**20
            result = {'size': f'{width}x{height}', 'mib': round(mebibytes, 3), 'frames': args.frames,
                      'latency_ms_median': float(np.median(latencies)),
                      'latency_ms_max': float(max(latencies)),
                      'publish_call_ms_median': float(np.median(publish_ms)),
                      'ms_per_mib': float(np.median(latencies)) / mebibytes}
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        subscriber.terminate()
        try:
            subscriber.wait(timeout=10)
        except subprocess.TimeoutExpired:
            subscriber.kill()
        node.destroy_node()
        rclpy.try_shutdown()
    print(f'\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}')
    print('| image (rgb8) | MiB | latency median (ms) | max (ms) | publish call (ms) | ms / MiB |')
    print('|---|---|---|---|---|---|')
    for result in results:
        print(f"| {result['size']} | {result['mib']:.2f} | {result['latency_ms_median']:.2f} | "
              f"{result['latency_ms_max']:.2f} | {result['publish_call_ms_median']:.2f} | "
              f"{result['ms_per_mib']:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({'results': results}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
