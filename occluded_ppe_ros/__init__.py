"""Occluded pedestrian pose estimation for ROS 2.

Sub-packages: `model` (the network, PyTorch), `inference` (Predictor, backends, export; no ROS),
`ros` (the only code that imports rclpy). `skeleton` defines the 13 joints once for everything.
"""

__version__ = '0.1.0'
