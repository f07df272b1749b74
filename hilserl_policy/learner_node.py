"""sac_learner node: fills the RLPD buffers from the transitions topic, trains in a background
thread (never in a callback), pushes actor weights on a latched topic, logs metrics to
<run_dir>/metrics.csv with a periodic one-line summary, checkpoints and resumes.

Subscribes  transitions (std_msgs/UInt8MultiArray), episode/events (String JSON).
Publishes   policy_weights (std_msgs/UInt8MultiArray, transient local), diagnostics.
"""
from __future__ import annotations

import array
import json
import threading
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from std_msgs.msg import String, UInt8MultiArray

from hilserl.base_node import declare, diagnostic_array, qos_profile, spin_node
from hilserl.config import load_train_config
from hilserl.conventions import Topics
from hilserl.diagnostics import OK, WARN, DiagnosticEntry
from hilserl_policy.learner import Learner
from hilserl_policy.transport import decode_transition, encode_weights


class LearnerNode(Node):
    def __init__(self, **kwargs):
        super().__init__('sac_learner', **kwargs)
        config_file = declare(self, 'config_file', '', 'training YAML (empty: defaults)',
                              read_only=True)
        self.run_dir = Path(declare(self, 'run_dir', 'outputs/run', 'checkpoints, metrics and '
                                    'buffers go here; an existing run resumes', read_only=True))
        demo_dir = declare(self, 'demo_dir', '', 'episode bags whose transitions fill the offline '
                           'buffer at start (empty: none)', read_only=True)
        device = declare(self, 'device', 'auto', 'torch device: auto | cpu | cuda[:N]',
                         read_only=True)
        self.summary_period_s = declare(self, 'summary_period_s', 10.0,
                                        'progress line period (s)', float_range=(1.0, 3600.0),
                                        read_only=True)
        num_threads = declare(self, 'num_threads', 1, 'torch CPU threads for training',
                              int_range=(1, 256), read_only=True)
        import torch
        torch.set_num_threads(num_threads)
        self.cfg = load_train_config(config_file or None)
        self.learner = Learner(self.cfg, self.run_dir, device=device)
        if self.learner.resumed_from is not None:
            self.get_logger().info(f'resumed from {self.learner.resumed_from} (step '
                                   f'{self.learner.agent.step}, {len(self.learner.online)} '
                                   f'online / {len(self.learner.offline)} offline transitions)')
        if demo_dir and len(self.learner.offline) == 0:
            from hilserl_policy.demos import load_demo_transitions
            added = 0
            for t in load_demo_transitions(demo_dir):
                added += self.learner.add(t, demo=True)
            self.get_logger().info(f'offline buffer: {added} demo transitions from {demo_dir}')
        self.received = 0
        self.episodes = []
        self.pushed_step = -1
        self.stop = threading.Event()
        self.error = None

        self.weights_pub = self.create_publisher(UInt8MultiArray, Topics.POLICY_WEIGHTS,
                                                 qos_profile(Topics.POLICY_WEIGHTS))
        self.diag_pub = self.create_publisher(DiagnosticArray, Topics.DIAGNOSTICS,
                                              qos_profile(Topics.DIAGNOSTICS))
        self.create_subscription(UInt8MultiArray, Topics.TRANSITIONS, self._on_transition,
                                 qos_profile(Topics.TRANSITIONS))
        self.create_subscription(String, Topics.EPISODE_EVENTS, self._on_event,
                                 qos_profile(Topics.EPISODE_EVENTS))
        self.create_timer(self.cfg.sac.weight_push_period_s, self._push_weights)
        self.create_timer(self.summary_period_s, self._summary)
        self._push_weights()
        self.thread = threading.Thread(target=self._train_loop, name='sac_learner', daemon=True)
        self.thread.start()
        self.get_logger().info(f'sac_learner up: run {self.run_dir}, device '
                               f'{self.learner.agent.device}, UTD {self.cfg.sac.utd_ratio}, '
                               f'batch {self.cfg.sac.batch_size}')

    def _on_transition(self, msg: UInt8MultiArray):
        try:
            transition, _ = decode_transition(bytes(msg.data))
        except ValueError as exc:
            self.learner.rejected += 1
            self.get_logger().warning(f'bad transition dropped: {exc}', throttle_duration_sec=2.0)
            return
        if self.learner.add(transition):
            self.received += 1
        else:
            self.get_logger().warning('invalid transition dropped (shape, NaN or range)',
                                      throttle_duration_sec=2.0)

    def _on_event(self, msg: String):
        try:
            event = json.loads(msg.data)
        except json.JSONDecodeError:
            return
        if event.get('event') == 'end':
            self.episodes.append(event)

    def _train_loop(self):
        try:
            while not self.stop.is_set():
                if not self.learner.ready():
                    self.stop.wait(0.2)
                    continue
                self.learner.train_step()
        except Exception as exc:  # noqa: BLE001 - reported, then the node keeps its data
            self.error = f'{type(exc).__name__}: {exc}'
            self.get_logger().error(f'training stopped: {self.error}')

    def _push_weights(self):
        step = self.learner.agent.step
        if step == self.pushed_step:
            return
        state, meta = self.learner.policy_weights()
        self.weights_pub.publish(UInt8MultiArray(data=array.array('B', encode_weights(state,
                                                                                     meta))))
        self.pushed_step = step

    def _summary(self):
        m = self.learner.last_metrics
        recent = self.episodes[-10:]
        success = (sum(e.get('success', False) for e in recent) / len(recent)) if recent else 0
        line = (f'episodes {len(self.episodes)} (last 10: {success:.0%} success)  transitions '
                f'{self.received}  buffers {len(self.learner.online)}/'
                f'{len(self.learner.offline)}  step {self.learner.agent.step}  critic updates/s '
                f'{self.learner.critic_updates_per_s:.2f}')
        if m:
            line += f'  critic_loss {m["critic_loss"]:.3f}  alpha {m["alpha"]:.4f}'
        self.get_logger().info(line)
        level = WARN if self.error or self.learner.rejected else OK
        values = {'step': str(self.learner.agent.step), 'received': str(self.received),
                  'rejected': str(self.learner.rejected), 'error': self.error or '',
                  'critic_updates_per_s': f'{self.learner.critic_updates_per_s:.3f}'}
        self.diag_pub.publish(diagnostic_array(
            [DiagnosticEntry('sac_learner', level, self.error or 'training', values)],
            self.get_clock().now().to_msg()))

    def close(self):
        self.stop.set()
        self.thread.join(timeout=120)
        if self.learner.agent.step > 0:
            path = self.learner.checkpoint()
            print(f'[sac_learner] final checkpoint {path}', flush=True)  # context may be gone


def main(args=None):
    return spin_node(LearnerNode, args=args)


if __name__ == '__main__':
    main()
