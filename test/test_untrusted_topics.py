"""Any participant on a graph's domain can publish on its topics. What the graph's own nodes
accept: commands, policy weights and transitions only from the graph's actor or learner
(`trusted_publishers`), and of those only what fits (the ROS-free checks below). The last test
runs the training graph with a rogue process publishing garbage on every topic for 30 s
(`rogue_publisher.py`)."""
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import rogue_publisher
from conftest import TINY_TRAIN_CONFIG, spin_for
from hilserl.configuration.config import load_train_config
from hilserl.data.transition import InvalidTransition, TransitionDecoder

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp('untrusted') / 'tiny.yaml'
    path.write_text(TINY_TRAIN_CONFIG)
    return path, load_train_config(str(path))


def test_every_malformed_transition_is_refused_by_the_decoder(tiny):
    _, cfg = tiny
    bad, well_formed = rogue_publisher.transition_payloads(cfg, rogue_publisher.Fuzzer(0))
    expected = (cfg.image_shape(), cfg.observation.state_dim, cfg.action.dim)
    invalid = 0
    for payload in bad:
        decoder = TransitionDecoder(expected)
        with pytest.raises(ValueError):  # nothing else: a callback that raises kills the node
            decoder.decode(payload)
        assert decoder._previous is None or decoder._previous[2].shape == expected[0]
        invalid += isinstance(_raised(decoder, payload), InvalidTransition)
    assert invalid >= 10  # decoded, then refused by shape, dtype, range or finiteness
    for payload in well_formed:
        TransitionDecoder(expected).decode(payload)


def _raised(decoder, payload):
    try:
        decoder.decode(payload)
    except ValueError as exc:
        return exc


def test_an_invalid_transition_is_never_the_streams_previous_step(tiny):
    _, cfg = tiny
    from hilserl.data.transition import TransitionEncoder
    expected = (cfg.image_shape(), cfg.observation.state_dim, cfg.action.dim)
    rng = np.random.default_rng(0)
    _, (good, *_) = rogue_publisher.transition_payloads(cfg, rogue_publisher.Fuzzer(1))
    first, _ = TransitionDecoder().decode(good)
    second = first.__class__(**{**first.__dict__, 'image': first.next_image,
                                'next_image': rng.integers(0, 256, expected[0], np.uint8)})
    bad = first.__class__(**{**first.__dict__, 'state': np.full_like(first.state, np.nan)})
    encoder, decoder = TransitionEncoder(), TransitionDecoder(expected)
    decoder.decode(encoder.encode(first, 3, 1))
    with pytest.raises(InvalidTransition, match='^state is not finite'):
        decoder.decode(TransitionEncoder().encode(bad, 3, 1))  # another stream's step 1
    restored, _ = decoder.decode(encoder.encode(second, 3, 2))  # its image comes from step 1
    assert np.array_equal(restored.image, first.next_image)


def test_the_weights_gate_refuses_each_wrong_form_and_older_steps(tiny):
    _, cfg = tiny
    from hilserl_policy.policy import build_policy
    from hilserl_policy.transport import WeightsGate, WeightsRefused, encode_weights
    policy = build_policy(cfg, device='cpu')
    gate = WeightsGate(policy.policy_state())
    bad, (valid,) = rogue_publisher.weights_payloads(cfg)
    state = policy.policy_state()
    assert gate.check(encode_weights(state, {'step': 0}))[1] == 0  # a first learner: any step
    gate.applied(7)
    reasons = set()
    for payload in bad:
        with pytest.raises(WeightsRefused) as refused:
            gate.check(payload)
        reasons.add(refused.value.reason)
    assert reasons == {'payload', 'shape', 'dtype', 'non_finite', 'stale', 'step', 'keys',
                       'digest'}
    with pytest.raises(WeightsRefused, match='not newer than step 7'):
        gate.check(encode_weights(state, {'step': 7}))
    _, step = gate.check(valid)
    assert step == rogue_publisher.ROGUE_WEIGHTS_STEP and gate.applied_step == 7  # not yet


def test_only_trusted_nodes_are_heard_and_strangers_counted(ros_context):
    pytest.importorskip('rclpy')
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from std_msgs.msg import String

    from hilserl.messages.diagnostics import ForeignTally
    from hilserl.ros.node import TrustedSubscription
    listener = Node('listener', context=ros_context)
    actor, stranger = Node('sac_actor', context=ros_context), Node('rogue', context=ros_context)
    heard, everyone, tally = [], [], ForeignTally()
    TrustedSubscription(listener, String, 'topic', lambda m: heard.append(m.data), 100,
                        ['sac_actor'], tally)
    TrustedSubscription(listener, String, 'topic', lambda m: everyone.append(m.data), 100, [''],
                        ForeignTally())
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (listener, actor, stranger):
        executor.add_node(node)
    publishers = {node: node.create_publisher(String, 'topic', 100) for node in (actor, stranger)}
    assert spin_for(executor, 30, lambda: all(p.get_subscription_count() == 2
                                              for p in publishers.values()))
    for i in range(20):  # at once: the first arrive before the nodes' names are known
        for node, publisher in publishers.items():
            publisher.publish(String(data=f'{node.get_name()} {i}'))
    assert spin_for(executor, 30, lambda: len(heard) == 20 and tally.total == 20 and
                    len(everyone) == 40)
    assert heard == [f'sac_actor {i}' for i in range(20)]  # in order
    assert tally.values() == {'foreign_messages': '20',
                              'foreign_publishers': json.dumps({'topic <- rogue': 20})}


# --- the graph under a rogue ------------------------------------------------------------------
class Monitor:
    """Watches the graph as a test: every message of the topics it needs with its publisher's
    GID, to keep only the graph's own nodes' (the rogue publishes on the same topics)."""

    def __init__(self, context):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import JointState
        from std_msgs.msg import UInt8MultiArray

        from hilserl.messages.conventions import Topics, qos_for
        from hilserl.ros.node import qos_profile
        self.node = Node('rogue_test_monitor', context=context)
        self.lock = threading.Lock()
        self.messages = {topic: [] for topic in (Topics.TCP_POSE, Topics.JOINT_STATES,
                                                 Topics.DIAGNOSTICS, Topics.POLICY_WEIGHTS)}
        for msg_type, topic in ((PoseStamped, Topics.TCP_POSE),
                                (JointState, Topics.JOINT_STATES),
                                (DiagnosticArray, Topics.DIAGNOSTICS),
                                (UInt8MultiArray, Topics.POLICY_WEIGHTS)):
            # deep queues: under the rogue's flood this node may fall behind, and must miss none
            # of the graph's messages (the learner's weight pushes come one at a time)
            self.node.create_subscription(
                msg_type, topic, lambda msg, info, topic=topic: self._on(topic, msg, info),
                qos_profile(dataclasses.replace(qos_for(topic), depth=1000)))
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on(self, topic, msg, info):
        gid = bytes(info['publisher_gid']['data']).rstrip(b'\0')
        with self.lock:
            self.messages[topic].append((gid, time.monotonic(), msg))

    def gids(self, node_name: str, topic: str) -> set:
        return {bytes(i.endpoint_gid).rstrip(b'\0')
                for i in self.node.get_publishers_info_by_topic('/' + topic)
                if i.node_name == node_name}

    def of(self, topic: str, gids: set, since_s: float = 0.0) -> list:
        with self.lock:
            return [(t, msg) for gid, t, msg in self.messages[topic]
                    if gid in gids and t >= since_s]

    def diagnostics(self, gids: set, name: str, since_s: float = 0.0) -> list:
        """(time, {key: value}) of every status `name` the nodes of `gids` reported."""
        return [(t, {kv.key: kv.value for kv in status.values})
                for t, msg in self.of('diagnostics', gids, since_s)
                for status in msg.status if status.name == name]


def died(graph, lines) -> str:
    """The nodes that exited, each with its last output lines ('' while every node runs)."""
    dead = graph.exited()
    return ''.join(f'{name} exited {code}:\n' + '\n'.join(
        [line for line in lines if line.startswith(f'[{name}]')][-25:]) + '\n'
        for name, code in dead.items())


def wait_for(predicate, timeout_s: float, graph, lines) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert not graph.exited(), died(graph, lines)
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def weights_step(payload) -> int:
    from hilserl_policy.transport import decode_weights
    return int(decode_weights(bytes(payload.data))[1]['step'])


def test_a_rogue_on_every_topic_crashes_nothing_moves_nothing_and_poisons_nothing(
        tiny, tmp_path, ros_context):
    pytest.importorskip('rclpy')
    from hilserl.messages.conventions import Topics
    from hilserl.robot.kinematics import SO101Kinematics
    from hilserl.ros.graph import GraphArgs, build_graph
    from hilserl_tools.process_graph import ProcessGraph
    config, cfg = tiny
    domain = ros_context.get_domain_id()  # the monitor's context is on the graph's domain
    run = tmp_path / 'run'
    nodes = build_graph(GraphArgs(mode='train', config=str(config), run_dir=str(run),
                                  device='cpu'), cfg)
    for node in nodes:
        if node.name == 'sac_learner':
            node.parameters['summary_period_s'] = 1.0  # its diagnostics, every second
    lines = []
    graph = ProcessGraph(nodes, tmp_path / 'params', output=lines.append, domain_id=domain)
    monitor = Monitor(ros_context)
    graph.start()
    rogue = None
    try:
        # the graph trains: the actor runs episodes on the learner's weights
        gids = {}

        def learning():
            for name, topic in (('sac_actor', Topics.DIAGNOSTICS),
                                ('sac_learner', Topics.DIAGNOSTICS),
                                ('so101_driver', Topics.DIAGNOSTICS),
                                ('so101_driver', Topics.TCP_POSE),
                                ('so101_driver', Topics.JOINT_STATES),
                                ('sac_learner', Topics.POLICY_WEIGHTS)):
                gids.setdefault((name, topic), set()).update(monitor.gids(name, topic))
            actor = monitor.diagnostics(gids['sac_actor', Topics.DIAGNOSTICS], 'sac_actor')
            return bool(actor) and int(actor[-1][1]['weights_loaded']) >= 1 and \
                actor[-1][1]['phase'] == 'running'
        assert wait_for(learning, 240, graph, lines), '\n'.join(lines[-40:])
        learner_gids = gids['sac_learner', Topics.POLICY_WEIGHTS]
        actor_gids = gids['sac_actor', Topics.DIAGNOSTICS]
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain),
                   PYTHONPATH=os.pathsep.join(filter(None, (str(HERE.parent), str(HERE),
                                                            os.environ.get('PYTHONPATH')))))
        rogue_started = time.monotonic()
        rogue = subprocess.run([sys.executable, str(HERE / 'rogue_publisher.py'), '--config',
                                str(config), '--seconds', '30'], env=env, capture_output=True,
                               text=True, timeout=240)
        rogue_ended = time.monotonic()
        assert rogue.returncode == 0, rogue.stderr[-3000:]
        sent = json.loads(rogue.stdout.strip().splitlines()[-1])
        for topic in (Topics.EE_ACTION, Topics.POLICY_WEIGHTS, Topics.TRANSITIONS,
                      Topics.JOINT_STATES, Topics.IMAGE_CROP, Topics.EPISODE_EVENTS,
                      Topics.HUMAN_ACTION, Topics.JOINT_COMMAND, Topics.LEARNER_PROGRESS):
            assert sent.get('/' + topic, 0) > 10, (topic, sent)
        assert not graph.exited(), died(graph, lines)

        # the actor takes the learner's weights again after the rogue: a learner step pushed
        # after it ended
        def newer_weights_applied():
            pushed = {weights_step(m) for _, m in monitor.of(Topics.POLICY_WEIGHTS,
                                                             learner_gids, rogue_ended)}
            actor = monitor.diagnostics(actor_gids, 'sac_actor', rogue_ended)
            return bool(actor) and int(actor[-1][1]['weights_step']) in pushed
        assert wait_for(newer_weights_applied, 120, graph, lines), '\n'.join(lines[-40:])
        pushed = {weights_step(m) for _, m in monitor.of(Topics.POLICY_WEIGHTS, learner_gids)}
        actor = monitor.diagnostics(actor_gids, 'sac_actor')
        # the actor never used weights other than the learner's (or its own first ones)
        assert {int(v['weights_step']) for _, v in actor} <= \
            pushed | {int(actor[0][1]['weights_step'])}, pushed
        last = actor[-1][1]
        assert int(last['weights_rejected']) > 0 and int(last['foreign_messages']) > 0, last
        # the weights topic keeps one message: under the flood the actor sees some of them
        # (test_the_weights_gate_refuses_each_wrong_form_and_older_steps sees every form)
        assert len(set(json.loads(last['weights_rejected_reasons'])) & {
            'payload', 'shape', 'dtype', 'non_finite', 'stale', 'step', 'keys'}) >= 3, last
        driver = monitor.diagnostics(gids['so101_driver', Topics.DIAGNOSTICS],
                                     'so101_driver: arm')[-1][1]
        assert int(driver['rejected_commands']) > 0 and int(driver['foreign_messages']) > 0
        assert 'action <- rogue' in driver['foreign_publishers'], driver
        learner = monitor.diagnostics(gids['sac_learner', Topics.DIAGNOSTICS],
                                      'sac_learner')[-1][1]
        assert int(learner['foreign_messages']) > 0 and int(learner['bad_events']) > 0, learner
        assert int(learner['dropped']) > 0 and int(learner['stored']) > 0, learner
        assert {'undecodable', 'state', 'action', 'image'} <= set(
            json.loads(learner['drop_reasons'])), learner

        # the arm stayed in its workspace and joint limits throughout
        poses = monitor.of(Topics.TCP_POSE, gids['so101_driver', Topics.TCP_POSE])
        assert any(t > rogue_ended for t, _ in poses) and \
            any(rogue_started < t < rogue_ended for t, _ in poses)
        xyz = np.array([[m.pose.position.x, m.pose.position.y, m.pose.position.z]
                        for _, m in poses])
        low, high = np.array(cfg.task.workspace_min_m), np.array(cfg.task.workspace_max_m)
        tolerance_m = 0.01  # the servos' tracking of a clamped target
        assert np.all(xyz >= low - tolerance_m) and np.all(xyz <= high + tolerance_m), (
            xyz.min(axis=0), xyz.max(axis=0), low, high)
        kin = SO101Kinematics()
        joints = np.array([np.asarray(m.position)[:5] for _, m in monitor.of(
            Topics.JOINT_STATES, gids['so101_driver', Topics.JOINT_STATES])])
        assert len(joints) and np.all(joints >= kin.lower - 0.05) and \
            np.all(joints <= kin.upper + 0.05)
    finally:
        codes = graph.stop()
        monitor.executor.shutdown(timeout_sec=1)
        if rogue is not None:
            print(rogue.stdout[-2000:], rogue.stderr[-2000:])
    assert all(code in (0, -2) for code in codes.values()), codes

    # the buffers, as the final checkpoint wrote them: every transition finite and shaped, none
    # of the rogue's
    segments = sorted((run / 'checkpoints' / 'replay').rglob('segment_*.npz'))
    assert segments
    stored = 0
    for path in segments:
        with np.load(path) as data:
            rewards = data['reward']
            assert data['image'].dtype == np.uint8 and \
                data['image'].shape[1:] == cfg.image_shape()
            for key, width in (('state', cfg.observation.state_dim),
                               ('next_state', cfg.observation.state_dim),
                               ('action', cfg.action.dim)):
                assert data[key].shape == (len(rewards), width)
                assert np.all(np.isfinite(data[key]))
            assert np.all(np.abs(data['action']) <= 1.0)
            assert np.all(np.isfinite(rewards)) and \
                not np.any(rewards == rogue_publisher.REWARD_MARKER)
            stored += len(rewards)
    assert stored > 0
