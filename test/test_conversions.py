"""Message conversions against independent references: hand-packed bytes, plain-Python RLE, serialisation."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from occluded_ppe_msgs.msg import Keypoint2D, PedestrianPoseArray
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from occluded_ppe_ros import draw
from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_ros.ros import conversions
from occluded_ppe_ros.ros.conversions import ImageRejected

RNG = np.random.default_rng(7)


def make_pedestrian(box, mask_origin, mask, score=0.9, class_name='pedestrian', scores=None, occluded=None):
    keypoints = np.stack([np.linspace(box[0] + 1, box[2] - 1, 13), np.linspace(box[1] + 1, box[3] - 1, 13)],
                         axis=1).astype(np.float32)
    return Pedestrian(box=np.asarray(box, np.float32), class_id=0, class_name=class_name, score=score,
                      mask=np.asarray(mask, bool), mask_origin=np.asarray(mask_origin, np.int64),
                      keypoints=keypoints,
                      keypoint_scores=np.asarray(scores if scores is not None else [0.9] * 13, np.float32),
                      keypoint_occluded=np.asarray(occluded if occluded is not None else [False] * 13, bool))


def header(sec=12, nanosec=3400, frame_id='camera_optical'):
    result = Header(frame_id=frame_id)
    result.stamp.sec, result.stamp.nanosec = sec, nanosec
    return result


def pack_image(rgb: np.ndarray, encoding: str, padding: int, big_endian: bool = False) -> Image:
    """Plain-Python packing of an RGB uint8 image into a message: one sample at a time, padded rows."""
    height, width, _ = rgb.shape
    order = {'rgb8': 'rgb', 'rgba8': 'rgba', 'bgr8': 'bgr', 'bgra8': 'bgra', 'mono8': 'm',
             'rgb16': 'rgb', 'bgr16': 'bgr', 'mono16': 'm'}[encoding]
    sixteen = encoding.endswith('16')
    data = bytearray()
    for r in range(height):
        row = bytearray()
        for c in range(width):
            red, green, blue = (int(v) for v in rgb[r, c])
            channel = {'r': red, 'g': green, 'b': blue, 'a': 255, 'm': red}
            for letter in order:
                value = channel[letter]
                if sixteen:
                    sample = value * 256 + 0x5A  # low byte is noise the converter must drop
                    row += sample.to_bytes(2, 'big' if big_endian else 'little')
                else:
                    row.append(value)
        data += row + bytes([0xEE] * padding)
    step = len(data) // height
    message = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=int(big_endian))
    message.data = bytes(data)
    return message


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'rgb16', 'bgr16'])
@pytest.mark.parametrize('big_endian', [False, True])
def test_colour_encodings_with_padded_rows(encoding, big_endian):
    rgb = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    message = pack_image(rgb, encoding, padding=3, big_endian=big_endian)
    out = conversions.image_to_rgb(message, max_pixels=100)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('encoding', ['mono8', 'mono16'])
def test_mono_encodings_become_grey_rgb(encoding):
    grey = RNG.integers(0, 256, size=(4, 6), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    out = conversions.image_to_rgb(pack_image(rgb, encoding, padding=2, big_endian=True), max_pixels=100)
    np.testing.assert_array_equal(out, rgb)


def test_unpadded_rgb8_is_read_without_a_copy():
    rgb = RNG.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    message = pack_image(rgb, 'rgb8', padding=0)
    out = conversions.image_to_rgb(message, max_pixels=100)
    assert not out.flags.owndata
    np.testing.assert_array_equal(out, rgb)


def _good_message() -> Image:
    return pack_image(np.zeros((4, 5, 3), np.uint8), 'rgb8', padding=0)


@pytest.mark.parametrize(('change', 'reason'), [
    ({'encoding': '32FC1'}, "unknown encoding '32FC1'"),
    ({'encoding': 'yuv422'}, 'unknown encoding'),
    ({'step': 14}, 'step 14 is smaller than one row'),
    ({'data': bytes(59)}, 'data has 59 bytes, fewer than step x height = 15 x 4 = 60'),
    ({'width': 0}, 'zero size'),
    ({'height': 0}, 'zero size'),
    ({'height': 400, 'width': 500, 'step': 1500},
     'too many pixels: 500x400 = 200000 > max_image_pixels 1000'),
])
def test_malformed_images_are_rejected_with_the_reason(change, reason):
    message = _good_message()
    for key, value in change.items():
        setattr(message, key, value)
    with pytest.raises(ImageRejected, match=reason.replace('(', r'\(').replace(')', r'\)')):
        conversions.image_to_rgb(message, max_pixels=1000)


def test_compressed_png_and_jpeg_decode_to_rgb():
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (200, 30, 40)
    rgb[:, 24:] = (10, 60, 220)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    png = CompressedImage(format='png')
    png.data = cv2.imencode('.png', bgr)[1].tobytes()
    np.testing.assert_array_equal(conversions.compressed_to_rgb(png, max_pixels=10_000), rgb)
    jpeg = CompressedImage(format='rgb8; jpeg compressed bgr8')
    jpeg.data = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    decoded = conversions.compressed_to_rgb(jpeg, max_pixels=10_000)
    assert decoded.shape == rgb.shape
    assert np.abs(decoded.astype(int) - rgb).mean() < 4
    assert conversions.compressed_image_size(png.data) == (48, 32)
    assert conversions.compressed_image_size(jpeg.data) == (48, 32)


def test_bad_compressed_images_are_rejected():
    garbage = CompressedImage(format='jpeg')
    garbage.data = b'\xff\xd8 this is not a jpeg' * 10
    with pytest.raises(ImageRejected, match='undecodable'):
        conversions.compressed_to_rgb(garbage, max_pixels=10_000)
    with pytest.raises(ImageRejected, match="unsupported compressed format 'tiff'"):
        conversions.compressed_to_rgb(CompressedImage(format='tiff', data=b'12'), max_pixels=10_000)
    with pytest.raises(ImageRejected, match='zero size'):
        conversions.compressed_to_rgb(CompressedImage(format='png'), max_pixels=10_000)
    big = CompressedImage(format='png')
    big.data = cv2.imencode('.png', np.zeros((200, 300, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageRejected, match='too many pixels: 300x200'):
        conversions.check_compressed(big, max_pixels=10_000)


def rle_reference(mask: np.ndarray) -> list[int]:
    """Slow plain-Python run lengths, as InstanceMask.msg describes them."""
    counts, current, run = [], False, 0
    for value in mask.reshape(-1).tolist():
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts


@pytest.mark.parametrize('shape', [(1, 1), (3, 5), (17, 9)])
def test_rle_matches_the_reference_and_round_trips(shape):
    for density in (0.0, 0.3, 1.0):
        mask = RNG.random(shape) < density
        counts = conversions.mask_to_rle(mask)
        assert counts == rle_reference(mask)
        assert sum(counts) == mask.size
        np.testing.assert_array_equal(conversions.rle_to_mask(counts, *shape), mask)


def test_rle_hand_case():
    mask = np.array([[1, 1, 0], [0, 1, 1]], bool)
    assert conversions.mask_to_rle(mask) == [0, 2, 2, 2]
    assert conversions.mask_to_rle(np.zeros((0, 4), bool)) == []


def test_detections_and_poses_share_ids_and_survive_serialisation():
    mask = np.zeros((6, 4), bool)
    mask[1:4, 1:3] = True
    first = make_pedestrian([10, 20, 14, 26], [10, 20], mask, score=0.75)
    # A mask crop hanging over the image's left/top edge is cut to the image.
    second = make_pedestrian([-2, -1, 3, 4], [-2, -1], np.ones((5, 5), bool), score=0.5, class_name='rider',
                             scores=[0.1] * 6 + [0.9] * 7, occluded=[True] * 13)
    stamp = header()
    ids = conversions.detection_ids(stamp, 2)
    assert ids == ['12.000003400/0', '12.000003400/1']
    detections = deserialize_message(serialize_message(conversions.to_detection_array(
        [first, second], stamp, ids)), Detection2DArray)
    poses = deserialize_message(serialize_message(conversions.to_pose_array(
        [first, second], stamp, ids, (30, 40), keypoint_threshold=0.3)), PedestrianPoseArray)
    assert detections.header == stamp and poses.header == stamp
    assert [d.id for d in detections.detections] == [p.id for p in poses.pedestrians] == ids
    box = detections.detections[0].bbox
    assert (box.center.position.x, box.center.position.y, box.size_x, box.size_y) == (12.0, 23.0, 4.0, 6.0)
    assert detections.detections[0].results[0].hypothesis.class_id == 'pedestrian'
    assert detections.detections[0].results[0].hypothesis.score == pytest.approx(0.75)
    assert detections.detections[0].header == stamp
    pose = poses.pedestrians[0]
    assert pose.score == pytest.approx(0.75) and pose.class_id == 'pedestrian'
    full = pose.full_box
    assert (full.x_min, full.y_min, full.x_max, full.y_max) == (10, 20, 14, 26)
    assert (pose.visible_box.x_min, pose.visible_box.y_min, pose.visible_box.x_max,
            pose.visible_box.y_max) == (11, 21, 13, 24)
    assert pose.visibility_ratio == pytest.approx(6 / 24)
    assert pose.keypoints[3].x == pytest.approx(first.keypoints[3, 0])
    assert pose.keypoints[3].y == pytest.approx(first.keypoints[3, 1])
    assert pose.keypoints[3].score == pytest.approx(0.9)
    assert [k.state for k in pose.keypoints] == [Keypoint2D.STATE_VISIBLE] * 13
    assert (pose.mask.x_offset, pose.mask.y_offset, pose.mask.width, pose.mask.height) == (10, 20, 4, 6)
    np.testing.assert_array_equal(conversions.rle_to_mask(pose.mask.counts, 6, 4), mask)
    clipped = poses.pedestrians[1]
    assert [k.state for k in clipped.keypoints] == ([Keypoint2D.STATE_NOT_PRESENT] * 6
                                                    + [Keypoint2D.STATE_OCCLUDED] * 7)
    cut = clipped.mask
    assert (cut.x_offset, cut.y_offset, cut.width, cut.height) == (0, 0, 3, 4)
    assert list(clipped.mask.counts) == [0, 12]


def test_state_constants_match_the_message():
    assert draw.STATE_NOT_PRESENT == Keypoint2D.STATE_NOT_PRESENT
    assert draw.STATE_VISIBLE == Keypoint2D.STATE_VISIBLE
    assert draw.STATE_OCCLUDED == Keypoint2D.STATE_OCCLUDED


def test_label_image_orders_and_aligns_instances():
    first = make_pedestrian([0, 0, 4, 4], [1, 1], np.ones((2, 3), bool))
    second = make_pedestrian([0, 0, 6, 6], [2, 2], np.ones((3, 3), bool))
    labels = conversions.label_image([first, second], 6, 7)
    expected = np.zeros((6, 7), np.uint8)
    expected[2:5, 2:5] = 2
    expected[1:3, 1:4] = 1  # the first (higher-scoring) detection wins the overlap
    np.testing.assert_array_equal(labels, expected)
    sent = conversions.to_label_image([first, second], header(), 6, 7)
    message = deserialize_message(serialize_message(sent), Image)
    assert message.encoding == 'mono8' and (message.height, message.width, message.step) == (6, 7, 7)
    np.testing.assert_array_equal(np.frombuffer(message.data, np.uint8).reshape(6, 7), expected)


def test_label_image_switches_to_16_bit_above_255_instances():
    many = [make_pedestrian([0, 0, 1, 1], [index % 20, index // 20], np.ones((1, 1), bool))
            for index in range(300)]
    message = conversions.to_label_image(many, header(), 15, 20)
    assert message.encoding == '16UC1' and message.step == 40
    dtype = '>u2' if message.is_bigendian else '<u2'
    labels = np.frombuffer(message.data, dtype).reshape(15, 20)
    assert labels[14, 19] == 300 and labels[0, 0] == 1


def test_numpy_to_image_round_trip():
    rgb = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    message = deserialize_message(serialize_message(conversions.numpy_to_image(rgb, header(), 'rgb8')), Image)
    assert message.header == header()
    np.testing.assert_array_equal(conversions.image_to_rgb(message, max_pixels=100), rgb)


def test_keypoint_message_documents_the_occlusion_rule_the_node_applies():
    """Keypoint2D.msg's state comments name what sets them: the occlusion head against occlusion_threshold,
    the score against keypoint_threshold (both node parameters), not the visible mask."""
    from occluded_ppe_ros.ros.parameters import PARAMETERS_BY_NAME

    message = Path(__file__).resolve().parents[1] / 'interfaces/occluded_ppe_msgs/msg/Keypoint2D.msg'
    comments = {line.split('=')[0].split()[-1]: line.split('#', 1)[1]
                for line in message.read_text().splitlines() if line.startswith('uint8 STATE_')}
    assert 'occlusion head' in comments['STATE_OCCLUDED']
    assert 'occlusion_threshold' in comments['STATE_OCCLUDED']
    assert 'occlusion_threshold' in comments['STATE_VISIBLE']
    assert 'keypoint_threshold' in comments['STATE_NOT_PRESENT']
    assert 'mask' not in comments['STATE_OCCLUDED'] + comments['STATE_VISIBLE']
    assert {'occlusion_threshold', 'keypoint_threshold'} <= set(PARAMETERS_BY_NAME)
    # and the rule itself: an occlusion flag makes a joint OCCLUDED whatever the mask says
    states = draw.keypoint_states(np.full(13, 0.9), np.arange(13) < 4, 0.1)
    assert states.tolist() == [Keypoint2D.STATE_OCCLUDED] * 4 + [Keypoint2D.STATE_VISIBLE] * 9
