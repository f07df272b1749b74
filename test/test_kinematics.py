import numpy as np
import pytest

from hilserl.robot.kinematics import (SO101Kinematics, matrix_to_euler_zyx,
                                      matrix_to_quaternion_xyzw, rpy_to_matrix)

# Verified SO-101 FK vectors (shared docs): q (rad) -> TCP mm, approach (TCP +z) in base_link.
FK_VECTORS = [
    ((0, 0, 0, 0, 0), (391.4, 0.0, 226.5), (1, 0, 0)),
    ((0.5, 0, 0, 0, 0), (348.2, -169.0, 226.5), (0.878, -0.479, 0)),
    ((0, 0.5, 0, 0, 0), (404.6, 0.0, 58.6), (0.878, 0, -0.479)),
    ((0, 0, 0.5, 0, 0), (354.1, 0.0, 85.8), (0.878, 0, -0.479)),
    ((0, 0, 0, 0.5, 0), (368.1, 0.0, 151.1), (0.878, 0, -0.479)),
    ((0, 0, 0, 0, 0.5), (391.4, -3.8, 227.4), (1, 0, 0)),
    ((0, -1.57, 1.57, 0, 0), (250.8, 0.0, 142.0), (1, 0, 0)),
    ((0, -0.1948, 0.4063, 1.3593, 0), (200.0, 0.0, 50.0), (0, 0, -1)),
    ((0, 0.2408, -0.1280, 1.4580, 0), (250.0, 0.0, 50.0), (0, 0, -1)),
    ((0.3, 0.2, -0.4, 0.6, 0.7), (377.1, -110.0, 185.6), (0.880, -0.272, -0.389)),
    ((0.1, -0.3, 0.5, 0.2, 0.1), (338.0, -30.8, 141.5), (0.916, -0.092, -0.389)),
    ((-0.8, -0.5, 0.9, 1.0, -1.2), (139.3, 113.9, 23.7), (0.118, 0.122, -0.985)),
    ((1.2, 0.6, 0.3, -0.7, 2.0), (163.0, -339.8, 62.7), (0.355, -0.913, -0.199)),
    ((-0.4, -1.0, 1.2, 0.9, 0.3), (177.5, 56.1, 33.9), (0.418, 0.177, -0.891)),
    (tuple(np.radians([10, -20, 30, 40, -50])), (286.6, -37.6, 88.5), (0.633, -0.112, -0.766)),
    ((0, 0.2408, -0.2763, 1.6063, 0), (250.0, 0.0, 70.0), (0, 0, -1)),
    ((1.91986, 1.74533, 1.69, 1.65806, 2.84121), (16.5, -53.6, 254.2), (-0.127, -0.349, 0.928)),
    ((-1.91986, -1.74533, -1.69, -1.65806, -2.74385), (86.5, -139.0, -64.5),
     (-0.127, 0.349, -0.928)),
]


@pytest.fixture(scope='module')
def kin():
    return SO101Kinematics()


@pytest.mark.parametrize('q,xyz_mm,approach', FK_VECTORS)
def test_fk_matches_verified_vectors(kin, q, xyz_mm, approach):
    pose = kin.fk(q)
    np.testing.assert_allclose(pose[:3, 3] * 1000, xyz_mm, atol=0.1)
    np.testing.assert_allclose(pose[:3, 2], approach, atol=1.5e-3)


def test_limits_and_names_come_from_the_urdf(kin):
    assert kin.chain.joint_names == SO101Kinematics.ARM_JOINTS
    np.testing.assert_allclose(kin.upper, [1.91986, 1.74533, 1.69, 1.65806, 2.84121])
    assert kin.gripper_limits == (-0.174533, 1.74533)


def test_urdf_parses_with_the_ros_urdf_parser():
    from urdf_parser_py.urdf import URDF
    from hilserl.robot.kinematics import default_urdf_path
    robot = URDF.from_xml_string(default_urdf_path().read_text())
    links = {link.name for link in robot.links}
    assert {'base_link', 'gripper_frame_link', 'gripper_cam_optical_frame'} <= links
    chain = robot.get_chain('base_link', 'gripper_frame_link', links=False)
    assert chain[:5] == list(SO101Kinematics.ARM_JOINTS)
    masses = {link.name: link.inertial.mass for link in robot.links if link.inertial}
    assert masses['upper_arm_link'] == pytest.approx(0.103)


def test_jacobian_matches_finite_differences(kin):
    rng = np.random.default_rng(3)
    for _ in range(10):
        q = rng.uniform(kin.lower, kin.upper)
        jac = kin.jacobian(q)
        eps = 1e-6
        for i in range(5):
            dq = np.zeros(5)
            dq[i] = eps
            numeric = (kin.fk(q + dq)[:3, 3] - kin.fk(q - dq)[:3, 3]) / (2 * eps)
            np.testing.assert_allclose(jac[:3, i], numeric, atol=1e-6)


def test_fk_and_jacobian_is_fk_and_jacobian_in_one_pass(kin):
    q = np.array([0.3, 0.2, -0.4, 0.6, 0.7])
    pose, jac = kin.chain.fk_and_jacobian(q)
    np.testing.assert_array_equal(pose, kin.fk(q))
    np.testing.assert_array_equal(jac, kin.jacobian(q))


def test_ik_reaches_100_random_reachable_targets_within_2mm(kin):
    rng = np.random.default_rng(0)
    start = np.array([0.0, 0.2408, -0.2763, 1.6063, 0.0])
    errors = []
    for _ in range(100):
        q = rng.uniform(kin.lower, kin.upper)
        q[4] = start[4]  # IK moves pan..wrist_flex; roll is held
        target = kin.fk(q)[:3, 3]
        result = kin.ik_position(target, start)
        assert np.all(result.q >= kin.lower - 1e-12) and np.all(result.q <= kin.upper + 1e-12)
        errors.append(result.position_error_m)
    assert max(errors) < 0.002, f'{sum(e >= 0.002 for e in errors)} targets missed'


def test_ik_holds_top_down_for_small_steps(kin):
    q = np.array([0.0, 0.2408, -0.2763, 1.6063, 0.0])
    down = np.array([0.0, 0.0, -1.0])
    for delta in ([0.02, 0, 0], [0, 0.02, 0], [0, 0, -0.02], [-0.02, -0.02, 0.02]):
        target = kin.fk(q)[:3, 3] + delta
        result = kin.ik_position(target, q, hold_approach=down)
        assert result.position_error_m < 0.002
        approach = kin.fk(result.q)[:3, 2]
        assert np.degrees(np.arccos(np.clip(approach @ down, -1, 1))) < 6.0
        q = result.q


def test_ik_converges_quickly_with_a_joint_pinned_at_its_limit(kin):
    # 2 cm beyond home needs wrist_flex past its limit: the other joints must take over at once
    # (the EE controller gives IK a dozen iterations per tick and no restarts).
    q = np.array([0.0, 0.2408, -0.2763, 1.6063, 0.0])
    target = kin.fk(q)[:3, 3] + [0.02, 0, 0]
    result = kin.ik_position(target, q, hold_approach=np.array([0, 0, -1.0]), restarts=0,
                             max_iterations=8)
    assert result.q[3] > kin.upper[3] - 0.01
    assert result.position_error_m < 1e-4


def test_euler_and_quaternion_conversions_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(50):
        rpy = rng.uniform([-3, -1.5, -3], [3, 1.5, 3])
        rot = rpy_to_matrix(rpy)
        np.testing.assert_allclose(matrix_to_euler_zyx(rot), rpy, atol=1e-9)
        x, y, z, w = matrix_to_quaternion_xyzw(rot)
        assert abs(x * x + y * y + z * z + w * w - 1) < 1e-12


def test_fk_rejects_wrong_length(kin):
    with pytest.raises(ValueError, match='expected 5 joint values'):
        kin.fk([0, 0, 0])
