"""A rogue participant on a running graph's domain (test_untrusted_topics.py starts it with the
graph's ROS_DOMAIN_ID): it discovers every topic of the graph (names and types) and publishes
malformed messages of each type on each, for --seconds: random sizes, NaN, inf and huge values,
and every wrong form the types allow, plus crafted payloads for the byte topics (transitions,
policy_weights) and the commands (action). Three nodes publish:

- `rogue`, a stranger: all of the above, and also well-formed messages that only the graph's
  own nodes may send (in-range actions stamped with the driver's current tick, valid transitions
  carrying the marker reward REWARD_MARKER, newer valid weights): `trusted_publishers` refuses
  them.
- `sac_actor` and `sac_learner`, impersonating the graph's own nodes' names: only malformed
  commands, transitions, events and weights, which the content checks must refuse.

At the end it prints one JSON line: messages sent per topic."""
from __future__ import annotations

import argparse
import array
import json
import math
import struct
import sys
import time
from collections import Counter

import numpy as np
import rclpy
import rclpy.executors
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

REWARD_MARKER = 12345.0    # the rogue's well-formed transitions: never in a buffer
ROGUE_WEIGHTS_STEP = 10 ** 9
SKIPPED_TOPICS = ('/rosout', '/parameter_events')
FLOATS = (math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, 5e-324, 1.0, -1.0, 3.0e38)
FLOAT32_SAFE = (math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 0.0, 1e-45, 1.0, -1.0, 50.0)
INT_RANGES = {'int8': (-2**7, 2**7 - 1), 'uint8': (0, 255), 'int16': (-2**15, 2**15 - 1),
              'uint16': (0, 2**16 - 1), 'int32': (-2**31, 2**31 - 1), 'uint32': (0, 2**32 - 1),
              'int64': (-2**63, 2**63 - 1), 'uint64': (0, 2**64 - 1), 'char': (0, 255)}
STRINGS = ('', 'NaN', 'rgb8', 'mono8', '32FC1', 'success', 'failure', 'stamp_ns=-5',
           'stamp_ns=abc', 'stamp_ns=' + '9' * 40, '{"event": "end"}', '[' * 3000,
           '{"event": "end", "episode": -1, "steps": "x"}', '\u00ff' * 50, 'x' * 5000)


class Fuzzer:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def length(self, big: bool = False) -> int:
        return int(self.choice((0, 1, 3, 4, 5, 6, 7, 18, 100) + ((4096, 70000) if big else ())))

    def scalar(self, kind: str):
        if kind == 'double':
            return self.choice(FLOATS) if self.rng.random() < 0.7 else float(
                self.rng.normal() * 10.0 ** self.rng.integers(-5, 300))
        if kind == 'float':
            return self.choice(FLOAT32_SAFE)
        if kind == 'boolean':
            return bool(self.rng.integers(2))
        if kind in ('octet', 'byte'):
            return bytes([int(self.rng.integers(256))])
        if kind in INT_RANGES:
            lo, hi = INT_RANGES[kind]
            return int(self.choice((lo, hi, 0, 1, max(lo, -1), int(self.rng.integers(0, 128)))))
        if kind.startswith('string') or kind.startswith('wstring'):
            return self.choice(STRINGS)
        raise KeyError(kind)

    def value(self, type_name: str, depth: int):
        if type_name.startswith('sequence<'):
            inner = type_name[len('sequence<'):-1].split(',')[0].strip()
            bound = type_name[len('sequence<'):-1].split(',')[1:]
            n = self.length(big=inner in ('uint8', 'octet', 'float', 'double'))
            if bound:
                n = min(n, int(bound[0].strip()))
            return self.sequence(inner, n, depth)
        if type_name.endswith(']'):
            inner, _, size = type_name[:-1].partition('[')
            return self.sequence(inner, int(size), depth)
        try:
            return self.scalar(type_name.split('<')[0])
        except KeyError:
            return self.message(message_class(type_name), depth + 1)

    def sequence(self, inner: str, n: int, depth: int):
        if inner == 'uint8':
            return array.array('B', self.rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        if inner in ('double', 'float'):
            values = self.choice(FLOATS if inner == 'double' else FLOAT32_SAFE)
            return array.array('d' if inner == 'double' else 'f', [values] * n if
                               self.rng.random() < 0.5 else
                               [self.scalar(inner) for _ in range(min(n, 200))])
        if depth > 2 and '/' in inner:
            return []
        return [self.value(inner, depth) for _ in range(min(n, 20))]

    def message(self, cls, depth: int = 0):
        msg = cls()
        if depth > 3:
            return msg
        for name, type_name in cls.get_fields_and_field_types().items():
            try:
                setattr(msg, name, self.value(type_name, depth))
            except (AssertionError, TypeError, ValueError, OverflowError):
                pass  # a value the type itself cannot hold: the field keeps its default
        return msg


def message_class(type_name: str):
    import importlib
    parts = type_name.split('/')
    package, name = parts[0], parts[-1]
    return getattr(importlib.import_module(f'{package}.msg'), name)


# --- crafted payloads --------------------------------------------------------------------------
def transition_payloads(cfg, fuzz: Fuzzer):
    """(malformed, well-formed) transitions messages for this configuration's shapes."""
    from hilserl.data.transition import Transition, encode_transition
    image_shape, s, a = cfg.image_shape(), cfg.observation.state_dim, cfg.action.dim
    rng = fuzz.rng

    def good(**changes):
        values = dict(image=rng.integers(0, 256, image_shape, dtype=np.uint8),
                      state=rng.normal(size=s).astype(np.float32),
                      action=rng.uniform(-1, 1, a).astype(np.float32), reward=0.0,
                      next_image=rng.integers(0, 256, image_shape, dtype=np.uint8),
                      next_state=rng.normal(size=s).astype(np.float32), terminated=False,
                      truncated=False, intervention=False)
        values.update(changes)
        return Transition(**values)

    def with_header(payload: bytes, **changes) -> bytes:
        (n,) = struct.unpack('<I', payload[4:8])
        header = json.loads(payload[8:8 + n])
        header.update(changes)
        head = json.dumps(header).encode()
        return payload[:4] + struct.pack('<I', len(head)) + head + payload[8 + n:]

    def raw_header(text: str, body: bytes = b'') -> bytes:
        head = text.encode()
        return b'HTR1' + struct.pack('<I', len(head)) + head + body

    valid = encode_transition(good(), 7, 3)
    nan = np.full(s, np.nan, np.float32)
    bad = [
        rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), b'', b'HTR1', b'HTR1\xff\xff\xff\xff',
        valid[:len(valid) // 2], valid + b'extra',
        encode_transition(good(state=nan), 7, 4), encode_transition(good(next_state=nan), 7, 5),
        encode_transition(good(action=np.array([np.nan] * a, np.float32)), 7, 6),
        encode_transition(good(action=np.array([50.0] * a, np.float32)), 7, 7),
        encode_transition(good(reward=math.inf), 7, 8), encode_transition(good(reward=math.nan)),
        encode_transition(good(state=np.full(s, 1e300))),  # finite, but not as float32
        encode_transition(good(state=np.zeros(s + 3, np.float32))),
        encode_transition(good(action=np.zeros(a + 1, np.float32))),
        encode_transition(good(image=np.zeros((3, 7, 7), np.uint8))),
        encode_transition(good(image=np.zeros(image_shape, np.float32))),
        encode_transition(good(next_image=np.zeros(image_shape, np.int64))),
        encode_transition(good(state=np.zeros(s, np.complex64))),
        encode_transition(good(state=np.array(['abcd'] * s))),
        encode_transition(good(), 7, 9, image_from_previous=True),  # no step before it
        with_header(valid, episode='x'), with_header(valid, step=[1]),
        with_header(valid, episode=1e30), with_header(valid, step=True),
        with_header(valid, reward='NaN'), with_header(valid, reward=None),
        with_header(valid, terminated='yes'), with_header(valid, intervention=1),
        with_header(valid, shapes=[[-1]] * 5), with_header(valid, shapes=[[2 ** 40]] * 5),
        with_header(valid, shapes=[[1, 1, 1, 1, 1]] * 5), with_header(valid, shapes=[]),
        with_header(valid, dtypes=['|O'] * 5), with_header(valid, dtypes=['<U4'] * 5),
        with_header(valid, dtypes=['|V8'] * 5), with_header(valid, dtypes=['float128'] * 5),
        with_header(valid, dtypes=[5] * 5), with_header(valid, image='previous'),
        raw_header('[1, 2, 3]'), raw_header('"text"'), raw_header('null'),
        raw_header('[' * 100000), raw_header('{"shapes": {}}'), raw_header('\xff\xfe'),
        raw_header('{"shapes": [[3]], "dtypes": ["<f4"], "reward": 0, "terminated": false, '
                   '"truncated": false, "intervention": false}', b'\0' * 12),
    ]
    well_formed = [encode_transition(good(reward=REWARD_MARKER), 10 ** 6 + i, 1)
                   for i in range(3)]
    return bad, well_formed


def weights_payloads(cfg, step_hint: int = 0):
    """(malformed, well-formed) policy weights for this configuration's policy."""
    import torch
    from safetensors.torch import save

    from hilserl_policy.policy import build_policy
    state = build_policy(cfg, device='cpu').policy_state()
    names = sorted(state)

    def payload(tensors, **meta):
        return save(tensors, metadata={k: str(v) for k, v in meta.items()})

    def changed(name, tensor):
        return {**state, name: tensor}

    first, floating = names[0], [n for n in names if state[n].is_floating_point()]
    valid = payload(state, step=ROGUE_WEIGHTS_STEP)
    header = json.dumps({'__metadata__': [1, 2]}).encode()
    bad = [
        bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), b'', b'\0' * 8,
        valid[:len(valid) // 2], valid[:9],
        struct.pack('<Q', len(header)) + header,
        payload(changed(floating[0], torch.zeros(*state[floating[0]].shape, 2)), step=10 ** 8),
        payload(changed(floating[0], torch.zeros(3)), step=10 ** 8),
        payload({k: v.double() if v.is_floating_point() else v for k, v in state.items()},
                step=10 ** 8),
        payload({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                step=10 ** 8),
        payload(changed(floating[0], torch.full_like(state[floating[0]], math.nan)),
                step=10 ** 8),
        payload(changed(floating[-1], torch.full_like(state[floating[-1]], math.inf)),
                step=10 ** 8),
        payload(state, step=0), payload(state, step=-1), payload(state, step=step_hint),
        payload(state), payload(state, step='abc'), payload(state, step='1e9'),
        payload(state, step='9' * 40), payload(state, step='--5'),
        payload({k: v for k, v in state.items() if k != first}, step=10 ** 8),
        payload({**state, 'extra.weight': torch.zeros(2)}, step=10 ** 8),
        payload(state, step=10 ** 8, backbone_digest='0123456789abcdef'),
    ]
    return bad, [valid]


# --- the rogue ---------------------------------------------------------------------------------
def qos() -> QoSProfile:
    """Matches every subscriber: reliable and transient-local writers serve all readers."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Rogue:
    def __init__(self, cfg, seed: int):
        self.fuzz = Fuzzer(seed)
        self.stranger = Node('rogue')
        self.fake_actor = Node('sac_actor')
        self.fake_learner = Node('sac_learner')
        self.publishers = {}
        self.sent = Counter()
        self.tick_ns = 0
        self.bad_transitions, self.good_transitions = transition_payloads(cfg, self.fuzz)
        self.bad_weights, self.good_weights = weights_payloads(cfg)
        self.action_dim = cfg.action.dim
        self._driver_gids = set()
        self.stranger.create_subscription(message_class('rosgraph_msgs/msg/Clock'), '/clock',
                                          self._on_clock, 10)

    def _on_clock(self, msg, info) -> None:
        """The driver's simulated time (the rogue's own garbage /clock is not)."""
        gid = bytes(info['publisher_gid']['data']).rstrip(b'\0') if info.get(
            'publisher_gid') else b''
        if gid not in self._driver_gids:
            self._driver_gids = {bytes(i.endpoint_gid).rstrip(b'\0') for i in
                                 self.stranger.get_publishers_info_by_topic('/clock')
                                 if i.node_name == 'so101_driver'}
        if gid in self._driver_gids:
            self.tick_ns = msg.clock.sec * 10 ** 9 + msg.clock.nanosec

    def nodes(self):
        return (self.stranger, self.fake_actor, self.fake_learner)

    def publisher(self, node, topic, type_name):
        key = (node.get_name(), topic)
        if key not in self.publishers:
            self.publishers[key] = node.create_publisher(message_class(type_name), topic, qos())
        return self.publishers[key]

    def publish(self, node, topic, type_name, msg) -> None:
        self.publisher(node, topic, type_name).publish(msg)
        self.sent[topic] += 1

    def round(self, topics) -> None:
        fuzz = self.fuzz
        for topic, type_name in topics:
            cls = message_class(type_name)
            name = topic.rsplit('/', 1)[-1]
            if name == 'transitions':
                self.bytes_message(topic, type_name, self.fake_actor, self.bad_transitions,
                                   self.good_transitions)
            elif name == 'policy_weights':
                self.bytes_message(topic, type_name, self.fake_learner, self.bad_weights,
                                   self.good_weights)
            elif name == 'action' and type_name.endswith('Float32MultiArray'):
                self.action(topic, type_name)
            elif name == 'events' and type_name.endswith('String'):
                self.publish(self.fake_actor if fuzz.rng.random() < 0.5 else self.stranger,
                             topic, type_name, cls(data=fuzz.choice(STRINGS + (
                                 json.dumps({'event': 'end', 'episode': 10 ** 6, 'steps': 3,
                                             'return': 1.0, 'success': True, 'interventions': 0,
                                             'outcome': 'success'}),
                                 json.dumps({'event': 'start', 'episode': -4})))))
            elif name == 'commands':
                self.publish(self.fake_actor, topic, type_name, fuzz.message(cls))
                self.publish(self.stranger, topic, type_name,
                             cls(data=[0.0, -1.5, 1.5, 1.0, 0.0, 0.5]))  # well-formed goals
            elif type_name.endswith('/Image'):
                self.publish(self.stranger, topic, type_name, self.image(cls))
            else:
                self.publish(self.stranger, topic, type_name, fuzz.message(cls))

    def bytes_message(self, topic, type_name, impersonator, bad, good) -> None:
        cls = message_class(type_name)
        # the impersonator goes through every malformed form in turn
        self.publish(impersonator, topic, type_name,
                     cls(data=array.array('B', bad[self.sent[topic] // 4 % len(bad)])))
        self.publish(self.stranger, topic, type_name,
                     cls(data=array.array('B', self.fuzz.choice(bad))))
        # every round: a graph that took a stranger's well-formed message at all is found out
        self.publish(self.stranger, topic, type_name,
                     cls(data=array.array('B', self.fuzz.choice(good))))
        self.publish(self.stranger, topic, type_name, self.fuzz.message(cls))

    def action(self, topic, type_name) -> None:
        from hilserl.messages.conversions import action_to_msg
        fuzz = self.fuzz
        cls = message_class(type_name)
        malformed = cls(data=fuzz.choice(([math.nan] * 4, [1.0, 2.0, 3.0], [], [50.0, 0, 0, 0],
                                          [math.inf, 0, 0, 0], [3.4e38] * 4, [0.5] * 7)))
        if fuzz.rng.random() < 0.5:
            malformed = fuzz.message(cls)
        self.publish(self.fake_actor, topic, type_name, malformed)
        # well-formed, for the tick the driver waits on: what the stray process of the issue
        # sent, and the driver executed as its own
        well_formed = action_to_msg(fuzz.rng.uniform(-1, 1, self.action_dim), 'policy',
                                    stamp_ns=self.tick_ns)
        self.publish(self.stranger, topic, type_name, well_formed)

    def image(self, cls):
        fuzz = self.fuzz
        msg = fuzz.message(cls)
        if fuzz.rng.random() < 0.5:  # coherent sizes with one thing wrong
            height, width = fuzz.choice(((128, 128), (64, 64), (1, 1), (480, 640), (0, 5)))
            encoding = fuzz.choice(('rgb8', 'bgr8', 'mono8', 'rgba8', '32FC1', 'yuv422', ''))
            step = width * fuzz.choice((3, 1, 4, 0))
            size = step * height + fuzz.choice((0, 0, -1, 1, -step * height))
            msg.height, msg.width, msg.encoding, msg.step = height, width, encoding, step
            msg.data = array.array('B', bytes(max(size, 0)))
        return msg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', required=True, help='the graph\'s training YAML')
    parser.add_argument('--seconds', type=float, default=30.0)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--wait-s', type=float, default=60.0,
                        help='how long to wait for the graph\'s topics')
    args = parser.parse_args(argv)
    from hilserl.configuration.config import load_train_config
    cfg = load_train_config(args.config)
    rclpy.init()
    rogue = Rogue(cfg, args.seed)
    executor = rclpy.executors.SingleThreadedExecutor()
    for node in rogue.nodes():
        executor.add_node(node)
    wanted = {'transitions', 'policy_weights', 'action'}
    deadline = time.monotonic() + args.wait_s
    topics = []
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
        topics = [(t, types[0]) for t, types in rogue.stranger.get_topic_names_and_types()
                  if t not in SKIPPED_TOPICS and types]
        if wanted <= {t.rsplit('/', 1)[-1] for t, _ in topics}:
            break
    else:
        print(f'rogue: the graph\'s topics did not appear in {args.wait_s:g} s: {topics}',
              file=sys.stderr)
        return 2
    started = time.monotonic()
    last_listing = started
    while time.monotonic() - started < args.seconds:
        if time.monotonic() - last_listing > 2.0:  # topics that appear later
            last_listing = time.monotonic()
            topics = [(t, types[0]) for t, types in rogue.stranger.get_topic_names_and_types()
                      if t not in SKIPPED_TOPICS and types]
        rogue.round(topics)
        executor.spin_once(timeout_sec=0.02)
    print(json.dumps(dict(rogue.sent)), flush=True)
    for node in rogue.nodes():
        node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
