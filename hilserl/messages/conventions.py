"""Topic names, frames and QoS classes of the whole suite, in one place.

Topic names are relative so a launch `namespace` (e.g. two arms) applies to all of them.
QoS is described here as plain data; `hilserl.ros.node.qos_profile()` turns it into
rclpy's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

JOINT_NAMES = ('shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll',
               'gripper')
ARM_JOINT_NAMES = JOINT_NAMES[:5]
ACTION_NAMES = ('dx', 'dy', 'dz', 'gripper')


class Topics:
    """Relative topic names (never start with '/')."""
    JOINT_STATES = 'joint_states'
    TCP_POSE = 'tcp_pose'                    # geometry_msgs/PoseStamped, in BASE_FRAME
    # std_msgs/Float32MultiArray [dx, dy, dz, gripper] in [-1, 1]
    EE_ACTION = 'action'
    POLICY_ACTION = 'policy/action'          # std_msgs/Float32MultiArray: the policy's proposal
    # std_msgs/Float64MultiArray (ros2_control forward command controller style)
    JOINT_COMMAND = 'joint_position_controller/commands'
    # sensor_msgs/Joy: axes [dx, dy, dz, gripper], buttons [intervention]
    HUMAN_ACTION = 'teleop/action'
    INTERVENTION = 'intervention'            # std_msgs/Bool
    EPISODE_LABEL = 'teleop/episode_label'   # std_msgs/String: success | failure | rerecord
    # The gripper camera's (every camera <name> has its own: camera_topics(name))
    IMAGE_RAW = 'gripper_cam/image_raw'      # sensor_msgs/Image, full frame
    IMAGE_CROP = 'gripper_cam/image_crop'    # sensor_msgs/Image, policy view (crop + resize)
    SUCCESS_PROBABILITY = 'reward_classifier/probability'  # std_msgs/Float32
    SUCCESS = 'reward_classifier/success'    # std_msgs/Bool (debounced)
    REWARD = 'reward'                        # std_msgs/Float32
    TRANSITIONS = 'transitions'              # std_msgs/UInt8MultiArray (serialised transition)
    POLICY_WEIGHTS = 'policy_weights'        # std_msgs/UInt8MultiArray (latched)
    EPISODE_EVENTS = 'episode/events'        # std_msgs/String (JSON)
    EPISODE_MARKERS = 'episode/markers'      # visualization_msgs/MarkerArray (status text)
    DRIVER_MARKERS = 'driver/markers'        # visualization_msgs/MarkerArray (workspace, target)
    DIAGNOSTICS = 'diagnostics'              # diagnostic_msgs/DiagnosticArray
    DRIVER_READY = 'driver/ready'            # std_msgs/Bool (latched)
    RECORDER_READY = 'episode_recorder/ready'  # std_msgs/Bool (latched): it hears the graph
    SIM_CUBE_POSE = 'sim/cube_pose'          # geometry_msgs/PoseStamped, simulation ground truth
    SIM_GRASPED = 'sim/grasped'              # std_msgs/Bool, simulation ground truth
    SIM_SUCCESS = 'sim/success'              # std_msgs/Bool, simulation ground truth (lifted)
    # std_msgs/Int64MultiArray [received, stored, steps, training]
    LEARNER_PROGRESS = 'learner/progress'


# The actor's success signal by success_source; key: no topic, the human's success key
# (teleop/episode_label) is the only success.
SUCCESS_TOPICS = {'sim': Topics.SIM_SUCCESS, 'classifier': Topics.SUCCESS, 'key': None}


_RAW_SUFFIX, _VIEW_SUFFIX = '_cam/image_raw', '_cam/image_crop'


def camera_topics(name: str) -> Tuple[str, str]:
    """(full frame, policy view) topics of the camera called `name` (image.cameras): the
    gripper camera's are Topics.IMAGE_RAW and Topics.IMAGE_CROP."""
    return f'{name}{_RAW_SUFFIX}', f'{name}{_VIEW_SUFFIX}'


def camera_node_name(name: str) -> str:
    """The node of the camera called `name` (gripper_camera, front_camera)."""
    return f'{name}_camera'


def is_camera_view(topic: str) -> bool:
    """A camera's policy view topic (published once per tick on the simulated clock)."""
    return topic.endswith(_VIEW_SUFFIX)


class ActionSource:
    """Label carried in Float32MultiArray.layout.dim[0].label of every action message, so the
    source travels with the exact action (no second topic to synchronise)."""
    POLICY = 'policy'
    HUMAN = 'human'


class Frames:
    """REP-103 frames (x forward, y left, z up) matching the URDF link names."""
    BASE = 'base_link'
    TCP = 'gripper_frame_link'
    CAMERA_OPTICAL = 'gripper_cam_optical_frame'


@dataclass(frozen=True)
class QosSpec:
    reliable: bool
    depth: int
    transient_local: bool = False


class Qos:
    """QoS classes: sensor data is best effort and shallow; anything that must not be lost is
    reliable; the latest policy weights are latched for late-joining actors."""
    SENSOR_DATA = QosSpec(reliable=False, depth=5)
    # The policy view is small (<= 49 kB) and every frame is a control tick: the actor and the
    # recorder must see each one (best-effort drops frames under load).
    POLICY_VIEW = QosSpec(reliable=True, depth=10)
    STATE = QosSpec(reliable=True, depth=10)
    COMMAND = QosSpec(reliable=True, depth=10)
    EVENT = QosSpec(reliable=True, depth=100)
    TRANSITIONS = QosSpec(reliable=True, depth=1000)
    LATCHED = QosSpec(reliable=True, depth=1, transient_local=True)
    # What the camera offers for its full frame: readers take it best effort (SENSOR_DATA), a
    # reliable writer serves them as before and also a reader that must have every frame (the
    # recorder, for eval videos; best effort lost half of the 0.9 MB frames there).
    OFFERED_FRAME = QosSpec(reliable=True, depth=5)


TOPIC_QOS = {
    Topics.JOINT_STATES: Qos.STATE,
    Topics.TCP_POSE: Qos.STATE,
    Topics.EE_ACTION: Qos.COMMAND,
    Topics.POLICY_ACTION: Qos.COMMAND,
    Topics.JOINT_COMMAND: Qos.COMMAND,
    Topics.HUMAN_ACTION: Qos.COMMAND,
    Topics.INTERVENTION: Qos.COMMAND,
    Topics.EPISODE_LABEL: Qos.EVENT,
    Topics.IMAGE_RAW: Qos.SENSOR_DATA,
    Topics.IMAGE_CROP: Qos.POLICY_VIEW,
    Topics.SUCCESS_PROBABILITY: Qos.EVENT,
    Topics.SUCCESS: Qos.COMMAND,
    Topics.REWARD: Qos.COMMAND,
    Topics.TRANSITIONS: Qos.TRANSITIONS,
    Topics.POLICY_WEIGHTS: Qos.LATCHED,
    Topics.EPISODE_EVENTS: Qos.EVENT,
    Topics.EPISODE_MARKERS: Qos.STATE,
    Topics.DRIVER_MARKERS: Qos.STATE,
    Topics.DIAGNOSTICS: Qos.STATE,
    Topics.DRIVER_READY: Qos.LATCHED,
    Topics.RECORDER_READY: Qos.LATCHED,
    Topics.LEARNER_PROGRESS: Qos.STATE,
    Topics.SIM_CUBE_POSE: Qos.STATE,
    Topics.SIM_GRASPED: Qos.STATE,
    Topics.SIM_SUCCESS: Qos.STATE,
}


def qos_for(topic: str) -> QosSpec:
    """QoS class of a suite topic (KeyError names the topic if it is not one of ours)."""
    if topic.endswith(_VIEW_SUFFIX):  # any camera's: as the gripper camera's
        return Qos.POLICY_VIEW
    if topic.endswith(_RAW_SUFFIX):
        return Qos.SENSOR_DATA
    try:
        return TOPIC_QOS[topic]
    except KeyError:
        raise KeyError(f'{topic!r} is not a hilserl topic; known: {sorted(TOPIC_QOS)}') from None
