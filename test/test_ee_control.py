import numpy as np
import pytest

from hilserl.kinematics import SO101Kinematics
from so101_driver.ee_control import EEControlConfig, EEController

HOME = np.array([0.0, 0.2408, -0.2763, 1.6063, 0.0, 0.7])


@pytest.fixture
def ctrl():
    return EEController(SO101Kinematics(), EEControlConfig())


def tcp(ctrl, q):
    return ctrl.kin.fk(q[:5])[:3, 3]


def test_full_action_moves_one_step_size(ctrl):
    out = ctrl.step(HOME, [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(tcp(ctrl, out.joint_goal_rad) - tcp(ctrl, HOME), [0.02, 0, 0],
                               atol=1e-3)
    assert out.joint_goal_rad[5] == pytest.approx(0.7)  # 0 = hold


def test_gripper_minus_one_closes_plus_one_opens(ctrl):
    closed = ctrl.step(HOME, [0, 0, 0, -1.0]).joint_goal_rad[5]
    ctrl.reset()
    opened = ctrl.step(HOME, [0, 0, 0, 1.0]).joint_goal_rad[5]
    ctrl.reset()
    half = ctrl.step(HOME, [0, 0, 0, -0.5]).joint_goal_rad[5]
    assert closed < half < 0.7 < opened
    assert 0.7 - closed == pytest.approx(2 * (0.7 - half))


def test_gripper_never_squeezes_far_past_the_measured_jaw(ctrl):
    measured = HOME.copy()
    measured[5] = 0.3  # blocked by a cube
    goal = measured[5]
    for _ in range(10):
        goal = ctrl.step(measured, [0, 0, 0, -1.0]).joint_goal_rad[5]
    assert goal >= 0.3 - ctrl.cfg.max_gripper_squeeze_rad - 1e-9


def test_workspace_box_clamps_the_target(ctrl):
    q = HOME.copy()
    for _ in range(30):
        out = ctrl.step(q, [0, 0, -1.0, 0])
        q = out.joint_goal_rad
    assert out.clamped_to_workspace
    assert tcp(ctrl, q)[2] >= ctrl.cfg.workspace_min_m[2] - 0.002


def test_joint_step_is_limited(ctrl):
    config = EEControlConfig(ee_step_m=(0.05, 0.05, 0.05), max_joint_step_rad=0.01)
    limited = EEController(SO101Kinematics(), config)
    out = limited.step(HOME, [1.0, 1.0, 1.0, 0.0])
    assert out.joint_step_limited
    assert np.abs(out.joint_goal_rad[:5] - HOME[:5]).max() <= 0.01 + 1e-12


@pytest.mark.parametrize('action', [[0, 0, float('nan'), 0], [0, 0, 0], [0, 0, 0, float('inf')]])
def test_invalid_actions_are_refused(ctrl, action):
    with pytest.raises(ValueError, match='action'):
        ctrl.step(HOME, action)


def test_out_of_range_actions_are_clipped_not_amplified(ctrl):
    a = ctrl.step(HOME, [5.0, 0, 0, 0]).joint_goal_rad
    ctrl.reset()
    b = ctrl.step(HOME, [1.0, 0, 0, 0]).joint_goal_rad
    np.testing.assert_allclose(a, b)


def test_reference_reanchors_when_the_arm_lags(ctrl):
    ctrl.step(HOME, [1.0, 0, 0, 0])
    ctrl.step(HOME, [1.0, 0, 0, 0])
    # The arm did not move at all (blocked): the next target starts from the measured pose.
    out = ctrl.step(HOME, [1.0, 0, 0, 0])
    assert np.linalg.norm(tcp(ctrl, out.joint_goal_rad) - tcp(ctrl, HOME)) < 0.045


def test_config_validation():
    with pytest.raises(ValueError, match='ee_step_m'):
        EEControlConfig(ee_step_m=(0.1, 0.02, 0.02))
    with pytest.raises(ValueError, match='workspace'):
        EEControlConfig(workspace_min_m=(0.3, 0, 0), workspace_max_m=(0.2, 1, 1))
