"""`ppe infer` end to end on files the tests write: image folders, a video, an MCAP recording.

The model is a tiny random-init checkpoint (ResNet-18 body, narrow heads, 128 x 160 input); the checks
are about the pipeline: the COCO results load in pycocotools and match the Predictor run directly, the
overlays exist, the MCAP output decodes with mcap_ros2 and carries the node's five messages per frame,
and corrupt inputs are reported by name and skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_models import TINY_STRIDE8, tiny_model_config

from occluded_ppe_ros.cli import main as ppe_main

TINY_MODEL_CONFIG = tiny_model_config(TINY_STRIDE8, 'citypersons', 128, 160, max_detections=5)


def write_tiny_checkpoint(folder: Path) -> Path:
    """A random-init checkpoint of TINY_MODEL_CONFIG, written with the project's checkpoint tool."""
    import torch
    import yaml

    from occluded_ppe_ros.model.checkpoint import main as checkpoint_main

    # One thread: on a busy 2-core machine, two OpenMP threads spin against each other (measured here:
    # 65 ms vs 3 s for one 128 x 160 forward pass under load).
    torch.set_num_threads(1)
    config = folder / 'tiny_model.yaml'
    config.write_text(yaml.safe_dump(TINY_MODEL_CONFIG))
    checkpoint = folder / 'tiny_random_init.pt'
    assert checkpoint_main(['--config', str(config), '--out', str(checkpoint), '--seed', '3']) == 0
    return checkpoint


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp('tiny_model'))


def _photo(seed: int, height: int, width: int) -> np.ndarray:
    """A synthetic RGB photo: smooth background plus a few dark upright 'figures'."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:] = rng.integers(90, 200, size=3, dtype=np.uint8)
    figure_height, figure_width = height // 2, max(width // 8, 4)
    for _ in range(3):
        x = int(rng.integers(2, width - figure_width - 2))
        y = int(rng.integers(2, height - figure_height - 2))
        color = tuple(int(v) for v in rng.integers(0, 80, 3))
        cv2.rectangle(image, (x, y), (x + figure_width, y + figure_height), color, -1)
    return image


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _infer(args: list[str], capsys) -> tuple[int, str]:
    code = ppe_main(['infer', *args])
    return code, capsys.readouterr().out


def _gt_json(path: Path, images: list[tuple[int, str, int, int]]) -> None:
    """A COCO person-keypoints ground truth with one person per image."""
    from occluded_ppe_ros.skeleton import COCO17_NAMES
    annotations = []
    for image_id, _, height, _ in images:
        keypoints = []
        for joint in range(17):
            keypoints += [10.0 + joint, 20.0 + 2 * joint, 2]
        annotations.append({'id': image_id * 10, 'image_id': image_id, 'category_id': 1, 'iscrowd': 0,
                            'bbox': [10.0, 20.0, 20.0, min(50.0, height - 21.0)], 'area': 800.0,
                            'num_keypoints': 17, 'keypoints': keypoints,
                            'segmentation': [[10, 20, 30, 20, 30, 60, 10, 60]]})
    path.write_text(json.dumps({
        'images': [{'id': i, 'file_name': name, 'height': h, 'width': w} for i, name, h, w in images],
        'annotations': annotations,
        'categories': [{'id': 1, 'name': 'person', 'supercategory': 'person',
                        'keypoints': list(COCO17_NAMES), 'skeleton': []}]}))


def test_image_folder_results_load_in_pycocotools_and_match_the_predictor(tmp_path, tiny_checkpoint, capsys):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from occluded_ppe_ros.inference.predictor import Predictor

    images = tmp_path / 'images'
    images.mkdir()
    photos = {'b_street.png': _photo(1, 96, 120), 'a_crossing.jpg': _photo(2, 100, 140)}
    for name, rgb in photos.items():
        _write_rgb(images / name, rgb)
    (images / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not really a JPEG')
    (images / 'notes.txt').write_text('not an image: ignored by suffix')
    gt = tmp_path / 'gt.json'
    _gt_json(gt, [(11, 'a_crossing.jpg', 100, 140), (22, 'b_street.png', 96, 120),
                  (33, 'corrupt.jpg', 90, 90)])

    out = tmp_path / 'out'
    code, printed = _infer(['--images', str(images), '--out', str(out), '--checkpoint', str(tiny_checkpoint),
                            '--backend', 'torch', '--score-threshold', '0.0', '--coco-gt', str(gt)], capsys)
    assert code == 0
    assert 'skipped corrupt.jpg' in printed
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['frames_total'], summary['frames_processed'], summary['frames_skipped']) == (3, 2, 1)
    assert summary['skipped'][0]['name'] == 'corrupt.jpg' and 'corrupt.jpg' in summary['skipped'][0]['reason']

    results = json.loads((out / 'results.json').read_text())
    assert results, 'a score threshold of 0 keeps every valid detection row'
    coco_gt = COCO(str(gt))
    coco_dt = coco_gt.loadRes(str(out / 'results.json'))
    assert set(coco_dt.getImgIds()) <= {11, 22, 33}
    assert len(coco_dt.getAnnIds()) == len(results)

    # The same photos through the Predictor directly (decoded the same way: the files as written).
    predictor = Predictor.from_checkpoint(tiny_checkpoint, backend='torch', device='cpu', score_threshold=0.0)
    for image_id, name in ((11, 'a_crossing.jpg'), (22, 'b_street.png')):
        rgb = cv2.cvtColor(cv2.imread(str(images / name)), cv2.COLOR_BGR2RGB)
        expected = predictor.predict(rgb)
        got = [r for r in results if r['image_id'] == image_id]
        assert len(got) == len(expected)
        for result, pedestrian in zip(got, expected):
            x1, y1, x2, y2 = (float(v) for v in pedestrian.box)
            assert result['bbox'] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
            assert result['score'] == pytest.approx(float(pedestrian.score), abs=1e-5)
            assert result['category_id'] == 1
            keypoints = np.asarray(result['keypoints']).reshape(17, 3)
            assert np.all(keypoints[1:5] == 0), 'eyes and ears stay empty in the 17-slot layout'
            assert keypoints[[0, 5, 16], :2] == pytest.approx(pedestrian.keypoints[[0, 1, 12]], abs=1e-3)
            rle = dict(result['segmentation'], counts=result['segmentation']['counts'].encode())
            assert rle['size'] == list(rgb.shape[:2])
            assert int(mask_utils.area(rle)) == int(pedestrian.full_mask(*rgb.shape[:2]).sum())

    index = json.loads((out / 'images.json').read_text())['images']
    assert sorted((i['id'], i['file_name'], i['height'], i['width']) for i in index) == [
        (11, 'a_crossing.jpg', 100, 140), (22, 'b_street.png', 96, 120)]
    for name, rgb in photos.items():
        overlay = cv2.imread(str(out / 'overlays' / f'{Path(name).stem}.png'))
        assert overlay is not None and overlay.shape == rgb.shape
    assert not (out / 'overlays' / 'corrupt.png').exists()


def test_stable_ids_without_ground_truth_and_an_all_corrupt_folder(tmp_path, tiny_checkpoint, capsys):
    images = tmp_path / 'images'
    images.mkdir()
    for name, seed in (('c.png', 5), ('a.png', 6)):
        _write_rgb(images / name, _photo(seed, 64, 96))
    (images / 'b.png').write_bytes(b'')
    out = tmp_path / 'out'
    code, printed = _infer(['--images', str(images), '--out', str(out), '--checkpoint', str(tiny_checkpoint),
                            '--backend', 'torch', '--no-overlays'], capsys)
    assert code == 0
    assert 'skipped b.png' in printed and 'empty file' in printed
    index = json.loads((out / 'images.json').read_text())['images']
    # Ids are 1-based positions in the sorted folder, so they do not depend on which files decode.
    assert [(i['id'], i['file_name']) for i in index] == [(1, 'a.png'), (3, 'c.png')]
    assert not (out / 'overlays').exists()

    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'x.jpg').write_bytes(b'garbage')
    code, printed = _infer(['--images', str(broken), '--out', str(tmp_path / 'out2'), '--checkpoint',
                            str(tiny_checkpoint), '--backend', 'torch'], capsys)
    assert code == 1 and 'skipped x.jpg' in printed


def test_video_frames(tmp_path, tiny_checkpoint, capsys):
    video = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 5, (96, 64))
    for seed in range(4):
        writer.write(cv2.cvtColor(_photo(seed, 64, 96), cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / 'out'
    code, _ = _infer(['--video', str(video), '--out', str(out), '--checkpoint', str(tiny_checkpoint),
                      '--backend', 'torch', '--frame-step', '2'], capsys)
    assert code == 0
    index = json.loads((out / 'images.json').read_text())['images']
    assert [(i['id'], i['file_name']) for i in index] == [(1, 'frame_000000'), (3, 'frame_000002')]
    assert sorted(p.name for p in (out / 'overlays').iterdir()) == ['frame_000000.png', 'frame_000002.png']


def test_video_tracks_keep_ids_and_write_mot_text(tmp_path, tiny_checkpoint, capsys):
    """A still scene filmed for 6 frames: every frame has the same people, so the same track ids; the
    MOTChallenge text holds one line per result record, with its frame (= image id), id and box."""
    from occluded_ppe_ros.tracking.mot import read_mot

    video = tmp_path / 'still.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 10, (96, 64))
    for _ in range(6):
        writer.write(cv2.cvtColor(_photo(3, 64, 96), cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / 'out'
    code, printed = _infer(['--video', str(video), '--out', str(out), '--checkpoint', str(tiny_checkpoint),
                            '--backend', 'torch', '--score-threshold', '0.0', '--no-overlays'], capsys)
    assert code == 0, printed
    results = json.loads((out / 'results.json').read_text())
    by_frame: dict[int, list[int]] = {}
    for record in results:
        by_frame.setdefault(record['image_id'], []).append(record['track_id'])
    assert sorted(by_frame) == [1, 2, 3, 4, 5, 6]
    first = sorted(by_frame[1])
    assert first and min(first) >= 1 and len(set(first)) == len(first)
    assert all(sorted(ids) == first for ids in by_frame.values())
    rows = read_mot(out / 'tracks_mot.txt')
    assert len(rows) == len(results)
    for row, record in zip(rows, results, strict=True):
        assert (int(row[0]), int(row[1])) == (record['image_id'], record['track_id'])
        np.testing.assert_allclose(row[2:6], record['bbox'], atol=0.01)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['tracks'] == len(first)
    # --no-tracking: no ids, no MOT text.
    plain = tmp_path / 'plain'
    code, _ = _infer(['--video', str(video), '--out', str(plain), '--checkpoint', str(tiny_checkpoint),
                      '--backend', 'torch', '--no-overlays', '--no-tracking'], capsys)
    assert code == 0 and not (plain / 'tracks_mot.txt').exists()
    assert {r['track_id'] for r in json.loads((plain / 'results.json').read_text())} <= {-1}


def _image_message(rgb: np.ndarray, sec: int, frame_id: str = 'cam_optical'):
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from occluded_ppe_ros.ros.conversions import numpy_to_image
    header = Header(frame_id=frame_id)
    header.stamp.sec = sec
    return numpy_to_image(rgb, header, 'rgb8') if isinstance(rgb, np.ndarray) else Image(header=header)


def _compressed_message(data: bytes, sec: int):
    from sensor_msgs.msg import CompressedImage
    message = CompressedImage(format='jpeg')
    message.header.frame_id = 'cam_optical'
    message.header.stamp.sec = sec
    message.data = data
    return message


def test_mcap_in_mcap_out_with_corrupt_messages_skipped(tmp_path, tiny_checkpoint, capsys):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import String

    from occluded_ppe_ros.offline.mcap_io import RecordedMessage, Ros2McapWriter

    raw_rgb = _photo(7, 72, 96)
    jpeg_rgb = _photo(8, 80, 112)
    jpeg = cv2.imencode('.jpg', cv2.cvtColor(jpeg_rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    second = 1_000_000_000
    recording = tmp_path / 'drive.mcap'
    with Ros2McapWriter(recording) as writer:
        info = CameraInfo(width=96, height=72)
        info.header.frame_id = 'cam_optical'
        info.k = [80.0, 0.0, 47.5, 0.0, 80.0, 35.5, 0.0, 0.0, 1.0]
        writer.write('/cam/camera_info', info, log_time_ns=1 * second)
        writer.write('/cam/image_raw', _image_message(raw_rgb, 101), log_time_ns=2 * second)
        writer.write('/cam/image_raw/compressed', _compressed_message(jpeg, 102), log_time_ns=3 * second)
        # Corrupt 1: a JPEG message whose bytes are not a JPEG.
        writer.write('/cam/image_raw/compressed', _compressed_message(b'\xff\xd8garbage', 103),
                     log_time_ns=4 * second)
        # Corrupt 2: an Image record whose CDR payload is cut short (a torn write).
        torn = _image_message(raw_rgb, 104)
        from rclpy.serialization import serialize_message
        writer.write_raw(RecordedMessage(topic='/cam/image_raw', type_name='sensor_msgs/msg/Image',
                                         log_time_ns=5 * second, publish_time_ns=5 * second,
                                         data=serialize_message(torn)[:40], message_encoding='cdr'))
        writer.write('/cam/image_raw', _image_message(raw_rgb[:, ::-1].copy(), 106), log_time_ns=6 * second)
        writer.write('/chatter', String(data='not an image'), log_time_ns=7 * second)

    out = tmp_path / 'out'
    code, printed = _infer(['--mcap', str(recording), '--out', str(out), '--checkpoint', str(tiny_checkpoint),
                            '--backend', 'torch', '--score-threshold', '0.0'], capsys)
    assert code == 0
    assert f'skipped /cam/image_raw/compressed@{4 * second}' in printed
    assert f'/cam/image_raw/compressed @ log time {4 * second} ns' in printed
    assert f'skipped /cam/image_raw@{5 * second}' in printed
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['frames_total'], summary['frames_processed'], summary['frames_skipped']) == (5, 3, 2)

    with open(out / 'drive_ppe.mcap', 'rb') as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        decoded = [(c.topic, s.name, m.log_time, d) for s, c, m, d in reader.iter_decoded_messages()]
    # Two input image topics: outputs are namespaced by input topic.
    expected_types = {'detections': 'vision_msgs/msg/Detection2DArray',
                      'poses': 'occluded_ppe_msgs/msg/PedestrianPoseArray', 'masks': 'sensor_msgs/msg/Image',
                      'markers': 'visualization_msgs/msg/MarkerArray', 'overlay': 'sensor_msgs/msg/Image'}
    frames = {(2 * second, '/cam/image_raw', 101, (72, 96)),
              (3 * second, '/cam/image_raw/compressed', 102, (80, 112)),
              (6 * second, '/cam/image_raw', 106, (72, 96))}
    assert len(decoded) == 5 * len(frames)
    results = json.loads((out / 'results.json').read_text())
    index = {i['file_name']: i['id'] for i in json.loads((out / 'images.json').read_text())['images']}
    for log_time, topic, sec, (height, width) in frames:
        by_name = {t.rsplit('/', 1)[1]: (t, schema, msg) for t, schema, lt, msg in decoded if lt == log_time}
        assert set(by_name) == set(expected_types)
        for name, (output_topic, schema, message) in by_name.items():
            assert output_topic == f'/ppe{topic}/{name}'
            assert schema == expected_types[name]
            header = message.markers[0].header if name == 'markers' else message.header
            assert (header.stamp.sec, header.frame_id) == (sec, 'cam_optical')
        assert (by_name['overlay'][2].height, by_name['overlay'][2].width) == (height, width)
        assert by_name['overlay'][2].encoding == 'rgb8'
        assert (by_name['masks'][2].height, by_name['masks'][2].width) == (height, width)
        records = [r for r in results if r['image_id'] == index[f'{topic}@{log_time}']]
        count = len(records)
        assert len(by_name['detections'][2].detections) == count
        # Tracked per input topic: message ids are the records' track ids.
        assert [d.id for d in by_name['detections'][2].detections] == [str(r['track_id']) for r in records]
        assert all(r['track_id'] >= 1 for r in records)
        assert len(by_name['poses'][2].pedestrians) == count
        labels = np.frombuffer(bytes(by_name['masks'][2].data), np.uint8).reshape(height, width)
        assert labels.max() <= count


def test_bad_arguments_name_the_value(tmp_path, tiny_checkpoint, capsys):
    missing = tmp_path / 'no_such_folder'
    code = ppe_main(['infer', '--images', str(missing), '--out', str(tmp_path / 'o'), '--checkpoint',
                     str(tiny_checkpoint)])
    assert code == 2 and str(missing) in capsys.readouterr().err
    code = ppe_main(['infer', '--images', str(tmp_path), '--out', str(tmp_path / 'o'), '--checkpoint',
                     str(tmp_path / 'none.pt')])
    assert code == 2 and 'none.pt' in capsys.readouterr().err
    recording = tmp_path / 'chatter.mcap'
    from std_msgs.msg import String

    from occluded_ppe_ros.offline.mcap_io import Ros2McapWriter
    with Ros2McapWriter(recording) as writer:
        writer.write('/chatter', String(data='hi'), log_time_ns=1)
    code = ppe_main(['infer', '--mcap', str(recording), '--out', str(tmp_path / 'o'), '--checkpoint',
                     str(tiny_checkpoint)])
    error = capsys.readouterr().err
    assert code == 2 and 'no sensor_msgs Image or CompressedImage topic' in error and '/chatter' in error


def test_real_coco_photos_with_their_ground_truth(tmp_path, tiny_checkpoint, shared_data_dir, capsys):
    """On real COCO photos with the real annotations file: ids by file name, and COCOeval runs on them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = shared_data_dir / 'coco_train2017_person_kp'
    out = tmp_path / 'out'
    code, _ = _infer(['--images', str(data / 'images'), '--out', str(out), '--checkpoint',
                      str(tiny_checkpoint), '--backend', 'torch', '--score-threshold', '0.0',
                      '--coco-gt', str(data / 'annotations.json'), '--limit', '3', '--no-overlays'], capsys)
    assert code == 0
    gt = COCO(str(data / 'annotations.json'))
    index = json.loads((out / 'images.json').read_text())['images']
    assert len(index) == 3
    for image in index:
        record = gt.imgs[image['id']]
        assert (record['file_name'], record['height'], record['width']) == (
            image['file_name'], image['height'], image['width'])
    evaluator = COCOeval(gt, gt.loadRes(str(out / 'results.json')), 'keypoints')
    evaluator.params.imgIds = [image['id'] for image in index]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert len(evaluator.stats) == 10
