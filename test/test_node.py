"""ppe_node over real DDS on loopback, with a real Predictor on a random-initialised checkpoint.

The checkpoint is a small ResNet-18 network at a 96 x 128 input written by the test; with
score_threshold 0 its random weights still produce max_detections detections per frame, so every output
(detections, poses, masks, markers, overlay, diagnostics) carries real content.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from occluded_ppe_ros.ros.frame_slot import LatestFrameSlot

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
MAX_DETECTIONS = 4
TINY_MODEL = {
    'fpn': {'channels': 32},
    'detection': {'head_channels': 16, 'pre_nms_topk': 20},
    'mask': {'channels': 16, 'roi_size': 7, 'resolution': 14},
    'pose': {'encoder_channels': 16, 'encoder_convs': 1, 'decoder_channels': 16, 'domain_hidden': 16},
    'inference': {'input_height': 96, 'input_width': 128, 'max_detections': MAX_DETECTIONS},
}
# Parameters every test node gets: the tiny checkpoint, everything detected and drawn.
PERMISSIVE = {'score_threshold': 0.0, 'keypoint_threshold': 0.0, 'backend': 'torch', 'autostart': False}


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    """A random-init checkpoint of TINY_MODEL (contract 3), written once for this module."""
    import torch

    from occluded_ppe_ros.model.checkpoint import save_checkpoint
    from occluded_ppe_ros.model.config import ModelConfig
    from occluded_ppe_ros.model.network import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('model') / 'tiny.pt'
    save_checkpoint(path, build_model(ModelConfig.from_dict(TINY_MODEL, source='test_node')))
    return path


def make_image_message(width: int, height: int, stamp_sec: int, stamp_nanosec: int = 0, frame_id: str = 'cam',
                       encoding: str = 'bgr8'):
    from sensor_msgs.msg import Image

    from occluded_ppe_ros.ros.conversions import numpy_to_image

    rng = np.random.default_rng(stamp_sec)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    message = numpy_to_image(pixels, _header(stamp_sec, stamp_nanosec, frame_id), encoding)
    assert isinstance(message, Image)
    return message


def _header(sec: int, nanosec: int = 0, frame_id: str = 'cam'):
    from std_msgs.msg import Header

    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    return header


def _now_header(node, frame_id: str = 'cam'):
    from std_msgs.msg import Header

    return Header(frame_id=frame_id, stamp=node.get_clock().now().to_msg())


class Probe:
    """A helper node: publishes images and camera_info, records every output of ppe_node by topic."""

    TOPICS = ('detections', 'poses', 'markers', 'masks', 'overlay', '/diagnostics')

    def __init__(self, spinner, reliable_images: bool = False, namespace: str = '') -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from occluded_ppe_msgs.msg import PedestrianPoseArray
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image
        from vision_msgs.msg import Detection2DArray
        from visualization_msgs.msg import MarkerArray

        self.node = spinner.add(Node('ppe_probe', namespace=namespace, context=spinner.executor.context))
        self.lock = threading.Lock()
        self._clients: dict = {}
        self.received: dict[str, list] = {topic: [] for topic in self.TOPICS}
        types = {'detections': Detection2DArray, 'poses': PedestrianPoseArray, 'markers': MarkerArray,
                 'masks': Image, 'overlay': Image, '/diagnostics': DiagnosticArray}
        for topic, message_type in types.items():
            self.node.create_subscription(message_type, topic, self._recorder(topic), 10)
        image_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE) if reliable_images \
            else qos_profile_sensor_data
        self.images = self.node.create_publisher(Image, 'image', image_qos)
        self.camera_info = self.node.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)

    def _recorder(self, topic: str):
        def record(message) -> None:
            with self.lock:
                self.received[topic].append(message)
        return record

    def outputs_for(self, topic: str, header) -> list:
        """Messages on `topic` stamped with `header` (a MarkerArray by its markers' headers)."""
        def stamp(message):
            if hasattr(message, 'markers'):
                return message.markers[0].header if message.markers else None
            return message.header
        with self.lock:
            return [m for m in self.received[topic] if stamp(m) == header]

    def latest(self, topic: str):
        with self.lock:
            return self.received[topic][-1] if self.received[topic] else None

    def publish_until(self, spinner, message, topics: tuple[str, ...], timeout: float = 60.0) -> bool:
        """Re-publish `message` (discovery takes a while) until every topic has an output with its header."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.images.publish(message)
            def answered() -> bool:
                return all(self.outputs_for(topic, message.header) for topic in topics)
            if spinner.wait_for(answered, timeout=1.0):
                return True
        return False

    def call(self, spinner, service_type, name: str, request, timeout: float = 30.0):
        # One client per service for the probe's lifetime: a fresh client per call must be discovered
        # anew each time, which under a fully loaded CPU took longer than the timeout (seen in CI).
        # Only a new client waits for the service; later calls go straight out. Under load, a full
        # test_node.py run once saw a server that had answered seconds before reported unavailable for
        # 30 s. rmw_fastrtps's service_is_ready needs as many request readers as reply writers on the
        # service's topics across the domain, so the half-removed endpoints of an earlier test's
        # ppe_node (same service names) probably hid it. A lost request still fails below, at the
        # answer's timeout.
        key = (service_type, name)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self.node.create_client(service_type, name)
            assert client.wait_for_service(timeout_sec=timeout), f'{name} not available'
        future = client.call_async(request)
        assert spinner.wait_for(future.done, timeout=timeout), f'{name} did not answer'
        return future.result()


def diagnostic_values(message) -> dict[str, str]:
    (status,) = message.status
    return {pair.key: pair.value for pair in status.values}


def start_node(spinner, checkpoint: Path, **overrides):
    from rclpy.parameter import Parameter

    from occluded_ppe_ros.ros.node import PPENode

    values = {'model_path': str(checkpoint), **PERMISSIVE, **overrides}
    node = PPENode(context=spinner.executor.context,
                   parameter_overrides=[Parameter(name, value=value) for name, value in values.items()])
    spinner.add(node)
    return node


def activate(node) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS


def test_latest_frame_slot_keeps_only_the_newest():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.take(timeout=0.01) is None
    assert slot.put(1) is None
    assert slot.put(2) == 1  # the pending frame is replaced, never queued
    assert slot.take(timeout=0.01) == 2
    assert slot.take(timeout=0.01) is None
    threading.Timer(0.05, slot.put, args=(3,)).start()
    assert slot.take(timeout=5.0) == 3  # a waiting worker wakes up for a new frame


def test_image_yields_every_output_with_the_input_header(spinning_executor, checkpoint):
    from sensor_msgs.msg import CameraInfo
    from visualization_msgs.msg import Marker

    from occluded_ppe_ros.ros.conversions import rle_to_mask

    node = start_node(spinning_executor, checkpoint, max_frame_age_ms=0.0, marker_depth_m=2.0)
    activate(node)
    probe = Probe(spinning_executor)
    info = CameraInfo(width=160, height=120, k=[100.0, 0.0, 79.5, 0.0, 100.0, 59.5, 0.0, 0.0, 1.0])
    info.header.frame_id = 'cam'

    def camera_info_arrived() -> bool:
        probe.camera_info.publish(info)
        return node._camera_info is not None
    assert spinning_executor.wait_for(camera_info_arrived, timeout=30.0, period=0.1)
    message = make_image_message(160, 120, stamp_sec=101, stamp_nanosec=5)
    topics = ('detections', 'poses', 'markers', 'masks', 'overlay')
    assert probe.publish_until(spinning_executor, message, topics), probe.received.keys()

    (detections,) = probe.outputs_for('detections', message.header)[:1]
    (poses,) = probe.outputs_for('poses', message.header)[:1]
    assert len(detections.detections) == len(poses.pedestrians) == MAX_DETECTIONS
    ids = [d.id for d in detections.detections]
    assert len(set(ids)) == len(ids) and ids == [p.id for p in poses.pedestrians]
    for detection, pose in zip(detections.detections, poses.pedestrians, strict=True):
        assert detection.header == message.header
        assert detection.results[0].hypothesis.class_id == pose.class_id in ('pedestrian', 'rider')
        assert detection.results[0].hypothesis.score == pytest.approx(pose.score, abs=1e-6)
        assert detection.bbox.size_x == pytest.approx(pose.full_box.x_max - pose.full_box.x_min, abs=1e-3)
        assert 0.0 <= pose.full_box.x_min <= pose.full_box.x_max <= 160.0
        assert pose.mask.x_offset + pose.mask.width <= 160 and pose.mask.y_offset + pose.mask.height <= 120
        assert sum(pose.mask.counts) == pose.mask.width * pose.mask.height
        assert {k.state for k in pose.keypoints} <= {1, 2}  # keypoint_threshold 0: every joint present
    masks = probe.outputs_for('masks', message.header)[0]
    assert (masks.width, masks.height, masks.encoding) == (160, 120, 'mono8')
    labels = np.frombuffer(masks.data, np.uint8).reshape(120, 160)
    assert set(np.unique(labels)) <= set(range(MAX_DETECTIONS + 1))
    # Label k marks pixels of the k-th pose's mask that no earlier (higher-scoring) detection claimed.
    for index, pose in enumerate(poses.pedestrians):
        if pose.mask.width and pose.mask.height:
            crop = rle_to_mask(pose.mask.counts, pose.mask.height, pose.mask.width)
            region = labels[pose.mask.y_offset:pose.mask.y_offset + pose.mask.height,
                            pose.mask.x_offset:pose.mask.x_offset + pose.mask.width]
            assert np.all(region[region == index + 1] == index + 1)
            assert np.all(crop[region == index + 1])
    overlay = probe.outputs_for('overlay', message.header)[0]
    assert (overlay.width, overlay.height, overlay.encoding) == (160, 120, 'rgb8')
    array = probe.outputs_for('markers', message.header)[0]
    # Tracking is on by default: the first tracked frame clears older markers, then one sphere list per
    # track whose marker id is the track id published as the Detection2D id.
    assert array.markers[0].action == Marker.DELETEALL
    spheres = [m for m in array.markers if m.type == Marker.SPHERE_LIST]
    assert sorted(str(m.id) for m in spheres) == sorted(ids)
    assert all(len(m.points) == 13 for m in spheres)
    spheres.sort(key=lambda m: ids.index(str(m.id)))
    assert all(m.header == message.header for m in array.markers)
    # Back-projection with the published K at 2 m: the first joint of the first pose.
    joint = poses.pedestrians[0].keypoints[0]
    point = spheres[0].points[0]
    assert point.z == pytest.approx(2.0)
    assert point.x == pytest.approx((joint.x - 0.5 - 79.5) * 2.0 / 100.0, abs=1e-4)
    assert point.y == pytest.approx((joint.y - 0.5 - 59.5) * 2.0 / 100.0, abs=1e-4)

    def diagnostics_after_frame():
        latest = probe.latest('/diagnostics')
        return latest is not None and int(diagnostic_values(latest)['processed']) >= 1
    assert spinning_executor.wait_for(diagnostics_after_frame, timeout=10.0)
    values = diagnostic_values(probe.latest('/diagnostics'))
    assert values['backend'] == 'torch' and values['model'] == 'tiny.pt' and values['state'] == 'active'
    for stage in ('decode', 'preprocess', 'inference', 'postprocess', 'publish'):
        assert float(values[f'{stage}_ms_mean']) > 0.0, stage
    for key in ('input_rate_hz', 'processed_rate_hz', 'too_old', 'superseded', 'rejected', 'received'):
        assert key in values


def test_track_ids_persist_across_frames_and_markers_follow_the_tracks(spinning_executor, checkpoint):
    """Detection2D / PedestrianPose ids are track ids kept across frames; a lost track's markers are
    DELETEd; with tracking_enabled false the ids are per frame ("<sec>.<nanosec>/<index>")."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    from visualization_msgs.msg import Marker

    node = start_node(spinning_executor, checkpoint, max_frame_age_ms=0.0, tracking_max_coast_s=0.5)
    activate(node)
    probe = Probe(spinning_executor)

    def answer(sec: int, nanosec: int = 0):
        """Send the same picture stamped sec.nanosec; returns (detections, poses, markers) for it."""
        message = make_image_message(96, 72, stamp_sec=7, frame_id='cam')
        message.header.stamp.sec, message.header.stamp.nanosec = sec, nanosec
        assert probe.publish_until(spinning_executor, message, ('detections', 'poses', 'markers'))
        return tuple(probe.outputs_for(topic, message.header)[0]
                     for topic in ('detections', 'poses', 'markers'))

    def set_parameters(**values):
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        return probe.call(spinning_executor, SetParameters, '/ppe_node/set_parameters', request).results

    first, first_poses, _ = answer(300)
    ids = [d.id for d in first.detections]
    assert len(ids) == MAX_DETECTIONS and all(i.isdigit() and int(i) >= 1 for i in ids)
    assert ids == [p.id for p in first_poses.pedestrians]
    # The same people 1/30 s later (same picture): the same ids; the markers neither clear nor delete.
    second, second_poses, markers = answer(300, 33_333_333)
    assert sorted(d.id for d in second.detections) == sorted(ids)
    assert [d.id for d in second.detections] == [p.id for p in second_poses.pedestrians]
    assert {m.action for m in markers.markers} == {Marker.ADD}
    assert sorted(str(m.id) for m in markers.markers if m.type == Marker.SPHERE_LIST) == sorted(ids)
    # Nobody detected (score threshold 1): every drawn track's markers are deleted, by track id.
    assert set_parameters(score_threshold=1.0)[0].successful
    empty, _, markers = answer(300, 66_666_666)
    assert not empty.detections
    deleted = {(m.ns, str(m.id)) for m in markers.markers if m.action == Marker.DELETE}
    assert deleted == {(ns, i) for ns in ('ppe_joints', 'ppe_limbs') for i in ids}
    # Back after more than tracking_max_coast_s: the old tracks ended, the people get new ids.
    assert set_parameters(score_threshold=0.0)[0].successful
    later, _, _ = answer(301)
    assert not {d.id for d in later.detections} & set(ids)
    assert set_parameters(tracking_enabled=False)[0].successful
    untracked, _, markers = answer(302, 5)
    assert [d.id for d in untracked.detections] == [f'302.000000005/{k}' for k in range(MAX_DETECTIONS)]
    assert markers.markers[0].action == Marker.DELETEALL
    (rejected,) = set_parameters(tracking_max_coast_s=-1.0)
    assert not rejected.successful and 'tracking_max_coast_s' in rejected.reason, rejected.reason


def test_a_frame_with_nobody_still_gets_one_message_on_every_output(spinning_executor, checkpoint):
    """No pedestrian in the frame (score threshold 1): each output still carries one message for it.

    A consumer that waits for every output of a frame (a planner joining detections and poses, RViz, a
    recorder, benchmarks/node_overhead.py) must not stall on an empty scene: empty arrays, an
    all-background label image, the overlay (the unmodified image), and a MarkerArray that is never empty
    (a DELETEALL stamped with the frame's header when there is nothing to draw or delete), so that it
    names its frame. Several frames in a row: the first frame of a tracker clears the markers anyway.
    """
    from visualization_msgs.msg import Marker

    node = start_node(spinning_executor, checkpoint, max_frame_age_ms=0.0, score_threshold=1.0)
    activate(node)
    probe = Probe(spinning_executor)
    grey = np.full((72, 96, 3), 128, dtype=np.uint8)
    topics = ('detections', 'poses', 'markers', 'masks', 'overlay')
    for frame in range(3):
        message = make_image_message(96, 72, stamp_sec=400 + frame, stamp_nanosec=7)
        message.data = grey.tobytes()
        assert probe.publish_until(spinning_executor, message, topics, timeout=30.0), \
            (frame, {topic: len(probe.outputs_for(topic, message.header)) for topic in topics})
        (detections,) = probe.outputs_for('detections', message.header)[:1]
        (poses,) = probe.outputs_for('poses', message.header)[:1]
        assert not detections.detections and not poses.pedestrians
        (markers,) = probe.outputs_for('markers', message.header)[:1]
        assert [m.action for m in markers.markers] == [Marker.DELETEALL]
        masks = probe.outputs_for('masks', message.header)[0]
        assert (masks.width, masks.height, masks.encoding) == (96, 72, 'mono8')
        assert not np.frombuffer(masks.data, np.uint8).any()
        overlay = probe.outputs_for('overlay', message.header)[0]
        assert np.array_equal(np.frombuffer(overlay.data, np.uint8).reshape(72, 96, 3), grey)
    # Every frame the node answered got exactly one message on each output, all naming the frame.
    time.sleep(0.5)
    assert all(message.markers for message in probe.received['markers'])
    counts = {topic: len(probe.received[topic]) for topic in topics}
    assert counts == dict.fromkeys(topics, counts['detections']), counts


def test_outputs_without_a_subscriber_are_not_built(spinning_executor, checkpoint, monkeypatch):
    """An output nobody subscribes to costs nothing: its message is neither built nor published."""
    from occluded_ppe_ros.ros import conversions, node as node_module

    node = start_node(spinning_executor, checkpoint)
    activate(node)
    built: list[str] = []
    for name in ('to_detection_array', 'to_pose_array', 'to_label_image', 'numpy_to_image'):
        original = getattr(conversions, name)
        monkeypatch.setattr(conversions, name, lambda *a, _name=name, _original=original, **k:
                            built.append(_name) or _original(*a, **k))
    monkeypatch.setattr(node_module, 'render_overlay', lambda *a, **k: built.append('render_overlay'))
    monkeypatch.setattr(node, '_markers', lambda *a, **k: built.append('markers'))
    node._publish_results(_header(5), np.zeros((48, 64, 3), np.uint8), [])
    assert built == []
    probe = Probe(spinning_executor)  # now every output has a subscriber
    assert spinning_executor.wait_for(
        lambda: all(p.get_subscription_count() > 0 for p in node._outputs.values()), timeout=30.0)
    monkeypatch.undo()
    node._publish_results(_header(6), np.zeros((48, 64, 3), np.uint8), [])
    assert spinning_executor.wait_for(
        lambda: all(probe.outputs_for(topic, _header(6)) for topic in Probe.TOPICS[:5]), timeout=30.0)


def test_overlay_of_a_large_frame_is_capped_with_the_results_at_the_scaled_place(spinning_executor,
                                                                                    checkpoint):
    """overlay_max_side (default 1024): a 2048x1024 frame's overlay is 1024x512, drawn at the scaled place."""
    from rclpy.parameter import Parameter

    from occluded_ppe_ros import draw
    from occluded_ppe_ros.inference.results import Pedestrian

    node = start_node(spinning_executor, checkpoint, max_frame_age_ms=0.0)
    activate(node)
    assert node.get_parameter('overlay_max_side').value == 1024
    person = Pedestrian(box=np.array([400, 200, 800, 1000], np.float32), class_id=0, class_name='pedestrian',
                        score=0.8, mask=np.zeros((1, 1), bool), mask_origin=np.array([0, 0]),
                        keypoints=np.zeros((13, 2), np.float32), keypoint_scores=np.zeros(13, np.float32),
                        keypoint_occluded=np.zeros(13, bool))
    grey = np.full((1024, 2048, 3), 90, np.uint8)
    message = node._overlay(_header(8), grey, [person], 0.5)
    assert (message.width, message.height, message.step, message.encoding) == (1024, 512, 3072, 'rgb8')
    assert message.header == _header(8)
    overlay = np.frombuffer(message.data, np.uint8).reshape(512, 1024, 3)
    colour = draw.instance_color(0)
    for row, column in ((300, 200), (300, 399), (100, 300), (499, 300)):  # the box's edges, halved
        np.testing.assert_array_equal(overlay[row, column], colour)
    for row, column in ((300, 300), (300, 196), (300, 403), (20, 20)):
        np.testing.assert_array_equal(overlay[row, column], (90, 90, 90))
    # 0 = full resolution; a smaller frame keeps its size under any cap; a cap below 64 is refused.
    assert node.set_parameters([Parameter('overlay_max_side', value=0)])[0].successful
    full = node._overlay(_header(8), grey, [person], 0.5)
    assert (full.width, full.height) == (2048, 1024)
    np.testing.assert_array_equal(np.frombuffer(full.data, np.uint8).reshape(1024, 2048, 3)[600, 400], colour)
    assert node.set_parameters([Parameter('overlay_max_side', value=640)])[0].successful
    small = node._overlay(_header(8), grey[:480, :640], [], 0.5)
    assert (small.width, small.height) == (640, 480)
    result = node.set_parameters([Parameter('overlay_max_side', value=32)])[0]
    assert not result.successful and 'overlay_max_side=32' in result.reason
    assert node.get_parameter('overlay_max_side').value == 640
    assert node.set_parameters([Parameter('overlay_max_side', value=1024)])[0].successful

    # Over DDS: a 2048x1024 frame in, its 1024x512 overlay out (and the masks at the input size).
    probe = Probe(spinning_executor)
    frame = make_image_message(2048, 1024, stamp_sec=303)
    assert probe.publish_until(spinning_executor, frame, ('masks', 'overlay')), probe.received.keys()
    received = probe.outputs_for('overlay', frame.header)[0]
    assert (received.width, received.height, received.encoding) == (1024, 512, 'rgb8')
    masks = probe.outputs_for('masks', frame.header)[0]
    assert (masks.width, masks.height) == (2048, 1024)


def test_old_frames_are_dropped_and_counted(spinning_executor, checkpoint):
    node = start_node(spinning_executor, checkpoint, max_frame_age_ms=1000.0)
    activate(node)
    probe = Probe(spinning_executor)
    fresh = make_image_message(64, 48, stamp_sec=0)
    fresh.header = _now_header(node)
    assert probe.publish_until(spinning_executor, fresh, ('detections',))
    stale = make_image_message(64, 48, stamp_sec=0)
    stale.header = _now_header(node)
    stale.header.stamp.sec -= 30  # captured 30 s ago
    for _ in range(5):
        probe.images.publish(stale)
        time.sleep(0.1)
    assert spinning_executor.wait_for(lambda: node.stats.counters['too_old'] >= 1, timeout=10.0)
    time.sleep(0.5)
    assert not probe.outputs_for('detections', stale.header)


def test_destroying_an_active_node_stops_its_inference_worker(spinning_executor, checkpoint):
    node = start_node(spinning_executor, checkpoint, max_frame_age_ms=0.0)
    activate(node)
    probe = Probe(spinning_executor)
    assert probe.publish_until(spinning_executor, make_image_message(64, 48, stamp_sec=300), ('detections',))
    worker = node._worker
    assert worker is not None and worker.is_alive()
    # the executor stops first so that no callback of its is in flight; the node itself gets no shutdown
    # transition before destroy_node, which is what a process embedding it may do
    spinning_executor.executor.remove_node(node)
    spinning_executor.shutdown()
    node.destroy_node()
    assert not worker.is_alive()
    assert node._outputs == {} and node._predictor is None


def test_runtime_parameters_and_lifecycle_services(spinning_executor, checkpoint):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    node = start_node(spinning_executor, checkpoint, max_frame_age_ms=0.0)
    probe = Probe(spinning_executor)
    sec = [200]

    def frame_answered(expect: bool, timeout: float = 60.0) -> bool:
        sec[0] += 1
        message = make_image_message(64, 48, stamp_sec=sec[0])
        if expect:
            return probe.publish_until(spinning_executor, message, ('detections',), timeout=timeout)
        for _ in range(10):
            probe.images.publish(message)
            time.sleep(0.1)
        return bool(probe.outputs_for('detections', message.header))

    def change(transition_id: int) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition_id
        return probe.call(spinning_executor, ChangeState, '/ppe_node/change_state', request).success

    def state() -> str:
        response = probe.call(spinning_executor, GetState, '/ppe_node/get_state', GetState.Request())
        return response.current_state.label

    def set_parameters(**values):
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        return probe.call(spinning_executor, SetParameters, '/ppe_node/set_parameters', request).results

    # Lifecycle over the ChangeState service: nothing is processed before activate.
    assert state() == 'unconfigured'
    assert change(Transition.TRANSITION_CONFIGURE) and state() == 'inactive'
    assert not frame_answered(expect=False)
    assert change(Transition.TRANSITION_ACTIVATE) and state() == 'active'
    assert frame_answered(expect=True)

    # A runtime threshold takes effect on the next frame: no random-init score reaches 1.0.
    (result,) = set_parameters(score_threshold=1.0)
    assert result.successful, result.reason
    sec[0] += 1
    message = make_image_message(64, 48, stamp_sec=sec[0])
    assert probe.publish_until(spinning_executor, message, ('detections',))
    assert probe.outputs_for('detections', message.header)[0].detections == []
    assert node.get_parameter('score_threshold').value == 1.0
    # Invalid values are rejected with a reason and change nothing.
    (result,) = set_parameters(score_threshold=1.5)
    assert not result.successful and 'score_threshold' in result.reason
    (result,) = set_parameters(marker_depth_m=-1.0)
    assert not result.successful and 'marker_depth_m' in result.reason
    (result,) = set_parameters(backend='onnxruntime')
    assert not result.successful and 'read on configure' in result.reason
    assert node.get_parameter('score_threshold').value == 1.0
    assert node.get_parameter('backend').value == 'torch'

    assert change(Transition.TRANSITION_DEACTIVATE) and state() == 'inactive'
    assert not frame_answered(expect=False)
    assert change(Transition.TRANSITION_CLEANUP) and state() == 'unconfigured'
    assert node._predictor is None
    # Unconfigured, configure-time parameters may change; a missing model makes configure fail.
    (result,) = set_parameters(model_path='/nonexistent/model.pt')
    assert result.successful, result.reason
    assert not change(Transition.TRANSITION_CONFIGURE) and state() == 'unconfigured'
    assert '/nonexistent/model.pt' in node.configure_error
    results = set_parameters(model_path=str(checkpoint), score_threshold=0.0)
    assert all(result.successful for result in results), results
    assert change(Transition.TRANSITION_CONFIGURE) and change(Transition.TRANSITION_ACTIVATE)
    assert frame_answered(expect=True)


def _node_command(checkpoint: Path, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'occluded_ppe_ros.ros.node', '--ros-args',
            '--params-file', str(REPO / 'config' / 'ppe.yaml'),
            '-p', f'model_path:={checkpoint}', '-p', 'backend:=torch', '-p', 'score_threshold:=0.0',
            '-p', 'max_frame_age_ms:=0.0', '-p', 'diagnostics_period_s:=0.2', *extra]


# A camera in its own process (on the SHM profile, like the node): a 640x480 bgr8 best-effort image every
# 0.2 s, stamped with the current time.
CAMERA_SCRIPT = """
import sys, time
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from occluded_ppe_ros.ros.conversions import numpy_to_image
rclpy.init()
node = rclpy.create_node('test_camera')
publisher = node.create_publisher(Image, 'image', qos_profile_sensor_data)
pixels = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
try:
    while rclpy.ok():
        header = Header(frame_id='camera_640', stamp=node.get_clock().now().to_msg())
        message = numpy_to_image(pixels, header, 'bgr8')
        publisher.publish(message)
        rclpy.spin_once(node, timeout_sec=0.2)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
finally:
    node.destroy_node()
    rclpy.try_shutdown()
"""


def malformed_images(count: int) -> list:
    """`count` small Image messages, each broken in one of five ways."""
    from sensor_msgs.msg import Image

    messages = []
    for index in range(count):
        message = Image(height=4, width=4, encoding='rgb8', step=12)
        message.data = bytes(48)
        kind = index % 5
        if kind == 0:
            message.encoding = 'yuv422_weird'
        elif kind == 1:
            message.step = 5  # shorter than a row
        elif kind == 2:
            message.data = bytes(47)  # one byte short of step x height
        elif kind == 3:
            message.width = 0
        else:
            message.height, message.width, message.step = 5000, 5000, 15000  # too many pixels
            message.data = bytes(0)
        messages.append(message)
    return messages


def test_subprocess_node_real_size_images_and_a_malformed_burst(spinning_executor, child_process, checkpoint):
    """ppe_node as its own process on the SHM profile: 640x480 best-effort images, then 1,000 bad messages."""
    from rcl_interfaces.srv import GetParameters

    node_process = child_process(_node_command(checkpoint), transport='shm', cwd=REPO,
                                 extra_env={'OMP_NUM_THREADS': '2'})
    camera = child_process([sys.executable, '-c', CAMERA_SCRIPT], transport='shm', cwd=REPO)
    probe = Probe(spinning_executor)

    def camera_frames_after(stamp_ns: int) -> list:
        with probe.lock:
            return [m for m in probe.received['detections'] if m.header.frame_id == 'camera_640'
                    and m.header.stamp.sec * 10**9 + m.header.stamp.nanosec > stamp_ns]

    def stop_all() -> str:
        camera.stop()
        node_process.stop()
        return node_process.output
    assert spinning_executor.wait_for(lambda: camera_frames_after(0), timeout=90.0), stop_all()
    assert len(camera_frames_after(0)[0].detections) == MAX_DETECTIONS

    # The burst comes from this process (small messages); the node's input QoS is best effort, depth 1.
    for message in malformed_images(1000):
        probe.images.publish(message)
        time.sleep(0.001)
    burst_end_ns = probe.node.get_clock().now().nanoseconds
    assert spinning_executor.wait_for(lambda: camera_frames_after(burst_end_ns), timeout=60.0), stop_all()
    assert node_process.popen.poll() is None, 'the node died'

    def rejections() -> int:
        latest = probe.latest('/diagnostics')
        return int(diagnostic_values(latest)['rejected']) if latest is not None else 0
    assert spinning_executor.wait_for(lambda: rejections() >= 100, timeout=10.0), rejections()
    response = probe.call(spinning_executor, GetParameters, '/ppe_node/get_parameters',
                          GetParameters.Request(names=['score_threshold']))
    assert response.values[0].double_value == 0.0
    camera.stop()
    assert node_process.stop() == 0, node_process.output
    warnings = [line for line in node_process.output.splitlines() if 'dropped an input frame' in line]
    assert 1 <= len(warnings) <= 20, warnings  # throttled: a few lines for a thousand bad frames


@pytest.mark.parametrize('content', [None, b'this is not a torch checkpoint'], ids=['missing', 'corrupt'])
def test_unloadable_model_exits_non_zero_naming_the_file(child_process, tmp_path, content):
    model = tmp_path / 'broken_model.pt'
    if content is not None:
        model.write_bytes(content)
    child = child_process(_node_command(model), cwd=REPO)
    try:
        child.popen.wait(timeout=120)
    finally:
        code = child.stop()
    assert code == 1, child.output
    lines = [line for line in child.output.splitlines() if str(model) in line]
    assert len(lines) == 1, child.output
    assert 'cannot load model' in lines[0]
    if content is None:
        assert 'no such file' in lines[0]


def test_compressed_input_and_undecodable_frames(spinning_executor, checkpoint):
    """compressed_input: PNG frames on image/compressed are answered; undecodable ones are counted."""
    import cv2
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage

    node = start_node(spinning_executor, checkpoint, compressed_input=True, max_frame_age_ms=0.0)
    activate(node)
    probe = Probe(spinning_executor)
    compressed = probe.node.create_publisher(CompressedImage, 'image/compressed', qos_profile_sensor_data)
    rgb = np.random.default_rng(5).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    good = CompressedImage(header=_header(400), format='png')
    good.data = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    deadline = time.monotonic() + 60.0
    while not probe.outputs_for('detections', good.header) and time.monotonic() < deadline:
        compressed.publish(good)
        spinning_executor.wait_for(lambda: bool(probe.outputs_for('detections', good.header)), timeout=1.0)
    assert probe.outputs_for('detections', good.header)
    garbage = CompressedImage(header=_header(401), format='jpeg', data=b'\xff\xd8 not a jpeg at all' * 4)
    compressed.publish(garbage)
    assert spinning_executor.wait_for(lambda: node.stats.counters['rejected'] >= 1, timeout=10.0)
    assert 'undecodable' in node.stats.last_rejection
    assert not probe.outputs_for('detections', garbage.header)


def test_pipeline_statistics():
    from std_msgs.msg import Header

    from occluded_ppe_ros.ros.diagnostics import PipelineStats, diagnostic_array

    stats = PipelineStats(window=3)
    for index in range(4):
        stats.count('received')
        stats.record_frame({'decode': 1.0, 'inference': 10.0 * (index + 1)}, age_ms=20.0 + index)
    stats.count('superseded')
    stats.count('rejected', 'unknown encoding')
    summary = stats.summary()
    assert summary['inference_ms_mean'] == pytest.approx(30.0)  # the window keeps the last 3 frames
    assert summary['inference_ms_max'] == 40.0 and summary['preprocess_ms_mean'] == 0.0
    assert summary['total_ms_mean'] == pytest.approx(31.0) and summary['age_ms_max'] == 23.0
    counters = ('received', 'processed', 'superseded', 'rejected')
    assert [summary[key] for key in counters] == [4, 4, 1, 1]

    def status_for(state: str):
        return diagnostic_array(stats, Header(), 'ppe_node', 'torch', 'm.pt', state).status[0]
    status = status_for('active')
    assert status.level == status.WARN and 'unknown encoding' in status.message
    stats.record_frame({}, age_ms=1.0)
    assert status_for('active').level == status.OK
    inactive = status_for('inactive')
    assert inactive.level == status.WARN and inactive.hardware_id == 'm.pt'


def test_input_and_processed_rates_share_one_stated_window(monkeypatch):
    """Frames at 1 Hz, each processed 1.25 s after it arrived (slow inference). 2.1 s after the last frame
    both rates still describe the same last `rate_window_s` seconds: neither reads 0 while the other does
    not, and the diagnostics name the window."""
    from types import SimpleNamespace

    from std_msgs.msg import Header

    from occluded_ppe_ros.ros import diagnostics

    clock = [1000.0]
    monkeypatch.setattr(diagnostics, 'time', SimpleNamespace(monotonic=lambda: clock[0]))
    stats = diagnostics.PipelineStats()
    window = stats.rate_window_s
    events = sorted([(float(t), 'received') for t in range(20)]
                    + [(t + 1.25, 'processed') for t in range(20)])
    for t, kind in events:
        clock[0] = 1000.0 + t
        if kind == 'received':
            stats.count('received')
        else:
            stats.record_frame({'inference': 1250.0}, age_ms=1250.0)
        if t == 15.25:
            steady = stats.summary()
    assert steady['input_rate_hz'] == pytest.approx(1.0) and steady['processed_rate_hz'] == pytest.approx(1.0)

    clock[0] = 1000.0 + 19 + 2.1
    summary = stats.summary()
    assert summary['rate_window_s'] == window == diagnostics.RATE_WINDOW_S
    # the same window (16.1, 21.1] s for both: frames received at 17, 18, 19 s; processed at 16.25 ... 20.25 s
    assert summary['input_rate_hz'] == pytest.approx(3 / window)
    assert summary['processed_rate_hz'] == pytest.approx(5 / window)
    status = diagnostics.diagnostic_array(stats, Header(), 'ppe_node', 'torch', 'm.pt', 'active').status[0]
    values = {pair.key: pair.value for pair in status.values}
    assert float(values['rate_window_s']) == window and f'last {window:g} s' in status.message

    clock[0] = 1000.0 + 20.25 + window + 0.01     # both windows now hold no event
    summary = stats.summary()
    assert summary['input_rate_hz'] == 0.0 and summary['processed_rate_hz'] == 0.0

    # just after reset (activation) a rate covers the time since then, not a window mostly before it
    stats.reset()
    for _ in range(10):
        clock[0] += 0.1
        stats.count('received')
    assert stats.summary()['input_rate_hz'] == pytest.approx(10.0)


def test_bad_start_up_parameters_leave_the_node_unconfigured_naming_each(spinning_executor, checkpoint):
    """Out of range, not a choice, wrong type: the node is created (no exception), configure fails with
    one line naming each parameter, its value and the allowed values; valid values then configure it."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    node = start_node(spinning_executor, checkpoint, keypoint_threshold=-0.5, backend='tflite',
                      marker_depth_m='far')
    assert node.get_parameter('keypoint_threshold').value == 0.1      # the default stands in meanwhile
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    error = node.configure_error
    assert '\n' not in error and error.startswith('invalid start-up parameter (--params-file / -p): ')
    assert 'keypoint_threshold=-0.5 is below the minimum 0.0 (allowed: a float in [0.0, 1.0])' in error
    assert "backend='tflite' is not one of auto, torch, onnxruntime, tensorrt" in error
    assert "marker_depth_m='far' is a string, expected a float in [0.01, 1000.0]" in error
    assert node._lifecycle_state == 'unconfigured' and node._predictor is None
    results = node.set_parameters([Parameter('keypoint_threshold', value=0.2),
                                   Parameter('backend', value='torch')])
    assert all(result.successful for result in results)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert 'marker_depth_m' in node.configure_error and 'keypoint_threshold' not in node.configure_error
    assert node.set_parameters([Parameter('marker_depth_m', value=4.0)])[0].successful
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error


def test_bad_value_in_the_params_file_exits_non_zero_with_one_line(child_process, tmp_path, checkpoint):
    """`keypoint_threshold: -0.5` in a --params-file with autostart: exit status 1, one line, no traceback."""
    bad = tmp_path / 'bad_params.yaml'
    bad.write_text('/**/ppe_node:\n  ros__parameters:\n    keypoint_threshold: -0.5\n')
    child = child_process(_node_command(checkpoint, '--params-file', str(bad)), cwd=REPO)
    try:
        child.popen.wait(timeout=120)
    finally:
        code = child.stop()
    assert code == 1, child.output
    assert 'Traceback' not in child.output, child.output
    lines = [line for line in child.output.splitlines() if 'keypoint_threshold' in line]
    assert len(lines) == 1, child.output
    assert '-0.5' in lines[0] and '[0.0, 1.0]' in lines[0] and 'unconfigured' in lines[0]


def test_help_lists_every_parameter_and_exits_before_joining_dds(child_process):
    """`ppe_node --help` prints the usage with every parameter and its default and exits 0 at once (it
    must not start a node: asking for help should never join a DDS domain); a bad --ros-args flag is one
    line and exit status 2."""
    from occluded_ppe_ros.ros.parameters import PARAMETERS

    child = child_process([sys.executable, '-m', 'occluded_ppe_ros.ros.node', '--help'], cwd=REPO)
    try:
        child.popen.wait(timeout=60)
    finally:
        code = child.stop()
    assert code == 0, child.output
    assert child.output.startswith('usage: ppe_node'), child.output
    for spec in PARAMETERS:
        assert f'  {spec.name} = {spec.default!r}' in child.output
    child = child_process([sys.executable, '-m', 'occluded_ppe_ros.ros.node', '--ros-args', '--help'],
                          cwd=REPO)
    try:
        child.popen.wait(timeout=60)
    finally:
        code = child.stop()
    assert code == 2, child.output
    assert 'Traceback' not in child.output and "bad --ros-args: ['--help']" in child.output
