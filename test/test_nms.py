"""The one greedy NMS (occluded_ppe_ros/inference/nms.py) against a slow pure-Python reference, and the
check that the Predictor's post-processing and the CPU peers both use it rather than copies of their own."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from occluded_ppe_ros.inference.nms import greedy_nms


def reference_nms(boxes, scores, iou_threshold, labels=None) -> list[int]:
    """Textbook greedy NMS, one pair at a time in plain Python floats."""
    labels = [0] * len(scores) if labels is None else [int(v) for v in labels]
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))

    def iou(a, b) -> float:
        area = [max(0.0, float(x2) - float(x1)) * max(0.0, float(y2) - float(y1))
                for x1, y1, x2, y2 in (a, b)]
        width = max(0.0, min(float(a[2]), float(b[2])) - max(float(a[0]), float(b[0])))
        height = max(0.0, min(float(a[3]), float(b[3])) - max(float(a[1]), float(b[1])))
        union = area[0] + area[1] - width * height
        return width * height / union if union > 0 else 0.0

    kept: list[int] = []
    for candidate in order:
        if all(labels[k] != labels[candidate] or iou(boxes[k], boxes[candidate]) <= iou_threshold
               for k in kept):
            kept.append(candidate)
    return kept


@pytest.mark.parametrize('seed, threshold, classes',
                         itertools.product(range(6), (0.0, 0.3, 0.5, 0.9), (1, 3)))
def test_greedy_nms_matches_the_slow_reference(seed, threshold, classes):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 60))
    corners = rng.uniform(0, 100, (count, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(0, 40, (count, 2))], 1).astype(np.float32)
    boxes[: count // 10, 2:] = boxes[: count // 10, :2]            # some zero-area boxes
    scores = rng.choice([0.2, 0.5, 0.7, 0.9], count) if seed % 2 else rng.random(count)  # ties on odd seeds
    labels = rng.integers(0, classes, count)
    got = greedy_nms(boxes, scores, threshold, labels=labels if classes > 1 else None)
    assert got.dtype == np.int64
    assert got.tolist() == reference_nms(boxes, scores, threshold, labels if classes > 1 else None)


def test_greedy_nms_edge_cases():
    assert greedy_nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    same = np.array([[0, 0, 10, 10]] * 3, np.float32)
    assert greedy_nms(same, np.array([0.1, 0.9, 0.5]), 0.5).tolist() == [1]
    assert greedy_nms(same, np.array([0.1, 0.9, 0.5]), 0.5, labels=np.array([0, 1, 0])).tolist() == [1, 2]
    with pytest.raises(ValueError, match='3 boxes but 2 scores'):
        greedy_nms(same, np.array([0.1, 0.9]), 0.5)


def test_postprocess_and_peers_share_the_one_implementation():
    from occluded_ppe_ros import peers
    from occluded_ppe_ros.inference import postprocess

    assert postprocess.greedy_nms is greedy_nms
    assert peers.greedy_nms is greedy_nms
    for module in (postprocess, peers):
        own = [name for name, value in vars(module).items()
               if callable(value) and 'nms' in name.lower() and value is not greedy_nms]
        assert own == [], f'{module.__name__} has its own NMS: {own}'
