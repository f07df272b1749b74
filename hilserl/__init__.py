"""Shared foundations of hilserl, one folder a concern (see each folder's docstring): common,
messages, configuration, robot, learning, data form the ROS-free core; ros holds what imports
rclpy or launch. Inside the core, imports point down that list (robot and learning are siblings).
"""

__version__ = '0.1.0'
