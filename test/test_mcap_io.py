"""MCAP reading and writing (offline/mcap_io.py) against an independent decoder (mcap_ros2).

mcap_ros2 parses the `ros2msg` schema text we write and decodes the CDR payloads with its own pure-Python
CDR reader, so a round trip through it checks both the concatenated schema and the serialisation.
"""
from __future__ import annotations

import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from occluded_ppe_ros.offline import mcap_io


def _decoded(path):
    """[(topic, schema name, log time, decoded message)] read by mcap_ros2, in file order."""
    with open(path, 'rb') as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        return [(channel.topic, schema.name, message.log_time, decoded)
                for schema, channel, message, decoded in reader.iter_decoded_messages()]


def _section_names(text: str) -> list[str]:
    return [line[len('MSG: '):] for line in text.splitlines() if line.startswith('MSG: ')]


def test_schema_lists_every_dependency_once_after_the_root_definition():
    text = mcap_io.message_definition_text('vision_msgs/msg/Detection2DArray')
    root = mcap_io.find_msg_file('vision_msgs/msg/Detection2DArray').read_text()
    assert text.startswith(root.rstrip('\n'))
    # By hand from the .msg files: Detection2DArray -> Header -> Time; Detection2D ->
    # ObjectHypothesisWithPose -> ObjectHypothesis, PoseWithCovariance -> Pose -> Point, Quaternion;
    # BoundingBox2D -> Pose2D -> Point2D.
    expected = {'std_msgs/Header', 'builtin_interfaces/Time', 'vision_msgs/Detection2D',
                'vision_msgs/ObjectHypothesisWithPose', 'vision_msgs/ObjectHypothesis',
                'geometry_msgs/PoseWithCovariance', 'geometry_msgs/Pose', 'geometry_msgs/Point',
                'geometry_msgs/Quaternion', 'vision_msgs/BoundingBox2D', 'vision_msgs/Pose2D',
                'vision_msgs/Point2D'}
    names = _section_names(text)
    assert sorted(names) == sorted(expected)
    assert text.count('=' * 80 + '\nMSG: ') == len(expected)


def test_unknown_type_is_named_in_the_error():
    with pytest.raises(FileNotFoundError, match='no_such_msgs/msg/Nothing'):
        mcap_io.message_definition_text('no_such_msgs/msg/Nothing')


def _messages():
    from occluded_ppe_msgs.msg import Keypoint2D, PedestrianPose, PedestrianPoseArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
    from visualization_msgs.msg import Marker, MarkerArray

    header = Header(frame_id='cam_optical')
    header.stamp.sec, header.stamp.nanosec = 12, 345
    detections = Detection2DArray(header=header)
    detection = Detection2D(header=header, id='12.000000345/0')
    detection.bbox.center.position.x, detection.bbox.center.position.y = 40.5, 60.25
    detection.bbox.size_x, detection.bbox.size_y = 21.0, 80.0
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = 'pedestrian', 0.75
    hypothesis.pose.covariance[7] = 2.5
    detection.results = [hypothesis]
    detections.detections = [detection]

    poses = PedestrianPoseArray(header=header)
    pose = PedestrianPose(id='12.000000345/0', class_id='pedestrian', score=0.75, visibility_ratio=0.5)
    pose.full_box.x_min, pose.full_box.x_max = 30.0, 51.0
    joint = pose.keypoints[11]
    joint.x, joint.y, joint.state = 33.5, 95.0, Keypoint2D.STATE_OCCLUDED
    pose.mask.x_offset, pose.mask.width, pose.mask.height = 30, 4, 2
    pose.mask.counts = [1, 5, 2]
    poses.pedestrians = [pose]

    markers = MarkerArray()
    marker = Marker(header=header, ns='ppe_joints', id=3, type=Marker.SPHERE_LIST)
    marker.pose.orientation.w = 1.0
    marker.points = [marker.pose.position]
    markers.markers = [Marker(header=header, action=Marker.DELETEALL), marker]

    image = Image(header=header, height=2, width=3, encoding='rgb8', step=9)
    image.data = bytes(range(18))
    return {'/ppe/detections': detections, '/ppe/poses': poses, '/ppe/markers': markers,
            '/ppe/overlay': image}


def test_written_messages_decode_with_mcap_ros2_and_rclpy(tmp_path):
    path = tmp_path / 'out.mcap'
    sent = _messages()
    with mcap_io.Ros2McapWriter(path) as writer:
        for offset, (topic, message) in enumerate(sent.items()):
            writer.write(topic, message, log_time_ns=1_000 + offset)
    assert mcap_io.channel_types(path) == {
        '/ppe/detections': 'vision_msgs/msg/Detection2DArray',
        '/ppe/poses': 'occluded_ppe_msgs/msg/PedestrianPoseArray',
        '/ppe/markers': 'visualization_msgs/msg/MarkerArray',
        '/ppe/overlay': 'sensor_msgs/msg/Image'}

    decoded = {topic: (schema, time, message) for topic, schema, time, message in _decoded(path)}
    assert decoded['/ppe/detections'][1] == 1_000
    detection = decoded['/ppe/detections'][2].detections[0]
    assert detection.id == '12.000000345/0'
    assert detection.bbox.center.position.y == 60.25 and detection.bbox.size_y == 80.0
    assert detection.results[0].hypothesis.class_id == 'pedestrian'
    assert detection.results[0].pose.covariance[7] == 2.5
    assert decoded['/ppe/detections'][2].header.stamp.nanosec == 345
    pose = decoded['/ppe/poses'][2].pedestrians[0]
    assert len(pose.keypoints) == 13
    assert (pose.keypoints[11].x, pose.keypoints[11].y, pose.keypoints[11].state) == (33.5, 95.0, 2)
    assert list(pose.mask.counts) == [1, 5, 2] and pose.visibility_ratio == 0.5
    markers = decoded['/ppe/markers'][2].markers
    assert [m.action for m in markers] == [3, 0] and markers[1].ns == 'ppe_joints' and markers[1].id == 3
    image = decoded['/ppe/overlay'][2]
    assert (image.height, image.width, image.encoding, bytes(image.data)) == (2, 3, 'rgb8', bytes(range(18)))

    # Our own reader + rclpy deserialisation gives back the very messages written.
    for record in mcap_io.iter_recorded_messages(path):
        assert mcap_io.deserialize(record) == sent[record.topic]


def test_truncated_payload_is_reported_with_topic_and_log_time(tmp_path):
    path = tmp_path / 'in.mcap'
    with mcap_io.Ros2McapWriter(path) as writer:
        writer.write('/cam/image', _messages()['/ppe/overlay'], log_time_ns=777)
    record = next(mcap_io.iter_recorded_messages(path))
    record.data = record.data[:20]
    with pytest.raises(ValueError, match=r'/cam/image @ log time 777 ns.*sensor_msgs/msg/Image'):
        mcap_io.deserialize(record)


def test_one_topic_one_type(tmp_path):
    from std_msgs.msg import Header
    with mcap_io.Ros2McapWriter(tmp_path / 'x.mcap') as writer:
        writer.write('/a', Header(), 1)
        with pytest.raises(TypeError, match='/a carries std_msgs/msg/Header'):
            writer.write('/a', _messages()['/ppe/overlay'], 2)
