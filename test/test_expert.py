"""Scripted expert: its decisions, the jaw clearance its grasp point relies on, and grasps of
yawed cubes through the driver's own control loop (where the old expert lost the cube)."""
import math

import numpy as np
import pytest

from hilserl.robot.expert import GRASP_POINT_IN_TCP_M, ExpertConfig, ScriptedExpert

TOP_DOWN = np.diag([-1.0, 1.0, -1.0])  # TCP x toward the base, approach straight down


def pose(xyz, rotation=TOP_DOWN):
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, xyz
    return out


def grasp_tcp(cube, rotation=TOP_DOWN):
    return np.asarray(cube) - rotation @ GRASP_POINT_IN_TCP_M


CUBE = np.array([0.25, 0.01, 0.015])


def test_opens_before_descending_and_aims_the_grasp_point():
    expert, cfg = ScriptedExpert(), ExpertConfig()
    above = grasp_tcp(CUBE) + [0, 0, 0.03]
    action = expert.act(pose(above), 0.7, CUBE, False)
    assert action.dtype == np.float32 and action.shape == (4,)
    assert action[3] > 0 and np.allclose(action[:3], 0)              # open first, in place
    assert expert.act(pose(above), 1.2, CUBE, False)[3] == 0.0         # never past open
    action = expert.act(pose(above), cfg.open_gripper_rad, CUBE, False)
    assert action[2] < 0 and np.allclose(action[:2], 0, atol=1e-6)     # then straight down
    off = expert.act(pose(above + [0.01, 0, 0]), cfg.open_gripper_rad, CUBE, False)
    assert off[0] < 0 and off[2] > 0    # 1 cm off: realign at the hover height, gently
    assert off[0] == pytest.approx(-cfg.xy_gain * 0.01 / 0.02, abs=1e-6)


def test_closes_in_place_at_the_cube_and_keeps_closing_while_it_tips():
    expert, cfg = ScriptedExpert(), ExpertConfig()
    at_cube = grasp_tcp(CUBE) + [0, 0, 0.002]
    action = expert.act(pose(at_cube), cfg.open_gripper_rad, CUBE, False)
    assert action[3] == -1 and action[0] == 0 and action[1] == 0
    # Half closed, the moving jaw has swept the cube 8 mm toward the fixed jaw and tipped it
    # (its centre 2.5 mm lower): still closing, not chasing it.
    swept = CUBE + [-0.008, 0, -0.0025]
    action = expert.act(pose(at_cube), 0.5, swept, False)
    assert action[3] == -1 and action[0] == 0 and action[1] == 0
    # The cube escaped the jaws: reopen and go back up.
    action = expert.act(pose(at_cube), 0.5, CUBE + [0.03, 0, 0], False)
    assert action[3] > 0 and action[2] > 0


def test_lifts_when_grasped_up_to_the_reachable_target():
    expert, cfg = ScriptedExpert(), ExpertConfig()
    action = expert.act(pose([0.22, 0.0, 0.02]), 0.2, CUBE, True)
    assert action.tolist() == [0.0, 0.0, 1.0, -1.0]
    assert expert.act(pose([0.22, 0.0, cfg.lift_target_m]), 0.2, CUBE, True)[2] == 0.0
    assert cfg.lift_target_m < 0.095   # the top-down reach from the home pose


mujoco = pytest.importorskip('mujoco')
from hilserl.robot.kinematics import SO101Kinematics  # noqa: E402
from so101_driver.driver_core import DriverConfig, DriverCore  # noqa: E402
from so101_driver.ee_control import TOP_DOWN_SEED_RAD  # noqa: E402
from so101_driver.sim_backend import SimBackend  # noqa: E402


@pytest.fixture(scope='module')
def sim():
    backend = SimBackend()
    yield backend
    backend.close()


@pytest.mark.parametrize('yaw', [0.0, 0.5, -0.5, math.pi / 4])
@pytest.mark.parametrize('along_jaws_m', [-0.005, 0.0, 0.005])
def test_grasp_point_clears_both_jaws_for_any_yaw(sim, yaw, along_jaws_m):
    """The cube at the grasp point (+-5 mm along the jaw axis: alignment error), yawed, with the
    gripper just open enough to descend: both jaws come down beside it, not on a corner (the
    previous grasp point overlapped the cube by up to 10 mm at 0.5 rad)."""
    model, data, kin = sim.model, sim.data, SO101Kinematics()
    q = np.append(TOP_DOWN_SEED_RAD, ExpertConfig().open_gripper_rad - 0.05)
    tcp = kin.fk(q[:5])
    centre = tcp[:3, 3] + tcp[:3, :3] @ (GRASP_POINT_IN_TCP_M + [along_jaws_m, 0, 0])
    cube_yaw = math.atan2(tcp[1, 0], tcp[0, 0]) + yaw
    sim.set_state(q, centre, [math.cos(cube_yaw / 2), 0, 0, math.sin(cube_yaw / 2)])
    cube = model.geom('cube_geom').id
    jaws = [model.geom('gripper_link_geom1').id] + [
        i for i in range(model.ngeom) if model.geom(i).name.startswith('moving_jaw')]
    clearance = min(mujoco.mj_geomDistance(model, data, cube, jaw, 0.05, None) for jaw in jaws)
    assert clearance > 0.0015


def run_episode(sim, kin, home_xy, cube_xy, cube_yaw, max_steps=60):
    """One episode as the record graph runs it: the expert answers each 10 Hz tick's state, the
    driver core turns the action into goals over ten 10 ms physics steps."""
    core = DriverCore(sim, DriverConfig(reset_tcp_xyz_m=(*home_xy, 0.07), random_ee_reset=False),
                      kin)
    home = core.begin_reset()
    sim.reset(home, cube_xy, cube_yaw_rad=cube_yaw)
    sim.step(0.2)
    t = 0.01
    core.tick(t, 0.01)
    assert core.mode == 'idle'
    expert = ScriptedExpert()
    for step in range(max_steps):
        task = sim.task_state()
        q = sim.read().position
        assert core.ee_action(expert.act(kin.fk(q[:5]), q[5], task.cube_xyz_m, task.grasped),
                              t)[0]
        for _ in range(10):
            sim.step(0.01)
            t += 0.01
            core.tick(t, 0.01)
        if sim.task_state().lifted:
            return step + 1
    return None


# Home TCP xy, cube xy, cube yaw: yawed cubes at the far edge of the spawn range, where a push
# puts the cube out of top-down reach (x ~ 0.30 m). The previous expert lost the cube in this
# loop in all but the last two (contact makes that chaotic: the clearance test above is the
# deterministic check of the cause).
LOST_BEFORE = [((0.2252, 0.0047), (0.2875, -0.0376), 0.0803),
               ((0.22, -0.02), (0.29, 0.035), 0.25),
               ((0.22, -0.02), (0.29, 0.035), 0.5),
               ((0.27, 0.02), (0.29, -0.035), -0.25),
               ((0.27, 0.02), (0.29, 0.035), 0.5),
               ((0.22, -0.02), (0.28, -0.035), -0.5)]


@pytest.mark.parametrize('home_xy, cube_xy, cube_yaw', LOST_BEFORE)
def test_grasps_and_lifts_yawed_cubes_through_the_driver_loop(sim, home_xy, cube_xy, cube_yaw):
    steps = run_episode(sim, SO101Kinematics(), home_xy, cube_xy, cube_yaw)
    assert steps is not None and steps <= 30
