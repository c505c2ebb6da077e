"""ROS 2 glue, the only code that imports rclpy: lifecycle node, conversions, markers, diagnostics."""
