"""<name>_camera node: one camera of image.cameras (OpenCV device, or MuJoCo render in
simulation); `camera_name` gripper (the default) is the gripper camera, node gripper_camera.

Publishes <name>_cam/image_raw (full frame, rgb8, stamped at capture; offered reliably, read
best effort except by the recorder), <name>_cam/image_crop (policy view: crop [top, left,
height, width] then resize) and diagnostics.
Blank, frozen and failed frames are never published; the device is reopened with backoff.
In simulation it renders the published state (joint_states + sim/cube_pose) once both of a tick
have arrived, stamped with that state's (simulated) time, at most `fps` frames per simulated
second: frame k shows the world after tick k-1's action. It works in its own process like a real
camera.
"""
from __future__ import annotations

import numpy as np
import sys
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState

from hilserl.ros.interfaces import camera_interface
from hilserl.ros.node import (check_interface, declare, declare_config, diagnostic_array,
                              qos_profile, spin_node)
from hilserl.robot.camera import CameraConfig, CameraSupervisor, OpenCVSource
from hilserl.configuration.config import DEFAULT_CAMERA, CameraView, ImageConfig
from hilserl.messages.conventions import JOINT_NAMES, Qos, Topics, camera_node_name, camera_topics
from hilserl.messages.conversions import (ConversionError, array_to_image, joint_state_to_arrays,
                                          stamp_to_nanoseconds)
from hilserl.messages.diagnostics import DiagnosticEntry
from hilserl.learning.image_ops import crop_resize


class SimRenderSource:
    """Renders a MuJoCo scene camera at the most recently published arm/cube state."""

    def __init__(self, camera: str = DEFAULT_CAMERA):
        from so101_driver.sim_backend import SimBackend
        self.sim = SimBackend()
        self.scene_camera = self.sim.scene_camera(camera)  # refuses one the scene lacks
        self.joints = None
        self.cube_xyz = None
        self.cube_quat = None
        self.joints_stamp_ns = self.cube_stamp_ns = None

    def open(self) -> bool:
        return True

    def read(self):
        if self.joints is None:
            return None  # no state yet: a failed read, not a made-up picture
        self.sim.set_state(self.joints, self.cube_xyz, self.cube_quat)
        return self.sim.render(self.scene_camera)

    def release(self) -> None:
        pass

    def close(self) -> None:
        self.sim.close()


class CameraNode(Node):
    def __init__(self, **kwargs):
        super().__init__(camera_node_name(DEFAULT_CAMERA), **kwargs)
        backend = declare(self, 'backend', 'sim', 'opencv (a real camera) or sim (MuJoCo)',
                          read_only=True)
        self.camera_name = declare(self, 'camera_name', DEFAULT_CAMERA, 'this camera\'s name in '
                                   'image.cameras: its topics are <name>_cam/*', read_only=True)
        camera = declare_config(self, CameraConfig)
        if backend == 'sim':  # a still simulated scene renders identical frames: not frozen
            camera['frozen_frames_limit'] = 0
        self.cam_cfg = CameraConfig(**camera)
        # the crop must lie inside the frames this camera gives (its robot-file size)
        self.view_cfg = CameraView(name=self.camera_name, width_px=self.cam_cfg.width_px,
                                   height_px=self.cam_cfg.height_px,
                                   **declare_config(self, CameraView))
        self.image_cfg = ImageConfig(cameras=(self.view_cfg,),
                                     **declare_config(self, ImageConfig))
        self.last_frame_ns = None
        if backend == 'sim':
            self.source = SimRenderSource(self.camera_name)
            self.create_subscription(JointState, Topics.JOINT_STATES, self._on_joints,
                                     qos_profile(Topics.JOINT_STATES))
            self.create_subscription(PoseStamped, Topics.SIM_CUBE_POSE, self._on_cube,
                                     qos_profile(Topics.SIM_CUBE_POSE))
        elif backend == 'opencv':
            self.source = OpenCVSource(self.cam_cfg)
        else:
            raise ValueError(f"backend={backend!r}: must be 'opencv' or 'sim'")
        self.supervisor = CameraSupervisor(self.source, self.cam_cfg)
        raw_topic, view_topic = camera_topics(self.camera_name)
        self.frame_id = f'{self.camera_name}_cam_optical_frame'  # gripper: Frames.CAMERA_OPTICAL
        # offered reliably: best-effort readers (RViz) as before, the recorder gets every frame
        self.raw_pub = self.create_publisher(Image, raw_topic, qos_profile(Qos.OFFERED_FRAME))
        self.crop_pub = self.create_publisher(Image, view_topic, qos_profile(view_topic))
        self.diag_pub = self.create_publisher(DiagnosticArray, Topics.DIAGNOSTICS,
                                              qos_profile(Topics.DIAGNOSTICS))
        if backend != 'sim':  # the simulated camera renders when a tick's state is complete
            self.create_timer(1.0 / self.cam_cfg.fps, self._capture)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(f'{camera_node_name(self.camera_name)} up: backend={backend}, '
                               f'{self.cam_cfg.width_px}x{self.cam_cfg.height_px} @ '
                               f'{self.cam_cfg.fps:g} Hz, crop {self.view_cfg.crop_tlhw_px} -> '
                               f'{self.image_cfg.resize_hw_px} on {view_topic}')
        check_interface(self, camera_interface(backend, self.camera_name))

    def _on_joints(self, msg):
        try:
            self.source.joints, _, _ = joint_state_to_arrays(msg, JOINT_NAMES)
        except ConversionError as exc:
            self.get_logger().warning(f'ignoring joint state: {exc}', throttle_duration_sec=5.0)
            return
        self.source.joints_stamp_ns = stamp_to_nanoseconds(msg.header.stamp)
        self._render_if_complete(msg.header.stamp)

    def _on_cube(self, msg):
        p, o = msg.pose.position, msg.pose.orientation
        self.source.cube_xyz = np.array([p.x, p.y, p.z])
        self.source.cube_quat = np.array([o.w, o.x, o.y, o.z])
        self.source.cube_stamp_ns = stamp_to_nanoseconds(msg.header.stamp)
        self._render_if_complete(msg.header.stamp)

    def _render_if_complete(self, stamp) -> None:
        """Simulation: one frame per tick whose joint state and cube pose have both arrived."""
        stamp_ns = self.source.joints_stamp_ns
        if stamp_ns is None or stamp_ns != self.source.cube_stamp_ns:
            return
        min_gap_ns = 1e9 / self.cam_cfg.fps - 1e6  # 1 ms tolerance for rounded stamps
        if self.last_frame_ns is not None and 0 <= stamp_ns - self.last_frame_ns < min_gap_ns:
            return
        self.last_frame_ns = stamp_ns
        self._capture(stamp)

    def _capture(self, stamp=None):
        stamp = stamp if stamp is not None else self.get_clock().now().to_msg()  # capture time
        frame = self.supervisor.poll()
        if frame is None:
            level, message = self.supervisor.status()
            self.get_logger().warning(f'no valid frame: {message}', throttle_duration_sec=5.0)
            return
        self.raw_pub.publish(array_to_image(frame, 'rgb8', stamp, self.frame_id))
        view = crop_resize(frame, self.view_cfg.crop_tlhw_px, self.image_cfg.resize_hw_px)
        self.crop_pub.publish(array_to_image(view, 'rgb8', stamp, self.frame_id))

    def _publish_diagnostics(self):
        level, message = self.supervisor.status()
        values = {k: str(v) for k, v in vars(self.supervisor.counters).items()}
        values['last_problem'] = self.supervisor.last_problem
        self.diag_pub.publish(diagnostic_array(
            [DiagnosticEntry(camera_node_name(self.camera_name), level, message, values)],
            self.get_clock().now().to_msg(), hardware_id=self.cam_cfg.device))

    def close(self):
        self.supervisor.close()
        close = getattr(self.source, 'close', None)
        if close:
            close()


def main(args=None):
    return spin_node(CameraNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
