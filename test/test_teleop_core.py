"""The teleop node's decisions without ROS: what each device step publishes, and when the
simulated human answers a policy proposal (once per tick, with that tick's state) and labels a
success. Time is fed in; nothing here reads a clock."""
import json

import numpy as np
import pytest

from hilserl.robot.kinematics import SO101Kinematics
from hilserl.robot.teleop import SimHumanConfig, SimHumanTeleop
from so101_driver.teleop_core import (DEVICES, DeviceTeleop, SimHumanAnswers, TeleopConfig,
                                      TeleopMessages)

HOME_RAD = np.array([0.0, 0.2408, -0.2763, 1.6063, 0.0, 0.5])
CUBE_M = np.array([0.2, 0.0, 0.015])
EXPERT_ACTION = np.array([1.0, 0.0, 0.0, 0.0], np.float32)


def test_config_names_the_devices_and_what_each_does():
    with pytest.raises(ValueError, match=r"device='mouse': must be one of \('keyboard'"):
        TeleopConfig('mouse')
    timed = [d for d in DEVICES if TeleopConfig(d).publishes_at_control_rate]
    assert timed == ['keyboard', 'gamepad', 'leader']   # sim answers the policy; none is silent
    assert [d for d in DEVICES if TeleopConfig(d).reads_terminal_keys] == ['keyboard', 'leader']


def test_keyboard_step_publishes_the_keys_and_labels_once():
    devices = DeviceTeleop(TeleopConfig('keyboard'))
    devices.feed_keys('w\x1b[D', now_s=10.0)   # forward, and Left: re-record
    out = devices.keyboard_step(10.05)
    assert out.label == 'rerecord' and out.action.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert not out.intervention and out.stamp_ns is None   # stamped by the node when sent
    devices.feed_keys(' ', now_s=10.1)
    out = devices.keyboard_step(10.5)                       # 'w' expired; space toggled
    assert out.label is None and out.intervention and not out.action.any()


def test_labels_only_keyboard_publishes_no_action():
    devices = DeviceTeleop(TeleopConfig('keyboard', labels_only=True))
    devices.feed_keys('wk', now_s=0.0)
    assert devices.keyboard_step(0.0) == TeleopMessages(label='success')
    assert devices.keyboard_step(0.1) == TeleopMessages()   # nothing to publish


@pytest.mark.parametrize('labels_only', [False, True])
def test_the_t_key_asks_for_torque_once(labels_only):
    """t re-arms after a lock-out, beside a leader arm too (labels only): asked once per press."""
    devices = DeviceTeleop(TeleopConfig('keyboard', labels_only=labels_only))
    devices.feed_keys('t', now_s=0.0)
    assert devices.keyboard_step(0.0).torque_on
    assert not devices.keyboard_step(0.1).torque_on


def test_gamepad_step_passes_the_pad_through():
    devices = DeviceTeleop(TeleopConfig('gamepad'))
    out = devices.gamepad_step([0.0, -1.0, 0.0, 0.0, 0.0], [1, 1, 0, 0, 1, 0])
    assert out.label == 'success' and out.intervention
    assert out.action.tolist() == [1.0, 0.0, 0.0, -1.0]
    assert devices.gamepad_step([0.0] * 5, [1, 1, 0, 0, 1, 0]).label is None   # held: no repeat


def test_leader_step_takes_toggle_and_label_from_the_keyboard():
    kin = SO101Kinematics()
    devices = DeviceTeleop(TeleopConfig('leader'), kin, ee_step_m=[0.02, 0.02, 0.02])
    devices.feed_keys(' ', now_s=0.0)
    out = devices.leader_step(0.0, lambda: HOME_RAD)         # first sample: reference only
    assert out.intervention and not out.action.any() and out.label is None
    moved = HOME_RAD.copy()
    moved[:5] = kin.ik_position(kin.fk(HOME_RAD[:5])[:3, 3] + [0.01, 0.0, 0.0], HOME_RAD[:5]).q
    devices.feed_keys('k', now_s=0.1)                        # success also hands control back
    out = devices.leader_step(0.1, lambda: moved)
    assert out.label == 'success' and out.intervention       # moving the leader intervenes
    np.testing.assert_allclose(out.action[:3], [0.5, 0.0, 0.0], atol=0.02)


def test_a_failed_leader_read_passes_through_and_spends_the_keys():
    devices = DeviceTeleop(TeleopConfig('leader'))
    devices.feed_keys('j', now_s=0.0)

    def lost():
        raise OSError('no status packet')
    with pytest.raises(OSError, match='no status packet'):
        devices.leader_step(0.0, lost)
    assert devices.leader_step(0.1, lambda: HOME_RAD).label is None


class FixedExpert:
    """Records what the simulated human showed it; always proposes EXPERT_ACTION."""

    def __init__(self):
        self.calls = []

    def act(self, tcp_pose, gripper_rad, cube_xyz_m, grasped):
        self.calls.append((tcp_pose, gripper_rad, np.asarray(cube_xyz_m), grasped))
        return EXPERT_ACTION


def answers(**config):
    expert = FixedExpert()
    human = SimHumanTeleop(SimHumanConfig(**config))
    return SimHumanAnswers(human, SO101Kinematics(), expert), expert


def test_a_proposal_is_answered_once_its_ticks_state_is_in_hand():
    sim, expert = answers()
    assert sim.on_policy(np.zeros(4), 100, now_ns=1) is None          # no state yet
    assert sim.on_joints(HOME_RAD, 100, now_ns=2) is None             # no cube yet
    assert sim.on_cube(CUBE_M, 90, now_ns=3) is None                  # the cube of another tick
    sim.on_grasped(True)
    out = sim.on_cube(CUBE_M, 100, now_ns=4)
    assert out.stamp_ns == 100 and out.label is None                  # the tick's own stamp
    np.testing.assert_array_equal(out.action, EXPERT_ACTION)          # the human's action
    tcp_pose, gripper_rad, cube, grasped = expert.calls[-1]
    np.testing.assert_allclose(tcp_pose, SO101Kinematics().fk(HOME_RAD[:5]))
    assert gripper_rad == HOME_RAD[5] and cube.tolist() == CUBE_M.tolist() and grasped
    # the same tick again (a repeated message, a late input): no second answer
    assert sim.on_joints(HOME_RAD, 100, now_ns=5) is None
    assert sim.on_policy(np.zeros(4), 100, now_ns=6) is None
    # the next tick: state first, then the proposal
    assert sim.on_joints(HOME_RAD, 200, now_ns=7) is None
    assert sim.on_cube(CUBE_M, 200, now_ns=8) is None                 # proposal still for 100
    assert sim.on_policy(np.zeros(4), 200, now_ns=9).stamp_ns == 200
    assert len(expert.calls) == 2


def test_an_unstamped_proposal_is_answered_at_each_input_at_the_nodes_time():
    sim, expert = answers()
    sim.on_joints(HOME_RAD, 100, now_ns=1)
    sim.on_cube(CUBE_M, 100, now_ns=2)
    assert sim.on_policy(np.zeros(4), None, now_ns=3).stamp_ns == 3
    assert sim.on_joints(HOME_RAD, 200, now_ns=4).stamp_ns == 4
    assert sim.on_cube(CUBE_M, 300, now_ns=5).stamp_ns == 5       # stamps need not agree
    assert len(expert.calls) == 3


def test_the_human_intervenes_on_a_policy_that_heads_the_wrong_way():
    sim, _ = answers(patience_steps=3, min_intervention_steps=3)
    flags = []
    for tick in range(1, 6):
        sim.on_joints(HOME_RAD, tick, now_ns=tick)
        sim.on_cube(CUBE_M, tick, now_ns=tick)
        flags.append(sim.on_policy(-EXPERT_ACTION, tick, now_ns=tick).intervention)
    assert flags == [False, False, True, True, False]   # the third wrong step takes over


def test_success_is_pressed_once_per_episode_while_lifted():
    sim, _ = answers()
    labels = []

    def tick(stamp_ns):
        sim.on_joints(HOME_RAD, stamp_ns, now_ns=stamp_ns)
        sim.on_cube(CUBE_M, stamp_ns, now_ns=stamp_ns)
        labels.append(sim.on_policy(np.zeros(4), stamp_ns, now_ns=stamp_ns).label)
    tick(1)
    sim.on_lifted(True)
    tick(2)
    tick(3)
    assert sim.on_event(json.dumps({'event': 'start', 'episode': 4})) == 'episode 4: expert'
    tick(4)                                              # still lifted in the new episode
    sim.on_lifted(False)
    tick(5)
    assert labels == [None, 'success', None, 'success', None]


@pytest.mark.parametrize('text', ['not json', '[1, 2]', '"start"', 'null',
                                  json.dumps({'event': 'end', 'episode': 3})])
def test_other_events_change_nothing(text):
    sim, _ = answers()
    sim.success_pressed = True
    assert sim.on_event(text) is None and sim.success_pressed


def test_each_episode_draws_its_behaviour_from_the_mix():
    human = SimHumanTeleop(SimHumanConfig(behaviour_mix='random:1'), seed=1)
    sim = SimHumanAnswers(human)
    assert sim.on_event(json.dumps({'event': 'start', 'episode': 0})) == 'episode 0: random'
    assert sim.on_event(json.dumps({'event': 'start'})) == 'episode None: random'
