"""MuJoCo scene generated from the URDF: kinematic agreement, servo behaviour, camera, task."""
import numpy as np
import pytest

mujoco = pytest.importorskip('mujoco')

from hilserl.configuration.config import TrainConfig  # noqa: E402
from hilserl.robot.kinematics import SO101Kinematics  # noqa: E402
from so101_driver.mujoco_scene import SceneConfig, build_mjcf  # noqa: E402
from so101_driver.sim_backend import SimBackend  # noqa: E402
from so101_driver.ee_control import TOP_DOWN_SEED_RAD, home_joint_goal  # noqa: E402


@pytest.fixture(scope='module')
def backend():
    sim = SimBackend()
    yield sim
    sim.close()


def test_fk_matches_mujoco_tcp_site_over_100_configurations(backend):
    kin = SO101Kinematics()
    rng = np.random.default_rng(0)
    site = backend.model.site('gripper_frame_link').id
    worst_mm = worst_rot = 0.0
    for _ in range(100):
        q = rng.uniform(kin.lower, kin.upper)
        backend.set_state(np.append(q, 0.0))
        pose = kin.fk(q)
        worst_mm = max(worst_mm, 1000 * np.linalg.norm(backend.data.site_xpos[site] - pose[:3, 3]))
        worst_rot = max(worst_rot, np.abs(backend.data.site_xmat[site].reshape(3, 3)
                                          - pose[:3, :3]).max())
    assert worst_mm < 1.0 and worst_rot < 1e-6


def test_scene_is_generated_from_the_urdf():
    xml = build_mjcf()
    for name in ('shoulder_pan', 'gripper', 'gripper_cam', 'cube_joint', 'gripper_frame_link'):
        assert f'name="{name}"' in xml
    with pytest.raises(ValueError, match='cube_size_m'):
        SceneConfig(cube_size_m=0.2)


def test_position_servo_tracks_a_step_and_torque_off_drops_the_arm(backend):
    q0 = np.append(TOP_DOWN_SEED_RAD, 0.5)
    backend.reset(q0, cube_xy_m=(0.4, 0.3))
    goal = q0.copy()
    goal[1] -= 0.3
    backend.write_goal(goal)
    backend.step(1.0)
    reading = backend.read()
    assert abs(reading.position[1] - goal[1]) < 0.03       # reached within ~1.7 deg
    assert abs(reading.velocity[1]) < 0.05                  # and settled
    lifted = reading.position.copy()
    backend.set_torque(False)
    backend.step(1.0)
    assert not backend.torque_enabled
    assert np.abs(backend.read().position - lifted).max() > 0.1  # gravity wins with no torque
    backend.set_torque(True)
    with pytest.raises(ValueError, match='6 finite'):
        backend.write_goal([0.0] * 5)
    with pytest.raises(ValueError, match='6 finite'):
        backend.write_goal([float('nan')] * 6)


def test_camera_renders_640x480_with_the_cube_in_view(backend):
    backend.reset(np.append(TOP_DOWN_SEED_RAD, 0.7), cube_xy_m=(0.25, 0.0))
    frame = backend.render()
    assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
    red = (frame[..., 0] > 150) & (frame[..., 1] < 80) & (frame[..., 2] < 80)
    assert red.sum() > 500, 'cube not visible in the gripper camera'
    backend.reset(np.append(TOP_DOWN_SEED_RAD, 0.7), cube_xy_m=(0.45, 0.4))
    red_away = (lambda f: ((f[..., 0] > 150) & (f[..., 1] < 80) & (f[..., 2] < 80)).sum())(
        backend.render())
    assert red_away < red.sum() / 10


def test_random_ee_reset_stays_within_range_and_top_down():
    kin = SO101Kinematics()
    cfg = TrainConfig()
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(20):
        q = home_joint_goal(kin, cfg.task.reset_tcp_xyz_m, cfg.task.reset_gripper_rad,
                            cfg.task.random_ee_range_xy_m, rng)
        pose = kin.fk(q[:5])
        offsets.append(pose[:3, 3] - np.array(cfg.task.reset_tcp_xyz_m))
        assert pose[2, 2] < -0.98  # approach within ~11 deg of straight down
        assert q[5] == cfg.task.reset_gripper_rad
    offsets = np.array(offsets)
    assert np.abs(offsets[:, :2]).max() <= 0.03 + 0.002 and np.abs(offsets[:, 2]).max() < 0.002
    assert offsets[:, :2].std() > 0.005
