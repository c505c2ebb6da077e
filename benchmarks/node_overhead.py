"""Node overhead: end-to-end latency (publish -> last output received) minus the model's own latency.

    .venv/bin/python benchmarks/node_overhead.py [--checkpoint X.pt | --config config/model_resnet18.yaml]
        [--sizes 640x480,2048x1024] [--frames 10] [--score-threshold 0.0] [--json out.json]

For each image size and output set a fresh `ppe_node` process is started (loopback SHM DDS profile, like
the demo and a vehicle running both ends on one computer), by default with score_threshold 0, so a model
yields every detection it keeps (the most conversion work: a random-initialised PPENet its full K, the
shipped pipeline 20 on the sample photo); `--score-threshold 0.25` measures the shipped operating point
(5 people on the sample photo). The people per frame are reported. Output sets: 'core' subscribes
detections, poses and markers (what a planner and RViz's Camera display use); 'all' adds masks and the
rendered overlay (the worst case: they are only produced while someone subscribes; the overlay at the
node's default overlay_max_side of 1024 px, so 1024x512 for a 2048x1024 frame, the masks at full size).
Frames are sent one at a time (the next after the last output of the previous one arrived), best effort,
bgr8 (so decoding includes the colour conversion).

Per size: e2e = mean over the frames of (last output's arrival - publish call), in this process;
model = the node's own mean of preprocess + inference + postprocess (Predictor.last_timings) over the
same frames, read from /diagnostics (the statistics restart on activate: the warm-up frames are excluded
by a deactivate/activate). overhead = e2e - model: decoding, message conversion, rendering, DDS transport
and deserialisation on the receiving side. Targets: <= 15 ms and <= 5 % of e2e.

Bounded: a fixed number of frames, every wait has a timeout, loopback only, child processes stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from occluded_ppe_ros.ros.dds_env import apply_loopback_env  # noqa: E402

DDS_ENV = apply_loopback_env('shm')  # before rclpy is imported

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from occluded_ppe_msgs.msg import PedestrianPoseArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from occluded_ppe_ros.ros.conversions import numpy_to_image  # noqa: E402

OUTPUTS = {'detections': Detection2DArray, 'poses': PedestrianPoseArray, 'markers': MarkerArray,
           'masks': Image, 'overlay': Image}
OUTPUT_SETS = {'core': ('detections', 'poses', 'markers'), 'all': tuple(OUTPUTS)}


def random_checkpoint(config: Path, out_dir: Path) -> Path:
    """A random-initialised checkpoint of a model YAML (the network's timings do not depend on weights)."""
    import torch

    from occluded_ppe_ros.model.checkpoint import save_checkpoint
    from occluded_ppe_ros.model.config import ModelConfig
    from occluded_ppe_ros.model.network import build_model

    torch.manual_seed(0)
    return save_checkpoint(out_dir / f'{config.stem}_random.pt', build_model(ModelConfig.from_yaml(config)))


def start_node(checkpoint: Path, *params: str, score_threshold: float = 0.0) -> subprocess.Popen:
    """ppe_node from this source tree in its own process, same DDS environment as this one."""
    command = [sys.executable, '-m', 'occluded_ppe_ros.ros.node', '--ros-args',
               '--params-file', str(REPO / 'config' / 'ppe.yaml'), '-p', f'model_path:={checkpoint}',
               '-p', f'score_threshold:={score_threshold}', '-p', 'max_frame_age_ms:=0.0',
               '-p', 'diagnostics_period_s:=0.25', '-p', 'max_image_pixels:=4194304']
    for param in params:
        command += ['-p', param]
    env = dict(os.environ)
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def stop_node(process: subprocess.Popen) -> str:
    """SIGINT, then kill; returns the node's log."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        out, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate(timeout=10)
    return out or ''


class Listener(Node):
    """Publishes images; records when each output of each frame arrives, and the latest diagnostics."""

    def __init__(self, outputs: dict[str, type]) -> None:
        super().__init__('ppe_benchmark_listener')
        self.lock = threading.Lock()
        self.arrivals: dict[tuple[int, int], dict[str, float]] = {}
        self.diagnostics: dict[str, str] = {}
        self.people: list[int] = []  # detections per received Detection2DArray
        self.images = self.create_publisher(Image, 'image', qos_profile_sensor_data)
        for topic, message_type in outputs.items():
            self.create_subscription(message_type, topic, self._recorder(topic), 5)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _recorder(self, topic: str):
        def record(message) -> None:
            now = time.perf_counter()
            if isinstance(message, MarkerArray) and not message.markers:
                return  # no header to match it to a frame (ppe_node always sends at least a DELETEALL)
            header = message.markers[0].header if isinstance(message, MarkerArray) else message.header
            with self.lock:
                self.arrivals.setdefault((header.stamp.sec, header.stamp.nanosec), {})[topic] = now
                if isinstance(message, Detection2DArray):
                    self.people.append(len(message.detections))
        return record

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name.endswith(': pipeline'):
                with self.lock:
                    self.diagnostics = {pair.key: pair.value for pair in status.values}

    def arrived(self, stamp: tuple[int, int], topics) -> dict[str, float] | None:
        with self.lock:
            times = self.arrivals.get(stamp, {})
            return dict(times) if all(topic in times for topic in topics) else None

    def change_state(self, transition: int, timeout: float = 60.0) -> bool:
        client = self.create_client(ChangeState, '/ppe_node/change_state')
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError('ppe_node/change_state is not available')
        request = ChangeState.Request()
        request.transition.id = transition
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.destroy_client(client)
        return bool(future.done() and future.result().success)


def wait_for(predicate, timeout: float, period: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    return predicate()


def send_frame(listener: Listener, pixels: np.ndarray, stamp_sec: int, topics,
               timeout: float) -> float | None:
    """Publish one bgr8 frame and wait for all its outputs; returns e2e seconds, None on timeout."""
    header = Header(frame_id='benchmark_camera')
    header.stamp.sec, header.stamp.nanosec = stamp_sec, 0
    message = numpy_to_image(pixels, header, 'bgr8')
    start = time.perf_counter()
    listener.images.publish(message)
    times = wait_for(lambda: listener.arrived((stamp_sec, 0), topics), timeout)
    return None if not times else max(times.values()) - start


def measure(executor, checkpoint: Path, width: int, height: int, output_set: str, frames: int, warmup: int,
            timeout: float, score_threshold: float = 0.0) -> dict:
    """One size and output set: a fresh node, warm-up frames, a statistics reset, `frames` measured frames."""
    topics = OUTPUT_SETS[output_set]
    listener = Listener({topic: OUTPUTS[topic] for topic in topics})
    executor.add_node(listener)
    node = start_node(checkpoint, score_threshold=score_threshold)
    # a real photo with people (samples/, resized to the frame size): random noise holds no person for the
    # pretrained pipeline, so the per-person outputs (poses, masks, markers) would go unexercised
    pixels = cv2.resize(cv2.imread(str(REPO / 'samples' / '000000000790.jpg')), (width, height))
    try:
        ready = wait_for(lambda: listener.count_subscribers('/image') > 0
                         and all(listener.count_publishers(f'/{t}') > 0 for t in topics), 120.0)
        if not ready:
            raise RuntimeError('ppe_node did not come up:\n' + stop_node(node))
        stamp = width * 1000
        # The first frames also wait for discovery: the node builds an output only for a matched subscriber,
        # and the listener may see the node's publishers before the node's writers have matched it, so an
        # unanswered warm-up frame is sent again (a fresh stamp) until the 120 s run out.
        deadline = time.monotonic() + 120.0
        answered = 0
        while answered < warmup:
            stamp += 1
            if send_frame(listener, pixels, stamp, topics, 10.0) is not None:
                answered += 1
            elif time.monotonic() > deadline:
                raise RuntimeError('no output for a warm-up frame:\n' + stop_node(node))
        if not (listener.change_state(Transition.TRANSITION_DEACTIVATE)
                and listener.change_state(Transition.TRANSITION_ACTIVATE)):
            raise RuntimeError('deactivate/activate failed')
        e2e = []
        for _ in range(frames):
            stamp += 1
            seconds = send_frame(listener, pixels, stamp, topics, timeout)
            if seconds is None:
                raise RuntimeError(f'frame {stamp} timed out:\n' + stop_node(node))
            e2e.append(seconds * 1e3)
        def covered() -> bool:
            return int(listener.diagnostics.get('processed', '0')) >= frames
        processed = wait_for(covered, 10.0)
        if not processed:
            raise RuntimeError('no diagnostics covering the measured frames')
        values = {key: float(value) for key, value in listener.diagnostics.items()
                  if key.endswith('_ms_mean') or key.endswith('_ms_max')}
    finally:
        stop_node(node)
        executor.remove_node(listener)
        listener.destroy_node()
    model_ms = values['preprocess_ms_mean'] + values['inference_ms_mean'] + values['postprocess_ms_mean']
    e2e_mean = float(np.mean(e2e))
    overhead = e2e_mean - model_ms
    return {'size': f'{width}x{height}', 'outputs': output_set, 'frames': frames, 'e2e_ms_mean': e2e_mean,
            'score_threshold': score_threshold, 'people_per_frame': float(np.mean(listener.people[-frames:])),
            'e2e_ms_median': float(np.median(e2e)), 'e2e_ms_max': float(np.max(e2e)),
            'model_ms_mean': model_ms,
            'overhead_ms': overhead, 'overhead_percent_of_e2e': 100.0 * overhead / e2e_mean,
            'node_stages_ms_mean': {stage: values[f'{stage}_ms_mean'] for stage in
                                    ('decode', 'preprocess', 'inference', 'postprocess', 'track',
                                                                     'publish')}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', type=Path, help='model file; default: random init of --config')
    parser.add_argument('--config', type=Path, default=REPO / 'config' / 'model_resnet18.yaml',
                        help='model YAML for the random-initialised checkpoint')
    parser.add_argument('--sizes', default='640x480,2048x1024', help='comma-separated WxH')
    parser.add_argument('--outputs', default='core,all', help="comma-separated output sets: core, all")
    parser.add_argument('--frames', type=int, default=10, help='measured frames per size')
    parser.add_argument('--warmup', type=int, default=3, help='frames before the measurement')
    parser.add_argument('--timeout', type=float, default=60.0, help='seconds to wait for one frame')
    parser.add_argument('--score-threshold', type=float, default=0.0,
                        help='the node\'s min detection score; 0 (default) publishes every detection the '
                             'model keeps (the most conversion work: 20 people on the sample photo with '
                             'the shipped pipeline), 0.25 is the shipped operating point (5 people)')
    parser.add_argument('--json', type=Path, help='also write the results here')
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in size.split('x')) for size in args.sizes.split(',')]
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or random_checkpoint(args.config, Path(scratch))
        rclpy.init()
        executor = SingleThreadedExecutor()
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        results = []
        try:
            for width, height in sizes:
                for output_set in args.outputs.split(','):
                    result = measure(executor, checkpoint, width, height, output_set, args.frames,
                                     args.warmup, args.timeout, args.score_threshold)
                    results.append(result)
                    print(json.dumps(result), flush=True)
        finally:
            executor.shutdown(timeout_sec=2.0)
            rclpy.try_shutdown()
    print(f'\nmodel: {checkpoint if args.checkpoint else args.config.name + " (random init)"}, '
          f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}')
    print('| image | outputs | e2e mean (ms) | model mean (ms) | overhead (ms) | overhead / e2e | '
          'decode (ms) | publish (ms) |')
    print('|---|---|---|---|---|---|---|---|')
    for r in results:
        stages = r['node_stages_ms_mean']
        print(f"| {r['size']} | {r['outputs']} | {r['e2e_ms_mean']:.1f} | {r['model_ms_mean']:.1f} | "
              f"{r['overhead_ms']:.1f} | {r['overhead_percent_of_e2e']:.1f} % | {stages['decode']:.1f} | "
              f"{stages['publish']:.1f} |")
    if args.json:
        # the folder may not exist yet on a fresh clone (outputs/ is ignored by git)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
