"""so101_driver node: the SO-101 arm (Feetech hardware, MuJoCo simulation, or a ros2_control stack
that owns the joints) on ROS 2.

Subscribes  action (std_msgs/Float32MultiArray [dx, dy, dz, gripper] in [-1, 1]),
            joint_position_controller/commands (std_msgs/Float64MultiArray, 6 joint goals, rad).
Publishes   joint_states, tcp_pose (PoseStamped in base_link), diagnostics, driver/ready (Bool);
            in simulation also sim/cube_pose (PoseStamped), sim/grasped and sim/success
            (Bool, ground truth).
Services    reset (std_srvs/Trigger), torque (std_srvs/SetBool), estop (std_srvs/SetBool).

With backend `external` the joints are a ros2_control stack's: joint_states come from its
joint_state_broadcaster (this node publishes none) and the goals go, at the tick rate, to its
forward position controller (`external_command_topic`, std_msgs/Float64MultiArray in the
controller's joint order); end-effector control, workspace, slew limits, watchdog and resets
stay here.

Simulation with `sim_clock` (the default): the driver owns time. It publishes /clock and the state
of each control tick stamped with simulated time, waits for the action answering that stamp
(`action_timeout_s` of wall time, then holds and counts), and advances physics by exactly one
control period (hilserl.robot.sim_clock). With `min_updates_per_step` > 0 it also waits for the
learner (learner/progress). Hardware keeps wall-clock time.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray, Int64MultiArray
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import Marker, MarkerArray

from hilserl.ros.node import (NodeStartError, TrustedSubscription, declare, declare_config,
                              declare_trusted_publishers, diagnostic_array, marker, pose_stamped,
                              qos_profile, spin_node)
from hilserl.messages.diagnostics import ForeignTally
from hilserl.messages.conventions import JOINT_NAMES, Frames, Topics
from hilserl.messages.conversions import (ConversionError, action_stamp_ns, arrays_to_joint_state,
                                          joint_state_to_arrays, nanoseconds_to_stamp,
                                          validated_action)
from hilserl.robot.kinematics import SO101Kinematics
from hilserl.robot.sim_clock import LearnerPacer, LockStepClock, SimClockConfig
from so101_driver.backend import BackendError
from so101_driver.driver_core import EXIT_MODES, DriverConfig, DriverCore, tick_step_s
from so101_driver.ee_control import EEControlConfig


class DriverNode(Node):
    def __init__(self, **kwargs):
        super().__init__('so101_driver', **kwargs)
        backend_name = declare(self, 'backend', 'sim', 'sim (MuJoCo), hardware (Feetech bus) or '
                               'external (a ros2_control stack owns the joints)', read_only=True)
        port = declare(self, 'port', '/dev/ttyACM0', 'serial port of the Feetech bus',
                       read_only=True)
        baudrate = declare(self, 'baudrate', 1_000_000, 'bus baud rate',
                           int_range=(9600, 1_000_000), read_only=True)
        calibration_file = declare(self, 'calibration_file', '',
                                   'LeRobot SO-101 calibration JSON (hardware)', read_only=True)
        self.write_calibration = declare(
            self, 'write_calibration_to_servos', False, 'hardware: where a servo\'s EEPROM '
            '(homing offset, position limits) differs from calibration_file, write the file\'s '
            'values (said in the log); false: refuse to bring the arm up (`hilserl calibrate` '
            'writes both)', read_only=True)
        self.bus_timeout_ms = declare(self, 'bus_timeout_ms', 0.0, 'hardware: floor of a '
                                      'servo reply timeout (ms; 0: the SDK\'s own, ~35 ms); '
                                      'raise it for slow USB adapters or a simulated bus',
                                      float_range=(0.0, 2000.0), read_only=True)
        self.rate_hz = declare(self, 'publish_rate_hz', 100.0,
                               'joint_states rate and control tick (Hz)',
                               float_range=(1.0, 500.0), read_only=True)
        health_period_s = declare(self, 'health_period_s', 1.0,
                                  'temperature/voltage read and diagnostics period (s)',
                                  float_range=(0.1, 60.0), read_only=True)
        # one default, description and range per value: the config dataclasses' fields
        self.config = DriverConfig(ee=EEControlConfig(**declare_config(self, EEControlConfig)),
                                   **declare_config(self, DriverConfig))
        self.cube_range_m = declare(self, 'cube_spawn_range_xy_m', 0.04,
                                    'sim: +- cube placement range around the home TCP (m)',
                                    float_range=(0.0, 0.1), read_only=True)
        seed = declare(self, 'seed', 0, 'random seed of resets', int_range=(0, 2**31 - 1),
                       read_only=True)
        self.on_exit = declare(self, 'on_exit', 'rest_then_torque_off'
                               if backend_name == 'hardware' else 'hold',
                               f'at shutdown: one of {list(EXIT_MODES)} (rest_then_torque_off: '
                               'move slowly to the folded rest pose, then torque off; hold: keep '
                               'torque on where the arm is; torque_off: the arm falls!)',
                               read_only=True)
        if self.on_exit not in EXIT_MODES:
            raise ValueError(f'on_exit={self.on_exit!r}: must be one of {list(EXIT_MODES)}')
        if backend_name == 'external' and self.on_exit != 'hold':
            raise ValueError(f'on_exit={self.on_exit!r} with backend=external: must be hold (the '
                             'controller stack owns torque, and its joint states stop arriving '
                             'once this node stops)')
        trusted_publishers = declare_trusted_publishers(self, f'{Topics.EE_ACTION} and '
                                                        f'{Topics.JOINT_COMMAND}')
        sim_clock = declare(self, 'sim_clock', True, 'sim: the driver owns simulated time '
                            '(/clock, lock-step with the actor); false: wall-clock ticks',
                            read_only=True)
        self.clock_cfg = SimClockConfig(**declare_config(self, SimClockConfig))
        self.kin = SO101Kinematics()
        self.bus = None
        self.sim = None
        self.external = None
        if backend_name == 'external':
            backend = self.external = self._external_backend()
        elif backend_name == 'sim':
            from so101_driver.sim_backend import SimBackend
            self.sim = SimBackend()
            backend = self.sim
        elif backend_name == 'hardware':
            backend = self._hardware_backend(port, baudrate, calibration_file)
        else:
            raise ValueError(f"backend={backend_name!r}: must be 'sim', 'hardware' or 'external'")
        self.core = DriverCore(backend, self.config, self.kin, seed=seed)
        try:
            self._start(backend_name, sim_clock, health_period_s, seed, trusted_publishers)
        except BaseException:
            # Ctrl-C (or an error) after the arm came up, before the node spins: spin_node
            # never gets this node to close, so leave the arm as on_exit says here
            self.close()
            raise

    def _start(self, backend_name, sim_clock, health_period_s, seed, trusted_publishers):
        """Publishers, services and timers of an arm that is up."""
        self.rng = np.random.default_rng(seed)
        if self.sim is not None:
            self._sim_reset()

        if self.external is None:
            self.joint_pub = self.create_publisher(JointState, Topics.JOINT_STATES,
                                                   qos_profile(Topics.JOINT_STATES))
        self.tcp_pub = self.create_publisher(PoseStamped, Topics.TCP_POSE,
                                             qos_profile(Topics.TCP_POSE))
        self.diag_pub = self.create_publisher(DiagnosticArray, Topics.DIAGNOSTICS,
                                              qos_profile(Topics.DIAGNOSTICS))
        self.ready_pub = self.create_publisher(Bool, Topics.DRIVER_READY,
                                               qos_profile(Topics.DRIVER_READY))
        if self.sim is not None:
            self.cube_pub = self.create_publisher(PoseStamped, Topics.SIM_CUBE_POSE,
                                                  qos_profile(Topics.SIM_CUBE_POSE))
            self.grasped_pub = self.create_publisher(Bool, Topics.SIM_GRASPED,
                                                     qos_profile(Topics.SIM_GRASPED))
            self.success_pub = self.create_publisher(Bool, Topics.SIM_SUCCESS,
                                                     qos_profile(Topics.SIM_SUCCESS))
        # commands move the arm: in a graph only its actor may send them (any participant on
        # the domain can publish)
        self.foreign = ForeignTally()
        for msg_type, topic, callback in (
                (Float32MultiArray, Topics.EE_ACTION, self._on_action),
                (Float64MultiArray, Topics.JOINT_COMMAND, self._on_joint_command)):
            TrustedSubscription(self, msg_type, topic, callback, qos_profile(topic),
                                trusted_publishers, self.foreign)
        self.create_service(Trigger, 'reset', self._on_reset)
        self.create_service(SetBool, 'torque', self._on_torque)
        self.create_service(SetBool, 'estop', self._on_estop)
        self._last_ready = None
        self._last_lockout: Optional[str] = None
        self._last_tick_s = None
        self.lock_step = None
        if self.sim is not None and sim_clock:
            self.lock_step = LockStepClock(self.clock_cfg)
            self.pacer = LearnerPacer(self.clock_cfg)
            self.substeps = max(1, int(round(self.rate_hz / self.clock_cfg.control_rate_hz)))
            self.clock_pub = self.create_publisher(ClockMsg, '/clock', 10)
            self.create_subscription(Int64MultiArray, Topics.LEARNER_PROGRESS,
                                     self._on_learner_progress,
                                     qos_profile(Topics.LEARNER_PROGRESS))
            # Waiting is measured on the wall clock: the simulated one stands still meanwhile.
            self.create_timer(0.005, self._lock_step_poll,
                              clock=Clock(clock_type=ClockType.STEADY_TIME))
            self._publish_state(self.lock_step.now_ns)
        else:
            self.create_timer(1.0 / self.rate_hz, self._tick)
        self.create_timer(health_period_s, self._publish_diagnostics)
        self.marker_pub = self.create_publisher(MarkerArray, Topics.DRIVER_MARKERS,
                                                qos_profile(Topics.DRIVER_MARKERS))
        self.create_timer(0.2, self._publish_markers)
        self.get_logger().info(f'so101_driver up: backend={backend_name}, '
                               f'{self.rate_hz:g} Hz, watchdog {self.config.command_timeout_s} s')

    def _hardware_backend(self, port, baudrate, calibration_file):
        from so101_driver.calibration import load_calibration
        from so101_driver.feetech_bus import FeetechBus
        from so101_driver.hardware_backend import HardwareBackend, bring_up
        if not calibration_file:
            raise NodeStartError('backend=hardware needs the calibration_file parameter '
                                 '(a LeRobot SO-101 calibration JSON: hilserl calibrate)')
        try:
            calibration = load_calibration(calibration_file)
        except (OSError, ValueError) as exc:
            raise NodeStartError(f'calibration_file {calibration_file}: {exc}') from None
        self.bus = FeetechBus(port, baudrate, timeout_ms=self.bus_timeout_ms or None)
        backend = HardwareBackend(self.bus, calibration,
                                  write_calibration=self.write_calibration,
                                  calibration_source=str(calibration_file),
                                  say=self.get_logger().warning)
        try:
            bring_up(backend, say=self.get_logger().warning)
        except BackendError as exc:  # torque left off; one line, no traceback
            raise NodeStartError(str(exc)) from None
        return backend

    def _external_backend(self):
        from so101_driver.external_backend import ExternalJointBackend
        command_topic = declare(self, 'external_command_topic',
                                'forward_position_controller/commands', 'backend=external: the '
                                'forward position controller\'s command topic '
                                '(std_msgs/Float64MultiArray)', read_only=True)
        joint_order = declare(self, 'external_joint_order', list(JOINT_NAMES),
                              'backend=external: the controller\'s `joints` parameter (the '
                              'order of its command values)', read_only=True)
        timeout_s = declare(self, 'external_state_timeout_s', 0.5, 'backend=external: joint '
                            'states older than this count as a failed read: hold (s)',
                            float_range=(0.01, 10.0), read_only=True)
        self.external_pub = self.create_publisher(Float64MultiArray, command_topic,
                                                  qos_profile(Topics.JOINT_COMMAND))
        backend = ExternalJointBackend(
            lambda goal: self.external_pub.publish(Float64MultiArray(data=goal.tolist())),
            self._now_s, joint_order, timeout_s)
        self.create_subscription(JointState, Topics.JOINT_STATES, self._on_external_joints,
                                 qos_profile(Topics.JOINT_STATES))
        return backend

    # --- callbacks --------------------------------------------------------------------------
    def _on_external_joints(self, msg: JointState):
        try:
            position, velocity, effort = joint_state_to_arrays(msg, JOINT_NAMES)
        except ConversionError as exc:
            counters = self.core.counters
            counters['bad_joint_states'] = counters.get('bad_joint_states', 0) + 1
            self.get_logger().warning(f'external joint_states ignored: {exc}',
                                      throttle_duration_sec=2.0)
            return
        self.external.on_joint_state(position, velocity, effort, self._now_s())

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_action(self, msg: Float32MultiArray):
        if self.lock_step is not None:
            self._offer_action(msg)
            return
        ok, reason = self.core.ee_action(msg.data, self._now_s())
        if not ok:
            self.get_logger().warning(f'EE action rejected: {reason}', throttle_duration_sec=2.0)

    def _on_joint_command(self, msg: Float64MultiArray):
        ok, reason = self.core.joint_command(msg.data, self._now_s())
        if not ok:
            self.get_logger().warning(f'joint command rejected: {reason}',
                                      throttle_duration_sec=2.0)

    def _sim_reset(self):
        """Simulation: teleport home and re-place the cube (the human's job on hardware)."""
        home = self.core.begin_reset()
        center = np.asarray(self.config.reset_tcp_xyz_m[:2])
        cube = center + self.rng.uniform(-self.cube_range_m, self.cube_range_m, size=2)
        self.sim.reset(home, cube, cube_yaw_rad=self.rng.uniform(-0.5, 0.5))
        self.sim.step(0.2)
        self.core.placed_at(self.sim.read(), home)
        return home

    def _on_reset(self, request, response):
        try:
            home = self._sim_reset() if self.sim is not None else self.core.begin_reset()
        except (RuntimeError, BackendError) as exc:
            response.success, response.message = False, str(exc)
            return response
        # not ready until home, said before the answer: the actor times the person's re-place
        # delay from when the arm is home again
        self._publish_ready()
        response.success = True
        response.message = f'going home: {np.round(home, 3).tolist()} rad'
        return response

    def _on_torque(self, request, response):
        try:
            self.core.set_torque(request.data)
        except BackendError as exc:
            self.get_logger().error(str(exc))
            response.success, response.message = False, str(exc)
            return response
        self.get_logger().warning(f'torque {"ON" if request.data else "OFF"} by request')
        response.success, response.message = True, f'torque {"on" if request.data else "off"}'
        return response

    def _on_estop(self, request, response):
        self.core.set_estop(request.data)
        state = 'ENGAGED: holding, commands refused' if request.data else 'cleared'
        self.get_logger().warning(f'emergency stop {state}')
        response.success, response.message = True, f'emergency stop {state}'
        return response

    # --- simulated clock ----------------------------------------------------------------------
    def _offer_action(self, msg: Float32MultiArray) -> None:
        try:
            action = validated_action(msg.data, 4, bound=1.0)
            stamp_ns = action_stamp_ns(msg)
        except ConversionError as exc:
            self.core.counters['rejected_commands'] += 1
            self.get_logger().warning(f'EE action rejected: {exc}', throttle_duration_sec=2.0)
            return
        verdict = self.lock_step.offer(action, stamp_ns)
        if verdict != 'accepted':
            self.get_logger().warning(f'{verdict} action ignored (stamp {stamp_ns}, tick '
                                      f'{self.lock_step.now_ns})', throttle_duration_sec=2.0)
        self._lock_step_poll()

    def _on_learner_progress(self, msg: Int64MultiArray) -> None:
        if len(msg.data) >= 4:
            received, _, steps, training = msg.data[:4]
            self.pacer.on_progress(received, steps, bool(training), time.monotonic())

    def _lock_step_poll(self) -> None:
        wall_s = time.monotonic()
        verdict = self.lock_step.due(wall_s, self.pacer.allows_step(wall_s))
        if verdict is None:
            return
        action = self.lock_step.take()
        start_ns = self.lock_step.now_ns
        if action is not None:
            ok, reason = self.core.ee_action(action, start_ns * 1e-9)
            if not ok:
                self.get_logger().warning(f'EE action rejected: {reason}',
                                          throttle_duration_sec=2.0)
        dt_s = 1.0 / (self.clock_cfg.control_rate_hz * self.substeps)
        for i in range(self.substeps):
            self.sim.step(dt_s)
            self.core.tick(start_ns * 1e-9 + (i + 1) * dt_s, dt_s)
        now_ns = self.lock_step.advanced(wall_s)
        self._publish_state(now_ns)

    def _publish_state(self, now_ns: int) -> None:
        """/clock, then the tick's joint state and TCP pose, then its ground truth (the camera,
        teleop and actor answer these), all stamped with simulated time. Unstamped messages go
        last so that a subscriber has seen the tick's clock or header stamp before them."""
        stamp = nanoseconds_to_stamp(now_ns)
        self.clock_pub.publish(ClockMsg(clock=stamp))
        if self.core.reading is None:
            self.core.tick(now_ns * 1e-9, 0.0)  # start-up: read once, move nothing
        self._publish_reading(self.core.backend.read(), stamp)
        self._publish_sim_truth(stamp)
        self._publish_ready()

    # --- wall-clock ticks (hardware; sim with sim_clock false) ---------------------------------
    def _tick(self):
        now_s = self._now_s()
        dt = tick_step_s(now_s, self._last_tick_s, 1.0 / self.rate_hz)
        self._last_tick_s = now_s
        if self.sim is not None:
            self.sim.step(dt)
        reading = self.core.tick(now_s, dt)
        stamp = self.get_clock().now().to_msg()
        if self.sim is not None:
            self._publish_sim_truth(stamp)
        if reading is not None:
            self._publish_reading(reading, stamp)
        self._publish_ready()

    def _publish_reading(self, reading, stamp) -> None:
        if self.external is None:  # else the stack's joint_state_broadcaster publishes them
            self.joint_pub.publish(arrays_to_joint_state(JOINT_NAMES, reading.position,
                                                         reading.velocity, reading.effort,
                                                         stamp=stamp))
        self.tcp_pub.publish(pose_stamped(self.kin.fk(reading.position[:5]), Frames.BASE, stamp))

    def _publish_sim_truth(self, stamp) -> None:
        task = self.sim.task_state()
        pose = np.eye(4)
        pose[:3, 3] = task.cube_xyz_m
        msg = pose_stamped(pose, Frames.BASE, stamp)
        w, x, y, z = task.cube_quat_wxyz
        msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, \
            msg.pose.orientation.w = float(x), float(y), float(z), float(w)
        self.cube_pub.publish(msg)
        self.grasped_pub.publish(Bool(data=bool(task.grasped)))
        self.success_pub.publish(Bool(data=bool(task.lifted)))

    def _publish_ready(self) -> None:
        ready = self.core.ready
        if ready != self._last_ready:
            self.ready_pub.publish(Bool(data=ready))
            self._last_ready = ready
        lockout = self.core.lockout
        if bool(lockout) != bool(self._last_lockout):  # said when it starts and when it ends
            if lockout:
                self.get_logger().error(lockout)
            else:
                self.get_logger().info('lock-out over: torque is back on every servo')
        self._last_lockout = lockout

    def _publish_diagnostics(self):
        health = None
        read_health = getattr(self.core.backend, 'read_health', None)
        if read_health is not None:
            try:
                health = read_health()
            except BackendError as exc:
                self.core.last_error = str(exc)
        entries = self.core.diagnostics(health, self.bus.stats if self.bus else None)
        entries[0].values.update(self.foreign.values())
        if self.lock_step is not None:
            entries[0].values.update({f'sim_{k}': str(v)
                                      for k, v in self.lock_step.counters.items()})
            entries[0].values['sim_time_s'] = f'{self.lock_step.now_ns * 1e-9:.1f}'
        self.diag_pub.publish(diagnostic_array(entries, self.get_clock().now().to_msg(),
                                               hardware_id='so101'))
        if entries[0].level >= 2:
            self.get_logger().error(entries[0].message, throttle_duration_sec=5.0)

    def _publish_markers(self):
        """Workspace box and the commanded TCP target, for RViz."""
        stamp = self.get_clock().now().to_msg()
        lo = np.asarray(self.config.ee.workspace_min_m)
        hi = np.asarray(self.config.ee.workspace_max_m)
        markers = MarkerArray()
        markers.markers.append(marker(0, Marker.CUBE, Frames.BASE, stamp, 'workspace',
                                      (lo + hi) / 2, hi - lo, (0.2, 0.6, 1.0, 0.15)))
        if self.core.tcp_target_m is not None:
            markers.markers.append(marker(1, Marker.SPHERE, Frames.BASE, stamp, 'tcp_target',
                                          self.core.tcp_target_m, (0.015,) * 3,
                                          (1.0, 0.4, 0.0, 0.9)))
        self.marker_pub.publish(markers)

    def close(self):
        """The exit sequence of `on_exit` (bounded by DriverConfig.shutdown_timeout_s), then
        release the device. After Ctrl-C the ROS context is gone: report on the console."""
        try:
            report = self.core.shutdown(self.on_exit)
            print(f'[so101_driver] on exit: {report.message}', flush=True)
        except (BackendError, RuntimeError) as exc:
            print(f'[so101_driver] on exit ({self.on_exit}) failed: {exc}', flush=True)
        finally:
            self.core.backend.close()


def main(args=None):
    return spin_node(DriverNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
