"""sac_learner node: fills the RLPD buffers from the transitions topic, trains in a background
thread (never in a callback), pushes actor weights on a latched topic, logs metrics to
<run_dir>/metrics.csv with a periodic one-line summary, checkpoints and resumes.

Nothing the actor sends is lost here: the transitions callback only decodes and queues (it
waits for no lock), an ingest thread stores the queue into the buffers (the update thread holds
the buffer lock only while it copies a batch; a checkpoint makes the queue wait, not DDS), and
the weights are published by the update thread itself after an update, so the executor never
waits for one. Received, stored, dropped (with reasons) and missing (gaps in the actors'
(episode, step) sequence) are counted in the summary line and the diagnostics.

Subscribes  transitions (std_msgs/UInt8MultiArray), episode/events (String JSON); with several
            arms (robot_namespaces) those of each arm, robot_i/transitions ...
Publishes   policy_weights (std_msgs/UInt8MultiArray, transient local), learner/progress
            (std_msgs/Int64MultiArray [received, stored, optimisation steps, training 0/1], after
            every update and every stored transition), diagnostics.
"""
from __future__ import annotations

import array
import sys
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import Int64MultiArray, String, UInt8MultiArray

from hilserl.common.optional_packages import OptionalPackageMissing
from hilserl.ros.interfaces import learner_interface, robot_topic
from hilserl.ros.node import (TrustedSubscription, check_interface, declare,
                              declare_trusted_publishers, diagnostic_array, hold_run_lock,
                              qos_profile, spin_node)
from hilserl.messages.diagnostics import ForeignTally
from hilserl.configuration.config import load_train_config
from hilserl.messages.conventions import Topics
from hilserl.configuration.run_dir import (LegacyCheckpoint, RunConfigMismatch, disk_usage_bytes,
                                           record_run_config)
from hilserl_policy.learner import Learner, torch_threads
from hilserl_policy.learner_core import LearnerCore
from hilserl_policy.transport import encode_weights


class LearnerNode(Node):
    def __init__(self, **kwargs):
        super().__init__('sac_learner', **kwargs)
        config_file = declare(self, 'config_file', '', 'training YAML (empty: defaults)',
                              read_only=True)
        self.run_dir = Path(declare(self, 'run_dir', 'outputs/run', 'checkpoints, metrics and '
                                    'buffers go here; an existing run resumes (with the '
                                    'configuration it was started with only)', read_only=True))
        demo_dir = declare(self, 'demo_dir', '', 'episode bags whose transitions fill the offline '
                           'buffer at start (empty: none)', read_only=True)
        device = declare(self, 'device', '', "torch device: auto | cpu | cuda[:N]; empty: the "
                         "training config's learner.device", read_only=True)
        self.summary_period_s = declare(self, 'summary_period_s', 10.0,
                                        'progress line period (s)', float_range=(1.0, 3600.0),
                                        read_only=True)
        robots = declare(self, 'robot_namespaces', [''],
                         'the arms whose actors feed this learner: their namespaces relative to '
                         "the learner's (transitions and episode/events under each); [''] = one "
                         "arm in the learner's own namespace", read_only=True)
        trusted_publishers = declare_trusted_publishers(
            self, f'{Topics.TRANSITIONS} and {Topics.EPISODE_EVENTS}')
        num_threads = declare(self, 'num_threads', 0, 'torch CPU threads for training; 0: auto, '
                              'every core but one (max(1, os.cpu_count() - 1))',
                              int_range=(0, 256), read_only=True)
        wandb = declare(self, 'wandb', False, 'also log the metrics to a Weights & Biases run '
                        'under run_dir/wandb (offline unless WANDB_MODE says otherwise; needs '
                        'the wandb package)', read_only=True)
        self.cfg = load_train_config(config_file or None)
        self.run_lock = hold_run_lock(self, self.run_dir)  # before anything is read or written
        try:  # before resuming: a run continues only with the configuration it started with
            record_run_config(self.run_dir, self.cfg)
        except RunConfigMismatch as exc:
            self.get_logger().fatal(str(exc))
            self.run_lock.release()
            raise SystemExit(2) from None
        import torch
        torch.set_num_threads(torch_threads(num_threads))
        from hilserl.configuration.pretrained import PretrainedWeightsMissing
        try:
            self.learner = Learner(self.cfg, self.run_dir, device=device, wandb=wandb)
            self.learner.log = self.get_logger().info
        except (PretrainedWeightsMissing, OptionalPackageMissing,
                LegacyCheckpoint) as exc:  # one line, no traceback
            self.get_logger().fatal(str(exc))
            self.run_lock.release()
            raise SystemExit(2) from None
        metrics = self.learner.training_metrics
        if metrics.unavailable:
            self.get_logger().info(f'no TensorBoard event files: {metrics.unavailable}')
        if metrics.wandb_location is not None:
            self.get_logger().info(f'W&B run in {metrics.wandb_location} (upload an offline '
                                   'run with `wandb sync DIR`)')
        if self.learner.resumed_from is not None:
            episodes, successes = self.learner.episode_counts()
            self.get_logger().info(f'resumed from {self.learner.resumed_from} (step '
                                   f'{self.learner.agent.step}, {len(self.learner.online)} '
                                   f'online / {len(self.learner.offline)} offline transitions, '
                                   f'{episodes} episodes, {successes} successful)')
        if demo_dir and len(self.learner.offline) == 0:
            from hilserl.data.demos import load_demo_transitions
            unreadable, resized = [], []
            added = self.learner.add_many(load_demo_transitions(
                demo_dir, unreadable=unreadable, image_shape=self.learner.online.image_shape,
                resized=resized), demo=True)
            if resized:
                shapes = sorted({'x'.join(map(str, shape)) for _, shape in resized})
                self.get_logger().warning(
                    f'{len(resized)} demo episodes recorded at {", ".join(shapes)} resized to '
                    f'{"x".join(map(str, self.learner.online.image_shape))} (this config\'s '
                    'policy view)')
            for path, reason in unreadable:
                self.get_logger().warning(f'demo episode skipped, unreadable bag: {path} '
                                          f'({reason})')
            self.get_logger().info(f'offline buffer: {added} demo transitions from {demo_dir}'
                                   + (f' ({len(unreadable)} unreadable episodes skipped)'
                                      if unreadable else ''))
        buffer = self.learner.online
        self.core = LearnerCore(self.learner, self.cfg.learner.weight_push_period_s,
                                (buffer.image_shape, buffer.state_dim, buffer.action_dim))
        self.stop = threading.Event()

        self.weights_pub = self.create_publisher(UInt8MultiArray, Topics.POLICY_WEIGHTS,
                                                 qos_profile(Topics.POLICY_WEIGHTS))
        self.progress_pub = self.create_publisher(Int64MultiArray, Topics.LEARNER_PROGRESS,
                                                  qos_profile(Topics.LEARNER_PROGRESS))
        self._progress_lock = threading.Lock()  # published by the ingest and update threads
        self.diag_pub = self.create_publisher(DiagnosticArray, Topics.DIAGNOSTICS,
                                              qos_profile(Topics.DIAGNOSTICS))
        # the actors' topics: anyone on the domain can publish there
        self.foreign = ForeignTally()
        for robot in dict.fromkeys(r.strip('/') for r in robots):
            TrustedSubscription(
                self, UInt8MultiArray, robot_topic(robot, Topics.TRANSITIONS),
                lambda msg, publisher, robot=robot: self._on_transition(msg, robot, publisher),
                qos_profile(Topics.TRANSITIONS), trusted_publishers, self.foreign,
                with_publisher=True)
            TrustedSubscription(
                self, String, robot_topic(robot, Topics.EPISODE_EVENTS),
                lambda msg, robot=robot: self._on_event(msg, robot),
                qos_profile(Topics.EPISODE_EVENTS), trusted_publishers, self.foreign)
        check_interface(self, learner_interface(robots))
        # wall clock: a person reads it, while simulated time may crawl behind a busy learner
        self.create_timer(self.summary_period_s, self._summary,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._push_weights()
        self._publish_progress()
        self.threads = [threading.Thread(target=target, name=name, daemon=True)
                        for target, name in ((self._ingest_loop, 'sac_learner_ingest'),
                                             (self._train_loop, 'sac_learner_train'))]
        for thread in self.threads:
            thread.start()
        self.get_logger().info(f'sac_learner up: run {self.run_dir}, device '
                               f'{self.learner.agent.device}, UTD {self.cfg.algorithm.utd_ratio}, '
                               f'batch {self.cfg.algorithm.batch_size}, {torch.get_num_threads()} '
                               f'torch threads')

    # --- executor thread: decode and queue, nothing that waits ---------------------------------
    def _on_transition(self, msg: UInt8MultiArray, robot: str = '', publisher: bytes = b''):
        warning = self.core.on_transition(bytes(msg.data), robot, publisher)
        if warning:
            self.get_logger().warning(warning, throttle_duration_sec=1.0)

    def _on_event(self, msg: String, robot: str = ''):
        warning = self.core.on_event(msg.data, robot)
        if warning:
            self.get_logger().warning(warning, throttle_duration_sec=1.0)

    # --- worker threads ------------------------------------------------------------------------
    def _ingest_loop(self):
        try:
            while not self.stop.is_set():
                results = self.learner.store_next(timeout_s=0.2)
                for stored, reason in results or ():
                    if not stored:
                        self.get_logger().warning(f'transition dropped: {reason}')
                if results:
                    self._publish_progress()
        except Exception as exc:  # noqa: BLE001 - reported; the queue keeps the rest
            self._fail('ingestion', exc)

    def _train_loop(self):
        try:
            while not self.stop.is_set():
                if not self.learner.ready():
                    self.learner.maybe_checkpoint()  # early buffers survive a crash too
                    self.stop.wait(0.2)
                    continue
                self.learner.train_step(should_stop=self.stop.is_set)
                self._publish_progress()
                if self.core.weights.period_elapsed(time.monotonic()):
                    self._push_weights()
        except Exception as exc:  # noqa: BLE001 - reported, then the node keeps its data
            self._fail('training', exc)

    def _fail(self, what: str, exc: Exception) -> None:
        if self.stop.is_set() or not self.context.ok():  # Ctrl-C closed the context: no error
            return
        self.get_logger().error(self.core.failed(what, exc))

    def _push_weights(self):
        """From the update thread (and once at start): an update never runs meanwhile."""
        step = self.learner.agent.step
        if not self.core.weights.is_new(step):
            return
        state, meta = self.learner.policy_weights()
        self.weights_pub.publish(UInt8MultiArray(data=array.array('B', encode_weights(state,
                                                                                      meta))))
        self.core.weights.pushed(step, time.monotonic())

    def _publish_progress(self):
        data = self.core.progress()
        with self._progress_lock:
            self.progress_pub.publish(Int64MultiArray(data=data))

    # --- reporting -----------------------------------------------------------------------------
    def transfer_summary(self) -> str:
        return self.core.transfer_summary()

    def _summary(self):
        line, entry = self.core.summary(disk_usage_bytes(self.run_dir))
        entry.values.update(self.foreign.values())
        self.get_logger().info(line)
        self.diag_pub.publish(diagnostic_array([entry], self.get_clock().now().to_msg()))

    close_timeout_s = 600.0  # the final checkpoint streams the buffers to disk

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)
        while self.learner.store_next(timeout_s=0.0) is not None:  # what arrived before stop
            pass
        # anything new since the last checkpoint (steps, transitions, episodes) is kept
        path = self.learner.maybe_checkpoint(now_s=float('inf'))
        if path is not None:
            print(f'[sac_learner] final checkpoint {path}', flush=True)  # context may be gone
        self.learner.training_metrics.close()
        self.run_lock.release()


def main(args=None):
    return spin_node(LearnerNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
