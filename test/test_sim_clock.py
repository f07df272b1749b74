"""The simulated clock: one control period per answered tick, stale and duplicate answers
ignored, a missing answer held after a wall-clock timeout, learner pacing; and the driver node
publishing /clock and each tick's state on it."""
import time

import numpy as np
import pytest

from hilserl.robot.sim_clock import SIM_START_NS, LearnerPacer, LockStepClock, SimClockConfig

PERIOD_NS = 100_000_000


def test_a_tick_advances_only_with_its_own_answer():
    clock = LockStepClock(SimClockConfig(control_rate_hz=10.0, action_timeout_s=5.0))
    assert clock.now_ns == SIM_START_NS
    assert clock.due(wall_s=0.0) is None                       # nothing answered yet
    assert clock.offer(np.ones(4), SIM_START_NS - PERIOD_NS) == 'stale'
    assert clock.due(wall_s=1.0) is None
    assert clock.offer(np.ones(4), SIM_START_NS) == 'accepted'
    assert clock.offer(np.zeros(4), SIM_START_NS) == 'duplicate'
    assert clock.due(wall_s=1.0) == 'act'
    assert np.array_equal(clock.take(), np.ones(4))
    assert clock.advanced(wall_s=1.0) == SIM_START_NS + PERIOD_NS
    assert clock.offer(np.ones(4), None) == 'accepted'         # unstamped: the current tick
    assert clock.counters['stale_actions'] == 1 and clock.counters['duplicate_actions'] == 1


def test_a_missing_answer_holds_after_the_wall_clock_timeout():
    clock = LockStepClock(SimClockConfig(action_timeout_s=2.0))
    assert clock.due(wall_s=10.0) is None
    assert clock.due(wall_s=11.9) is None
    assert clock.due(wall_s=12.0) == 'hold' and clock.take() is None
    clock.advanced(wall_s=12.0)
    assert clock.counters['missed_actions'] == 1 and clock.ticks == 1


def test_pacing_stops_the_clock_and_the_timeout():
    clock = LockStepClock(SimClockConfig(action_timeout_s=1.0))
    clock.offer(np.zeros(4), SIM_START_NS)
    assert clock.due(wall_s=0.0, pacing_ok=False) is None
    assert clock.due(wall_s=50.0, pacing_ok=False) is None     # waiting for the learner
    assert clock.due(wall_s=50.5, pacing_ok=True) == 'act'
    clock.advanced(50.5)
    assert clock.due(wall_s=100.0, pacing_ok=False) is None
    assert clock.due(wall_s=100.5, pacing_ok=True) is None     # the timeout restarted
    assert clock.counters['missed_actions'] == 0
    assert clock.counters['paced_waits'] == 2  # ticks that waited, not polls


def test_real_time_factor_limits_the_pace():
    clock = LockStepClock(SimClockConfig(control_rate_hz=10.0, max_real_time_factor=1.0))
    clock.offer(np.zeros(4), clock.now_ns)
    assert clock.due(0.0) == 'act'
    clock.advanced(0.0)
    clock.offer(np.zeros(4), clock.now_ns)
    assert clock.due(0.05) is None and clock.due(0.1) == 'act'


def test_learner_pacer_waits_for_updates_per_received_transition():
    pacer = LearnerPacer(SimClockConfig(min_updates_per_step=1.0, pacing_slack_steps=2,
                                        learner_silence_s=60.0))
    assert pacer.allows_step(0.0)                              # no learner heard of
    pacer.on_progress(received=0, steps=0, training=False, wall_s=0.0)
    pacer.on_progress(received=50, steps=0, training=False, wall_s=1.0)
    assert pacer.allows_step(1.0)                              # still filling learning_starts
    pacer.on_progress(received=60, steps=0, training=True, wall_s=2.0)
    pacer.on_progress(received=63, steps=0, training=True, wall_s=3.0)
    assert not pacer.allows_step(3.0)                          # 3 new transitions, 0 updates
    pacer.on_progress(received=63, steps=1, training=True, wall_s=4.0)
    assert pacer.allows_step(4.0)                              # within the slack of 2
    pacer.on_progress(received=70, steps=4, training=True, wall_s=5.0)
    assert not pacer.allows_step(5.0) and pacer.owed_updates() == 4  # (70-60-2) - 4
    assert pacer.allows_step(5.0 + 61.0)                       # a silent learner stops pacing
    pacer.on_progress(received=0, steps=0, training=True, wall_s=70.0)  # restarted learner
    assert pacer.allows_step(70.0)
    free = LearnerPacer(SimClockConfig(min_updates_per_step=0.0))
    free.on_progress(received=100, steps=0, training=True, wall_s=0.0)
    assert free.allows_step(0.0)


@pytest.mark.parametrize('bad', [dict(control_rate_hz=0), dict(action_timeout_s=-1),
                                 dict(min_updates_per_step=float('nan')),
                                 dict(max_real_time_factor=-0.5)])
def test_config_errors_name_the_field(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        SimClockConfig(**bad)


def test_driver_node_owns_time_and_steps_once_per_answer(ros_context):
    rclpy = pytest.importorskip('rclpy')
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float32MultiArray

    from hilserl.ros.node import qos_profile
    from hilserl.messages.conventions import Topics
    from hilserl.messages.conversions import action_to_msg, stamp_to_nanoseconds
    from so101_driver.driver_node import DriverNode

    node = DriverNode(context=ros_context, parameter_overrides=[
        Parameter('random_ee_reset', value=False),
        Parameter('action_timeout_s', value=600.0)])  # a loaded machine never times out here
    probe = rclpy.create_node('probe', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(probe)
    clocks, joints, tcps = [], [], []
    probe.create_subscription(Clock, '/clock', lambda m: clocks.append(
        stamp_to_nanoseconds(m.clock)), 10)
    probe.create_subscription(JointState, Topics.JOINT_STATES, lambda m: joints.append(
        stamp_to_nanoseconds(m.header.stamp)), qos_profile(Topics.JOINT_STATES))
    probe.create_subscription(PoseStamped, Topics.TCP_POSE, lambda m: tcps.append(
        (stamp_to_nanoseconds(m.header.stamp), m.pose.position.x)), qos_profile(Topics.TCP_POSE))
    actions = probe.create_publisher(Float32MultiArray, Topics.EE_ACTION,
                                     qos_profile(Topics.EE_ACTION))

    def spin_until(condition, timeout_s=60.0):
        deadline = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        return condition()

    try:
        # the first state is published at start-up, maybe before the probe matched: answer
        # unstamped until a tick reaches the probe
        while not tcps:
            actions.publish(action_to_msg(np.zeros(4), 'policy'))
            spin_until(lambda: bool(tcps), 1.0)
        ticks_seen = len(tcps)
        for _ in range(5):
            stamp_ns, _ = tcps[-1]
            actions.publish(action_to_msg([-1.0, 0, 0, 0], 'policy', stamp_ns=stamp_ns))
            assert spin_until(lambda: len(tcps) > ticks_seen)
            ticks_seen = len(tcps)
        stamps = [s for s, _ in tcps[-6:]]
        assert np.all(np.diff(stamps) == PERIOD_NS), stamps      # one control period per tick
        xs = [x for _, x in tcps[-6:]]
        assert 0.07 < xs[0] - xs[-1] < 0.11, xs                  # ~2 cm per -x answer
        assert clocks[-1] == stamps[-1] and joints[-1] == stamps[-1]
        # an answer to an old tick does not advance the clock; nothing advances unanswered
        actions.publish(action_to_msg([-1.0, 0, 0, 0], 'policy', stamp_ns=stamps[0]))
        spin_until(lambda: False, 1.0)
        assert len(tcps) == ticks_seen
        assert node.lock_step.counters['stale_actions'] >= 1
        assert node.lock_step.counters['missed_actions'] == 0
    finally:
        executor.shutdown()
        node.destroy_node()
        probe.destroy_node()
