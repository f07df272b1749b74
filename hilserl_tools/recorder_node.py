"""episode_recorder node: one rosbag2 (MCAP, zstd chunks) per episode under
<run_dir>/episodes/episode_NNNNNN/bag, with episode.json beside it.

Subscribes (raw CDR, so bytes go to disk untouched) to every topic in
hilserl.data.bags.EPISODE_TOPICS, every camera's policy view (`camera_view_topics`) and
episode/events; optionally gripper_cam/image_raw (large).
"""
from __future__ import annotations

import dataclasses
import sys

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import Bool, String

from hilserl.data.bag_repair import repair_killed_episodes
from hilserl.data.bags import EPISODE_TOPICS, message_stamp_ns
from hilserl.ros.interfaces import recorder_interface
from hilserl.ros.node import (TrustedSubscription, check_interface, declare,
                              declare_trusted_publishers, hold_run_lock, message_class,
                              qos_profile, spin_node)
from hilserl.messages.diagnostics import ForeignTally
from hilserl.messages.conventions import TOPIC_QOS, Qos, Topics, is_camera_view, qos_for
from hilserl.data.recording import EpisodeRecorder


# Messages a reader keeps per reliable topic while busy (~49 MB at most of 128x128 images).
RECORDER_DEPTH = 1000
# The 640x480 camera frames (~0.9 MB each: ~55 MB at most) asked for reliably (the camera
# offers them so): frames that wait while a chunk is compressed stay in the eval videos.
RECORDER_FRAME_DEPTH = 60
# Published in every mode by the camera, the driver and the actor.
REQUIRED_TOPICS = (Topics.IMAGE_CROP, Topics.JOINT_STATES, Topics.EE_ACTION)


class RecorderNode(Node):
    def __init__(self, **kwargs):
        super().__init__('episode_recorder', **kwargs)
        run_dir = declare(self, 'run_dir', 'outputs/run', 'episodes are written under '
                          '<run_dir>/episodes', read_only=True)
        record_raw = declare(self, 'record_raw_image', False, 'also record the 640x480 '
                             'gripper_cam/image_raw (about 9 MB/s at 10 Hz)', read_only=True)
        compress = declare(self, 'compress', True, 'zstd-compress MCAP chunks', read_only=True)
        config_digest = declare(self, 'config_digest', '', 'training config digest stored in '
                                'episode.json', read_only=True)
        sim_clock = declare(self, 'sim_clock', False, 'the graph runs on simulated lock-step '
                            'time: an episode holds exactly its ticks', read_only=True)
        record_tf = declare(self, 'record_tf', True, 'also record tf and tf_static when '
                            'tf2_msgs is installed (a ROS 2 distro)', read_only=True)
        self.required_topics = tuple(declare(
            self, 'required_topics', list(REQUIRED_TOPICS), 'recorded topics that must have a '
            'publisher matched here before episode_recorder/ready (the graph lists what its '
            'nodes publish: a message published before matching is not in the bag)',
            read_only=True))
        trusted_publishers = declare_trusted_publishers(self, Topics.EPISODE_EVENTS)
        views = declare(self, 'camera_view_topics', [Topics.IMAGE_CROP], 'the policy view topic '
                        'of every camera (image.cameras), each recorded', read_only=True)
        topics = dict(EPISODE_TOPICS)
        topics.update({topic: 'sensor_msgs/msg/Image' for topic in views})
        if record_raw:
            topics[Topics.IMAGE_RAW] = 'sensor_msgs/msg/Image'
        if record_tf:
            try:
                message_class('tf2_msgs/msg/TFMessage')
                topics.update({'tf': 'tf2_msgs/msg/TFMessage',
                               'tf_static': 'tf2_msgs/msg/TFMessage'})
            except ImportError:
                self.get_logger().warning('tf2_msgs is not installed: tf is not recorded '
                                          '(tcp_pose and joint_states are)')
        self.run_lock = hold_run_lock(self, run_dir)  # before repairing or writing a bag
        self.recorder = EpisodeRecorder(run_dir, topics, compress=compress,
                                        extra_metadata={'config_digest': config_digest},
                                        log=self.get_logger().info, sim_clock=sim_clock)
        self._repair_killed_episodes()
        self.sim_clock = sim_clock
        self.latest_tick_ns = 0
        self.topic_types = dict(topics)
        # events first: when an episode's start and its first messages are ready together, the
        # executor serves subscriptions in creation order
        # an episode's bag opens and closes on the actor's events: only its (anyone on the
        # domain can publish on the topic)
        self.foreign = ForeignTally()
        self.subscriptions_by_topic = {Topics.EPISODE_EVENTS: TrustedSubscription(
            self, String, Topics.EPISODE_EVENTS, self._on_event,
            qos_profile(Topics.EPISODE_EVENTS), trusted_publishers, self.foreign).subscription}
        for topic, type_name in topics.items():
            if topic == Topics.EPISODE_EVENTS:
                continue
            self.subscriptions_by_topic[topic] = self.create_subscription(
                message_class(type_name), topic,
                lambda data, topic=topic: self._on_raw(topic, data), self._qos(topic), raw=True)
        # Matching is per publisher and takes a while on a loaded machine: the actor starts no
        # episode before every topic an episode cannot do without has a publisher here.
        self.ready_pub = self.create_publisher(Bool, Topics.RECORDER_READY,
                                               qos_profile(Topics.RECORDER_READY))
        self.ready = False
        self.create_timer(0.1, self._poll, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(f'episode_recorder up: {len(topics)} topics -> {run_dir}/episodes')
        check_interface(self, recorder_interface(record_raw, 'tf' in topics, views))

    def _repair_killed_episodes(self):
        """Bags a killed recorder left on this run dir are made readable before recording."""
        log = self.get_logger()
        try:
            repair_killed_episodes(self.recorder.root, lambda line: log.info(f'bag repair: {line}'))
        except OSError as exc:
            log.warning(f'bag repair of {self.recorder.root} failed: {exc}')

    def _poll(self):
        self.recorder.poll()
        if not self.ready and all(self.subscriptions_by_topic[t].get_publisher_count() > 0
                                  for t in self.required_topics
                                  if t in self.subscriptions_by_topic):
            self.ready = True
            self.ready_pub.publish(Bool(data=True))

    @staticmethod
    def _qos(topic: str):
        if topic == 'tf_static':  # latched by robot_state_publisher
            return qos_profile(Qos.LATCHED)
        spec = qos_for(topic) if is_camera_view(topic) else TOPIC_QOS.get(topic, Qos.STATE)
        # A deep reader queue: while this node opens a bag (the first one takes a second on a
        # loaded machine) the simulated clock may run many ticks ahead, and a keep-last queue
        # of 10 would lose the oldest of them from the bag.
        if topic == Topics.IMAGE_RAW:
            return qos_profile(dataclasses.replace(Qos.OFFERED_FRAME, depth=RECORDER_FRAME_DEPTH))
        if not spec.reliable:
            return qos_profile(spec)
        return qos_profile(dataclasses.replace(spec, depth=max(spec.depth, RECORDER_DEPTH)))

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_raw(self, topic: str, data: bytes):
        stamp_ns = self._now_ns()
        if self.sim_clock:
            # A tick's messages may be served before its /clock, and the next tick's before the
            # last of this one (the executor serves topics in creation order): file messages
            # that say their tick (header or layout stamp) under it, the others no earlier than
            # the newest tick seen.
            own_ns = message_stamp_ns(self.topic_types[topic], data)
            if own_ns is not None:
                self.latest_tick_ns = max(self.latest_tick_ns, own_ns)
                stamp_ns = own_ns
            else:
                stamp_ns = max(stamp_ns, self.latest_tick_ns)
            self.recorder.on_message(topic, data, stamp_ns, ticked=own_ns is not None)
            return
        self.recorder.on_message(topic, data, stamp_ns)

    def _on_event(self, msg: String):
        now_ns = self._now_ns()
        self.recorder.on_event(msg.data, max(now_ns, self.latest_tick_ns) if self.sim_clock
                               else now_ns)

    def close(self):
        # after Ctrl-C the context is gone: log to the console only, not to /rosout
        self.recorder.log = lambda text: print(f'[episode_recorder] {text}', flush=True)
        self.recorder.finish()
        self.run_lock.release()


def main(args=None):
    return spin_node(RecorderNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
