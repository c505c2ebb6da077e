"""Plain-Python inference: Predictor, pre/post-processing, backends, export. Never imports rclpy."""
