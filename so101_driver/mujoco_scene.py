"""Generate the MuJoCo scene (SO-101 + table + cube + gripper and front cameras) from the URDF.

Bodies, joints, inertials and collision geometry all come from `urdf/so101.urdf`, so the
simulated arm and `hilserl.robot.kinematics` cannot disagree. Actuators mimic STS3215 position
servos.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from hilserl.robot.kinematics import default_urdf_path, matrix_to_quaternion_xyzw, rpy_to_matrix

CAMERA_NAME = 'gripper_cam'
# A fixed camera in front of the arm, looking down at the table where the cube is (MuJoCo
# cameras look along their -z: x to the image's right, y up): the second view of
# image.cameras (name front) in simulation.
FRONT_CAMERA_NAME = 'front_cam'
FRONT_CAMERA_POS_M = (0.45, 0.0, 0.2)
FRONT_CAMERA_XYAXES = (0.0, 1.0, 0.0, -0.17, 0.0, 0.23)
TCP_SITE = 'gripper_frame_link'
CUBE_BODY = 'cube'


@dataclass(frozen=True)
class SceneConfig:
    """Physical parameters of the simulated scene (SI units)."""
    cube_size_m: float = 0.03
    cube_mass_kg: float = 0.02
    timestep_s: float = 0.002
    # STS3215-like position servo (kp N*m/rad, kv N*m*s/rad, torque limit N*m).
    servo_kp: float = 998.22
    servo_kv: float = 2.731
    servo_torque_limit_nm: float = 3.35
    gripper_torque_limit_nm: float = 1.2     # reduced: the real gripper burns when squeezing
    joint_damping: float = 0.60
    joint_frictionloss: float = 0.052
    joint_armature: float = 0.028
    friction: float = 1.5
    camera_fovy_deg: float = 75.0
    image_width_px: int = 640
    image_height_px: int = 480

    def __post_init__(self):
        if not 0.01 <= self.cube_size_m <= 0.05:
            raise ValueError(f'cube_size_m={self.cube_size_m}: must be in [0.01, 0.05] m')
        for name in ('cube_mass_kg', 'timestep_s', 'servo_kp', 'servo_torque_limit_nm',
                     'gripper_torque_limit_nm', 'friction', 'camera_fovy_deg'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name}={getattr(self, name)}: must be > 0')


def _fmt(values) -> str:
    return ' '.join(f'{float(v):.9g}' for v in values)


def _quat_wxyz(rot: np.ndarray) -> np.ndarray:
    x, y, z, w = matrix_to_quaternion_xyzw(rot)
    return np.array([w, x, y, z])


def _origin(element) -> tuple:
    origin = element.find('origin') if element is not None else None

    def attribute(name):
        return [float(v) for v in (origin.get(name, '0 0 0') if origin is not None
                                   else '0 0 0').split()]
    xyz, rpy = attribute('xyz'), attribute('rpy')
    return np.array(xyz), rpy_to_matrix(rpy)


def _add_geoms(body: ET.Element, link: ET.Element, material: str):
    for i, col in enumerate(link.findall('collision')):
        xyz, rot = _origin(col)
        geometry = col.find('geometry')[0]
        attrs = {'name': f'{link.get("name")}_geom{i}', 'pos': _fmt(xyz),
                 'quat': _fmt(_quat_wxyz(rot)), 'material': material, 'class': 'arm'}
        if geometry.tag == 'box':
            attrs.update(type='box', size=_fmt(np.array(geometry.get('size').split(),
                                                        float) / 2))
        elif geometry.tag == 'cylinder':
            attrs.update(type='cylinder', size=_fmt([float(geometry.get('radius')),
                                                     float(geometry.get('length')) / 2]))
        elif geometry.tag == 'sphere':
            attrs.update(type='sphere', size=_fmt([float(geometry.get('radius'))]))
        else:
            raise ValueError(f'unsupported URDF geometry {geometry.tag!r} in {link.get("name")}')
        ET.SubElement(body, 'geom', attrs)


def _add_inertial(body: ET.Element, link: ET.Element) -> bool:
    inertial = link.find('inertial')
    if inertial is None:
        return False
    mass = float(inertial.find('mass').get('value'))
    if mass < 1e-6:  # URDF placeholder links (TCP) carry no physical mass
        return False
    xyz, rot = _origin(inertial)
    i = inertial.find('inertia')
    tensor = np.array([[float(i.get('ixx')), float(i.get('ixy')), float(i.get('ixz'))],
                       [float(i.get('ixy')), float(i.get('iyy')), float(i.get('iyz'))],
                       [float(i.get('ixz')), float(i.get('iyz')), float(i.get('izz'))]])
    tensor = rot @ tensor @ rot.T  # MJCF fullinertia is in the body frame
    full = [tensor[0, 0], tensor[1, 1], tensor[2, 2], tensor[0, 1], tensor[0, 2], tensor[1, 2]]
    ET.SubElement(body, 'inertial', {'pos': _fmt(xyz), 'mass': f'{mass:.9g}',
                                     'fullinertia': _fmt(full)})
    return True


def build_mjcf(config: Optional[SceneConfig] = None, urdf_path=None) -> str:
    """MJCF XML text of the scene."""
    cfg = config or SceneConfig()
    urdf = ET.parse(Path(urdf_path) if urdf_path else default_urdf_path()).getroot()
    links = {link.get('name'): link for link in urdf.findall('link')}
    children = {}
    for joint in urdf.findall('joint'):
        children.setdefault(joint.find('parent').get('link'), []).append(joint)

    mj = ET.Element('mujoco', model='so101_cube')
    ET.SubElement(mj, 'compiler', angle='radian', autolimits='true')
    ET.SubElement(mj, 'option', timestep=f'{cfg.timestep_s:g}', integrator='implicitfast',
                  cone='elliptic', impratio='10')
    visual = ET.SubElement(mj, 'visual')
    ET.SubElement(visual, 'global', offwidth=str(cfg.image_width_px),
                  offheight=str(cfg.image_height_px))
    ET.SubElement(visual, 'quality', shadowsize='0')
    ET.SubElement(visual, 'headlight', ambient='0.4 0.4 0.4', diffuse='0.6 0.6 0.6')

    default = ET.SubElement(mj, 'default')
    ET.SubElement(default, 'joint', damping=f'{cfg.joint_damping:g}',
                  frictionloss=f'{cfg.joint_frictionloss:g}',
                  armature=f'{cfg.joint_armature:g}')
    arm = ET.SubElement(default, 'default', {'class': 'arm'})
    # Arm geoms touch the table and the cube but not each other.
    ET.SubElement(arm, 'geom', contype='2', conaffinity='1', condim='4',
                  friction=f'{cfg.friction:g} 0.02 0.001')

    asset = ET.SubElement(mj, 'asset')
    ET.SubElement(asset, 'texture', name='grid', type='2d', builtin='checker', width='256',
                  height='256', rgb1='0.55 0.5 0.45', rgb2='0.5 0.45 0.4')
    ET.SubElement(asset, 'material', name='table', texture='grid', texrepeat='8 8')
    ET.SubElement(asset, 'material', name='arm', rgba='0.95 0.75 0.15 1')
    ET.SubElement(asset, 'material', name='cube', rgba='0.85 0.1 0.1 1')

    world = ET.SubElement(mj, 'worldbody')
    ET.SubElement(world, 'light', pos='0.2 0 1.2', dir='0 0 -1', diffuse='0.6 0.6 0.6')
    ET.SubElement(world, 'geom', name='table', type='box', pos='0.25 0 -0.01',
                  size='0.45 0.45 0.01', material='table', contype='1', conaffinity='1',
                  friction=f'{cfg.friction:g} 0.02 0.001')

    def add_body(parent_el: ET.Element, link_name: str, pos, rot, joint=None):
        body = ET.SubElement(parent_el, 'body', name=link_name, pos=_fmt(pos),
                             quat=_fmt(_quat_wxyz(rot)))
        if joint is not None:
            j = joint
            axis = [float(v) for v in j.find('axis').get('xyz').split()]
            limit = j.find('limit')
            ET.SubElement(body, 'joint', name=j.get('name'), type='hinge', axis=_fmt(axis),
                          range=f'{float(limit.get("lower")):.9g} {float(limit.get("upper")):.9g}')
        link = links[link_name]
        _add_inertial(body, link)
        _add_geoms(body, link, 'arm')
        for child_joint in children.get(link_name, []):
            child = child_joint.find('child').get('link')
            cpos, crot = _origin(child_joint)
            if child_joint.get('type') == 'fixed' and not links[child].findall('collision'):
                add_frame(body, child, cpos, crot)
            else:
                add_body(body, child, cpos, crot,
                         None if child_joint.get('type') == 'fixed' else child_joint)
        return body

    def add_frame(body: ET.Element, name: str, pos, rot):
        """Massless fixed frames become sites; the camera's optical frame becomes a camera."""
        ET.SubElement(body, 'site', name=name, pos=_fmt(pos), quat=_fmt(_quat_wxyz(rot)),
                      size='0.004', rgba='0 1 0 0.5', group='3')
        if name.endswith('_optical_frame'):
            # MuJoCo cameras look along -z with +y up; REP-103 optical looks along +z, +y down.
            flip = np.diag([1.0, -1.0, -1.0])
            ET.SubElement(body, 'camera', name=CAMERA_NAME, pos=_fmt(pos),
                          quat=_fmt(_quat_wxyz(rot @ flip)), fovy=f'{cfg.camera_fovy_deg:g}')

    add_body(world, 'base_link', np.zeros(3), np.eye(3))
    ET.SubElement(world, 'camera', name=FRONT_CAMERA_NAME, pos=_fmt(FRONT_CAMERA_POS_M),
                  xyaxes=_fmt(FRONT_CAMERA_XYAXES), fovy=f'{cfg.camera_fovy_deg:g}')

    half = cfg.cube_size_m / 2
    cube = ET.SubElement(world, 'body', name=CUBE_BODY, pos=f'0.25 0 {half:.6g}')
    ET.SubElement(cube, 'freejoint', name='cube_joint')
    ET.SubElement(cube, 'geom', name='cube_geom', type='box', size=_fmt([half] * 3),
                  mass=f'{cfg.cube_mass_kg:g}', material='cube', contype='3', conaffinity='3',
                  condim='4', friction=f'{cfg.friction:g} 0.02 0.001')

    actuators = ET.SubElement(mj, 'actuator')
    for joint in urdf.findall('joint'):
        if joint.get('type') != 'revolute':
            continue
        limit = joint.find('limit')
        torque = cfg.gripper_torque_limit_nm if joint.get('name') == 'gripper' \
            else cfg.servo_torque_limit_nm
        ET.SubElement(actuators, 'position', name=joint.get('name'), joint=joint.get('name'),
                      kp=f'{cfg.servo_kp:g}', kv=f'{cfg.servo_kv:g}',
                      ctrlrange=f'{float(limit.get("lower")):.9g} {float(limit.get("upper")):.9g}',
                      forcerange=f'{-torque:g} {torque:g}')
    ET.indent(mj)
    return ET.tostring(mj, encoding='unicode')


def load_model(config: Optional[SceneConfig] = None, urdf_path=None):
    """Compiled mujoco.MjModel of the scene."""
    import mujoco
    return mujoco.MjModel.from_xml_string(build_mjcf(config, urdf_path))
