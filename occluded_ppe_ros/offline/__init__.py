"""Offline use without a ROS graph: `ppe infer` over image folders, videos and MCAP recordings."""
