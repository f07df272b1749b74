"""Shared, ROS-free foundations of hilserl: conversions, conventions, configuration.

Nothing in this package imports rclpy except modules named ``*node.py``.
"""

__version__ = '0.1.0'
