"""Pedestrian tracking after the Predictor (no ROS): `PedestrianTracker`, its config, MOTChallenge text."""
from occluded_ppe_ros.tracking.kalman import MotionNoise
from occluded_ppe_ros.tracking.tracker import PedestrianTracker, TrackedFrame, TrackerConfig, TrackStep

__all__ = ['MotionNoise', 'PedestrianTracker', 'TrackStep', 'TrackedFrame', 'TrackerConfig']
