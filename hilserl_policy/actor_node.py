"""sac_actor node: runs the policy at the control rate and manages episodes. Its episode logic
(hilserl_policy.episode.EpisodeRunner) is the only code that decides steps, rewards,
interventions, resets and episode ends, for training, evaluation and demo recording alike.

Subscribes  gripper_cam/image_crop, joint_states, teleop/action (sensor_msgs/Joy),
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
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState, Joy
from std_msgs.msg import Bool, Float32, Float32MultiArray, String, UInt8MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from hilserl.ros.node import declare, diagnostic_array, marker, qos_profile, spin_node
from hilserl.configuration.config import load_train_config
from hilserl.messages.conventions import JOINT_NAMES, ActionSource, Frames, Topics
from hilserl.messages.conversions import (ConversionError, action_to_msg, image_to_array,
                                          joint_state_to_arrays, joy_to_human, stamp_dimension,
                                          stamp_to_nanoseconds)
from hilserl.messages.diagnostics import OK, WARN, DiagnosticEntry
from hilserl.data.transition import TransitionEncoder
from hilserl_policy.episode import EpisodeRunner, ObservationAssembler, StaleObservation
from hilserl_policy.evaluation import EvalRecorder
from hilserl_policy.transport import decode_weights

# key: no success topic, the human's success key (teleop/episode_label) is the only success
# Lock-step: proposals in a row that the driver gave up on before the simulated human answered.
UNANSWERED_TICKS_BEFORE_RESUBSCRIBE = 3
# Discovery: how long (wall) to wait for readers the graph lists but a writer has not matched.
RECORDER_MATCH_GRACE_S = 5.0
SUCCESS_TOPICS = {'sim': Topics.SIM_SUCCESS, 'classifier': Topics.SUCCESS, 'key': None}


class ActorNode(Node):
    def __init__(self, **kwargs):
        super().__init__('sac_actor', **kwargs)
        config_file = declare(self, 'config_file', '', 'training YAML (empty: defaults)',
                              read_only=True)
        self.mode = declare(self, 'mode', 'train', 'train (stochastic, streams transitions), '
                            'eval (deterministic) or record (the human acts: demonstrations)',
                            read_only=True)
        checkpoint = declare(self, 'checkpoint', '', 'pretrained_model directory to start from '
                             '(required in eval)', read_only=True)
        success_source = declare(self, 'success_source', 'sim',
                                 'sim (ground truth), classifier or key (only the human\'s '
                                 'success key)', read_only=True)
        self.num_episodes = declare(self, 'num_episodes', 0, 'stop after this many episodes '
                                    '(0: never)', int_range=(0, 1_000_000), read_only=True)
        self.output_dir = Path(declare(self, 'output_dir', 'outputs/eval',
                                       'where eval writes eval_summary.json', read_only=True))
        self.reset_timeout_s = declare(self, 'reset_timeout_s', 15.0, 'give up on a reset after '
                                       'this long and retry (s)', float_range=(1.0, 120.0),
                                       read_only=True)
        device = declare(self, 'device', 'cpu', 'torch device: auto | cpu | cuda[:N]',
                         read_only=True)
        self.learner_node_name = declare(self, 'learner_node_name', 'sac_learner',
                                         'train: episodes start once this node subscribes to '
                                         'the transitions', read_only=True)
        self.sim_clock = declare(self, 'sim_clock', False, 'act once per observation tick and '
                                 'echo its stamp (the simulation driver owns time)',
                                 read_only=True)
        self.wait_for_teleop = declare(self, 'wait_for_teleop', False, 'sim_clock: act on a '
                                       'tick only with the teleop answer for that tick (the '
                                       'simulated human)', read_only=True)
        self.wait_for_recorder = declare(self, 'wait_for_recorder', False, 'start no episode '
                                         'before the episode recorder says it hears the camera, '
                                         'driver and this node (a bag missing its first '
                                         'episode\'s images otherwise)', read_only=True)
        self.steps_after_success = declare(self, 'record_steps_after_success', 6, 'record: '
                                           'keep the human acting (and the bag recording) this '
                                           'many steps after success: classifier positives',
                                           int_range=(0, 100), read_only=True)
        episodes_run_dir = declare(self, 'run_dir', '', 'episode numbering continues after '
                                   'the episodes under <run_dir>/episodes (empty: from 0)',
                                   read_only=True)
        if self.mode not in ('train', 'eval', 'record'):
            raise ValueError(f"mode={self.mode!r}: must be 'train', 'eval' or 'record'")
        if success_source not in SUCCESS_TOPICS:
            raise ValueError(f'success_source={success_source!r}: one of {list(SUCCESS_TOPICS)}')
        self.cfg = load_train_config(config_file or None)
        self.agent = None
        if self.mode != 'record':
            import torch
            torch.set_num_threads(1)  # the learner owns the other core
            # the policy alone: critics, targets and optimisers are the learner's
            from hilserl_policy.policy import build_policy, load_pretrained
            if checkpoint:
                self.agent, _ = load_pretrained(checkpoint, device)
                self.get_logger().info(f'policy from {checkpoint} (step {self.agent.step})')
            elif self.mode == 'eval':
                raise ValueError('mode=eval needs the checkpoint parameter')
            else:
                self.agent = build_policy(self.cfg, device=device)
            self.backbone_digest = self.agent.backbone_digest()
        self.deterministic = self.mode == 'eval'
        self.assembler = ObservationAssembler(self.cfg)
        self.runner = EpisodeRunner(self.cfg, self._propose)
        if episodes_run_dir:  # a resumed run goes on with its numbering
            from hilserl.configuration.run_dir import next_episode_index
            self.runner.episode_index = next_episode_index(episodes_run_dir) - 1
        self.evaluation = EvalRecorder() if self.mode == 'eval' else None
        self.phase = 'need_reset'
        self.phase_since_s = None
        self.reset_future = None
        self.success = False
        # Latest human output: (action, intervention, stamp_ns); each action is used once.
        self.human: Optional[tuple] = None
        self.human_used_ns = -1
        self.label: Optional[str] = None
        self.image_stamp_ns = self.joints_stamp_ns = None
        self.tick_ns = None            # sim_clock: the tick being answered
        self.episode_transitions = 0   # published in the running episode
        self.proposal = None           # (image, state, policy action) of that tick
        self.post_roll_left = 0
        self.deferred_events = []
        self.weights_step = self.agent.step if self.agent is not None else -1
        # how long each policy proposal took (wall): reported in diagnostics and at exit
        self.act_latencies_s = collections.deque(maxlen=20_000)
        self.counters = {'ticks': 0, 'stale_ticks': 0, 'bad_messages': 0, 'weights_loaded': 0,
                         'weights_rejected': 0, 'reset_failures': 0, 'human_actions_used': 0,
                         'human_actions_missing': 0, 'unanswered_proposals': 0,
                         'teleop_resubscribed': 0, 'partial_reader_matches': 0}
        self.stale_reason = ''
        self.done_since_s: Optional[float] = None  # wall time the last episode ended
        self.episodes_done = 0

        self.create_subscription(Image, Topics.IMAGE_CROP, self._on_image,
                                 qos_profile(Topics.IMAGE_CROP))
        self.create_subscription(JointState, Topics.JOINT_STATES, self._on_joints,
                                 qos_profile(Topics.JOINT_STATES))
        self.human_sub = self._subscribe_human()
        self.unanswered_ticks = 0  # lock-step: proposals in a row the simulated human missed
        self.create_subscription(String, Topics.EPISODE_LABEL, self._on_label,
                                 qos_profile(Topics.EPISODE_LABEL))
        self.driver_ready = False
        self.create_subscription(Bool, Topics.DRIVER_READY, self._on_driver_ready,
                                 qos_profile(Topics.DRIVER_READY))
        self.recorder_ready = False
        self.partial_match_since_s = None
        self.create_subscription(Bool, Topics.RECORDER_READY, self._on_recorder_ready,
                                 qos_profile(Topics.RECORDER_READY))
        success_topic = SUCCESS_TOPICS[success_source]
        if success_topic is not None:
            self.create_subscription(Bool, success_topic, self._on_success,
                                     qos_profile(success_topic))
        if self.mode == 'train':
            self.create_subscription(UInt8MultiArray, Topics.POLICY_WEIGHTS, self._on_weights,
                                     qos_profile(Topics.POLICY_WEIGHTS))
        if self.mode in ('train', 'record'):
            self.transition_encoder = TransitionEncoder()  # each image once on the wire
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
        self.probability = float('nan')
        self.create_subscription(Float32, Topics.SUCCESS_PROBABILITY, self._on_probability,
                                 qos_profile(Topics.SUCCESS_PROBABILITY))
        self.reset_client = self.create_client(Trigger, 'reset')
        if not self.sim_clock:  # with sim_clock, observations tick the actor
            self.create_timer(1.0 / self.cfg.task.control_rate_hz, self._wall_tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f'sac_actor up: mode={self.mode}, {self.cfg.task.control_rate_hz:g} Hz, success '
            f'from {success_topic or "the success key"}, '
            f'{self.cfg.task.max_episode_steps} steps per episode')

    # --- inputs -------------------------------------------------------------------------------
    def _now_s(self) -> float:
        """Simulated time of the tick being answered (sim_clock), else the node's clock."""
        if self.sim_clock and self.tick_ns is not None:
            return self.tick_ns * 1e-9
        return self.get_clock().now().nanoseconds * 1e-9

    def _bad(self, what: str, exc: Exception) -> None:
        self.counters['bad_messages'] += 1
        self.get_logger().warning(f'ignored {what}: {exc}', throttle_duration_sec=2.0)

    def _on_image(self, msg: Image):
        stamp_ns = stamp_to_nanoseconds(msg.header.stamp)
        try:
            self.assembler.set_image(np.array(image_to_array(msg)),
                                     stamp_ns * 1e-9 if self.sim_clock else self._now_s())
        except (ConversionError, ValueError) as exc:
            self._bad('image', exc)
            return
        self.image_stamp_ns = stamp_ns
        self._on_observation()

    def _on_joints(self, msg: JointState):
        stamp_ns = stamp_to_nanoseconds(msg.header.stamp)
        try:
            position, velocity, _ = joint_state_to_arrays(msg, JOINT_NAMES)
            self.assembler.set_joints(position, velocity,
                                      stamp_ns * 1e-9 if self.sim_clock else self._now_s())
        except ConversionError as exc:
            self._bad('joint_states', exc)
            return
        self.joints_stamp_ns = stamp_ns
        self._on_observation()

    def _subscribe_human(self):
        return self.create_subscription(Joy, Topics.HUMAN_ACTION, self._on_human,
                                        qos_profile(Topics.HUMAN_ACTION))

    def _proposal_unanswered(self) -> None:
        """The driver moved on (its action timeout) without the simulated human's answer.
        Under heavy load a DDS reader has been seen to stay matched yet receive nothing: after
        a few ticks in a row, a fresh subscription makes discovery match it anew."""
        self.counters['unanswered_proposals'] += 1
        self.unanswered_ticks += 1
        self.stale_reason = 'no answer from the simulated human (teleop) to the proposal'
        if self.unanswered_ticks >= UNANSWERED_TICKS_BEFORE_RESUBSCRIBE:
            self.get_logger().warning(
                f'{self.unanswered_ticks} proposals in a row without the simulated human\'s '
                f'answer: subscribing to {Topics.HUMAN_ACTION} anew')
            self.destroy_subscription(self.human_sub)
            self.human_sub = self._subscribe_human()
            self.counters['teleop_resubscribed'] += 1
            self.unanswered_ticks = 0

    def _on_human(self, msg: Joy):
        try:
            self.human = joy_to_human(msg, self.cfg.action.dim)
        except ConversionError as exc:
            self._bad('teleop action', exc)
            return
        if self.sim_clock and self.proposal is not None and self.human[2] == self.tick_ns:
            self._finish_step()

    def _on_label(self, msg: String):
        if msg.data in ('success', 'failure', 'rerecord'):
            self.label = msg.data
        else:
            self._bad('episode label', ValueError(repr(msg.data)))

    def _on_driver_ready(self, msg: Bool):
        self.driver_ready = bool(msg.data)

    def _on_recorder_ready(self, msg: Bool):
        self.recorder_ready = bool(msg.data)

    def _on_success(self, msg: Bool):
        self.success = bool(msg.data)

    def _on_probability(self, msg: Float32):
        self.probability = float(msg.data)

    def _publish_status(self, control: str):
        stats = self.runner.stats
        if stats is None:
            return
        text = (f'episode {stats.episode}  step {stats.steps}  return {stats.episode_return:.2f}'
                f'\nsuccess p {self.probability:.2f}  control: {control}  [{self.phase}]')
        markers = MarkerArray()
        markers.markers.append(marker(0, Marker.TEXT_VIEW_FACING, Frames.BASE,
                                      self.get_clock().now().to_msg(), 'episode_status',
                                      (0.2, 0.0, 0.35), (0.0, 0.0, 0.025),
                                      (1.0, 1.0, 1.0, 1.0), text))
        self.marker_pub.publish(markers)

    def _on_weights(self, msg: UInt8MultiArray):
        try:
            state, meta = decode_weights(bytes(msg.data))
            frozen_digest = meta.get('backbone_digest')
            if frozen_digest and frozen_digest != self.backbone_digest:
                raise ValueError('the learner\'s frozen image encoder differs from this actor\'s '
                                 '(same seed and pretrained_encoder_path on both?)')
            self.agent.load_policy_state(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            self.counters['weights_rejected'] += 1
            self.get_logger().error(f'policy weights rejected: {exc}', throttle_duration_sec=5.0)
            return
        self.weights_step = int(meta.get('step', -1))
        self.counters['weights_loaded'] += 1

    # --- control loop -------------------------------------------------------------------------
    def _learner_listening(self) -> bool:
        """A sac_learner (not just the recorder) subscribes to the transitions."""
        return any(info.node_name == self.learner_node_name
                   for info in self.get_subscriptions_info_by_topic(
                       self.transition_pub.topic_name))

    def _recorder_matched(self) -> bool:
        """The recorder's `ready` says its readers found our writers; discovery runs on each
        side apart, so also check that our event and transition writers have found readers
        (an event sent before that is lost). The graph may list readers a writer never matches
        (seen across hosts: a reader known from the graph but not yet, or never, matched), so
        once every writer has at least one match the full count is awaited for a grace period
        only, rather than for ever."""
        complete = True
        for publisher in (self.event_pub, getattr(self, 'transition_pub', None)):
            if publisher is None:
                continue
            readers = self.get_subscriptions_info_by_topic(publisher.topic_name)
            matched = publisher.get_subscription_count()
            if not any(info.node_name == 'episode_recorder' for info in readers) or matched < 1:
                self.partial_match_since_s = None
                return False
            complete = complete and matched >= len(readers)
        if complete:
            return True
        now_s = time.monotonic()
        if self.partial_match_since_s is None:
            self.partial_match_since_s = now_s
        if now_s - self.partial_match_since_s < RECORDER_MATCH_GRACE_S:
            return False
        self.counters['partial_reader_matches'] += 1
        self.get_logger().warning(
            'starting the episode with fewer matched readers than the graph lists '
            f'(waited {RECORDER_MATCH_GRACE_S:.0f} s)')
        self.partial_match_since_s = None
        return True

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_since_s = self._now_s()

    def _propose(self, image, state) -> np.ndarray:
        if self.agent is None:  # record: the human acts on every step
            return np.zeros(self.cfg.action.dim, np.float32)
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

    def close(self):
        summary = self.act_latency_summary()
        if summary:  # the logger's context may be gone at exit
            print(f'policy act latency: {summary}', flush=True)

    def _on_observation(self):
        """sim_clock: a tick's image and joint state have both arrived: answer it once."""
        if not self.sim_clock or self.done_since_s is not None:
            return
        stamp_ns = self.image_stamp_ns
        if stamp_ns is None or stamp_ns != self.joints_stamp_ns or \
                (self.tick_ns is not None and stamp_ns <= self.tick_ns):
            return
        self.tick_ns = stamp_ns
        if self.proposal is not None and self.wait_for_teleop:
            self._proposal_unanswered()
        self.proposal = None
        self.counters['ticks'] += 1
        if not self._advance_phase() or not self._propose_step():
            self._hold()
            return
        if not self.wait_for_teleop or (self.human is not None and self.human[2] == stamp_ns):
            self._finish_step()
        # else: the simulated human answers this tick's proposal; _on_human finishes the step

    def _wall_tick(self):
        if self.done_since_s is not None:
            return
        self.counters['ticks'] += 1
        if self._advance_phase() and self._propose_step():
            self._finish_step()

    def _advance_phase(self) -> bool:
        """Resets and settling between episodes; True when an episode step is due."""
        if self.phase in ('running', 'post_roll'):
            return True
        if self.phase == 'need_reset':
            if self.mode == 'train' and not self._learner_listening():
                # transitions are volatile: do not start before the learner listens
                self.stale_reason = 'waiting for the learner to subscribe to transitions'
                return False
            if self.reset_client.service_is_ready():
                self.reset_future = self.reset_client.call_async(Trigger.Request())
                self._set_phase('resetting')
            return False
        waited_s = self._now_s() - self.phase_since_s
        if self.phase == 'resetting':
            if self.reset_future is not None and self.reset_future.done():
                response = self.reset_future.result()
                self.reset_future = None
                if not response.success:
                    self.counters['reset_failures'] += 1
                    self.get_logger().error(f'reset refused: {response.message}',
                                            throttle_duration_sec=5.0)
                    self._set_phase('need_reset')
                    return False
                self._set_phase('settling')
            elif waited_s > self.reset_timeout_s:
                self.counters['reset_failures'] += 1
                self.get_logger().error('reset timed out; retrying')
                self._set_phase('need_reset')
            return False
        # settling: on hardware the arm drives home after the reset call returns: wait for ready
        if waited_s < self.cfg.task.reset_delay_s or not self.driver_ready:
            return False
        if self.wait_for_recorder and not (self.recorder_ready and self._recorder_matched()):
            self.stale_reason = 'waiting for the episode recorder to hear the graph'
            return False
        self.assembler.reset()
        self.label = None
        self.success = False
        # a device's action from before the episode is not carried into it
        self.human_used_ns = self.get_clock().now().nanoseconds - 1
        self._publish_event(self.runner.start())
        self._set_phase('running')
        if not self.sim_clock:  # a person at the arm: the episode is theirs from now on
            self.get_logger().info(f'episode {self.runner.episode_index} started: go')
        return True

    def _propose_step(self) -> bool:
        """Observe and publish the policy's proposal for this tick; False if stale."""
        try:
            image, state = self.assembler.observe(self._now_s())
        except StaleObservation as exc:
            # the driver's watchdog holds the arm while we publish nothing
            self.counters['stale_ticks'] += 1
            self.stale_reason = str(exc)
            self.get_logger().warning(f'policy paused: {exc}', throttle_duration_sec=2.0)
            return False
        action = np.clip(np.asarray(self._propose(image, state), np.float32), -1, 1)
        self.proposal = (image, state, action)
        self.policy_pub.publish(action_to_msg(action, ActionSource.POLICY,
                                              stamp_ns=self.tick_ns if self.sim_clock else None))
        return True

    def _fresh_human(self):
        """(action, intervention) of the human for this tick: an action is used once; while
        the human holds control without a new action, the arm holds (zeros)."""
        if self.human is None:  # no device heard yet: in record mode the arm holds, a human step
            if self.mode == 'record':
                self.counters['human_actions_missing'] += 1
                return np.zeros(self.cfg.action.dim), True
            return None, False
        action, intervention, stamp_ns = self.human
        intervention = intervention or self.mode == 'record'
        # the simulated human answers this very tick; a device sends on its own timer
        fresh = stamp_ns == self.tick_ns if self.wait_for_teleop else \
            stamp_ns > self.human_used_ns
        if fresh:
            self.human_used_ns = stamp_ns
            self.counters['human_actions_used'] += intervention
            return action, intervention
        if intervention:
            self.counters['human_actions_missing'] += 1
            return np.zeros(self.cfg.action.dim), True
        return None, False

    def _finish_step(self):
        image, state, policy_action = self.proposal
        self.proposal = None
        self.unanswered_ticks = 0
        human_action, intervention = self._fresh_human()
        if self.phase == 'post_roll':  # record: keep the human lifting for classifier frames
            executed = human_action if human_action is not None else np.zeros(4)
            self.action_pub.publish(action_to_msg(executed, ActionSource.HUMAN,
                                                  stamp_ns=self._stamp()))
            self.post_roll_left -= 1
            if self.post_roll_left <= 0:
                for event in self.deferred_events:
                    self._publish_event(event)
                self.deferred_events = []
                self._episode_ended()
            return
        label, self.label = self.label, None
        if label:  # the key it acts on, on the events topic the recorder surely listens to
            self._publish_event(self.runner.stats.event('label', label=label))
        result = self.runner.step(image, state, self.success, human_action, intervention, label,
                                  policy_action=policy_action)
        if result.transition is not None:
            if self.mode in ('train', 'record'):
                payload = self.transition_encoder.encode(
                    result.transition, self.runner.episode_index, self.runner.stats.steps)
                msg = UInt8MultiArray(data=array.array('B', payload))
                if self.sim_clock:  # the recorder files it under its tick, however late
                    msg.layout.dim = [stamp_dimension(self.tick_ns)]
                self.transition_pub.publish(msg)
                self.episode_transitions += 1
            self.reward_pub.publish(Float32(data=float(result.reward)))
        if result.ended and self.mode == 'record' and self.runner.stats.success and \
                self.steps_after_success > 0:
            self.deferred_events = list(result.events)
            self.post_roll_left = self.steps_after_success
            self._set_phase('post_roll')
            self._hold()
            return
        for event in result.events:
            self._publish_event(event)
        if result.ended:
            self._episode_ended()
            self._hold()
            return
        source = ActionSource.HUMAN if result.intervention else ActionSource.POLICY
        self.action_pub.publish(action_to_msg(result.executed_action, source,
                                              stamp_ns=self._stamp()))
        self._publish_status(source)

    def _stamp(self):
        return self.tick_ns if self.sim_clock else None

    def _hold(self):
        """sim_clock: answer the tick with 'hold still' so simulated time goes on."""
        if self.sim_clock and self.tick_ns is not None:
            self.action_pub.publish(action_to_msg(np.zeros(self.cfg.action.dim),
                                                  ActionSource.POLICY, stamp_ns=self.tick_ns))

    def _episode_ended(self):
        stats = self.runner.stats
        self.get_logger().info(
            f'episode {stats.episode} ended: {stats.outcome.upper()}, {stats.steps} steps, return '
            f'{stats.episode_return:.2f}, {stats.interventions} intervention steps (policy '
            f'weights step {self.weights_step})')
        if self.evaluation is not None:
            self.evaluation.add(stats)
        self.episodes_done += 1
        if self.num_episodes and self.episodes_done >= self.num_episodes:
            self.done_since_s = time.monotonic()
            if self.evaluation is not None:
                path = self.evaluation.write(self.output_dir, {
                    'checkpoint_step': self.agent.step})
                print(self.evaluation.table(), flush=True)
                self.get_logger().info(f'eval summary written to {path}')
            self._publish_event(json.dumps({'event': 'finished',
                                            'episodes': self.episodes_done}))
            return
        self._set_phase('need_reset')

    @property
    def finished(self) -> bool:
        """spin_node ends the process once this is true: a second after the last episode, so
        its `end` and `finished` events reach the recorder before the writer goes away."""
        return self.done_since_s is not None and time.monotonic() - self.done_since_s > 1.0

    def _publish_event(self, text: str) -> None:
        event = json.loads(text)
        if event.get('event') == 'start':
            self.episode_transitions = 0
        elif event.get('event') == 'end':
            # the recorder keeps the bag open until it has them all (they may come late)
            event['transitions'] = self.episode_transitions
        if self.sim_clock and self.tick_ns is not None:
            # the tick it happened on: the recorder receives topics in no common order
            event['stamp_ns'] = self.tick_ns
        self.event_pub.publish(String(data=json.dumps(event)))

    def _publish_diagnostics(self):
        level = WARN if self.phase == 'running' and self.stale_reason else OK
        values = {k: str(v) for k, v in self.counters.items()}
        values.update(phase=self.phase, episode=str(self.runner.episode_index),
                      clock='simulated' if self.sim_clock else 'wall',
                      weights_step=str(self.weights_step), last_stale=self.stale_reason,
                      act_latency=self.act_latency_summary())
        entry = DiagnosticEntry('sac_actor', level, f'{self.phase}', values)
        self.stale_reason = ''
        self.diag_pub.publish(diagnostic_array([entry], self.get_clock().now().to_msg()))


def main(args=None):
    return spin_node(ActorNode, args=args)


if __name__ == '__main__':
    main()
