import numpy as np
import pytest

from hilserl.robot.kinematics import SO101Kinematics
from so101_driver.ee_control import TOP_DOWN_SEED_RAD, EEControlConfig, EEController

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


def test_target_never_runs_more_than_a_step_ahead_of_the_arm(ctrl):
    # The arm does not move at all (blocked): repeated actions must not pile up in the goal
    # (the old controller stacked them on its previous goal, up to the 2 cm re-anchor distance).
    for _ in range(5):
        out = ctrl.step(HOME, [-1.0, 0, 0, 0])
    np.testing.assert_allclose(tcp(ctrl, out.joint_goal_rad) - tcp(ctrl, HOME), [-0.02, 0, 0],
                               atol=1e-3)


def test_repeated_actions_move_one_step_each_when_the_arm_keeps_up(ctrl):
    q = HOME
    for _ in range(3):
        q = ctrl.step(q, [-1.0, 0, 0, 0]).joint_goal_rad
    np.testing.assert_allclose(tcp(ctrl, q) - tcp(ctrl, HOME), [-0.06, 0, 0], atol=1e-3)


def test_zero_action_holds_a_sagging_arm(ctrl):
    # Gravity keeps the measured pose a little below the goal: the goal must not follow it down.
    ctrl.reset(HOME)  # as the driver does on entering EE mode: the last goal is the reference
    q = HOME
    for _ in range(20):
        sagging = q + np.array([0, 0.01, 0.01, 0, 0, 0])
        q = ctrl.step(sagging, [0, 0, 0, 0]).joint_goal_rad
    np.testing.assert_allclose(q, HOME, atol=1e-12)


def test_pushing_up_past_the_top_down_reach_stops_instead_of_tilting(ctrl):
    # Issue #14: +z beyond the top-down region used to lift 124 mm and tilt the gripper 88 deg.
    q = HOME
    for _ in range(10):
        out = ctrl.step(q, [0, 0, 1.0, 0])
        q = out.joint_goal_rad
    moved = tcp(ctrl, q) - tcp(ctrl, HOME)
    assert out.command_fraction == 0.0  # held at the edge of the reach
    assert np.abs(moved[:2]).max() < 0.001 and 0 <= moved[2] < 0.03
    approach = ctrl.kin.fk(q[:5])[:3, 2]
    assert np.arccos(-approach[2]) <= ctrl.cfg.approach_tolerance_rad + 1e-9


def test_joint_step_limit_scales_the_whole_step_so_the_direction_holds():
    config = EEControlConfig(max_joint_step_rad=0.02)
    limited = EEController(SO101Kinematics(), config)
    out = limited.step(HOME, [0, -1.0, 0, 0])
    assert out.joint_step_limited
    moved = tcp(limited, out.joint_goal_rad) - tcp(limited, HOME)
    assert np.linalg.norm(moved) > 0.002
    assert np.degrees(np.arccos(-moved[1] / np.linalg.norm(moved))) < 5.0


def test_free_approach_reaches_where_top_down_cannot():
    free = EEController(SO101Kinematics(), EEControlConfig(approach_axis=None))
    q = HOME
    for _ in range(3):
        q = free.step(q, [0, 0, 1.0, 0]).joint_goal_rad
    np.testing.assert_allclose(tcp(free, q) - tcp(free, HOME), [0, 0, 0.06], atol=1e-3)


def test_config_validation():
    with pytest.raises(ValueError, match='ee_step_m'):
        EEControlConfig(ee_step_m=(0.1, 0.02, 0.02))
    with pytest.raises(ValueError, match='workspace'):
        EEControlConfig(workspace_min_m=(0.3, 0, 0), workspace_max_m=(0.2, 1, 1))
    with pytest.raises(ValueError, match='approach_axis'):
        EEControlConfig(approach_axis=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match='approach_tolerance_rad'):
        EEControlConfig(approach_tolerance_rad=2.0)
    with pytest.raises(ValueError, match='backoff_bisections'):
        EEControlConfig(backoff_bisections=-1)
    with pytest.raises(ValueError, match='ik_tolerance_m'):
        EEControlConfig(ik_tolerance_m=0.0)


# --- The property of issue #14: end-effector motion is what was commanded or none ------------
DOWN = np.array([0.0, 0.0, -1.0])
UNIT_COMMANDS = [np.array(v, dtype=float) for v in
                 ([1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1])]


def tilt_deg(kin, q):
    return np.degrees(np.arccos(np.clip(kin.fk(q[:5])[:3, 2] @ DOWN, -1.0, 1.0)))


def top_down_ik(kin, xyz, seed):
    """Arm joints with the TCP exactly top-down at xyz (independent IK), or None."""
    result = kin.ik_position(xyz, seed, hold_approach=DOWN, restarts=0)
    if result.converged and tilt_deg(kin, result.q) < 0.5:
        return result.q
    return None


def start_poses(kin, cfg):
    """Top-down poses at a 5x5x4 grid over the workspace box (walls, corners and the side near
    the base included). Where a grid point has no top-down pose (above ~0.09 m, far out, close
    to the base) the start is the last top-down pose on the way to it from a reachable point
    low in the box: the reach boundary, where the wrist sits at its limit."""
    lo, hi = np.array(cfg.workspace_min_m), np.array(cfg.workspace_max_m)
    grid = [np.array([x, y, z]) for x in np.linspace(lo[0], hi[0], 5)
            for y in np.linspace(lo[1], hi[1], 5) for z in np.linspace(lo[2], hi[2], 4)]
    poses = []
    for point in grid:
        seed = TOP_DOWN_SEED_RAD.copy()
        seed[0] = np.arctan2(-point[1], point[0] - 0.0388)  # +pan turns the TCP toward -y
        inside = np.array([0.20, point[1], 0.03])
        q_inside = top_down_ik(kin, inside, seed)
        assert q_inside is not None, inside
        q = top_down_ik(kin, point, q_inside)
        if q is None:  # bisect the segment inside -> point for the last top-down pose
            good, bad, q = 0.0, 1.0, q_inside
            for _ in range(7):
                share = 0.5 * (good + bad)
                found = top_down_ik(kin, inside + share * (point - inside), q)
                good, bad, q = (share, bad, found) if found is not None else (good, share, q)
        poses.append(np.append(q, 0.7))
    return poses


TICKS = 3


@pytest.fixture(scope='module')
def sweep():
    """(pose before, unit command, EEStep, tick) for every start pose and axis command, over
    TICKS ticks of the same command with an arm that keeps up (measured = previous goal)."""
    kin, cfg = SO101Kinematics(), EEControlConfig()
    ctrl = EEController(kin, cfg)
    out = []
    for q0 in start_poses(kin, cfg):
        for command in UNIT_COMMANDS:
            ctrl.reset()
            q = q0
            for tick in range(TICKS):
                step = ctrl.step(q, np.append(command, 0.0))
                out.append((q, command, step, tick))
                q = step.joint_goal_rad
    return kin, cfg, out


def test_sweep_moves_along_the_command_or_not_at_all(sweep):
    kin, _cfg, results = sweep
    wrong = []
    for q0, command, step, _tick in results:
        moved = kin.fk(step.joint_goal_rad[:5])[:3, 3] - kin.fk(q0[:5])[:3, 3]
        distance = np.linalg.norm(moved)
        if distance >= 0.001:
            angle = np.degrees(np.arccos(np.clip(moved @ command / distance, -1, 1)))
            if angle > 25.0:
                wrong.append((kin.fk(q0[:5])[:3, 3].round(3), command, moved.round(4)))
    assert not wrong, f'{len(wrong)} of {len(results)} moves off the command: {wrong[:5]}'


def test_sweep_keeps_the_tool_axis_vertical(sweep):
    kin, _cfg, results = sweep
    tilts = [tilt_deg(kin, step.joint_goal_rad) for _q0, _c, step, _t in results]
    assert max(tilts) <= 10.0


def test_sweep_commands_into_a_wall_hold_and_do_not_turn_the_base(sweep):
    kin, cfg, results = sweep
    lo, hi = np.array(cfg.workspace_min_m), np.array(cfg.workspace_max_m)
    walls = 0
    for q0, command, step, _tick in results:
        tcp0 = kin.fk(q0[:5])[:3, 3]
        axis = int(np.argmax(np.abs(command)))
        wall = hi[axis] if command[axis] > 0 else lo[axis]
        if abs(tcp0[axis] - wall) > 0.0005:
            continue
        walls += 1
        assert abs(step.joint_goal_rad[0] - q0[0]) < 0.005, (tcp0, command)
        assert np.linalg.norm(kin.fk(step.joint_goal_rad[:5])[:3, 3] - tcp0) < 0.001
    assert walls >= 20  # the floor and the side walls are reachable top-down in places


def test_sweep_makes_reachable_moves_in_full(sweep):
    """'Or none' only where the move is out of reach: wherever the full step ends at a top-down
    pose too (checked by independent IK), the controller takes all of it, or as much as the
    per-tick joint step limit allows (large joint motions near the wrist limit)."""
    kin, cfg, results = sweep
    step_m = np.array(cfg.ee_step_m)
    lo, hi = np.array(cfg.workspace_min_m), np.array(cfg.workspace_max_m)
    checked, short = 0, []
    for q0, command, step, tick in results:
        tcp0 = kin.fk(q0[:5])[:3, 3]
        end = tcp0 + command * step_m
        if tick > 0 or np.any(end < lo) or np.any(end > hi) or \
                top_down_ik(kin, end, q0[:5]) is None:
            continue
        checked += 1
        moved = np.linalg.norm(kin.fk(step.joint_goal_rad[:5])[:3, 3] - tcp0)
        if step.command_fraction < 1.0 or (
                moved < 0.9 * np.linalg.norm(command * step_m) and not step.joint_step_limited):
            short.append((tcp0.round(3), command, round(moved, 4), step.command_fraction))
    assert checked >= 100
    assert not short, f'{len(short)} of {checked} reachable steps cut short: {short[:5]}'
