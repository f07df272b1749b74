import numpy as np
import pytest

from hilserl.robot.kinematics import SO101Kinematics
from hilserl.robot.teleop import (GamepadLayout, GamepadTeleop, KeyboardTeleop, LeaderArmTeleop,
                                  SimHumanConfig, SimHumanTeleop, parse_terminal_keys)


def test_terminal_bytes_to_keys():
    assert parse_terminal_keys('wW\x1b[Dk\x1b') == ['w', 'w', 'left', 'k', 'esc']


def test_keyboard_held_keys_map_to_axes_and_expire():
    kb = KeyboardTeleop(hold_s=0.15)
    for key in parse_terminal_keys('wrq'):
        kb.feed(key, now_s=1.0)
    out = kb.output(1.05)
    assert out.action.tolist() == [1.0, 0.0, 1.0, -1.0] and not out.intervention
    assert kb.output(1.3).action.tolist() == [0.0, 0.0, 0.0, 0.0]  # released
    kb.feed('s', 2.0)
    kb.feed('w', 2.0)
    assert kb.output(2.0).action[0] == 0.0  # opposite keys cancel


def test_keyboard_intervention_toggle_and_labels():
    kb = KeyboardTeleop()
    kb.feed(' ', 0.0)
    assert kb.output(0.0).intervention
    kb.feed('k', 0.1)
    out = kb.output(0.1)
    assert out.label == 'success' and not out.intervention  # ending hands control back
    assert kb.output(0.2).label is None                      # labels are one-shot
    for key, label in (('j', 'failure'), ('esc', 'failure'), ('u', 'rerecord'),
                       ('left', 'rerecord')):
        kb.feed(key, 1.0)
        assert kb.output(1.0).label == label


def test_gamepad_deadzone_buttons_and_edges():
    pad = GamepadTeleop(GamepadLayout(deadzone=0.2))
    axes = [0.1, -1.0, 0.0, 0.0, 0.6]
    buttons = [1, 1, 0, 0, 1, 0]
    out = pad.output(axes, buttons)
    assert out.action[0] == pytest.approx(1.0)         # stick up = forward
    assert out.action[1] == 0.0                        # inside the deadzone
    assert out.action[2] == pytest.approx(-0.5)        # (0.6 - 0.2) / 0.8, down
    assert out.action[3] == -1.0 and out.intervention and out.label == 'success'
    assert pad.output(axes, buttons).label is None     # held button: no repeat
    assert not pad.output([0] * 5, [0] * 6).intervention


def test_leader_arm_tcp_motion_becomes_actions():
    kin = SO101Kinematics()
    leader = LeaderArmTeleop(kin, ee_step_m=(0.02, 0.02, 0.02))
    q0 = np.array([0.0, 0.2408, -0.2763, 1.6063, 0.0, 0.5])
    assert not leader.output(q0).intervention           # first sample: reference only
    target = kin.fk(q0[:5])[:3, 3] + [0.01, 0.0, 0.0]
    q1 = q0.copy()
    q1[:5] = kin.ik_position(target, q0[:5]).q
    q1[5] = 0.3                                         # squeezing the leader's trigger
    out = leader.output(q1)
    np.testing.assert_allclose(out.action[:3], [0.5, 0.0, 0.0], atol=0.02)
    assert out.action[3] == -1.0 and out.intervention
    still = leader.output(q1)
    assert not still.intervention and not np.any(still.action)


def test_sim_human_takes_over_on_stall_or_deviation_then_releases():
    human = SimHumanTeleop(SimHumanConfig(patience_steps=2, min_intervention_steps=3))
    expert = np.array([1.0, 0.0, 0.0, 0.0])
    assert human.output(expert, np.zeros(4), None).intervention       # no policy: stalled
    human.reset()
    agreeing = np.array([0.9, 0.1, 0.0, 0.0])
    assert not any(human.output(expert, agreeing, 0.05).intervention for _ in range(5))
    flags = [human.output(expert, -expert, 0.05).intervention for _ in range(2)]
    assert flags == [False, True]                                     # after 2 deviating steps
    flags = [human.output(expert, agreeing, 0.05).intervention for _ in range(3)]
    assert flags == [True, False, False]                  # 3 steps in control in all, released


def test_sim_human_judges_direction_not_style():
    human = SimHumanTeleop(SimHumanConfig(direction_tolerance_deg=60.0))
    expert = np.array([0.0, 0.0, -1.0, 0.0], np.float32)
    # slower, or off by less than the tolerance: fine; sideways or backwards: wrong
    assert not human.deviates(np.array([0.0, 0.0, -0.2, 0.0]), expert)
    assert not human.deviates(np.array([0.5, 0.0, -0.9, 0.0]), expert)     # 29 deg off
    assert human.deviates(np.array([1.0, 0.0, -0.3, 0.0]), expert)         # 73 deg off
    assert human.deviates(np.array([0.0, 0.0, 0.4, 0.0]), expert)
    assert human.deviates(np.zeros(4), expert)                             # not moving
    # the gripper driven against the expert's firm command
    gripping = np.array([0.0, 0.0, 0.0, -1.0], np.float32)
    assert human.deviates(np.array([0.0, 0.0, 0.0, 0.8]), gripping)
    assert not human.deviates(np.array([0.0, 0.0, 0.0, 0.3]), gripping)
    # the expert barely moving: no direction to disagree with
    assert not human.deviates(np.array([1.0, 0.0, 0.0, 0.0]),
                              np.array([0.0, 0.0, -0.1, 0.0], np.float32))
    with pytest.raises(ValueError, match='direction_tolerance_deg'):
        SimHumanConfig(direction_tolerance_deg=200.0)
