"""`ppe_node`: the lifecycle node that runs the network on camera images and publishes its results.

Topics (relative names; remap them, or set image_topic / camera_info_topic):
  in:  image (sensor_msgs/Image) or image/compressed (sensor_msgs/CompressedImage), camera_info
  out: detections (vision_msgs/Detection2DArray), poses (occluded_ppe_msgs/PedestrianPoseArray),
       markers (visualization_msgs/MarkerArray), masks (sensor_msgs/Image instance labels), overlay
       (sensor_msgs/Image, the frame with the results drawn, long side at most `overlay_max_side`),
       /diagnostics.
Every output carries the input image's header. Each output is built only while something subscribes to
it, and then every processed frame gets one message on it, also a frame with nobody in it (empty arrays,
an all-background label image, the plain image as overlay, a MarkerArray with at least a DELETEALL).
With `tracking_enabled` (default) a tracker (occluded_ppe_ros/tracking) runs after the model:
Detection2D.id and PedestrianPose.id are track ids kept across frames and through full occlusions up to
`tracking_max_coast_s`, and the markers are per track (marker id = track id, a stable colour, DELETE when
the track is no longer drawn). The tracker gets the decoded frame too, for the people's clothing colours
inside their masks (`tracking_appearance_weight`).

Lifecycle: configure loads the model and creates the topics, activate starts processing, deactivate
stops it, cleanup frees the model. With `autostart` (default) `main()` configures and activates at
start-up; if configure fails (e.g. missing or corrupt model) the process logs one line naming the file
and the reason and exits with status 1.

Threads: the executor runs the subscription callbacks, which only validate a frame's metadata and put
it into a one-frame slot (a newer frame replaces a pending one); one worker thread decodes, runs the
model and publishes, so the model never falls behind on a queue.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from occluded_ppe_msgs.msg import PedestrianPoseArray
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray
from visualization_msgs.msg import MarkerArray

from occluded_ppe_ros.draw import overlay_size, render_overlay, shrink_image
from occluded_ppe_ros.ros import conversions
from occluded_ppe_ros.ros.diagnostics import PipelineStats, diagnostic_array
from occluded_ppe_ros.ros.frame_slot import LatestFrameSlot
from occluded_ppe_ros.ros.markers import Intrinsics, skeleton_markers, track_skeleton_markers
from occluded_ppe_ros.ros.parameters import PARAMETERS, ParameterSpec, allowed_values, validate_parameter

from occluded_ppe_ros.tracking import PedestrianTracker, TrackerConfig

NODE_NAME = 'ppe_node'
PACKAGE_NAME = 'occluded_ppe_ros'
_SOURCE_ROOT = Path(__file__).resolve().parents[2]
# Output QoS: reliable (a best-effort or reliable subscriber both match), shallow so a slow subscriber
# never makes the node buffer old results.
_RESULT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
_IMAGE_OUT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
_WARN_THROTTLE_S = 2.0


# Node parameters that are Predictor thresholds (same names; nms_threshold 1.0 = the model's own NMS only).
_MODEL_THRESHOLDS = ('score_threshold', 'nms_threshold', 'occlusion_threshold')
# Parameters that TrackerConfig.from_parameters reads; a change rebuilds the config at the next frame.
_TRACKER_PARAMETERS = ('tracking_max_coast_s', 'tracking_min_similarity', 'tracking_iou_weight',
                       'tracking_keypoint_tolerance', 'tracking_carry_occluded_joints',
                       'tracking_appearance_weight', 'tracking_appearance_min_similarity',
                       'keypoint_threshold')


def _model_thresholds(values: dict[str, Any]) -> dict[str, float | None]:
    """The Predictor.set_thresholds arguments among changed parameter values."""
    thresholds: dict[str, float | None] = {}
    for name in _MODEL_THRESHOLDS:
        if name in values:
            value = float(values[name])
            thresholds[name] = None if name == 'nms_threshold' and value >= 1.0 else value
    return thresholds


def resolve_model_path(path: str) -> Path:
    """An absolute path as is; a relative one under the package share directory (else the source tree).

    The share directory comes from the ament index (AMENT_PREFIX_PATH, set by a sourced ROS 2 workspace),
    else <python prefix>/share/occluded_ppe_ros (a venv install); running from a source checkout, the
    repository root stands in for it. The first root holding the file wins; if none does, the path under
    the first root is returned (and configure reports it missing).
    """
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    roots: list[Path] = []
    try:
        from ament_index_python.packages import get_package_share_directory
        roots.append(Path(get_package_share_directory(PACKAGE_NAME)))
    except (ImportError, LookupError, OSError):
        pass  # no ament index in this environment (PackageNotFoundError is a LookupError)
    roots += [Path(sys.prefix) / 'share' / PACKAGE_NAME, _SOURCE_ROOT]
    for root in roots:
        if (root / candidate).exists():
            return root / candidate
    return roots[0] / candidate


def _descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """ROS descriptor of a table entry: description, and the numeric range RViz/rqt can show."""
    descriptor = ParameterDescriptor(description=spec.description)
    if spec.choices:
        descriptor.additional_constraints = f'one of: {", ".join(spec.choices)}'
    if spec.minimum is not None and spec.maximum is not None and not isinstance(spec.default, bool):
        if isinstance(spec.default, int):
            descriptor.integer_range = [IntegerRange(from_value=int(spec.minimum), to_value=int(spec.maximum),
                                                     step=int(spec.multiple_of or 0))]
        elif isinstance(spec.default, float):
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.minimum),
                                                                  to_value=float(spec.maximum), step=0.0)]
    return descriptor


class PPENode(LifecycleNode):
    """The perception lifecycle node (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        # Start-up values (--params-file, -p, parameter_overrides) get the checks a `ros2 param set` value
        # gets. rclpy would raise from declare_parameter on an out-of-range or mistyped one (a traceback,
        # and none at all for a bad choice); instead the default is declared, the node comes up unconfigured
        # and configure fails naming the parameter, until a valid value is set.
        self.startup_parameter_errors: dict[str, str] = {}
        for spec in PARAMETERS:
            reason = self._startup_value_error(spec)
            if reason is not None:
                self.startup_parameter_errors[spec.name] = reason
            self.declare_parameter(spec.name, spec.default, _descriptor(spec),
                                   ignore_override=reason is not None)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.stats = PipelineStats()
        self.configure_error = ''
        self._slot: LatestFrameSlot[tuple[Any, float]] = LatestFrameSlot()
        self._active = threading.Event()
        self._stop_worker = threading.Event()
        self._worker: threading.Thread | None = None
        self._predictor = None
        self._backend_name = ''
        self._model_name = ''
        self._camera_info: CameraInfo | None = None
        self._configured = False
        self._lifecycle_state = 'unconfigured'
        self._subscriptions_made: list[Any] = []
        self._outputs: dict[str, Any] = {}
        self._diagnostics_publisher = None
        self._diagnostics_timer = None
        # Tracking state, used by the worker thread only; _tracker_changed is set by parameter changes.
        self._tracker: PedestrianTracker | None = None
        self._tracker_changed = threading.Event()
        self._drawn_track_ids: set[int] = set()
        self._markers_per_track = False
        if self.startup_parameter_errors and not self._value('autostart'):
            # configure may come much later (a lifecycle manager): say it now; autostart's configure says it
            self.get_logger().error(self._startup_parameter_report())

    # ----- parameters -------------------------------------------------------------------------------
    def _startup_value_error(self, spec: ParameterSpec) -> str | None:
        """Why the start-up value of `spec` is invalid, or None (valid, or none given)."""
        # rclpy keeps the values of --params-file, -p and parameter_overrides here (no public accessor).
        override = getattr(self, '_parameter_overrides', {}).get(spec.name)
        if override is None:
            return None
        expected = Parameter.Type.from_parameter_value(spec.default)
        if override.type_ != expected:
            return (f'{spec.name}={override.value!r} is a {override.type_.name.lower()}, expected '
                    f'{allowed_values(spec)}')
        return validate_parameter(spec.name, override.value, configured=False)

    def _startup_parameter_report(self) -> str:
        """One line naming every invalid start-up parameter, its value and the allowed values."""
        reasons = '; '.join(self.startup_parameter_errors.values())
        return (f'invalid start-up parameter (--params-file / -p): {reasons}; the node stays unconfigured '
                'until it is set to a valid value')

    def _on_set_parameters(self, parameters: list) -> SetParametersResult:
        for parameter in parameters:
            reason = validate_parameter(parameter.name, parameter.value, self._configured)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        if any(parameter.name in _TRACKER_PARAMETERS for parameter in parameters):
            self._tracker_changed.set()
        predictor = self._predictor
        if predictor is not None:
            try:
                predictor.set_thresholds(**_model_thresholds({p.name: p.value for p in parameters}))
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        for parameter in parameters:
            self.startup_parameter_errors.pop(parameter.name, None)   # a valid value replaced the bad one
        return SetParametersResult(successful=True)

    def _value(self, name: str) -> Any:
        return self.get_parameter(name).value

    # ----- lifecycle --------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.startup_parameter_errors:
            self.configure_error = self._startup_parameter_report()
            self.get_logger().error(self.configure_error)
            return TransitionCallbackReturn.FAILURE
        model_path = Path(self._value('model_path'))
        try:
            model_path = resolve_model_path(str(model_path))
            self._predictor = self._load_predictor(model_path)
        except Exception as error:  # noqa: BLE001 - any load failure is reported, not raised
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            self.configure_error = f'cannot load model {model_path}: {type(error).__name__}: {reason}'
            self.get_logger().error(self.configure_error)
            self._predictor = None
            return TransitionCallbackReturn.FAILURE
        self._model_name = model_path.name
        self._create_topics()
        self._stop_worker.clear()
        self._worker = threading.Thread(target=self._work, name='ppe_inference', daemon=True)
        self._worker.start()
        self._configured = True
        self._lifecycle_state = 'inactive'
        self.get_logger().info(f'configured: model {model_path} on backend {self._backend_name}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stats.reset()  # the diagnostics describe the current activation
        self._active.set()
        self._lifecycle_state = 'active'
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active.clear()
        self._slot.clear()
        self._lifecycle_state = 'inactive'
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the inference worker and destroy the node's topics, then the node.

        A process that embeds the node may destroy it while it is active, without the shutdown
        transition; the worker would then keep running and publish on destroyed publishers.
        """
        self._teardown()
        super().destroy_node()

    def _teardown(self) -> None:
        """Stop the worker, destroy topics and timer, free the model (safe to call twice)."""
        self._active.clear()
        self._stop_worker.set()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        self._slot.clear()
        for subscription in self._subscriptions_made:
            self.destroy_subscription(subscription)
        self._subscriptions_made = []
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        if self._diagnostics_publisher is not None:
            self.destroy_publisher(self._diagnostics_publisher)
            self._diagnostics_publisher = None
        self._predictor = None
        self._camera_info = None
        self._tracker = None
        self._drawn_track_ids = set()
        self._configured = False
        self._lifecycle_state = 'unconfigured'

    def _load_predictor(self, model_path: Path):
        """Load the model with the configured backend and thresholds; raises on a missing or bad file."""
        if not model_path.is_file():
            raise FileNotFoundError('no such file')
        from occluded_ppe_ros.inference.predictor import Predictor

        height, width = self._value('input_height'), self._value('input_width')
        thresholds = _model_thresholds({name: self._value(name) for name in _MODEL_THRESHOLDS})
        predictor = Predictor.from_checkpoint(model_path, backend=self._value('backend'),
                                              device=self._value('device'),
                                              input_size=(height, width) if height and width else None,
                                              **thresholds)
        self._backend_name = str(predictor.backend.name)
        return predictor

    def _create_topics(self) -> None:
        reliability = (ReliabilityPolicy.BEST_EFFORT if self._value('qos_reliability') == 'best_effort'
                       else ReliabilityPolicy.RELIABLE)
        input_qos = QoSProfile(depth=self._value('qos_depth'), reliability=reliability,
                               history=HistoryPolicy.KEEP_LAST)
        image_topic = self._value('image_topic')
        if self._value('compressed_input'):
            self._subscriptions_made.append(self.create_subscription(
                CompressedImage, f'{image_topic}/compressed', self._on_compressed, input_qos))
        else:
            self._subscriptions_made.append(self.create_subscription(Image, image_topic, self._on_image,
                                                                     input_qos))
        self._subscriptions_made.append(self.create_subscription(
            CameraInfo, self._value('camera_info_topic'), self._on_camera_info, input_qos))
        self._outputs = {
            'detections': self.create_lifecycle_publisher(Detection2DArray, 'detections', _RESULT_QOS),
            'poses': self.create_lifecycle_publisher(PedestrianPoseArray, 'poses', _RESULT_QOS),
            'markers': self.create_lifecycle_publisher(MarkerArray, 'markers', _RESULT_QOS),
            'masks': self.create_lifecycle_publisher(Image, 'masks', _IMAGE_OUT_QOS),
            'overlay': self.create_lifecycle_publisher(Image, 'overlay', _IMAGE_OUT_QOS),
        }
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diagnostics_timer = self.create_timer(self._value('diagnostics_period_s'),
                                                    self._publish_diagnostics)

    # ----- input callbacks (executor thread): validate and hand over, never block -------------------
    def _on_image(self, msg: Image) -> None:
        self._accept(msg, conversions.check_image)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._accept(msg, conversions.check_compressed)

    def _accept(self, msg: Any, check) -> None:
        if not self._active.is_set():
            return
        self.stats.count('received')
        try:
            check(msg, self._value('max_image_pixels'))
        except conversions.ImageRejected as error:
            self._reject(str(error))
            return
        if self._slot.put((msg, time.monotonic())) is not None:
            self.stats.count('superseded')

    def _reject(self, reason: str) -> None:
        self.stats.count('rejected', reason)
        self.get_logger().warning(f'dropped an input frame: {reason}', throttle_duration_sec=_WARN_THROTTLE_S)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    # ----- worker thread ----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop_worker.is_set():
            pending = self._slot.take(timeout=0.1)
            if pending is None or not self._active.is_set():
                continue
            try:
                self._process(pending[0])
            except Exception as error:  # noqa: BLE001 - one bad frame must not stop the node
                self.get_logger().error(f'frame failed: {type(error).__name__}: {error}',
                                        throttle_duration_sec=_WARN_THROTTLE_S)

    def _age_ms(self, header: Header) -> float:
        """Age of a frame: now - header stamp on the node's clock, ms (0 for an unstamped frame)."""
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        if stamp_ns == 0:
            return 0.0
        return (self.get_clock().now().nanoseconds - stamp_ns) / 1e6

    def _process(self, msg: Any) -> None:
        """Decode, infer and publish one frame (worker thread)."""
        max_age_ms = self._value('max_frame_age_ms')
        if max_age_ms > 0 and self._age_ms(msg.header) > max_age_ms:
            self.stats.count('too_old')
            return
        stage_ms: dict[str, float] = {}
        start = time.perf_counter()
        try:
            if isinstance(msg, CompressedImage):
                rgb = conversions.compressed_to_rgb(msg, self._value('max_image_pixels'))
            else:
                rgb = conversions.image_to_rgb(msg, self._value('max_image_pixels'))
        except conversions.ImageRejected as error:
            self._reject(str(error))
            return
        stage_ms['decode'] = (time.perf_counter() - start) * 1e3
        predictor = self._predictor
        if predictor is None:
            return
        pedestrians, model_ms = self._predict(predictor, rgb)
        stage_ms.update(model_ms)
        if not self._active.is_set():
            return  # deactivated while the model ran: the lifecycle publishers are off
        start = time.perf_counter()
        pedestrians = self._track(msg.header, pedestrians, rgb)
        stage_ms['track'] = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        self._publish_results(msg.header, rgb, pedestrians)
        stage_ms['publish'] = (time.perf_counter() - start) * 1e3
        self.stats.record_frame(stage_ms, self._age_ms(msg.header))

    @staticmethod
    def _predict(predictor, rgb) -> tuple[list, dict[str, float]]:
        """Run the model; returns the pedestrians and its stage times in ms (preprocess, inference, ...)."""
        pedestrians = predictor.predict(rgb)
        timings = predictor.last_timings
        return pedestrians, {stage: float(timings.get(f'{stage}_ms', 0.0))
                             for stage in ('preprocess', 'inference', 'postprocess')}

    def _track(self, header: Header, pedestrians: list, rgb: np.ndarray) -> list:
        """Track ids for the frame's pedestrians (tracking_enabled), else the pedestrians as they are.

        Time is the header stamp (seconds); an unstamped frame uses the monotonic clock instead. The frame
        (`rgb`, uint8 [H, W, 3]) gives the tracker its size and, with tracking_appearance_weight > 0, the
        people's clothing colours. Switching tracking off drops the tracks, so switching it on again
        starts afresh.
        """
        if not self._value('tracking_enabled'):
            self._tracker = None
            return pedestrians
        if self._tracker is None or self._tracker_changed.is_set():
            self._tracker_changed.clear()
            config = TrackerConfig.from_parameters({name: self._value(name) for name in _TRACKER_PARAMETERS})
            if self._tracker is None:
                self._tracker = PedestrianTracker(config)
            else:
                self._tracker.config = config
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        stamp_s = stamp_ns * 1e-9 if stamp_ns else time.monotonic()
        return self._tracker.update(pedestrians, stamp_s, rgb.shape[:2], image=rgb).pedestrians

    def _markers(self, header: Header, pedestrians: list, width: int, height: int,
                 keypoint_threshold: float) -> MarkerArray:
        """Per-track markers for tracked pedestrians (DELETE for tracks no longer drawn), else per frame."""
        intrinsics = self._intrinsics(width, height)
        depth = self._value('marker_depth_m')
        if self._tracker is None:
            self._markers_per_track = False
            self._drawn_track_ids = set()
            return skeleton_markers(pedestrians, header, intrinsics, depth, keypoint_threshold)
        drawn = {int(pedestrian.track_id) for pedestrian in pedestrians}
        message = track_skeleton_markers(pedestrians, header, intrinsics, depth, keypoint_threshold,
                                         sorted(self._drawn_track_ids - drawn),
                                         clear_first=not self._markers_per_track)
        self._markers_per_track = True
        self._drawn_track_ids = drawn
        return message

    def _publish_results(self, header: Header, rgb, pedestrians: list) -> None:
        """Build and publish the frame's outputs: each enabled one that has a subscriber, never an unread one.

        Markers skipped while nobody subscribes leave the per-track marker state as it was: the next
        published array DELETEs what the last published one drew and is no longer drawn.
        """
        height, width = rgb.shape[:2]
        keypoint_threshold = self._value('keypoint_threshold')
        publishers = {name: publisher for name, publisher in self._outputs.items()
                      if self._value(f'publish_{name}') and publisher.get_subscription_count() > 0}
        if 'detections' in publishers or 'poses' in publishers:
            ids = (conversions.track_ids(pedestrians) if self._tracker is not None
                   else conversions.detection_ids(header, len(pedestrians)))
            if 'detections' in publishers:
                publishers['detections'].publish(conversions.to_detection_array(pedestrians, header, ids))
            if 'poses' in publishers:
                publishers['poses'].publish(conversions.to_pose_array(pedestrians, header, ids,
                                                                      (height, width), keypoint_threshold))
        if 'markers' in publishers:
            publishers['markers'].publish(self._markers(header, pedestrians, width, height,
                                                        keypoint_threshold))
        if 'masks' in publishers:
            publishers['masks'].publish(conversions.to_label_image(pedestrians, header, height, width))
        if 'overlay' in publishers:
            publishers['overlay'].publish(self._overlay(header, rgb, pedestrians, keypoint_threshold))

    def _overlay(self, header: Header, rgb: np.ndarray, pedestrians: list,
                 keypoint_threshold: float) -> Image:
        """The overlay image: the frame, its long side capped at overlay_max_side, with the results drawn.

        A large frame is shrunk first (draw.shrink_image) and drawn on at the small size: a 2048x1024 frame's
        overlay at the default cap of 1024 is a quarter of the pixels to draw, copy, serialise, send and
        deserialise. The message header is the input's; width and height are the overlay's own.
        """
        height, width = rgb.shape[:2]
        out_height, out_width = overlay_size(height, width, self._value('overlay_max_side'))
        rgb = shrink_image(rgb, out_height, out_width)
        # Render straight into the message's buffer: one copy of the (possibly shrunk) frame in all.
        message = conversions.numpy_to_image(rgb, header, 'rgb8')
        canvas = np.frombuffer(message.data, dtype=np.uint8).reshape(out_height, out_width, 3)
        render_overlay(canvas, pedestrians, keypoint_threshold, source_size=(height, width))
        return message

    def _intrinsics(self, width: int, height: int) -> Intrinsics:
        info = self._camera_info
        if info is not None:
            try:
                return Intrinsics.from_camera_info(info.k, info.width, info.height, width, height)
            except ValueError as error:
                self.get_logger().warning(f'ignoring camera_info: {error}', throttle_duration_sec=10.0)
        return Intrinsics.virtual(width, height)

    def _publish_diagnostics(self) -> None:
        publisher = self._diagnostics_publisher
        if publisher is None:
            return
        header = Header(stamp=self.get_clock().now().to_msg())
        publisher.publish(diagnostic_array(self.stats, header, self.get_name(), self._backend_name,
                                           self._model_name, self._lifecycle_state))

    # ----- start-up ---------------------------------------------------------------------------------
    def autostart(self) -> bool:
        """Configure and activate when the `autostart` parameter is true; False if configure failed."""
        if not self._value('autostart'):
            return True
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS


def usage() -> str:
    """`ppe_node --help`: how to start the node and every parameter with its default and meaning."""
    lines = ['usage: ppe_node [--ros-args -p NAME:=VALUE ... | --params-file FILE]',
             '       ros2 launch occluded_ppe_ros ppe.launch.py (config/ppe.yaml)', '',
             'ROS 2 node: camera images in; pedestrian detections, masks, poses with track ids and RViz '
             'markers out.',
             'Parameters (default; * = takes effect at run time):']
    for spec in PARAMETERS:
        lines.append(f"  {spec.name} = {spec.default!r}{' *' if spec.runtime else ''}: {spec.description}")
    return '\n'.join(lines)


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C or shutdown; returns the exit status (1 if autostart's configure failed).

    `-h` / `--help` (outside --ros-args) prints `usage()` and returns 0 before rclpy starts, so asking
    for help never joins a DDS domain.
    """
    try:
        own_args = rclpy.utilities.remove_ros_args(sys.argv if args is None else args)[1:]
    except Exception as error:  # rclpy's UnknownROSArgsError (a pybind11 class, not exported by name)
        print(f'ppe_node: error: bad --ros-args: {error}; see ppe_node --help', file=sys.stderr)
        return 2
    if '-h' in own_args or '--help' in own_args:
        print(usage())
        return 0
    rclpy.init(args=args)
    node = None
    status = 0
    try:
        node = PPENode()
        if not node.autostart():
            status = 1
        else:
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return status


if __name__ == '__main__':
    sys.exit(main())
