"""What the driver node used to decide itself, now in DriverCore, without ROS: how far a
wall-clock tick advances, and the state after a simulation reset teleports the arm home."""
import numpy as np
import pytest

from hilserl.robot.kinematics import SO101Kinematics
from so101_driver.backend import ArmBackend, JointReading
from so101_driver.driver_core import DriverConfig, DriverCore, tick_step_s

HOME_RAD = np.array([0.0, 0.2408, -0.2763, 1.6063, 0.0, 0.5])


class StillArm(ArmBackend):
    """Stays where it was put; records the goals written."""

    def __init__(self, position):
        self.position = np.asarray(position, dtype=np.float64)
        self.goals = []

    def read(self) -> JointReading:
        return JointReading(self.position.copy(), np.zeros(6), np.zeros(6), 0.0)

    def write_goal(self, position_rad) -> None:
        self.goals.append(np.array(position_rad))

    def set_torque(self, enabled: bool) -> None:
        pass

    @property
    def torque_enabled(self) -> bool:
        return True


def test_a_tick_advances_by_the_time_that_passed_within_bounds():
    assert tick_step_s(5.0, None, 0.01) == 0.01                     # the first tick: nominal
    assert tick_step_s(5.013, 5.0, 0.01) == pytest.approx(0.013)    # late: what really passed
    assert tick_step_s(5.0, 5.0, 0.01) == 0.0
    assert tick_step_s(4.9, 5.0, 0.01) == 0.0                       # never backwards
    assert tick_step_s(7.0, 5.0, 0.01) == pytest.approx(0.05)       # a stall: five periods


def test_placed_at_home_holds_there_and_takes_the_next_action_from_there():
    kin = SO101Kinematics()
    arm = StillArm(np.zeros(6))
    core = DriverCore(arm, DriverConfig(random_ee_reset=False), kin)
    core.tick(0.0, 0.01)
    home = core.begin_reset()
    assert core.mode == 'reset' and not core.ready
    arm.position = home.copy()                               # the simulator teleported it
    core.placed_at(arm.read(), home)
    assert core.mode == 'idle' and core.ready
    np.testing.assert_array_equal(core.written, home)
    np.testing.assert_array_equal(core.target, home)
    home[0] += 1.0                                           # the core keeps its own copies
    assert core.written[0] == core.target[0] == arm.position[0]
    # the next EE action starts from the home TCP, not from the pose before the reset
    ok, _ = core.ee_action([1.0, 0.0, 0.0, 0.0], now_s=0.1)
    assert ok
    tcp_home = kin.fk(arm.position[:5])[:3, 3]
    assert core.tcp_target_m[0] == pytest.approx(
        tcp_home[0] + DriverConfig().ee.ee_step_m[0], abs=1e-3)


class FollowingArm(StillArm):
    """Goes where it is told at once (the slew limit is the core's): the path is the goals."""

    def write_goal(self, position_rad) -> None:
        super().write_goal(position_rad)
        self.position = np.array(position_rad, dtype=np.float64)


def reset_from_low_down(kin):
    """(arm, core, home, the arm's joints) with the TCP 2 cm above the table and a reset
    begun."""
    low = np.append(kin.ik_position([0.20, 0.08, 0.02], HOME_RAD[:5],
                                    hold_approach=np.array([0, 0, -1.0])).q, 0.8)
    arm = FollowingArm(low)
    core = DriverCore(arm, DriverConfig(random_ee_reset=False), kin)
    core.tick(0.0, 0.01)
    return arm, core, core.begin_reset(), low


def test_a_reset_from_low_down_lifts_straight_up_before_going_home():
    kin = SO101Kinematics()
    arm, core, home, low = reset_from_low_down(kin)
    start = kin.fk(low[:5])[:3, 3]
    for i in range(2000):
        core.tick(0.01 * (i + 1), 0.01)
        if core.mode == 'idle':
            break
    assert core.mode == 'idle' and core.ready
    np.testing.assert_allclose(arm.position, home, atol=0.03)
    path = np.array([kin.fk(g[:5])[:3, 3] for g in arm.goals])
    assert path[:, 2].min() >= start[2] - 0.005                  # never lower than it started
    high = np.flatnonzero(path[:, 2] >= DriverConfig().reset_safe_height_m - 0.005)
    assert high.size, 'the TCP never reached the safe height'
    lift = path[:high[0] + 1]                                     # up to the safe height first
    assert np.abs(lift[:, :2] - start[:2]).max() < 0.03           # ... nearly straight up
    # from high up it goes home at once (no lift), as before
    arm.position = np.append(kin.ik_position([0.22, -0.05, 0.2], HOME_RAD[:5],
                                             hold_approach=np.array([0, 0, -1.0])).q, 0.8)
    core.tick(30.0, 0.01)
    core.begin_reset()
    assert core.reset_waypoints == [] and np.allclose(core.target, home)


def test_torque_on_during_a_reset_goes_on_with_the_reset_lifting_first():
    """A lock-out while going home, re-armed low down: the reset is not taken as done; it goes
    on from where the arm is, lifting first again."""
    kin = SO101Kinematics()
    arm, core, home, _ = reset_from_low_down(kin)
    core.set_torque(True)                 # `hilserl torque on` while the reset runs
    assert core.mode == 'reset' and not core.ready
    assert kin.fk(core.target[:5])[2, 3] == pytest.approx(DriverConfig().reset_safe_height_m,
                                                          abs=2e-3)
    for i in range(2000):
        core.tick(0.01 * (i + 1), 0.01)
        if core.mode == 'idle':
            break
    np.testing.assert_allclose(arm.position, home, atol=0.03)
