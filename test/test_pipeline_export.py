"""ONNX export of the pretrained pipeline (inference/pipeline_export.py) and its ONNX Runtime backend.

One export of a small pipeline (both detectors, so the box fusion is in the graph; Lightning; 320 x 320;
K = 5; untrained heads) serves every test. References: the PyTorch modules the graphs came from, run on
inputs of other shapes than the traced ones (the detector graph at batch 2, traced at 1; the pose graph at
N = 3 people over 2 images, traced at N = 1), and the files themselves (names, metadata, dynamic axes).
The export's own parity gate is run on one sample photo here instead of three (the gate's code is the
same; the whole export is ~60 s on two busy cores otherwise).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from occluded_ppe_ros.inference import pipeline_export
from occluded_ppe_ros.inference.backends.pipeline_backend import (PipelineBackend, pipeline_torch_backend,
                                                                  pose_graph_path)
from occluded_ppe_ros.inference.preprocess import letterbox
from occluded_ppe_ros.model.pipeline import PipelineConfig, build_pipeline, import_pretrained_parts

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = [REPO_ROOT / 'samples' / name for name in ('000000000790.jpg', '000000129648.jpg')]
CONFIG = PipelineConfig(pose_variant='lightning', input_height=320, input_width=320, max_detections=5,
                        candidates_per_detector=50)

torch.set_num_threads(2)
pytest.importorskip('onnxruntime')


def network_inputs() -> np.ndarray:
    """The two sample photos letterboxed to 320 x 320: float32 [2, 3, 320, 320]."""
    images = []
    for path in SAMPLES:
        bgr = cv2.imread(str(path))
        assert bgr is not None, path
        images.append(letterbox(np.ascontiguousarray(bgr[:, :, ::-1]), CONFIG.input_size, 0.0)[0])
    return np.stack(images)


@pytest.fixture(scope='module')
def net():
    net = build_pipeline(CONFIG)
    import_pretrained_parts(net)
    return net.eval()


@pytest.fixture(scope='module')
def exported(net, tmp_path_factory):
    out = tmp_path_factory.mktemp('pipeline_export') / 'pipe.onnx'
    original = pipeline_export.gate_images
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline_export, 'gate_images', lambda size, limit=3: original(size, limit=1))
        detector, pose, report = pipeline_export.export_pipeline(net, out, source={'test': 'yes'},
                                                                 intra_op_threads=2)
    return detector, pose, report


def test_export_writes_two_graphs_the_detector_naming_the_pose_file(exported):
    import onnx
    import onnxruntime

    from occluded_ppe_ros.inference.backends.onnxruntime_backend import read_deploy_metadata

    detector, pose, report = exported
    assert detector.name == 'pipe.onnx' and pose == detector.parent / 'pipe.pose.onnx'
    # nothing else left behind (no temporary folder, no failed files)
    assert sorted(p.name for p in detector.parent.iterdir()) == ['pipe.onnx', 'pipe.pose.onnx']
    assert 'FAILED' not in report and '-> ok' in report
    metadata = read_deploy_metadata(detector)
    assert metadata.pipeline == {'graph': 'detector', 'pose_graph': 'pipe.pose.onnx'}
    assert tuple(metadata.input_size) == (320, 320) and metadata.max_detections == 5
    assert metadata.model_config == CONFIG.to_dict() and metadata.source == {'test': 'yes'}
    assert read_deploy_metadata(pose).pipeline['graph'] == 'pose'
    assert pose_graph_path(detector) == pose
    for path, inputs, outputs in ((detector, ['images'], ['boxes', 'scores', 'labels', 'valid']),
                                  (pose, ['images', 'rois'], ['keypoints', 'keypoint_occluded', 'masks'])):
        onnx.checker.check_model(onnx.load(str(path)))
        session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        assert [i.name for i in session.get_inputs()] == inputs
        assert [o.name for o in session.get_outputs()] == outputs
        # the batch (and the number of people) are symbolic, not the traced 1
        assert all(isinstance(i.shape[0], str) for i in session.get_inputs())
    # MoveNet's batch norms were folded into its convolutions in the exported pose graph
    assert not any(node.op_type == 'BatchNormalization' for node in onnx.load(str(pose)).graph.node)


def test_pose_graph_at_three_people_matches_torch(exported, net):
    """Exported at N = 1: run at N = 3 people over two images, against the unfolded PyTorch pose stage."""
    import onnxruntime

    _, pose, _ = exported
    images = network_inputs()
    rois = np.array([[0, 50.0, 100.0, 110.0, 250.0], [1, 20.0, 10.0, 300.0, 310.0],
                     [0, 130.0, 40.0, 160.0, 130.0]], np.float32)
    session = onnxruntime.InferenceSession(str(pose), providers=['CPUExecutionProvider'])
    keypoints, occluded, masks = session.run(None, {'images': images, 'rois': rois})
    with torch.no_grad():
        reference = [t.numpy() for t in net.pose(torch.from_numpy(images), torch.from_numpy(rois))]
    assert keypoints.shape == (3, 13, 3) and masks.shape == (3, 28, 28) and occluded.shape == (3, 13)
    np.testing.assert_allclose(keypoints[..., :2], reference[0][..., :2], atol=1e-2)     # pixels
    np.testing.assert_allclose(keypoints[..., 2], reference[0][..., 2], atol=1e-4)
    np.testing.assert_allclose(occluded, reference[1], atol=1e-4)
    np.testing.assert_allclose(masks, reference[2], atol=1e-4)


def test_create_backend_opens_the_export_and_matches_torch_at_batch_two(exported, net):
    from occluded_ppe_ros.inference.backends import check_outputs, create_backend

    detector, _, _ = exported
    backend = create_backend('onnxruntime', detector, device='cpu')
    assert isinstance(backend, PipelineBackend) and backend.name == 'onnxruntime'
    assert backend.input_size == (320, 320) and backend.mask_resolution == 28
    assert list(backend.class_names) == ['person']
    for runner in (backend.detector, backend.pose):
        # spin-waiting off: the detector's pool would otherwise spin on the cores the pose graph needs
        options = runner.session.get_session_options()
        assert options.get_session_config_entry('session.intra_op.allow_spinning') == '0'
    reference = pipeline_torch_backend(net)
    for runner in (backend, reference):
        runner.pose_min_score = 0.3
    images = network_inputs()
    got, expected = backend.run(images), reference.run(images)
    check_outputs(got, 2, 'pipeline onnxruntime')
    assert backend.last_pose_count == reference.last_pose_count >= 3
    np.testing.assert_array_equal(got['valid'], expected['valid'])
    assert got['valid'][0].sum() >= 2 and got['valid'][1].sum() >= 1      # people in both photos
    valid = expected['valid']
    np.testing.assert_allclose(got['boxes'][valid], expected['boxes'][valid], atol=1e-2)
    np.testing.assert_allclose(got['scores'], expected['scores'], atol=1e-4)
    np.testing.assert_allclose(got['keypoints'][valid][..., :2], expected['keypoints'][valid][..., :2],
                               atol=0.05)
    np.testing.assert_allclose(got['masks'], expected['masks'], atol=1e-3)
    for name, value in got.items():
        assert value.shape == expected[name].shape and value.dtype == expected[name].dtype, name


def test_missing_pose_file_is_a_clear_error_naming_it(exported, tmp_path):
    from occluded_ppe_ros.inference.backends import create_backend
    from occluded_ppe_ros.inference.model_file import ModelFileError

    detector, _, _ = exported
    alone = tmp_path / 'pipe.onnx'
    shutil.copyfile(detector, alone)
    with pytest.raises(FileNotFoundError, match=r'pipe\.pose\.onnx'):
        pose_graph_path(alone)
    with pytest.raises(ModelFileError, match=r'pipe\.pose\.onnx'):
        create_backend('onnxruntime', alone, device='cpu')
