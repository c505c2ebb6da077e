"""The foundation over real DDS: our interface messages between real nodes, the installed layout."""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros


def _pose_array_message():
    from occluded_ppe_msgs.msg import Keypoint2D, PedestrianPose, PedestrianPoseArray

    message = PedestrianPoseArray()
    message.header.frame_id = 'camera_optical'
    message.header.stamp.sec = 17
    message.header.stamp.nanosec = 250
    pose = PedestrianPose()
    pose.id = '17.000000250/0'
    pose.class_id = 'pedestrian'
    pose.score = 0.875
    # Floats, not ints: an int assigned to a float32 field is accepted but serialised as 0.0.
    pose.full_box.x_min, pose.full_box.y_min = 10.0, 20.0
    pose.full_box.x_max, pose.full_box.y_max = 60.0, 150.0
    pose.visible_box.x_min, pose.visible_box.y_min = 10.0, 20.0
    pose.visible_box.x_max, pose.visible_box.y_max = 60.0, 100.0
    pose.visibility_ratio = 0.5
    for index, keypoint in enumerate(pose.keypoints):
        keypoint.x, keypoint.y, keypoint.score = 12.5 + index, 30.25 + 2 * index, 0.5
        keypoint.state = Keypoint2D.STATE_OCCLUDED if index >= 7 else Keypoint2D.STATE_VISIBLE
    pose.mask.x_offset, pose.mask.y_offset, pose.mask.width, pose.mask.height = 10, 20, 50, 80
    pose.mask.counts = [5, 3000, 995]
    message.pedestrians = [pose]
    return message


def test_pose_message_between_two_real_nodes(spinning_executor):
    from occluded_ppe_msgs.msg import PedestrianPoseArray
    from rclpy.node import Node

    received = []
    context = spinning_executor.executor.context
    publisher_node = spinning_executor.add(Node('pose_publisher', context=context))
    subscriber_node = spinning_executor.add(Node('pose_subscriber', context=context))
    subscriber_node.create_subscription(PedestrianPoseArray, 'poses', received.append, 10)
    publisher = publisher_node.create_publisher(PedestrianPoseArray, 'poses', 10)
    sent = _pose_array_message()

    def delivered() -> bool:
        publisher.publish(sent)
        return bool(received)

    assert spinning_executor.wait_for(delivered, timeout=10.0, period=0.05)
    got = received[0]
    assert got.header == sent.header
    assert len(got.pedestrians) == 1
    pose = got.pedestrians[0]
    assert pose.id == '17.000000250/0' and pose.class_id == 'pedestrian'
    assert pose.full_box.y_max == pytest.approx(150.0)
    assert [k.state for k in pose.keypoints] == [1] * 7 + [2] * 6
    assert pose.keypoints[12].x == pytest.approx(24.5)
    assert list(pose.mask.counts) == [5, 3000, 995]


def test_pose_message_from_a_node_in_another_process(spinning_executor, child_process):
    """A child process (its own DDS participant) publishes; this process receives over loopback."""
    from occluded_ppe_msgs.msg import PedestrianPoseArray
    from rclpy.node import Node

    script = textwrap.dedent('''
        import rclpy, time
        from rclpy.executors import ExternalShutdownException
        from occluded_ppe_msgs.msg import PedestrianPoseArray, PedestrianPose
        rclpy.init()
        node = rclpy.create_node('child_pose_publisher')
        publisher = node.create_publisher(PedestrianPoseArray, 'child_poses', 10)
        message = PedestrianPoseArray()
        message.header.frame_id = 'from_child'
        message.pedestrians = [PedestrianPose(id='c0', class_id='rider')]
        try:
            while rclpy.ok():
                publisher.publish(message)
                rclpy.spin_once(node, timeout_sec=0.05)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
    ''')
    received = []
    node = spinning_executor.add(Node('child_listener', context=spinning_executor.executor.context))
    node.create_subscription(PedestrianPoseArray, 'child_poses', received.append, 10)
    child = child_process([sys.executable, '-c', script])
    assert spinning_executor.wait_for(lambda: bool(received), timeout=20.0), child.stop()
    assert received[0].header.frame_id == 'from_child'
    assert received[0].pedestrians[0].class_id == 'rider'
    assert child.stop() in (0, -2, 130), child.output


def test_installed_layout_in_the_venv_prefix():
    """What `ros2 launch occluded_ppe_ros ppe.launch.py` needs under AMENT_PREFIX_PATH=<venv>."""
    prefix = Path(sys.prefix)
    marker = prefix / 'share/ament_index/resource_index/packages/occluded_ppe_ros'
    if not marker.exists() and not (prefix / 'share').is_dir():
        pytest.skip(f'{sys.prefix} is not a venv made by scripts/setup.sh')
    assert marker.is_file(), f'ament index marker missing: {marker}'
    share = prefix / 'share/occluded_ppe_ros'
    for sub in ('package.xml', 'launch/ppe.launch.py', 'config/ppe.yaml'):
        assert (share / sub).is_file(), f'missing {share / sub}'
    assert (share / 'models').is_dir()
    executable = prefix / 'lib/occluded_ppe_ros/ppe_node'
    assert executable.is_file() and os.access(executable, os.X_OK), executable
    from ament_index_python.packages import get_package_share_directory
    os.environ.setdefault('AMENT_PREFIX_PATH', str(prefix))
    assert Path(get_package_share_directory('occluded_ppe_ros')) == share


def test_interface_packages_import():
    import occluded_ppe_msgs.msg as ppe_msgs
    import vision_msgs.msg as vision

    assert ppe_msgs.PedestrianPose.NUM_KEYPOINTS == 13
    assert len(ppe_msgs.PedestrianPose().keypoints) == 13
    assert ppe_msgs.Keypoint2D.STATE_NOT_PRESENT == 0
    detection = vision.Detection2D()
    assert hasattr(detection, 'id') and hasattr(detection.bbox.center.position, 'x')
