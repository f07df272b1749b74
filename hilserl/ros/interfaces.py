"""What each node of the graph publishes, subscribes to, serves and calls, as plain data.

One function per node, taking the node's own parameters (same names and defaults). The node
calls it with the values it runs with and `hilserl.ros.node.check_interface` refuses to start a
node whose publishers, subscriptions, services or clients differ from it; the SROS2 policy
(`hilserl.ros.security`, `hilserl security-policy`) grants each node's enclave exactly this.
So a topic added to a node without being added here fails that node's tests rather than being
denied under security. Names are as the node passes them to rclpy: relative to the node's
namespace, `~/` private, `/...` global.
Nothing here imports rclpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Sequence, Tuple

from hilserl.configuration.config import DEFAULT_CAMERA
from hilserl.data.bags import EPISODE_TOPICS
from hilserl.messages.conventions import SUCCESS_TOPICS, Topics, camera_topics

CLOCK = '/clock'
ROSOUT = '/rosout'
PARAMETER_EVENTS = '/parameter_events'
# Every rclpy node answers these (rclpy's ParameterService; the type description service from
# Jazzy on).
PARAMETER_SERVICES = ('~/describe_parameters', '~/get_parameter_types', '~/get_parameters',
                      '~/list_parameters', '~/set_parameters', '~/set_parameters_atomically')
TYPE_DESCRIPTION_SERVICE = '~/get_type_description'
DRIVER_SERVICES = ('reset', 'torque', 'estop')


@dataclass(frozen=True)
class NodeInterface:
    publish: Tuple[str, ...] = ()
    subscribe: Tuple[str, ...] = ()
    serve: Tuple[str, ...] = ()     # services it answers
    call: Tuple[str, ...] = ()      # services it calls

    def __or__(self, other: 'NodeInterface') -> 'NodeInterface':
        def union(a: Iterable[str], b: Iterable[str]) -> Tuple[str, ...]:
            return tuple(dict.fromkeys((*a, *b)))
        return NodeInterface(union(self.publish, other.publish),
                             union(self.subscribe, other.subscribe),
                             union(self.serve, other.serve), union(self.call, other.call))


def ros_node_basics(use_sim_time: bool) -> NodeInterface:
    """What rcl and rclpy give every node: the log and parameter-event publishers, the parameter
    (and type description) services, and the /clock subscription on simulated time."""
    return NodeInterface(publish=(ROSOUT, PARAMETER_EVENTS),
                         subscribe=(CLOCK,) if use_sim_time else (),
                         serve=PARAMETER_SERVICES + (TYPE_DESCRIPTION_SERVICE,))


def robot_topic(robot_namespace: str, topic: str) -> str:
    """An arm's topic as the learner names it: `robot_0/transitions` ('' : `transitions`)."""
    return '/'.join(filter(None, (robot_namespace.strip('/'), topic)))


def driver_interface(backend: str = 'sim', sim_clock: bool = True,
                     external_command_topic: str = 'forward_position_controller/commands'
                     ) -> NodeInterface:
    external = backend == 'external'
    simulated = backend == 'sim'
    publish = [Topics.TCP_POSE, Topics.DIAGNOSTICS, Topics.DRIVER_READY, Topics.DRIVER_MARKERS]
    subscribe = [Topics.EE_ACTION, Topics.JOINT_COMMAND]
    if external:  # the controller stack publishes the joint states, and takes the goals
        publish.append(external_command_topic)
        subscribe.append(Topics.JOINT_STATES)
    else:
        publish.append(Topics.JOINT_STATES)
    if simulated:
        publish += [Topics.SIM_CUBE_POSE, Topics.SIM_GRASPED, Topics.SIM_SUCCESS]
        if sim_clock:
            publish.append(CLOCK)
            subscribe.append(Topics.LEARNER_PROGRESS)
    return NodeInterface(tuple(publish), tuple(subscribe), serve=DRIVER_SERVICES)


def camera_interface(backend: str = 'sim', camera_name: str = DEFAULT_CAMERA) -> NodeInterface:
    # the simulated camera renders the driver's state
    return NodeInterface(
        publish=(*camera_topics(camera_name), Topics.DIAGNOSTICS),
        subscribe=(Topics.JOINT_STATES, Topics.SIM_CUBE_POSE) if backend == 'sim' else ())


def teleop_interface(device: str = 'sim') -> NodeInterface:
    # the simulated human watches the world and answers the policy's proposals
    watched = (Topics.SIM_GRASPED, Topics.SIM_SUCCESS, Topics.EPISODE_EVENTS,
               Topics.JOINT_STATES, Topics.SIM_CUBE_POSE, Topics.POLICY_ACTION)
    return NodeInterface(
        publish=(Topics.HUMAN_ACTION, Topics.INTERVENTION, Topics.EPISODE_LABEL),
        subscribe=watched if device == 'sim' else (),
        call=('torque',))  # the t key re-arms the driver, as `hilserl torque on`


def classifier_interface(camera_names: Sequence[str] = (DEFAULT_CAMERA,)) -> NodeInterface:
    return NodeInterface(
        publish=(Topics.SUCCESS_PROBABILITY, Topics.SUCCESS, Topics.DIAGNOSTICS),
        subscribe=tuple(camera_topics(name)[1] for name in camera_names))


def actor_interface(mode: str = 'train', success_source: str = 'sim',
                    camera_names: Sequence[str] = (DEFAULT_CAMERA,)) -> NodeInterface:
    subscribe = [*(camera_topics(name)[1] for name in camera_names), Topics.JOINT_STATES,
                 Topics.HUMAN_ACTION,
                 Topics.EPISODE_LABEL, Topics.DRIVER_READY, Topics.RECORDER_READY,
                 Topics.SUCCESS_PROBABILITY]
    if SUCCESS_TOPICS.get(success_source):
        subscribe.append(SUCCESS_TOPICS[success_source])
    if mode == 'train':
        subscribe.append(Topics.POLICY_WEIGHTS)
    publish = [Topics.POLICY_ACTION, Topics.EE_ACTION, Topics.REWARD, Topics.EPISODE_EVENTS,
               Topics.DIAGNOSTICS, Topics.EPISODE_MARKERS]
    if mode in ('train', 'record'):  # to the learner, or to the recorder's bags
        publish.append(Topics.TRANSITIONS)
    return NodeInterface(tuple(publish), tuple(subscribe), call=('reset',))


def learner_interface(robot_namespaces: Sequence[str] = ('',)) -> NodeInterface:
    robots = dict.fromkeys(r.strip('/') for r in robot_namespaces)
    return NodeInterface(
        publish=(Topics.POLICY_WEIGHTS, Topics.LEARNER_PROGRESS, Topics.DIAGNOSTICS),
        subscribe=tuple(robot_topic(robot, topic) for robot in robots
                        for topic in (Topics.TRANSITIONS, Topics.EPISODE_EVENTS)))


def recorder_interface(record_raw_image: bool = False, record_tf: bool = True,
                       camera_view_topics: Sequence[str] = (Topics.IMAGE_CROP,)
                       ) -> NodeInterface:
    """`record_tf`: tf and tf_static are recorded (the node records them where tf2_msgs is
    installed, as with a distro)."""
    subscribe = dict.fromkeys((Topics.EPISODE_EVENTS, *EPISODE_TOPICS, *camera_view_topics))
    if record_raw_image:
        subscribe[Topics.IMAGE_RAW] = None
    if record_tf:
        subscribe.update({'tf': None, 'tf_static': None})
    return NodeInterface(publish=(Topics.RECORDER_READY,), subscribe=tuple(subscribe))


# node name -> its interface function (keyboard_teleop: the keyboard in a terminal of its own)
NODE_INTERFACES: Dict[str, Callable[..., NodeInterface]] = {
    'so101_driver': driver_interface,
    'gripper_camera': camera_interface,
    'teleop': teleop_interface,
    'keyboard_teleop': teleop_interface,
    'reward_classifier': classifier_interface,
    'sac_actor': actor_interface,
    'sac_learner': learner_interface,
    'episode_recorder': recorder_interface,
}
