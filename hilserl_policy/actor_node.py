"""sac_actor node: runs the policy at the control rate and manages episodes. Its decisions are
hilserl_policy.actor_core.ActorCore's (phases, ticks, the human handover, episode ends, built on
hilserl_policy.episode.EpisodeRunner, the only code that decides steps, rewards, interventions
and episode ends), for training, evaluation and demo recording alike: this node converts
messages, feeds them to the core with the time, and carries out what the core returns.

Subscribes  <name>_cam/image_crop of every camera (image.cameras), joint_states,
            teleop/action (sensor_msgs/Joy),
            teleop/episode_label, the success topic (sim/success or reward_classifier/success),
            policy_weights (latched, from the learner).
Publishes   policy/action (the policy's proposal), action (what the driver executes: the human's
            while intervening), transitions (to the learner), reward, episode/events (JSON).
Calls       reset (std_srvs/Trigger, the driver) between episodes.

Modes: train (stochastic, streams transitions), eval (deterministic), record (the human acts on
every step: demonstrations and classifier data; transitions go to the recorder only).
Clocks: on hardware a wall-clock timer ticks at the control rate and each human action is used
once. With `sim_clock` the actor acts exactly once per observation tick (image and joint state
with the same simulated stamp), echoes that stamp on its actions (the driver advances the world
only then), and with `wait_for_teleop` uses the simulated human's answer for that very tick.
"""
from __future__ import annotations

import array
import collections
import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState, Joy
from std_msgs.msg import Bool, Float32, Float32MultiArray, String, UInt8MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from hilserl.ros.interfaces import actor_interface
from hilserl.ros.node import (TrustedSubscription, check_interface, declare, declare_config,
                              declare_trusted_publishers, diagnostic_array, hold_run_lock, marker,
                              qos_profile, spin_node)
from hilserl.messages.diagnostics import ForeignTally
from hilserl.configuration.config import check_same_cameras, load_train_config
from hilserl.messages.conventions import (JOINT_NAMES, SUCCESS_TOPICS, ActionSource, Frames,
                                          Topics, camera_topics)
from hilserl.messages.conversions import (ConversionError, action_to_msg, image_to_array,
                                          joint_state_to_arrays, joy_to_human, stamp_dimension,
                                          stamp_to_nanoseconds)
from hilserl_policy.actor_core import (ActorCore, ActorSettings, CallReset, Log, Print,
                                       PublishAction, PublishEvent, PublishProposal,
                                       PublishReward, PublishStatus, PublishTransition,
                                       ResubscribeTeleop, WriterMatch)
from hilserl_policy.transport import WeightsGate, WeightsRefused


class ActorNode(Node):
    def __init__(self, **kwargs):
        super().__init__('sac_actor', **kwargs)
        config_file = declare(self, 'config_file', '', 'training YAML (empty: defaults)',
                              read_only=True)
        # mode, sim_clock, num_episodes, ...: one default, description and range, on the field
        settings_values = declare_config(self, ActorSettings)
        checkpoint = declare(self, 'checkpoint', '', 'pretrained_model directory to start from '
                             '(required in eval)', read_only=True)
        success_source = declare(self, 'success_source', 'sim',
                                 'sim (ground truth), classifier or key (only the human\'s '
                                 'success key)', read_only=True)
        device = declare(self, 'device', 'cpu', 'torch device: auto | cpu | cuda[:N]',
                         read_only=True)
        self.learner_node_name = declare(self, 'learner_node_name', 'sac_learner',
                                         'train: episodes start once this node subscribes to '
                                         'the transitions', read_only=True)
        trusted_publishers = declare_trusted_publishers(self, Topics.POLICY_WEIGHTS)
        episodes_run_dir = declare(self, 'run_dir', '', 'episode numbering continues after '
                                   'the episodes under <run_dir>/episodes (empty: from 0)',
                                   read_only=True)
        self.settings = ActorSettings(**settings_values)  # refuses a bad mode
        # eval_summary.json and the episode numbering: the graph's run directory
        self.run_lock = hold_run_lock(self, episodes_run_dir)
        if success_source not in SUCCESS_TOPICS:
            raise ValueError(f'success_source={success_source!r}: one of {list(SUCCESS_TOPICS)}')
        self.mode = self.settings.mode
        self.sim_clock = self.settings.sim_clock
        self.cfg = load_train_config(config_file or None)
        self.agent = None
        if self.mode != 'record':
            import torch
            torch.set_num_threads(1)  # the learner owns the other core
            # the policy alone: critics, targets and optimisers are the learner's
            from hilserl_policy.policy import build_policy, load_pretrained
            if checkpoint:
                self.agent, checkpoint_cfg = load_pretrained(checkpoint, device)
                check_same_cameras(checkpoint_cfg.image.camera_names, self.cfg, checkpoint)
                self.get_logger().info(f'policy from {checkpoint} (step {self.agent.step})')
            elif self.mode == 'eval':
                raise ValueError('mode=eval needs the checkpoint parameter')
            else:
                self.agent = build_policy(self.cfg, device=device)
            self.backbone_digest = self.agent.backbone_digest()
        self.deterministic = self.mode == 'eval'
        first_episode_index = 0
        if episodes_run_dir:  # a resumed run goes on with its numbering
            from hilserl.configuration.run_dir import next_episode_index
            first_episode_index = next_episode_index(episodes_run_dir)
        # how long each policy proposal took (wall): reported in diagnostics and at exit
        self.act_latencies_s = collections.deque(maxlen=20_000)
        self.reset_future = None
        self.core = ActorCore(self.settings, self.cfg, self,
                              policy=self._act if self.agent is not None else None,
                              weights_step=self.agent.step if self.agent is not None else -1,
                              first_episode_index=first_episode_index)
        self._carry_out = {PublishProposal: self._publish_proposal,
                           PublishAction: self._publish_action,
                           PublishTransition: self._publish_transition,
                           PublishReward: self._publish_reward, PublishEvent: self._publish_event,
                           PublishStatus: self._publish_status, CallReset: self._call_reset,
                           ResubscribeTeleop: self._resubscribe_human, Log: self._log,
                           Print: self._print}

        for camera in self.cfg.image.camera_names:  # every camera's view, each tick
            view_topic = camera_topics(camera)[1]
            self.create_subscription(Image, view_topic,
                                     lambda msg, camera=camera: self._on_image(msg, camera),
                                     qos_profile(view_topic))
        self.create_subscription(JointState, Topics.JOINT_STATES, self._on_joints,
                                 qos_profile(Topics.JOINT_STATES))
        self.human_sub = self._subscribe_human()
        self.create_subscription(String, Topics.EPISODE_LABEL, self._on_label,
                                 qos_profile(Topics.EPISODE_LABEL))
        self.create_subscription(Bool, Topics.DRIVER_READY,
                                 lambda msg: self.core.on_driver_ready(msg.data),
                                 qos_profile(Topics.DRIVER_READY))
        self.create_subscription(Bool, Topics.RECORDER_READY,
                                 lambda msg: self.core.on_recorder_ready(msg.data),
                                 qos_profile(Topics.RECORDER_READY))
        success_topic = SUCCESS_TOPICS[success_source]
        if success_topic is not None:
            self.create_subscription(Bool, success_topic,
                                     lambda msg: self.core.on_success(msg.data),
                                     qos_profile(success_topic))
        self.foreign = ForeignTally()
        if self.mode == 'train':
            self.weights_gate = WeightsGate(self.agent.policy_state(), self.backbone_digest
                                            if self.cfg.policy.freeze_encoder else None)
            TrustedSubscription(self, UInt8MultiArray, Topics.POLICY_WEIGHTS, self._on_weights,
                                qos_profile(Topics.POLICY_WEIGHTS), trusted_publishers,
                                self.foreign)
        self.transition_pub = None
        if self.settings.streams_transitions:
            self.transition_pub = self.create_publisher(UInt8MultiArray, Topics.TRANSITIONS,
                                                        qos_profile(Topics.TRANSITIONS))
        self.policy_pub = self.create_publisher(Float32MultiArray, Topics.POLICY_ACTION,
                                                qos_profile(Topics.POLICY_ACTION))
        self.action_pub = self.create_publisher(Float32MultiArray, Topics.EE_ACTION,
                                                qos_profile(Topics.EE_ACTION))
        self.reward_pub = self.create_publisher(Float32, Topics.REWARD, qos_profile(Topics.REWARD))
        self.event_pub = self.create_publisher(String, Topics.EPISODE_EVENTS,
                                               qos_profile(Topics.EPISODE_EVENTS))
        self.diag_pub = self.create_publisher(DiagnosticArray, Topics.DIAGNOSTICS,
                                              qos_profile(Topics.DIAGNOSTICS))
        self.marker_pub = self.create_publisher(MarkerArray, Topics.EPISODE_MARKERS,
                                                qos_profile(Topics.EPISODE_MARKERS))
        self.create_subscription(Float32, Topics.SUCCESS_PROBABILITY,
                                 lambda msg: self.core.on_success_probability(msg.data),
                                 qos_profile(Topics.SUCCESS_PROBABILITY))
        self.reset_client = self.create_client(Trigger, 'reset')
        if not self.sim_clock:  # with sim_clock, observations tick the actor
            self.create_timer(1.0 / self.cfg.task.control_rate_hz, self._wall_tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f'sac_actor up: mode={self.mode}, {self.cfg.task.control_rate_hz:g} Hz, success '
            f'from {success_topic or "the success key"}, '
            f'{self.cfg.task.max_episode_steps} steps per episode')
        check_interface(self, actor_interface(self.mode, success_source,
                                              self.cfg.image.camera_names))

    # --- time and the core's outputs ------------------------------------------------------------
    def _clock_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _run(self, outputs) -> None:
        for output in outputs:
            self._carry_out[type(output)](output)

    # --- inputs -------------------------------------------------------------------------------
    def _bad(self, what: str, exc: Exception) -> None:
        self._run(self.core.on_bad_message(what, exc, monotonic_s=time.monotonic()))

    def _on_image(self, msg: Image, camera: str):
        try:
            image = np.array(image_to_array(msg))
        except ConversionError as exc:
            self._bad('image', exc)
            return
        self._run(self.core.on_image(image, stamp_to_nanoseconds(msg.header.stamp),
                                     now_ns=self._clock_ns(), monotonic_s=time.monotonic(),
                                     camera=camera))

    def _on_joints(self, msg: JointState):
        try:
            position, velocity, _ = joint_state_to_arrays(msg, JOINT_NAMES)
        except ConversionError as exc:
            self._bad('joint_states', exc)
            return
        self._run(self.core.on_joints(position, velocity, stamp_to_nanoseconds(msg.header.stamp),
                                      now_ns=self._clock_ns(), monotonic_s=time.monotonic()))

    def _subscribe_human(self):
        return self.create_subscription(Joy, Topics.HUMAN_ACTION, self._on_human,
                                        qos_profile(Topics.HUMAN_ACTION))

    def _on_human(self, msg: Joy):
        try:
            action, intervention, stamp_ns = joy_to_human(msg, self.cfg.action.dim)
        except ConversionError as exc:
            self._bad('teleop action', exc)
            return
        self._run(self.core.on_human(action, intervention, stamp_ns, now_ns=self._clock_ns(),
                                     monotonic_s=time.monotonic()))

    def _on_label(self, msg: String):
        self._run(self.core.on_label(msg.data, monotonic_s=time.monotonic()))

    def _on_weights(self, msg: UInt8MultiArray):
        try:
            state, step = self.weights_gate.check(bytes(msg.data))
        except WeightsRefused as exc:
            self._run(self.core.on_weights_rejected(exc, monotonic_s=time.monotonic(),
                                                    reason=exc.reason))
            return
        self.agent.load_policy_state(state)  # checked: every tensor fits
        self.weights_gate.applied(step)
        self.core.on_weights_loaded(step)

    def _wall_tick(self):
        self._run(self.core.tick(now_ns=self._clock_ns(), monotonic_s=time.monotonic()))

    # --- what the core asks of the graph (its GraphView) ----------------------------------------
    def reset_service_ready(self) -> bool:
        return self.reset_client.service_is_ready()

    def reset_response(self):
        if self.reset_future is None or not self.reset_future.done():
            return None
        response = self.reset_future.result()
        self.reset_future = None
        return response.success, response.message

    def learner_listening(self) -> bool:
        return any(info.node_name == self.learner_node_name
                   for info in self.get_subscriptions_info_by_topic(
                       self.transition_pub.topic_name))

    def writer_matches(self):
        """The event and transition writers, one at a time (the core may stop at the first)."""
        for publisher in (self.event_pub, self.transition_pub):
            if publisher is None:
                continue
            readers = self.get_subscriptions_info_by_topic(publisher.topic_name)
            yield WriterMatch(any(info.node_name == 'episode_recorder' for info in readers),
                              publisher.get_subscription_count(), len(readers))

    # --- carrying out ---------------------------------------------------------------------------
    def _publish_proposal(self, out: PublishProposal) -> None:
        self.policy_pub.publish(action_to_msg(out.action, ActionSource.POLICY,
                                              stamp_ns=out.stamp_ns))

    def _publish_action(self, out: PublishAction) -> None:
        self.action_pub.publish(action_to_msg(out.action, out.source, stamp_ns=out.stamp_ns))

    def _publish_transition(self, out: PublishTransition) -> None:
        msg = UInt8MultiArray(data=array.array('B', out.payload))
        if out.stamp_ns is not None:
            msg.layout.dim = [stamp_dimension(out.stamp_ns)]
        self.transition_pub.publish(msg)

    def _publish_reward(self, out: PublishReward) -> None:
        self.reward_pub.publish(Float32(data=out.reward))

    def _publish_event(self, out: PublishEvent) -> None:
        self.event_pub.publish(String(data=out.text))

    def _publish_status(self, out: PublishStatus) -> None:
        markers = MarkerArray()
        markers.markers.append(marker(0, Marker.TEXT_VIEW_FACING, Frames.BASE,
                                      self.get_clock().now().to_msg(), 'episode_status',
                                      (0.2, 0.0, 0.35), (0.0, 0.0, 0.025),
                                      (1.0, 1.0, 1.0, 1.0), out.text))
        self.marker_pub.publish(markers)

    def _call_reset(self, out: CallReset) -> None:
        self.reset_future = self.reset_client.call_async(Trigger.Request())

    def _resubscribe_human(self, out: ResubscribeTeleop) -> None:
        self.destroy_subscription(self.human_sub)
        self.human_sub = self._subscribe_human()

    def _log(self, out: Log) -> None:
        # one call site per level: rclpy refuses a level change at the same site
        logger = self.get_logger()
        if out.level == 'info':
            logger.info(out.text)
        elif out.level == 'warning':
            logger.warning(out.text)
        else:
            logger.error(out.text)

    def _print(self, out: Print) -> None:
        print(out.text, flush=True)

    # --- policy, diagnostics, exit --------------------------------------------------------------
    def _act(self, image, state) -> np.ndarray:
        started = time.perf_counter()
        action = self.agent.act(image, state, self.deterministic)
        self.act_latencies_s.append(time.perf_counter() - started)
        return action

    def act_latency_summary(self) -> str:
        """'N acts, p50 X ms, p99 Y ms' of the policy's proposals so far ('' before any)."""
        if not self.act_latencies_s:
            return ''
        ms = np.array(self.act_latencies_s) * 1e3
        return (f'{len(ms)} acts, p50 {np.percentile(ms, 50):.2f} ms, p99 '
                f'{np.percentile(ms, 99):.2f} ms')

    def _publish_diagnostics(self):
        self._run(self.core.check_progress(monotonic_s=time.monotonic()))
        entry = self.core.diagnostics(self.act_latency_summary())
        entry.values.update(self.foreign.values())
        self.diag_pub.publish(diagnostic_array([entry], self.get_clock().now().to_msg()))

    def close(self):
        summary = self.act_latency_summary()
        if summary:  # the logger's context may be gone at exit
            print(f'policy act latency: {summary}', flush=True)
        if self.run_lock is not None:
            self.run_lock.release()

    @property
    def finished(self) -> bool:
        """spin_node ends the process once this is true: a second after the last episode, so
        its `end` and `finished` events reach the recorder before the writer goes away."""
        return self.core.finished(time.monotonic())


def main(args=None):
    return spin_node(ActorNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
