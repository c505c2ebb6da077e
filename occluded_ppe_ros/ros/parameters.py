"""The node's parameters, declared from one table; validation is a plain function (no rclpy).

`config/ppe.yaml` lists every key of `PARAMETERS` with a comment; a test checks that both agree.

Two kinds of parameters:
- runtime (`runtime=True`): thresholds, publish flags, marker depth, frame age; a change applies to the
  next frame.
- configure-time: model, backend, topics, QoS; read by the configure transition. They may be changed
  while the node is unconfigured; in the inactive or active state a change is rejected with a reason
  (deactivate and clean up first, then configure again).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MODEL_PATH = 'models/ppe_default.pt'


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: name, default (its type is the parameter's type), meaning, and valid values.

    Attributes:
        name: the ROS parameter name.
        default: the default value; bool, int, float or str.
        description: what it means, with units.
        runtime: True if a change takes effect at run time, False if only on configure.
        minimum: smallest valid value (numbers), inclusive.
        maximum: largest valid value (numbers), inclusive.
        choices: the valid values (strings).
        multiple_of: a positive int the value must be a multiple of (0 is also accepted where allowed).
        smallest_nonzero: where 0 means "off", the smallest valid value other than 0 (numbers).
    """

    name: str
    default: bool | int | float | str
    description: str
    runtime: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    multiple_of: int | None = None
    smallest_nonzero: float | None = None


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec('autostart', True, 'configure and activate at start-up (no lifecycle manager needed)'),
    ParameterSpec('model_path', DEFAULT_MODEL_PATH,
                  'checkpoint (.pt) or ONNX export (.onnx; onnxruntime and tensorrt backends); a relative '
                  'path is resolved against the package share directory (share/occluded_ppe_ros/)'),
    ParameterSpec('backend', 'auto', "inference backend; 'auto' = TensorRT where available, else "
                  'ONNX Runtime, else torch', choices=('auto', 'torch', 'onnxruntime', 'tensorrt')),
    ParameterSpec('device', 'cpu', "'cpu' or 'cuda' (torch and ONNX Runtime backends)",
                  choices=('cpu', 'cuda')),
    ParameterSpec('input_height', 0, "network input height, pixels, multiple of 32; 0 = the model's",
                  minimum=0, maximum=4096, multiple_of=32),
    ParameterSpec('input_width', 0, "network input width, pixels, multiple of 32; 0 = the model's",
                  minimum=0, maximum=4096, multiple_of=32),
    # 0.3 / 0.1: the shipped default model's F1-best operating points on the training split of the real
    # photos (its scores are calibrated; benchmarks/operating_point.py, models/README.md).
    ParameterSpec('score_threshold', 0.3, 'minimum detection score in [0, 1]', runtime=True,
                  minimum=0.0, maximum=1.0),
    ParameterSpec('nms_threshold', 1.0, "extra class-wise NMS after the model's own: IoU above which the "
                  "lower-scoring of two boxes is suppressed, (0, 1]; 1.0 = the model's NMS only",
                  runtime=True, minimum=1e-6, maximum=1.0),
    ParameterSpec('keypoint_threshold', 0.1, 'joints scoring below it are NOT_PRESENT, [0, 1]', runtime=True,
                  minimum=0.0, maximum=1.0),
    ParameterSpec('occlusion_threshold', 0.5, 'a joint whose occlusion probability exceeds it is OCCLUDED, '
                  '[0, 1]', runtime=True, minimum=0.0, maximum=1.0),
    ParameterSpec('image_topic', 'image',
                  "input image topic; with compressed_input, '<image_topic>/compressed'"),
    ParameterSpec('compressed_input', False, 'subscribe to sensor_msgs/CompressedImage (jpeg/png) instead of '
                  'sensor_msgs/Image'),
    ParameterSpec('camera_info_topic', 'camera_info',
                  'sensor_msgs/CameraInfo topic for the skeleton markers'),
    ParameterSpec('qos_reliability', 'best_effort', "input QoS reliability: 'best_effort' (REP-2003 "
                  "sensor data) or 'reliable'", choices=('best_effort', 'reliable')),
    ParameterSpec('qos_depth', 1, 'input QoS history depth (keep last N)', minimum=1, maximum=100),
    ParameterSpec('publish_detections', True, 'publish vision_msgs/Detection2DArray on detections (only '
                  'while subscribed)', runtime=True),
    ParameterSpec('publish_poses', True, 'publish occluded_ppe_msgs/PedestrianPoseArray on poses (only '
                  'while subscribed)', runtime=True),
    ParameterSpec('publish_markers', True, 'publish visualization_msgs/MarkerArray skeletons on markers '
                  '(only while subscribed)', runtime=True),
    ParameterSpec('publish_masks', True, 'publish the instance-label image on masks (only while subscribed)',
                  runtime=True),
    ParameterSpec('publish_overlay', True, 'publish the rendered overlay image on overlay (only while '
                  'subscribed)', runtime=True),
    ParameterSpec('overlay_max_side', 1024, 'longest side of the overlay image, pixels: a larger input is '
                  'shrunk to it (aspect ratio kept) before drawing; 0 = the input size (full resolution)',
                  runtime=True, minimum=0, maximum=16384,
                  # below 64 px the boxes, joints and labels cover the picture
                  smallest_nonzero=64),
    ParameterSpec('marker_depth_m', 5.0, 'distance of the marker plane from the camera, metres', runtime=True,
                  minimum=0.01, maximum=1000.0),
    ParameterSpec('max_frame_age_ms', 500.0, 'frames older than this (now - header stamp) when the model '
                  'is free are dropped and counted; 0 disables the check', runtime=True, minimum=0.0,
                  maximum=60000.0),
    ParameterSpec('max_image_pixels', 3840 * 2160, 'frames with more pixels are rejected', runtime=True,
                  minimum=1, maximum=2 ** 28),
    # Tracking (occluded_ppe_ros/tracking): ids kept across frames and through full occlusions.
    ParameterSpec('tracking_enabled', True, 'give each pedestrian a track id kept across frames '
                  '(Detection2D.id, PedestrianPose.id); false = ids unique per frame only',
                  runtime=True),
    ParameterSpec('tracking_max_coast_s', 3.0, 'a person hidden (not detected) for longer than this loses '
                  'the track id; shorter occlusions keep it, seconds of header stamps', runtime=True,
                  minimum=0.0, maximum=60.0),
    ParameterSpec('tracking_min_similarity', 0.15, 'a track and a detection less similar than this (box IoU '
                  'mixed with keypoint OKS, [0, 1]) are never matched', runtime=True, minimum=0.0,
                  maximum=1.0),
    ParameterSpec('tracking_iou_weight', 0.5, 'weight of the box IoU in the similarity (the rest is keypoint '
                  'OKS), [0, 1]', runtime=True, minimum=0.0, maximum=1.0),
    ParameterSpec('tracking_keypoint_tolerance', 2.0, "factor on COCO's per-joint OKS tolerance in the "
                  'keypoint similarity; larger forgives more motion between frames', runtime=True,
                  minimum=0.1, maximum=100.0),
    ParameterSpec('tracking_carry_occluded_joints', True, 'publish a hidden joint where the track last saw '
                  'it (relative to the box) instead of the network guess', runtime=True),
    ParameterSpec('tracking_appearance_weight', 0.3, "weight of the clothing colours (mean colour of the "
                  "upper body and legs inside each person's visible mask) in the track-detection "
                  'assignment, [0, 1]; 0 = box and keypoint geometry only', runtime=True, minimum=0.0,
                  maximum=1.0),
    ParameterSpec('tracking_appearance_min_similarity', 0.05,
                  'a track and a detection whose clothing colours are less similar than this are never '
                  'matched, [0, 1]; 0 = no colour gate (used only with tracking_appearance_weight > 0)',
                  runtime=True, minimum=0.0, maximum=1.0),
    ParameterSpec('diagnostics_period_s', 1.0, 'period of /diagnostics messages, seconds', minimum=0.05,
                  maximum=60.0),
)
PARAMETERS_BY_NAME: dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}


def allowed_values(spec: ParameterSpec) -> str:
    """A parameter's valid values in words: 'a float in [0.0, 1.0]', 'one of cpu, cuda', 'true or false'."""
    if spec.choices is not None:
        return f'one of {", ".join(spec.choices)}'
    if isinstance(spec.default, bool):
        return 'true or false'
    if isinstance(spec.default, (int, float)):
        kind = 'an integer' if isinstance(spec.default, int) else 'a float'
        low = '-inf' if spec.minimum is None else type(spec.default)(spec.minimum)
        high = 'inf' if spec.maximum is None else type(spec.default)(spec.maximum)
        multiple = f', a multiple of {spec.multiple_of}' if spec.multiple_of else ''
        nonzero = (f', 0 or at least {type(spec.default)(spec.smallest_nonzero)}'
                   if spec.smallest_nonzero is not None else '')
        return f'{kind} in [{low}, {high}]{multiple}{nonzero}'
    return 'a string'


def validate_parameter(name: str, value: Any, configured: bool) -> str | None:
    """Check one new value.

    Args:
        name: parameter name.
        value: the new value (its ROS type already matches the declared type).
        configured: whether the node is configured (inactive or active): configure-time parameters are
            then frozen.

    Returns:
        None if the value is accepted, else the reason it is rejected.
    """
    spec = PARAMETERS_BY_NAME.get(name)
    if spec is None:
        return None  # not ours (e.g. use_sim_time)
    if not spec.runtime and configured:
        return (f'{name} is read on configure; deactivate and clean up the node, set it, then configure '
                f'again')
    if spec.choices is not None and value not in spec.choices:
        return f'{name}={value!r} is not one of {", ".join(spec.choices)}'
    if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool):
        if spec.minimum is not None and value < spec.minimum:
            return f'{name}={value} is below the minimum {spec.minimum} (allowed: {allowed_values(spec)})'
        if spec.maximum is not None and value > spec.maximum:
            return f'{name}={value} is above the maximum {spec.maximum} (allowed: {allowed_values(spec)})'
        if spec.multiple_of and value % spec.multiple_of:
            return f'{name}={value} is not a multiple of {spec.multiple_of} (allowed: {allowed_values(spec)})'
        if spec.smallest_nonzero is not None and 0 < value < spec.smallest_nonzero:
            return (f'{name}={value} is below {spec.smallest_nonzero}, the smallest value other than 0 '
                    f'(allowed: {allowed_values(spec)})')
    if name in ('model_path', 'image_topic', 'camera_info_topic') and not str(value).strip():
        return f'{name} must not be empty'
    return None


def load_parameter_file(path: str | Path, node_name: str = 'ppe_node') -> dict[str, Any]:
    """The node's values from a ROS 2 parameter file, on top of the table's defaults (for tools and tests).

    Args:
        path: a YAML file in `<node key>: ros__parameters:` layout; the node key may be `ppe_node`,
            `/ppe_node`, `/**/ppe_node` or `/**` (entries merge in that order of precedence, lowest first).
        node_name: the node whose parameters are read.

    Returns:
        {name: value} for every parameter of PARAMETERS.

    Raises:
        ValueError: the file has no entry for the node, or a key not in PARAMETERS.
    """
    with Path(path).open() as stream:
        document = yaml.safe_load(stream) or {}
    values: dict[str, Any] = {spec.name: spec.default for spec in PARAMETERS}
    found = False
    for key in ('/**', node_name, f'/{node_name}', f'/**/{node_name}'):
        entry = document.get(key)
        if isinstance(entry, dict) and isinstance(entry.get('ros__parameters'), dict):
            unknown = sorted(set(entry['ros__parameters']) - set(PARAMETERS_BY_NAME))
            if unknown:
                raise ValueError(f'unknown parameters {unknown} under {key!r} in {path}')
            values.update(entry['ros__parameters'])
            found = True
    if not found:
        raise ValueError(f'{path} has no "{node_name}: ros__parameters:" entry (keys: {sorted(document)})')
    return values
