"""bag_replay node: republishes an episode bag with its original timing (rate factor, loop) on
machines without `ros2 bag play`. Topics keep their recorded (relative) names, so a namespace
applies; each topic gets the suite's QoS for it.
"""
from __future__ import annotations

import sys
import time

from rclpy.node import Node
from rclpy.serialization import deserialize_message

from hilserl.ros.node import declare, message_class, qos_profile, spin_node
from hilserl.data.bags import iter_raw_messages
from hilserl.messages.conventions import TOPIC_QOS, Qos


class ReplayNode(Node):
    def __init__(self, **kwargs):
        super().__init__('bag_replay', **kwargs)
        self.bag = declare(self, 'bag', '', 'episode directory or bag folder', read_only=True)
        self.rate = declare(self, 'rate', 1.0, 'playback speed factor',
                            float_range=(0.01, 100.0), read_only=True)
        self.loop = declare(self, 'loop', False, 'start over at the end', read_only=True)
        if not self.bag:
            raise ValueError('bag_replay needs the bag parameter')
        self.messages = list(iter_raw_messages(self.bag))
        if not self.messages:
            raise ValueError(f'{self.bag} has no messages')
        self.publishers_by_topic = {}
        for topic, msgtype, _, _ in self.messages:
            if topic not in self.publishers_by_topic:
                cls = message_class(msgtype)
                qos = qos_profile(TOPIC_QOS.get(topic, Qos.STATE))
                self.publishers_by_topic[topic] = (cls, self.create_publisher(cls, topic, qos))
        self.index = 0
        self.published = 0
        self.t0_bag = self.messages[0][2]
        self.t0_wall = time.monotonic() + 0.5  # let subscribers match first
        self.finished = False
        self.create_timer(0.002, self._tick)
        self.get_logger().info(f'replaying {len(self.messages)} messages on '
                               f'{len(self.publishers_by_topic)} topics at x{self.rate:g}')

    def _tick(self):
        now = time.monotonic()
        while self.index < len(self.messages):
            topic, _, stamp, raw = self.messages[self.index]
            due = self.t0_wall + (stamp - self.t0_bag) * 1e-9 / self.rate
            if due > now:
                return
            cls, pub = self.publishers_by_topic[topic]
            pub.publish(deserialize_message(bytes(raw), cls))
            self.index += 1
            self.published += 1
        if self.loop:
            self.index, self.t0_wall = 0, now
        else:
            self.get_logger().info(f'replay done: {self.published} messages')
            self.finished = True


def main(args=None):
    return spin_node(ReplayNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
