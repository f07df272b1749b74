"""SROS2: `hilserl security-policy` writes sros2's policy format with one enclave per node, each
allowed exactly the topics and services its node uses. Checked three ways: the XML against the
structure sros2's policy.xsd describes, resolved as sros2's permissions.xsl resolves it; every node
refusing to start when its endpoints differ from hilserl/ros/interfaces.py (the policy's source);
and the running train and eval graphs, introspected through the ROS graph API, using exactly what
their policy allows, each node in its enclave.

The Fast DDS wheel here is built without the security plugins, so a secured graph cannot run on
this machine: what is checked of `keystore` is that the nodes get the security environment and
their enclave and refuse to start without keys rather than run unsecured."""
import os
import subprocess
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from hilserl.ros.graph import GraphArgs, NodeSpec, build_graph
from hilserl.ros.interfaces import NodeInterface
from hilserl.ros.security import (check_keystore, resolve_name, resolved_interface, secured_nodes,
                                  security_policy)
from hilserl_tools import cli

from conftest import TINY_TRAIN_CONFIG, free_domain_id

RULES = {('topics', 'publish'): 'publish', ('topics', 'subscribe'): 'subscribe',
         ('services', 'reply'): 'serve', ('services', 'request'): 'call'}
CHILD = {'topics': 'topic', 'services': 'service'}


def sros2_name(name: str, ns: str, node: str) -> str:
    """A policy name as sros2's permissions.xsl makes it fully qualified."""
    if name.startswith('/'):
        return name
    base = ns if ns.endswith('/') else ns + '/'
    return base + node + name[1:] if name.startswith('~') else base + name


def read_policy(text: str) -> dict:
    """{enclave path: (ns, node, {field: set of names})}, checking the structure of sros2's
    policy.xsd (version 0.2.0) on the way."""
    root = ElementTree.fromstring(text)
    assert root.tag == 'policy' and root.get('version') == '0.2.0'
    assert [child.tag for child in root] == ['enclaves']
    enclaves = {}
    for enclave in root.find('enclaves'):
        assert enclave.tag == 'enclave' and enclave.get('path', '').startswith('/hilserl/')
        assert enclave.get('path') not in enclaves, 'one enclave per node'
        assert [child.tag for child in enclave] == ['profiles']
        profiles = list(enclave.find('profiles'))
        assert len(profiles) == 1 and profiles[0].tag == 'profile'
        profile = profiles[0]
        ns, node = profile.get('ns'), profile.get('node')
        assert ns.startswith('/') and node
        allowed = {field: set() for field in RULES.values()}
        for rule in profile:
            assert rule.tag in CHILD, rule.tag
            (qualifier, value), = rule.attrib.items()  # one rule per element here
            assert value == 'ALLOW' and (rule.tag, qualifier) in RULES
            names = [child.text for child in rule]
            assert names and all(child.tag == CHILD[rule.tag] for child in rule)
            allowed[RULES[rule.tag, qualifier]] |= {sros2_name(n, ns, node) for n in names}
        enclaves[enclave.get('path')] = (ns, node, allowed)
    return enclaves


def policy_for(args: GraphArgs) -> dict:
    return read_policy(security_policy(secured_nodes(args), args.namespace))


# the graphs the policy covers: default sim training, two arms under a namespace, evaluation,
# a real arm at the keys, a ros2_control stack, the classifier as the success signal
GRAPHS = {
    'train': GraphArgs(),
    'two_arms': GraphArgs(robots=2, namespace='arm1'),
    'eval': GraphArgs(mode='eval', checkpoint='ckpt'),
    'keyboard': GraphArgs(backend='hardware', teleop='keyboard', success_source='key'),
    'external': GraphArgs(backend='hardware', driver='external', teleop='leader',
                          success_source='classifier', classifier_model='model'),
    'record': GraphArgs(mode='record'),
}


@pytest.mark.parametrize('graph', sorted(GRAPHS))
def test_each_enclave_allows_exactly_what_its_node_uses(graph):
    args = GRAPHS[graph]
    nodes = secured_nodes(args)
    policy = policy_for(args)
    assert sorted(policy) == sorted(n.enclave for n in nodes)
    for spec in nodes:
        ns, node, allowed = policy[spec.enclave]
        assert node == spec.name
        expected = {field: set(names)
                    for field, names in resolved_interface(spec, args.namespace).items()}
        assert allowed == expected, spec.label


def test_the_policy_follows_the_graph_arguments():
    train = policy_for(GRAPHS['train'])
    driver = train['/hilserl/train/so101_driver'][2]
    assert {'/joint_states', '/clock', '/sim/success', '/rosout', '/parameter_events'} <= \
        driver['publish']
    assert {'/reset', '/torque', '/estop', '/so101_driver/get_parameters'} <= driver['serve']
    assert train['/hilserl/train/sac_actor'][2]['call'] == {'/reset'}
    assert '/transitions' in train['/hilserl/train/sac_learner'][2]['subscribe']
    assert '/policy_weights' in train['/hilserl/train/sac_actor'][2]['subscribe']

    evaluation = policy_for(GRAPHS['eval'])
    assert not any(name.endswith(('/sac_learner', '/teleop')) for name in evaluation)
    actor = evaluation['/hilserl/eval/sac_actor'][2]
    assert '/transitions' not in actor['publish'] and '/policy_weights' not in actor['subscribe']

    two = policy_for(GRAPHS['two_arms'])
    assert two['/hilserl/train/arm1/sac_learner'][2]['subscribe'] >= {
        '/arm1/robot_0/transitions', '/arm1/robot_1/episode/events'}
    arm = two['/hilserl/train/arm1/robot_1/sac_actor']
    assert arm[0] == '/arm1/robot_1' and '/arm1/policy_weights' in arm[2]['subscribe']
    assert '/arm1/robot_1/clock' in arm[2]['subscribe']  # each arm's own simulated clock
    assert '/arm1/learner/progress' in \
        two['/hilserl/train/arm1/robot_0/so101_driver'][2]['subscribe']

    keys = policy_for(GRAPHS['keyboard'])
    # ros2 launch leaves the keys to keyboard_teleop: it has an enclave of its own
    assert keys['/hilserl/train/keyboard_teleop'][2]['publish'] >= {'/teleop/action',
                                                                    '/teleop/episode_label'}
    camera = keys['/hilserl/train/gripper_camera'][2]  # opencv, from the robot file
    assert camera['subscribe'] == set()
    # no simulated clock or world on a real arm (the recorder still listens for sim/*)
    assert not any({'/clock', '/sim/cube_pose'} & allowed['publish'] or
                   '/clock' in allowed['subscribe'] for _, _, allowed in keys.values())

    external = policy_for(GRAPHS['external'])
    driver = external['/hilserl/train/so101_driver'][2]
    assert '/forward_position_controller/commands' in driver['publish']
    assert '/joint_states' in driver['subscribe'] and '/joint_states' not in driver['publish']
    assert '/reward_classifier/success' in external['/hilserl/train/sac_actor'][2]['subscribe']
    assert '/hilserl/train/reward_classifier' in external


def test_name_resolution_is_rcls(ros_context):
    from rclpy.node import Node
    remappings = [('/clock', '/arm1/robot_0/clock'), ('policy_weights', '/arm1/policy_weights')]
    node = Node('sac_actor', namespace='/arm1/robot_0', context=ros_context,
                cli_args=['--ros-args'] + [a for s, t in remappings for a in ('-r', f'{s}:={t}')])
    try:
        for name in ('joint_states', '/clock', '~/get_parameters', 'policy_weights', '/rosout',
                     'gripper_cam/image_crop'):
            assert resolve_name(name, '/arm1/robot_0', 'sac_actor', remappings) == \
                node.resolve_topic_name(name), name
    finally:
        node.destroy_node()


def test_a_node_that_uses_an_undeclared_topic_does_not_start(ros_context, monkeypatch):
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from std_msgs.msg import Bool

    from hilserl.ros.node import check_interface
    node = Node('guard', namespace='/arm1', context=ros_context)
    try:
        node.create_publisher(Bool, 'driver/ready', 1)
        check_interface(node, NodeInterface(publish=('driver/ready',)))
        node.create_subscription(Bool, 'sim/grasped', lambda _: None, 1)
        with pytest.raises(RuntimeError, match=r"subscribes to \['/arm1/sim/grasped'\] not "
                                               r"declared in hilserl/ros/interfaces.py"):
            check_interface(node, NodeInterface(publish=('driver/ready',)))
        with pytest.raises(RuntimeError, match=r"declares but never calls \['/arm1/reset'\]"):
            check_interface(node, NodeInterface(publish=('driver/ready',),
                                                subscribe=('sim/grasped',), call=('reset',)))
    finally:
        node.destroy_node()

    # a real node with one topic more than its declaration
    import so101_driver.teleop_node as teleop_node
    from hilserl.ros.interfaces import teleop_interface
    monkeypatch.setattr(teleop_node, 'teleop_interface', lambda device: NodeInterface(
        publish=teleop_interface(device).publish[:-1]))
    with pytest.raises(RuntimeError, match='teleop/episode_label'):
        teleop_node.TeleopNode(context=ros_context,
                               parameter_overrides=[Parameter('device', value='keyboard')])


def test_the_command_writes_the_policy(tmp_path, capsys):
    out = tmp_path / 'policy.xml'
    assert cli.main(['security-policy', 'train', '--backend', 'hardware', '--teleop', 'leader',
                     '--success-source', 'key', '--output', str(out)]) == 0
    said = capsys.readouterr().out
    assert 'generate_artifacts' in said and '/hilserl/train/sac_learner' in said
    args = GraphArgs(backend='hardware', teleop='leader', success_source='key')
    assert read_policy(out.read_text()) == policy_for(args)
    assert cli.main(['security-policy', 'eval', '--checkpoint', 'ckpt']) == 0
    assert read_policy(capsys.readouterr().out) == policy_for(GRAPHS['eval'])


def test_a_keystore_gives_every_node_its_enclave_and_the_security_environment(tmp_path):
    with pytest.raises(ValueError, match='create_keystore'):
        GraphArgs(keystore=str(tmp_path))
    (tmp_path / 'enclaves').mkdir()
    args = GraphArgs(keystore=str(tmp_path), discovery='subnet')
    assert args.environment() == {
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET', 'ROS_SECURITY_KEYSTORE': str(tmp_path),
        'ROS_SECURITY_ENABLE': 'true', 'ROS_SECURITY_STRATEGY': 'Enforce'}
    assert GraphArgs().security_environment() == {}
    nodes = build_graph(args)
    with pytest.raises(ValueError, match=r'no enclave /hilserl/train/so101_driver, .*'
                                         r'generate_artifacts -k'):
        check_keystore(args, nodes)
    for spec in nodes:
        (tmp_path / 'enclaves' / spec.enclave.lstrip('/')).mkdir(parents=True)
    check_keystore(args, nodes)
    from hilserl_tools.process_graph import node_command
    driver = node_command(nodes[0], tmp_path / 'params')
    assert driver[driver.index('--enclave') + 1] == '/hilserl/train/so101_driver'


def _start_without_keys(spec: NodeSpec, args: GraphArgs, params_dir: Path):
    from hilserl_tools.process_graph import node_command
    return subprocess.run(node_command(spec, params_dir), capture_output=True, text=True,
                          timeout=300, env={**os.environ, **args.environment(),
                                            'ROS_DOMAIN_ID': str(free_domain_id())})


def test_a_secured_node_without_its_keys_refuses_to_start(tmp_path):
    """What can be run here: the node finds its enclave in the keystore (rcl names the folder
    it looked for), then cannot start unsecured: this Fast DDS has no security plugins, a
    distro's finds no keys in the empty folder."""
    keystore = tmp_path / 'keystore'
    (keystore / 'enclaves').mkdir(parents=True)
    args = GraphArgs(keystore=str(keystore))
    camera = next(n for n in build_graph(args) if n.name == 'gripper_camera')
    missing = _start_without_keys(camera, args, tmp_path / 'params')
    output = missing.stdout + missing.stderr
    assert missing.returncode != 0 and 'gripper_camera up' not in output
    assert f"'{keystore}/enclaves/hilserl/train/gripper_camera' does not exist" in output, output
    (keystore / 'enclaves' / 'hilserl' / 'train' / 'gripper_camera').mkdir(parents=True)
    empty = _start_without_keys(camera, args, tmp_path / 'params')
    output = empty.stdout + empty.stderr
    assert empty.returncode != 0 and 'gripper_camera up' not in output
    assert 'does not exist' not in output and 'security' in output.lower(), output


# --- the running graphs ---------------------------------------------------------------------

def _live_endpoints(probe, name: str, namespace: str) -> dict:
    from rclpy.node import NodeNameNonExistentError
    try:
        return _endpoints(probe, name, namespace)
    except NodeNameNonExistentError:  # not discovered yet
        return {}


def _endpoints(probe, name: str, namespace: str) -> dict:
    queries = {'publish': probe.get_publisher_names_and_types_by_node,
               'subscribe': probe.get_subscriber_names_and_types_by_node,
               'serve': probe.get_service_names_and_types_by_node,
               'call': probe.get_client_names_and_types_by_node}
    return {field: {endpoint for endpoint, _ in query(name, namespace)}
            for field, query in queries.items()}


def _expected_live(policy: dict) -> dict:
    """The policy, less what this venv cannot do: tf is recorded only where tf2_msgs is."""
    try:
        import tf2_msgs  # noqa: F401
        return policy
    except ImportError:
        return {path: (ns, node, {**allowed, 'subscribe': {
            t for t in allowed['subscribe'] if t.rsplit('/', 1)[-1] not in ('tf', 'tf_static')}})
            for path, (ns, node, allowed) in policy.items()}


def _check_running_graph(args: GraphArgs, run_dir: Path):
    import rclpy
    from rclpy.node import Node

    from hilserl_tools.process_graph import ProcessGraph
    nodes = build_graph(args)
    expected = _expected_live(read_policy(security_policy(nodes, args.namespace)))
    domain = free_domain_id()
    lines = []
    graph = ProcessGraph(nodes, run_dir / 'params', args.namespace, output=lines.append,
                         domain_id=domain)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    probe = Node('security_probe', context=context)
    try:
        graph.start()
        deadline = time.monotonic() + 240  # generous: torch, MuJoCo and DDS on a loaded machine
        while True:
            live = {path: _live_endpoints(probe, node, ns)
                    for path, (ns, node, _) in expected.items()}
            enclaves = {(ns, name): enclave for name, ns, enclave in
                        probe.get_node_names_and_namespaces_with_enclaves()}
            same = all(live[path] == allowed for path, (_, _, allowed) in expected.items())
            if same or time.monotonic() > deadline or graph.exited():
                break
            time.sleep(1.0)
        assert not graph.exited(), f'{graph.exited()}:\n' + '\n'.join(lines[-40:])
        for path, (ns, node, allowed) in expected.items():
            assert enclaves.get((ns, node)) == path, (node, enclaves)
            assert live[path], f'{node} not discovered:\n' + '\n'.join(lines[-40:])
            for field in allowed:
                used = live[path][field]
                assert used == allowed[field], (
                    f'{node} {field}: not in the policy {sorted(used - allowed[field])}, '
                    f'in the policy but unused {sorted(allowed[field] - used)}')
    finally:
        graph.stop()
        probe.destroy_node()
        rclpy.try_shutdown(context=context)


def test_the_running_train_graph_uses_exactly_what_its_policy_allows(tmp_path):
    pytest.importorskip('rclpy')
    config = tmp_path / 'tiny.yaml'
    config.write_text(TINY_TRAIN_CONFIG)
    _check_running_graph(GraphArgs(config=str(config), run_dir=str(tmp_path / 'run'),
                                   namespace='arm1'), tmp_path)


def test_the_running_eval_graph_uses_exactly_what_its_policy_allows(tmp_path):
    pytest.importorskip('rclpy')
    from hilserl.configuration.config import load_train_config
    from hilserl_policy.checkpoint import save_checkpoint
    from hilserl_policy.learner import Learner
    config = tmp_path / 'tiny.yaml'
    config.write_text(TINY_TRAIN_CONFIG)
    cfg = load_train_config(config)
    checkpoint = save_checkpoint(tmp_path / 'trained', Learner(cfg, tmp_path / 'trained').agent,
                                 cfg)
    _check_running_graph(GraphArgs(mode='eval', config=str(config), checkpoint=str(checkpoint),
                                   num_episodes=1000, run_dir=str(tmp_path / 'run')), tmp_path)
