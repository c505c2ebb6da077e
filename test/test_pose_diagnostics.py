"""The error analysis of benchmarks/pose_with_gt_boxes.py: OKS errors and the oracle corrections."""
from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.pose_with_gt_boxes import oks_errors, oracle_corrections
from occluded_ppe_ros.skeleton import FLIP_PERMUTATION, OKS_SIGMAS

MIRROR = np.asarray(FLIP_PERMUTATION)


def _person() -> np.ndarray:
    """13 labelled joints [13, 3]: x = 10 for left joints, 30 for right ones (facing the camera is not
    implied, only distinct sides), y spaced 10 px; the ankles occluded (v = 1)."""
    truth = np.zeros((13, 3), np.float32)
    truth[:, 1] = np.arange(13) * 10.0
    truth[0, 0] = 20.0
    truth[1::2, 0], truth[2::2, 0] = 10.0, 30.0
    truth[:, 2] = 2.0
    truth[11:, 2] = 1.0
    return truth


def test_oks_errors_scale_the_distance_by_area_and_per_joint_sigma():
    truth = _person()
    predicted = truth[:, :2].copy()
    predicted[0, 0] += 3.0                       # nose 3 px off
    predicted[7, 1] += 3.0                       # left hip 3 px off
    truth[12, 2] = 0.0                           # right ankle unlabelled
    errors = oks_errors(predicted, truth, area=400.0, sigmas=OKS_SIGMAS)
    assert errors[0] == pytest.approx(3.0 / (20.0 * 2 * 0.026))
    assert errors[7] == pytest.approx(3.0 / (20.0 * 2 * 0.107))
    assert errors[1] == 0.0 and math.isnan(errors[12])
    # the same 3 px cost the nose an OKS term below 0.5 and the hip one above it
    assert math.exp(-errors[0] ** 2 / 2) < 0.5 < math.exp(-errors[7] ** 2 / 2)


def test_oracles_undo_a_whole_flip_a_single_swap_and_set_chosen_joints():
    truth = _person()
    exact = truth[:, :2].copy()
    flipped = oracle_corrections(exact[MIRROR], truth, MIRROR)
    np.testing.assert_allclose(flipped['flip_people'], exact)           # mirrored back as a whole
    np.testing.assert_allclose(flipped['swap_pairs'], exact)            # or pair by pair
    one_swap = exact.copy()
    one_swap[[5, 6]] = exact[[6, 5]]                                    # the wrists exchanged
    corrected = oracle_corrections(one_swap, truth, MIRROR)
    np.testing.assert_allclose(corrected['flip_people'], one_swap)      # 2 of 13 joints: no whole flip
    np.testing.assert_allclose(corrected['swap_pairs'], exact)
    np.testing.assert_allclose(corrected['wrists_exact'], exact)
    noisy = exact + 5.0
    corrected = oracle_corrections(noisy, truth, MIRROR)
    np.testing.assert_allclose(corrected['visible_exact'][:11], exact[:11])
    np.testing.assert_allclose(corrected['visible_exact'][11:], noisy[11:])     # occluded ankles kept
    np.testing.assert_allclose(corrected['occluded_exact'][11:], exact[11:])
    np.testing.assert_allclose(corrected['nose_exact'][0], exact[0])
    np.testing.assert_allclose(corrected['nose_exact'][1:], noisy[1:])
    np.testing.assert_allclose(corrected['errors_halved'], exact + 2.5)
