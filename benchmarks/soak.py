"""Soak: the node fed 30 Hz 640x480 frames over loopback for minutes; memory, queue and result age (issue 18).

    .venv/bin/python benchmarks/soak.py [--duration 600] [--rate 30] [--size 640x480]
        [--checkpoint models/ppe_default.pt] [--warmup 60] [--json outputs/soak.json]

A `ppe_node` process from this source tree (loopback SHM DDS profile, as benchmarks/node_overhead.py;
config/ppe.yaml with the checkpoint) gets bgr8 frames at `--rate` Hz, best effort, each stamped with the
wall clock (ROS time = system time, the same clock on both ends of one computer). This process subscribes
to `detections` (the core output) and `/diagnostics`, and samples once a second:
- RSS of the node process (/proc/<pid>/status VmRSS, MiB);
- the node's counters from /diagnostics: received, processed, superseded (a newer frame replaced a
  waiting one: the node keeps at most one frame waiting, by design, so a model slower than the input rate
  drops frames instead of queueing them), too_old, rejected; backlog = received - processed - superseded -
  too_old - rejected, the frames waiting or in the model (0-2 when nothing queues);
- result age: at each `detections` arrival, this clock's now - the result's header stamp (ms), i.e. how
  old the newest result is when a planner gets it.

Reported after the warm-up (`--warmup` seconds, default max(10, 10 % of the duration)): RSS growth from
the first to the last 10 % of the samples (median of each, percent; target < 5 %), backlog max and the
trend of the pending count (no growing queue), result age median / p95 / max against 2 x the model's own
latency (preprocess + inference + postprocess means from /diagnostics; target: median age <= 2 x it).

Bounded: the duration is fixed, every wait has a timeout, loopback only, the node is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))

import node_overhead  # noqa: E402
import numpy as np  # noqa: E402

from occluded_ppe_ros.ros.dds_env import apply_loopback_env  # noqa: E402

# loopback-only DDS before rclpy is imported (node_overhead sets the same profile; said here explicitly so
# this file's own safety does not hang on an import's side effect)
DDS_ENV = apply_loopback_env('shm')
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from occluded_ppe_ros.ros.conversions import numpy_to_image  # noqa: E402

COUNTERS = ('received', 'processed', 'superseded', 'too_old', 'rejected')


def rss_mib(pid: int) -> float | None:
    """Resident set size of process `pid` in MiB (None once it is gone)."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class SoakClient(Node):
    """Publishes the frames; records each result's age and the latest pipeline diagnostics."""

    def __init__(self) -> None:
        super().__init__('ppe_soak_client')
        self.lock = threading.Lock()
        self.ages_ms: list[tuple[float, float]] = []  # (monotonic arrival s, age ms)
        self.diagnostics: dict[str, str] = {}
        self.images = self.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.create_subscription(Detection2DArray, 'detections', self._on_detections, 10)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on_detections(self, message: Detection2DArray) -> None:
        now_ns = time.time_ns()
        stamp_ns = message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec
        with self.lock:
            self.ages_ms.append((time.monotonic(), (now_ns - stamp_ns) * 1e-6))

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name.endswith(': pipeline'):
                with self.lock:
                    self.diagnostics = {pair.key: pair.value for pair in status.values}

    def snapshot(self) -> dict[str, str]:
        with self.lock:
            return dict(self.diagnostics)


def _median(values) -> float:
    return float(np.median(values)) if len(values) else float('nan')


def summarise(samples: list[dict], ages: list[tuple[float, float]], warmup_end: float,
              model_ms: float) -> dict:
    """The report (module docstring) from the per-second samples and the result ages after the warm-up."""
    kept = [s for s in samples if s['t'] >= warmup_end and s['rss_mib'] is not None]
    rss = np.array([s['rss_mib'] for s in kept])
    tenth = max(1, len(rss) // 10)
    rss_start, rss_end = _median(rss[:tenth]), _median(rss[-tenth:])
    backlog = np.array([s['backlog'] for s in kept if s['backlog'] is not None])
    times = np.array([s['t'] for s in kept if s['backlog'] is not None])
    slope = float(np.polyfit(times, backlog, 1)[0]) if len(backlog) > 2 else float('nan')
    age = np.array([a for t, a in ages if t >= warmup_end])
    first, last = (kept[0]['counters'], kept[-1]['counters']) if kept else ({}, {})
    span = kept[-1]['t'] - kept[0]['t'] if len(kept) > 1 else float('nan')
    delta = {key: last.get(key, 0) - first.get(key, 0) for key in COUNTERS}
    return {
        'rss_mib_start': rss_start, 'rss_mib_end': rss_end,
        'rss_mib_max': float(rss.max()) if len(rss) else None,
        'rss_growth_percent': 100.0 * (rss_end - rss_start) / rss_start if rss_start else float('nan'),
        'backlog_max': int(backlog.max()) if len(backlog) else None,
        'backlog_trend_per_min': slope * 60.0,
        'counters_after_warmup': delta,
        'input_rate_hz': delta['received'] / span if span else float('nan'),
        'processed_rate_hz': delta['processed'] / span if span else float('nan'),
        'result_age_ms': {'count': int(len(age)), 'median': _median(age),
                          'p95': float(np.percentile(age, 95)) if len(age) else float('nan'),
                          'max': float(age.max()) if len(age) else float('nan')},
        'model_ms_mean': model_ms,
        'age_median_within_2x_model': bool(len(age) and _median(age) <= 2.0 * model_ms),
        'rss_growth_below_5_percent': bool(rss_start and 100.0 * (rss_end - rss_start) / rss_start < 5.0),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the report, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--duration', type=float, default=600.0, help='seconds of frames')
    parser.add_argument('--rate', type=float, default=30.0, help='frames per second')
    parser.add_argument('--size', default='640x480', help='WxH')
    parser.add_argument('--checkpoint', type=Path, default=REPO / 'models' / 'ppe_default.pt')
    parser.add_argument('--warmup', type=float, default=None, help='seconds left out of the report')
    parser.add_argument('--json', type=Path, help='also write the report here')
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split('x'))
    warmup = args.warmup if args.warmup is not None else max(10.0, 0.1 * args.duration)

    rclpy.init()
    executor = SingleThreadedExecutor()
    client = SoakClient()
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    # As benchmarks/node_overhead.py starts it: score_threshold 0 (every detection slot converted, the most
    # work per frame) and no frame-age limit (the soak measures age; dropping old frames would hide it).
    node = node_overhead.start_node(args.checkpoint, 'diagnostics_period_s:=1.0')
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    samples: list[dict] = []
    try:
        ready = node_overhead.wait_for(lambda: client.count_subscribers('/image') > 0
                                       and client.count_publishers('/detections') > 0, 120.0)
        if not ready:
            raise RuntimeError('ppe_node did not come up:\n' + node_overhead.stop_node(node))
        start = time.monotonic()
        period = 1.0 / args.rate
        next_frame, next_sample, frame = start, start, 0
        while (now := time.monotonic()) < start + args.duration:
            if node.poll() is not None:
                raise RuntimeError('ppe_node exited:\n' + node_overhead.stop_node(node))
            if now >= next_frame:
                stamp_ns = time.time_ns()
                header = Header(frame_id='soak_camera')
                header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
                client.images.publish(numpy_to_image(pixels, header, 'bgr8'))
                frame += 1
                next_frame = start + frame * period
            if now >= next_sample:
                diagnostics = client.snapshot()
                counters = {key: int(diagnostics[key]) for key in COUNTERS if key in diagnostics}
                backlog = (counters['received'] - sum(counters[k] for k in COUNTERS[1:])
                           if len(counters) == len(COUNTERS) else None)
                samples.append({'t': now - start, 'rss_mib': rss_mib(node.pid), 'counters': counters,
                                'backlog': backlog})
                next_sample += 1.0
            time.sleep(max(0.0, min(next_frame, next_sample) - time.monotonic()))
        diagnostics = client.snapshot()
        model_ms = sum(float(diagnostics.get(f'{stage}_ms_mean', 'nan'))
                       for stage in ('preprocess', 'inference', 'postprocess'))
        with client.lock:
            ages = [(t - start, age) for t, age in client.ages_ms]
    finally:
        log = node_overhead.stop_node(node)
        executor.shutdown()
        client.destroy_node()
        rclpy.try_shutdown()
    report = summarise(samples, ages, warmup, model_ms)
    report.update(duration_s=args.duration, warmup_s=warmup, rate_hz=args.rate, size=args.size,
                  frames_sent=frame, checkpoint=str(args.checkpoint))
    age = report['result_age_ms']
    print(f"soak {args.duration:g} s at {args.rate:g} Hz {args.size} (warm-up {warmup:g} s): "
          f"RSS {report['rss_mib_start']:.1f} -> {report['rss_mib_end']:.1f} MiB "
          f"({report['rss_growth_percent']:+.2f} %), backlog max {report['backlog_max']} "
          f"(trend {report['backlog_trend_per_min']:+.3f} frames/min), processed "
          f"{report['processed_rate_hz']:.1f} of {report['input_rate_hz']:.1f} Hz received; result age "
          f"median {age['median']:.0f} ms, p95 {age['p95']:.0f} ms, max {age['max']:.0f} ms vs 2 x model "
          f"{2 * model_ms:.0f} ms")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({'report': report, 'samples': samples}, indent=2))
    if 'Traceback' in log:
        print(log[-2000:], file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
