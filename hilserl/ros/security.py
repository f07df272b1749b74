"""SROS2 for the graph: one enclave per node, and a policy (sros2's policy format, version
0.2.0) that lets each enclave publish, subscribe to, serve and call exactly what its node does
(`hilserl.ros.interfaces`, which every node checks itself against at start-up).

`ros2 security generate_artifacts -k KEYSTORE -p policy.xml` (or `create_permission`) turns the
policy into each enclave's signed DDS permissions; sros2 adds the DDS prefixes (rt/, rq/, rr/).
Names are written fully qualified, resolved as ROS resolves them (namespace, `~`, remappings).
Nothing here imports rclpy.
"""
from __future__ import annotations

import inspect
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

from hilserl.configuration.yaml_edit import node_sections
from hilserl.ros.graph import (GraphArgs, NodeSpec, build_graph, node_enclave, node_namespace,
                               node_remappings)
from hilserl.configuration.config import load_train_config
from hilserl.ros.interfaces import NODE_INTERFACES, NodeInterface, ros_node_basics

POLICY_VERSION = '0.2.0'
# (element, rule attribute, child element, NodeInterface field), in the policy's order
RULES = (('topics', 'publish', 'topic', 'publish'),
         ('topics', 'subscribe', 'topic', 'subscribe'),
         ('services', 'reply', 'service', 'serve'),
         ('services', 'request', 'service', 'call'))


def expand_name(name: str, namespace: str, node: str) -> str:
    """A topic or service name made fully qualified as rcl does: `/x` stays, `~/x` is under the
    node's name, anything else under its namespace."""
    base = namespace.rstrip('/')
    if name.startswith('/'):
        return name
    if name.startswith('~'):
        return f'{base}/{node}{name[1:]}'
    return f'{base}/{name}'


def resolve_name(name: str, namespace: str, node: str,
                 remappings: Iterable[Tuple[str, str]] = ()) -> str:
    """The name a node's endpoint ends up with: expanded, then its first matching remapping."""
    expanded = expand_name(name, namespace, node)
    for source, target in remappings:
        if expand_name(source, namespace, node) == expanded:
            return expand_name(target, namespace, node)
    return expanded


def node_parameters(spec: NodeSpec) -> Dict[str, object]:
    """The parameters the node starts with: its parameter files' sections, then the graph's."""
    merged: Dict[str, object] = {}
    for path in spec.parameter_files:
        for section in node_sections(path, spec.name):
            merged.update(section)
    merged.update(spec.parameters)
    return merged


def node_interface(spec: NodeSpec) -> NodeInterface:
    """What the node will publish, subscribe to, serve and call with its graph's parameters,
    the ROS basics (rosout, parameters, /clock on simulated time) included."""
    interface = NODE_INTERFACES[spec.program or spec.name]  # a second camera runs the first's
    parameters = node_parameters(spec)
    wanted = inspect.signature(interface).parameters
    if 'camera_names' in wanted and 'camera_names' not in parameters and \
            parameters.get('config_file'):  # the actor reads its cameras from its config
        parameters['camera_names'] = list(
            load_train_config(parameters['config_file']).image.camera_names)
    own = interface(**{name: value for name, value in parameters.items() if name in wanted})
    return own | ros_node_basics(bool(parameters.get('use_sim_time', False)))


def secured_nodes(args: GraphArgs, cfg=None) -> List[NodeSpec]:
    """Every node of the graph on both machines (all parts), and the keyboard's own node where
    `ros2 launch` leaves the keys to `keyboard_teleop` (teleop:=keyboard or leader)."""
    nodes = build_graph(replace(args, part='all'), cfg)
    keyboards = [replace(spec, name='keyboard_teleop', parameters={'device': 'keyboard'},
                         parameter_files=(), needs_terminal=True, remappings=())
                 for spec in nodes if spec.needs_terminal]
    return nodes + [replace(spec, enclave=node_enclave(args.mode, args.namespace, spec))
                    for spec in keyboards]


def resolved_interface(spec: NodeSpec, graph_namespace: str) -> Dict[str, List[str]]:
    """{NodeInterface field: sorted fully qualified names} of one node of the graph."""
    interface = node_interface(spec)
    namespace = node_namespace(graph_namespace, spec) or '/'
    remappings = node_remappings(graph_namespace, spec)
    return {field: sorted({resolve_name(name, namespace, spec.name, remappings)
                           for name in getattr(interface, field)})
            for _, _, _, field in RULES}


def security_policy(nodes: Sequence[NodeSpec], graph_namespace: str, title: str = '') -> str:
    """The sros2 policy XML: one enclave per node, its one profile allowing exactly the node's
    resolved interface."""
    policy = ElementTree.Element('policy', version=POLICY_VERSION)
    if title:
        policy.append(ElementTree.Comment(f' {title} '))
    enclaves = ElementTree.SubElement(policy, 'enclaves')
    for spec in nodes:
        enclave = ElementTree.SubElement(enclaves, 'enclave', path=spec.enclave)
        profile = ElementTree.SubElement(
            ElementTree.SubElement(enclave, 'profiles'), 'profile',
            ns=node_namespace(graph_namespace, spec) or '/', node=spec.name)
        resolved = resolved_interface(spec, graph_namespace)
        for element, rule, child, field in RULES:
            if resolved[field]:  # the schema wants at least one name in a rule
                names = ElementTree.SubElement(profile, element, {rule: 'ALLOW'})
                for name in resolved[field]:
                    ElementTree.SubElement(names, child).text = name
    ElementTree.indent(policy)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            + ElementTree.tostring(policy, encoding='unicode') + '\n')


def missing_enclaves(keystore: str, nodes: Sequence[NodeSpec]) -> List[str]:
    """The nodes' enclaves that `keystore` has no folder for (rcl refuses such a node)."""
    root = Path(keystore) / 'enclaves'
    return [spec.enclave for spec in nodes
            if not (root / spec.enclave.lstrip('/')).is_dir()]


def check_keystore(args: GraphArgs, nodes: Sequence[NodeSpec]) -> None:
    """Before any node starts: with a keystore, every node's enclave is in it."""
    if not args.keystore:
        return
    missing = missing_enclaves(args.keystore, nodes)
    if missing:
        raise ValueError(
            f'keystore {args.keystore} has no enclave {", ".join(missing)}: write the policy '
            f'with `hilserl security-policy {args.mode} ... --output policy.xml` (the same '
            f'graph flags) and run `ros2 security generate_artifacts -k {args.keystore} '
            '-p policy.xml`')
