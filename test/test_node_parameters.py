"""One home per fact for node parameters: the driver's and the camera's parameters are the
`param` fields of their config dataclasses (the default, description and range written once, on
the field), and parameters that carry a training-config value default to that dataclass's
value rather than to a copy."""
import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.parameter import Parameter  # noqa: E402

from hilserl.robot.camera import CameraConfig  # noqa: E402
from hilserl.configuration.config import (ActionConfig, CameraView, ImageConfig,  # noqa: E402
                                          TaskConfig)
from hilserl.configuration.parameters import parameter_fields  # noqa: E402
from hilserl.robot.sim_clock import SimClockConfig  # noqa: E402
from so101_driver.driver_core import DriverConfig  # noqa: E402
from so101_driver.ee_control import EEControlConfig  # noqa: E402


def _check_declared_from(node, classes):
    checked = 0
    for cls in classes:
        for name, default, spec in parameter_fields(cls):
            descriptor = node.describe_parameter(name)
            assert descriptor.description == spec['description'], name
            assert descriptor.read_only, name
            value = node.get_parameter(name).value
            expected = list(default) if isinstance(default, tuple) else default
            assert (list(value) if isinstance(expected, list) else value) == expected, name
            if spec['float_range'] is not None:
                low, high = spec['float_range']
                assert (descriptor.floating_point_range[0].from_value,
                        descriptor.floating_point_range[0].to_value) == (low, high), name
            if spec['int_range'] is not None:
                low, high = spec['int_range']
                assert (descriptor.integer_range[0].from_value,
                        descriptor.integer_range[0].to_value) == (low, high), name
            checked += 1
    return checked


def test_driver_and_camera_parameters_are_their_config_fields(ros_context):
    from so101_driver.camera_node import CameraNode
    from so101_driver.driver_node import DriverNode
    from so101_driver.teleop_node import TeleopNode
    driver = DriverNode(context=ros_context, parameter_overrides=[
        Parameter('backend', value='sim')])
    camera = CameraNode(context=ros_context, parameter_overrides=[
        Parameter('backend', value='sim')])
    teleop = TeleopNode(context=ros_context, parameter_overrides=[
        Parameter('device', value='none')])
    try:
        assert _check_declared_from(driver, (EEControlConfig, DriverConfig, SimClockConfig)) > 10
        assert _check_declared_from(camera, (CameraConfig, CameraView, ImageConfig)) == 11
        # the task's values: the training config's defaults, not copies of them
        assert list(driver.get_parameter('workspace_min_m').value) == \
            list(TaskConfig().workspace_min_m)
        assert list(camera.get_parameter('crop_tlhw_px').value) == \
            list(CameraView().crop_tlhw_px)
        assert teleop.get_parameter('control_rate_hz').value == TaskConfig().control_rate_hz
        assert list(teleop.get_parameter('ee_step_m').value) == \
            list(ActionConfig().ee_step_m)
    finally:
        for node in (driver, camera, teleop):
            close = getattr(node, 'close', None)
            if callable(close):
                close()
            node.destroy_node()
