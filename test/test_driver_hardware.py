"""DriverCore + HardwareBackend through the real SDK and the pty STS bus."""
import time

import numpy as np
import pytest

from hilserl.conventions import JOINT_NAMES
from hilserl.kinematics import SO101Kinematics
from so101_driver.calibration import default_calibration, rad_to_ticks
from so101_driver.driver_core import ERROR, DriverConfig, DriverCore
from so101_driver.ee_control import TOP_DOWN_SEED_RAD
from so101_driver.feetech_bus import FeetechBus
from so101_driver.hardware_backend import HardwareBackend
from so101_driver.sts_simulator import SimulatedBus

HOME = np.append(TOP_DOWN_SEED_RAD, 0.7)
RATE_HZ = 100.0


@pytest.fixture
def rig():
    cal = default_calibration()
    start = {cal[n].id: rad_to_ticks(n, HOME[k], cal[n]) for k, n in enumerate(JOINT_NAMES)}
    sim = SimulatedBus(positions=start)
    bus = FeetechBus(sim.port, retries=1, backoff_s=0.001)
    backend = HardwareBackend(bus, cal)
    backend.connect()
    core = DriverCore(backend, DriverConfig(command_timeout_s=0.3), SO101Kinematics())
    yield sim, bus, backend, core
    backend.close()
    sim.close()


def run(core, seconds, clock):
    end = clock[0] + seconds
    while clock[0] < end:
        core.tick(clock[0], 1.0 / RATE_HZ)
        time.sleep(1.0 / RATE_HZ)
        clock[0] += 1.0 / RATE_HZ


def tcp(core, q):
    return core.kin.fk(q[:5])[:3, 3]


def test_connect_seeds_goals_from_measured_positions(rig):
    sim, bus, backend, core = rig
    assert backend.torque_enabled
    for k, name in enumerate(JOINT_NAMES):
        servo = sim.servos[k + 1]
        assert servo.get('goal_position') == servo.get('present_position')
        assert servo.get('torque_enable') == 1
    np.testing.assert_allclose(backend.read().position, HOME, atol=2e-3)


def test_ee_delta_sequence_ends_within_3mm_of_the_ik_target(rig):
    sim, bus, backend, core = rig
    clock = [0.0]
    run(core, 0.05, clock)
    start = tcp(core, core.reading.position)
    actions = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [-0.5, -0.5, 0.5, 0]]
    for action in actions:
        ok, reason = core.ee_action(action, clock[0])
        assert ok, reason
        run(core, 0.1, clock)
    run(core, 0.4 - 0.3, clock)  # within the watchdog: let the servos arrive
    expected = start + np.array([0.01, 0.01, 0.03])  # sum of actions x 0.02 m
    target = tcp(core, core.target)
    assert np.linalg.norm(target - expected) < 0.002
    assert np.linalg.norm(tcp(core, core.reading.position) - target) < 0.003


def test_workspace_is_clamped(rig):
    sim, bus, backend, core = rig
    clock = [0.0]
    run(core, 0.05, clock)
    for _ in range(15):
        core.ee_action([0, 0, -1, 0], clock[0])
        run(core, 0.05, clock)
    assert core.counters['workspace_clamps'] > 0
    assert tcp(core, core.target)[2] >= core.cfg.ee.workspace_min_m[2] - 0.002


def test_watchdog_holds_when_commands_stop(rig):
    sim, bus, backend, core = rig
    clock = [0.0]
    run(core, 0.05, clock)
    far = HOME.copy()
    far[0] += 1.5  # takes 0.5 s at 3 rad/s: the 0.3 s watchdog fires first
    core.joint_command(far, clock[0])
    run(core, 0.5, clock)
    assert core.counters['watchdog_holds'] == 1 and core.mode == 'idle'
    held = core.written.copy()
    run(core, 0.3, clock)
    np.testing.assert_allclose(core.written, held)      # no further motion toward `far`
    assert abs(held[0] - far[0]) > 0.05


def test_estop_holds_and_refuses_until_cleared(rig):
    sim, bus, backend, core = rig
    clock = [0.0]
    run(core, 0.05, clock)
    core.set_estop(True)
    ok, reason = core.ee_action([1, 0, 0, 0], clock[0])
    assert not ok and 'emergency stop' in reason
    assert not core.joint_command(HOME, clock[0])[0]
    before = backend.read().position
    run(core, 0.2, clock)
    np.testing.assert_allclose(backend.read().position, before, atol=2e-3)
    core.set_estop(False)
    assert core.ee_action([1, 0, 0, 0], clock[0])[0]


@pytest.mark.parametrize('bad', [[0, 0, float('nan'), 0], [0, 0, 0], [float('inf')] * 4])
def test_invalid_commands_are_counted_never_executed(rig, bad):
    sim, bus, backend, core = rig
    clock = [0.0]
    run(core, 0.05, clock)
    goal_before = {i: s.get('goal_position') for i, s in sim.servos.items()}
    ok, reason = core.ee_action(bad, clock[0])
    assert not ok and core.counters['rejected_commands'] == 1
    run(core, 0.05, clock)
    assert {i: s.get('goal_position') for i, s in sim.servos.items()} == goal_before


def test_silent_servo_holds_and_reports_then_recovers(rig):
    sim, bus, backend, core = rig
    clock = [0.0]
    run(core, 0.05, clock)
    sim.silence(3)
    run(core, 0.1, clock)
    assert core.counters['read_failures'] >= 1 and not core.ready
    entry = core.diagnostics(bus_stats=bus.stats)[0]
    assert entry.level == ERROR and 'not answering' in entry.message
    assert '3' in entry.values['bus_errors_by_id']
    sim.silence(3, False)
    run(core, 0.05, clock)
    assert core.ready and core.diagnostics()[0].level == 0


def test_overheating_gripper_is_an_error_in_diagnostics(rig):
    sim, bus, backend, core = rig
    sim.set_temperature(6, 80)
    entries = {e.name: e for e in core.diagnostics(backend.read_health(), bus.stats)}
    assert entries['so101_driver: gripper'].level == ERROR
    assert 'overheating' in entries['so101_driver: gripper'].message


def test_corrupted_replies_are_survived(rig):
    sim, bus, backend, core = rig
    clock = [0.0]
    sim.corrupt_next_replies(1)
    run(core, 0.05, clock)
    assert core.ready and bus.stats.retries >= 1
