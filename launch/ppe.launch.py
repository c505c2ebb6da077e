"""Start ppe_node (and optionally RViz) with a parameter file and topic remappings.

    ros2 launch occluded_ppe_ros ppe.launch.py image_topic:=/camera/image_raw \
        camera_info_topic:=/camera/camera_info namespace:=front use_rviz:=true \
        rviz_fixed_frame:=front_camera_optical_frame

The node configures and activates itself (its `autostart` parameter), so no lifecycle manager is
needed; it is started as a launch_ros LifecycleNode so that lifecycle events can still drive it.
This file only wires things together: all behaviour lives in the node and its parameters.
"""
from __future__ import annotations

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node

PACKAGE = 'occluded_ppe_ros'
NODE_NAME = 'ppe_node'
# ppe.rviz's own Fixed Frame; the launch argument rviz_fixed_frame replaces it (rviz2 -f).
DEFAULT_RVIZ_FIXED_FRAME = 'camera_optical_frame'


def generate_launch_description() -> LaunchDescription:
    """Launch arguments params_file, image_topic, camera_info_topic, namespace, use_rviz, rviz_fixed_frame."""
    share = Path(get_package_share_directory(PACKAGE))
    params_file = LaunchConfiguration('params_file')
    image_topic = LaunchConfiguration('image_topic')
    camera_info_topic = LaunchConfiguration('camera_info_topic')
    namespace = LaunchConfiguration('namespace')
    use_rviz = LaunchConfiguration('use_rviz')
    rviz_fixed_frame = LaunchConfiguration('rviz_fixed_frame')

    arguments = [
        DeclareLaunchArgument('params_file', default_value=str(share / 'config' / 'ppe.yaml'),
                              description='ROS 2 parameter file of ppe_node'),
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='input sensor_msgs/Image topic (its /compressed sibling '
                                          'is remapped along with it)'),
        DeclareLaunchArgument('camera_info_topic', default_value='camera_info',
                              description='sensor_msgs/CameraInfo topic of the same camera'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and its topics'),
        DeclareLaunchArgument('use_rviz', default_value='false', description='also start rviz2 with ppe.rviz',
                              choices=['true', 'false']),
        DeclareLaunchArgument('rviz_fixed_frame', default_value=DEFAULT_RVIZ_FIXED_FRAME,
                              description="RViz's fixed frame: the frame_id of the camera's images (the "
                                          'markers carry it); without a TF to another fixed frame RViz '
                                          'drops them'),
    ]
    remappings = [
        ('image', image_topic),
        ('image/compressed', [image_topic, '/compressed']),
        ('camera_info', camera_info_topic),
    ]
    node = LifecycleNode(
        package=PACKAGE,
        executable=NODE_NAME,
        name=NODE_NAME,
        namespace=namespace,
        parameters=[params_file],
        remappings=remappings,
        output='screen',
    )
    # Same namespace and remappings: ppe.rviz names its topics relative (image, markers, overlay).
    # rviz2 applies -f after loading -d, so the argument overrides the file's Fixed Frame.
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='ppe_rviz',
        namespace=namespace,
        arguments=['-d', PathJoinSubstitution([str(share), 'config', 'ppe.rviz']), '-f', rviz_fixed_frame],
        remappings=remappings,
        condition=IfCondition(use_rviz),
        output='screen',
    )
    return LaunchDescription([*arguments, node, rviz])
