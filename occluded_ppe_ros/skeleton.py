"""The 13-joint pedestrian skeleton, defined once for the network, the node, training and evaluation.

The paper (section 3.1, after ClueNet) keeps 13 of COCO's 17 keypoints: COCO's set without the eyes
and ears, which are rarely resolvable on pedestrians at driving distances. Joint k of this skeleton is
COCO-17 joint `COCO17_INDEX[k]`. "left" is the person's own left side, as in COCO.

Everything that converts between the two layouts goes through `coco17_to_13` / `coco13_to_17` here.
"""
from __future__ import annotations

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    'nose',
    'left_shoulder', 'right_shoulder',
    'left_elbow', 'right_elbow',
    'left_wrist', 'right_wrist',
    'left_hip', 'right_hip',
    'left_knee', 'right_knee',
    'left_ankle', 'right_ankle',
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

COCO17_NAMES: tuple[str, ...] = (
    'nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear',
    'left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
    'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle',
)
# COCO17_INDEX[k] = index in COCO's 17-joint layout of our joint k.
COCO17_INDEX: tuple[int, ...] = tuple(COCO17_NAMES.index(name) for name in KEYPOINT_NAMES)

# Left/right joint pairs (indices in the 13-joint layout), swapped by a horizontal flip.
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12))
# FLIP_PERMUTATION[k] = the joint that joint k becomes after a horizontal flip.
FLIP_PERMUTATION: tuple[int, ...] = tuple(
    next((b if k == a else a) for a, b in FLIP_PAIRS if k in (a, b)) if k else 0
    for k in range(NUM_KEYPOINTS))


def _mirrored_name(name: str) -> str:
    """'left_x' <-> 'right_x'; a joint on the midline (the nose) keeps its name."""
    side, _, part = name.partition('_')
    return {'left': f'right_{part}', 'right': f'left_{part}'}.get(side, name)


# COCO17_FLIP_PERMUTATION[k] = the COCO-17 joint that joint k becomes after a horizontal flip.
COCO17_FLIP_PERMUTATION: tuple[int, ...] = tuple(COCO17_NAMES.index(_mirrored_name(name))
                                                 for name in COCO17_NAMES)

# Limbs drawn for a skeleton (pairs of 13-layout indices): COCO's skeleton restricted to the 13 joints,
# with the head attached to both shoulders since the eyes and ears are gone.
LIMBS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2),            # head to shoulders
    (1, 2),                    # shoulders
    (1, 3), (3, 5),            # left arm
    (2, 4), (4, 6),            # right arm
    (1, 7), (2, 8), (7, 8),    # torso
    (7, 9), (9, 11),           # left leg
    (8, 10), (10, 12),         # right leg
)

# COCO's per-joint OKS sigmas (cocoapi, person_keypoints), for the 17 joints and our 13.
COCO17_OKS_SIGMAS = np.array(
    [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
OKS_SIGMAS = COCO17_OKS_SIGMAS[list(COCO17_INDEX)]


def coco17_to_13(keypoints: np.ndarray) -> np.ndarray:
    """Select our 13 joints from COCO's layout.

    Args:
        keypoints: array [..., 17, C] (e.g. C = 3 for x, y, v), or a flat COCO list of 51 numbers.

    Returns:
        array [..., 13, C] (a flat 51-list gives [13, 3]).
    """
    array = np.asarray(keypoints)
    if array.ndim == 1:
        if array.size != 51:
            raise ValueError(f'expected 51 numbers (17 x (x, y, v)) in a flat COCO keypoint list, '
                             f'got {array.size}')
        array = array.reshape(17, 3)
    if array.shape[-2] != 17:
        raise ValueError(f'expected 17 COCO keypoints on axis -2, got shape {array.shape}')
    return array[..., list(COCO17_INDEX), :]


def coco13_to_17(keypoints: np.ndarray) -> np.ndarray:
    """Scatter 13-joint values into COCO's 17-slot layout, with zeros for eyes and ears.

    Args:
        keypoints: array [..., 13, C].

    Returns:
        array [..., 17, C]; slots 1-4 (eyes, ears) are 0, which COCO reads as "not labelled".
    """
    array = np.asarray(keypoints)
    if array.shape[-2] != NUM_KEYPOINTS:
        raise ValueError(f'expected {NUM_KEYPOINTS} keypoints on axis -2, got shape {array.shape}')
    out = np.zeros(array.shape[:-2] + (17,) + array.shape[-1:], dtype=array.dtype)
    out[..., list(COCO17_INDEX), :] = array
    return out
