"""ROS 2 interface of the pipeline: the node, message and image conversion, QoS, diagnostics.

The only subpackage that imports rclpy.
"""
