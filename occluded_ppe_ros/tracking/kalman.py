"""Constant-velocity Kalman filters for all tracks at once: box centre and size, in image pixels.

State per track (8): cx, cy, w, h (pixels) and their rates vcx, vcy, vw, vh (pixels per second).
Measurement (4): cx, cy, w, h of a detection's full box. Time steps are in seconds, so a track coasts
through a gap of any length with one `predict(dt)`.

Noise scales with the box height, as in DeepSORT (a 300-px person jitters more in pixels than a 60-px
one): measurement std = `measurement_std * h`, and the process is continuous white-noise acceleration
with spectral density `(acceleration_std * h) ** 2` per axis, i.e. filterpy's
`Q_continuous_white_noise(dim=2, dt, spectral_density)` for each (position, rate) pair.

Why not one `filterpy.kalman.KalmanFilter` per track: the same maths per object costs 20-30 us per
predict + update here, 0.4-0.6 ms per frame for 20 people, half the tracker's 1-ms budget before any
association. Here the tracks are rows of one array and each step is a few batched matrix products.
test/test_tracking.py checks every step against filterpy's KalmanFilter.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_SIZE = 8
MEASUREMENT_SIZE = 4
_H = np.eye(MEASUREMENT_SIZE, STATE_SIZE)


@dataclass(frozen=True)
class MotionNoise:
    """Noise levels of the box motion model, relative to the box height (dimensionless or per second).

    Attributes:
        measurement_std: std of a detected box's cx, cy, w, h, as a fraction of its height.
        acceleration_std: std of the white-noise acceleration, box heights per second squared (0.35: a
            1.7-m person at 0.6 m/s^2, a brisk change of walking pace). A walking person's box swings
            with the stride (its edges stall and jump twice a second), so the lower this is, the longer
            the span the velocity is averaged over: 0.5 left the velocity of a track seen for half a
            second (a person just walked in) wrong enough that its coasted box missed them behind a van,
            and 1.0 made the velocity follow the box jitter (benchmarks/tracking.py, development seeds).
        initial_velocity_std: std of the unknown rates of a new track, box heights per second
            (a walking adult covers about 0.8 body heights per second).
    """

    measurement_std: float = 0.05
    acceleration_std: float = 0.35
    initial_velocity_std: float = 1.0


def transition(dt: float) -> np.ndarray:
    """F: float64 [8, 8], positions advance by rate x dt (seconds)."""
    matrix = np.eye(STATE_SIZE)
    matrix[range(4), range(4, 8)] = dt
    return matrix


def process_noise(dt: float, heights: np.ndarray, noise: MotionNoise) -> np.ndarray:
    """Q per track: float64 [T, 8, 8] for a step of dt seconds; heights float [T] in pixels."""
    q = np.zeros((STATE_SIZE, STATE_SIZE))
    axes = np.arange(4)
    q[axes, axes] = dt ** 3 / 3.0
    q[axes, axes + 4] = q[axes + 4, axes] = dt ** 2 / 2.0
    q[axes + 4, axes + 4] = dt
    density = (noise.acceleration_std * np.asarray(heights, np.float64)) ** 2
    return density[:, None, None] * q


def measurement_noise(heights: np.ndarray, noise: MotionNoise) -> np.ndarray:
    """R per track: float64 [T, 4, 4]; heights float [T] in pixels."""
    variance = (noise.measurement_std * np.asarray(heights, np.float64)) ** 2
    return variance[:, None, None] * np.eye(MEASUREMENT_SIZE)


def initiate(measurements: np.ndarray, noise: MotionNoise) -> tuple[np.ndarray, np.ndarray]:
    """New tracks from measurements float [N, 4] (cx, cy, w, h pixels): (x [N, 8], P [N, 8, 8]), rates 0."""
    measurements = np.asarray(measurements, np.float64).reshape(-1, MEASUREMENT_SIZE)
    state = np.concatenate([measurements, np.zeros_like(measurements)], axis=1)
    heights = measurements[:, 3]
    position_var = (noise.measurement_std * heights) ** 2
    rate_var = (noise.initial_velocity_std * heights) ** 2
    diagonal = np.concatenate([np.repeat(position_var[:, None], 4, 1), np.repeat(rate_var[:, None], 4, 1)], 1)
    covariance = np.zeros((len(measurements), STATE_SIZE, STATE_SIZE))
    covariance[:, range(STATE_SIZE), range(STATE_SIZE)] = diagonal
    return state, covariance


def predict(state: np.ndarray, covariance: np.ndarray, dt: float,
            noise: MotionNoise) -> tuple[np.ndarray, np.ndarray]:
    """Advance every track by dt seconds: x' = F x, P' = F P F^T + Q. Shapes [T, 8] and [T, 8, 8]."""
    matrix = transition(dt)
    heights = np.maximum(state[:, 3], 1.0)
    state = state @ matrix.T
    covariance = matrix @ covariance @ matrix.T + process_noise(dt, heights, noise)
    return state, covariance


def update(state: np.ndarray, covariance: np.ndarray, measurements: np.ndarray,
           noise: MotionNoise) -> tuple[np.ndarray, np.ndarray]:
    """Correct tracks with one measurement each: [T, 8], [T, 8, 8], measurements [T, 4] -> (x, P).

    Joseph form, P = (I - K H) P (I - K H)^T + K R K^T, as filterpy's KalmanFilter.update.
    """
    measurements = np.asarray(measurements, np.float64)
    heights = np.maximum(state[:, 3], 1.0)
    r = measurement_noise(heights, noise)
    innovation_cov = covariance[:, :4, :4] + r
    # K = P H^T S^-1 = (S^-1 H P)^T, since P and S are symmetric.
    gain = np.linalg.solve(innovation_cov, covariance[:, :4, :]).transpose(0, 2, 1)
    residual = measurements - state[:, :4]
    state = state + np.einsum('tij,tj->ti', gain, residual)
    keep = np.eye(STATE_SIZE)[None] - gain @ _H
    covariance = keep @ covariance @ keep.transpose(0, 2, 1) + gain @ r @ gain.transpose(0, 2, 1)
    return state, covariance


def boxes_to_measurements(boxes: np.ndarray) -> np.ndarray:
    """x1, y1, x2, y2 [N, 4] -> cx, cy, w, h [N, 4] (pixels)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    size = boxes[:, 2:] - boxes[:, :2]
    return np.concatenate([boxes[:, :2] + size / 2.0, size], axis=1)


def states_to_boxes(state: np.ndarray) -> np.ndarray:
    """x1, y1, x2, y2 [T, 4] of states [T, 8]; sizes below 1 px are held at 1 px."""
    centre = state[:, :2]
    half = np.maximum(state[:, 2:4], 1.0) / 2.0
    return np.concatenate([centre - half, centre + half], axis=1)
