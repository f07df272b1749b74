"""Shared pytest set-up: headless rendering and localhost-only DDS for every test."""
import os

os.environ.setdefault('MUJOCO_GL', 'osmesa')
os.environ.setdefault('PYOPENGL_PLATFORM', 'osmesa')
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA?max_msg_size=4MB')

import pytest  # noqa: E402

_next_domain = [40 + (os.getpid() % 50)]


@pytest.fixture
def ros_context():
    """An isolated rclpy Context on its own domain id; shut down after the test."""
    rclpy = pytest.importorskip('rclpy')
    context = rclpy.Context()
    _next_domain[0] = 40 + (_next_domain[0] - 39) % 100
    rclpy.init(context=context, domain_id=_next_domain[0])
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)
