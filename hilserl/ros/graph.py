"""The train and eval graphs, described once in plain Python.

`build_graph()` returns the nodes (executable, module, parameters, parameter files) for a mode
and a set of `GraphArgs`. The launch files turn them into launch_ros `Node` actions (and add
robot_state_publisher and rviz2, which exist only with a distro); the `hilserl`
command runs each as its own process with the same parameters
(`hilserl_tools.process_graph`).
Nothing here imports rclpy or launch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from hilserl.configuration.config import DEFAULT_CAMERA, TrainConfig, load_train_config
from hilserl.configuration.yaml_edit import node_sections
from hilserl.messages.conventions import Topics, camera_node_name, camera_topics
from hilserl.common.paths import share_path
from hilserl.common.run_lock import new_graph_token

MODES = ('train', 'eval', 'record')
BACKENDS = ('sim', 'hardware')
# Every node process starts with these (unless already set), under `hilserl` and `ros2 launch`.
NODE_ENVIRONMENT = {
    'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA?max_msg_size=4MB',  # 640x480 images over DDS
    'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
    'MUJOCO_GL': 'osmesa',
    'PYOPENGL_PLATFORM': 'osmesa',
    'OMP_NUM_THREADS': '1',
    'PYTHONUNBUFFERED': '1',
}
# A 0.1 s reliable-writer heartbeat (config/fastdds_profiles.xml says why). Fast DDS 2.x (Humble,
# Jazzy) reads the older variable name; 3.x (Kilted on) warns about it.
_PROFILES_VARIABLE = ('FASTRTPS_DEFAULT_PROFILES_FILE'
                      if os.environ.get('ROS_DISTRO') in ('humble', 'iron', 'jazzy')
                      else 'FASTDDS_DEFAULT_PROFILES_FILE')
NODE_ENVIRONMENT[_PROFILES_VARIABLE] = str(share_path('config', 'fastdds_profiles.xml'))

HUMAN_DEVICES = ('keyboard', 'gamepad', 'leader')
TELEOP_DEVICES = ('sim', 'keyboard', 'gamepad', 'leader', 'none')
DRIVERS = ('so101', 'external')
DISCOVERY_RANGES = {'localhost': 'LOCALHOST', 'subnet': 'SUBNET'}
PARTS = ('all', 'robot', 'learner')
SUCCESS_SOURCES = ('sim', 'classifier', 'key')

# name, default, description: shared by the launch files and the `hilserl` command
LAUNCH_ARGUMENTS: Tuple[Tuple[str, str, str], ...] = (
    ('backend', 'sim', 'sim (MuJoCo) or hardware (Feetech bus + camera)'),
    ('config', '', 'training YAML (empty: config/sim_learn_conv.yaml on backend sim, the set-up '
                   'that learns the simulated task on a CPU; config/train.yaml, the seed\'s, '
                   'on hardware)'),
    ('robot_config', '', 'robot parameters YAML (empty: config/sim_robot.yaml for sim, '
                         'config/so101_follower.yaml for hardware)'),
    ('checkpoint', '', 'pretrained_model directory (eval: required; train: start from it)'),
    ('record', 'true', 'record every episode as a rosbag2 (MCAP)'),
    ('rviz', 'false', 'start RViz with config/hilserl.rviz'),
    ('teleop', 'sim', 'human device: sim | keyboard | gamepad | leader | none'),
    ('num_episodes', '0', 'stop after this many episodes (0: train forever; eval default 10)'),
    ('namespace', '', 'namespace for every node and topic (e.g. one arm of several)'),
    ('run_dir', 'outputs/run', 'checkpoints, metrics and episode bags go here'),
    ('success_source', 'sim', 'sim (ground truth), classifier (reward_classifier node) or key '
                              '(the human\'s success key: a real arm before a classifier exists)'),
    ('classifier_model', '', 'classifier checkpoint directory (success_source:=classifier)'),
    ('demo_dir', '', 'episode bags whose transitions seed the offline buffer'),
    ('device', '', 'torch device for the learner: auto | cpu | cuda[:N] (empty: the training '
                   'config\'s learner.device)'),
    ('driver', 'so101', 'so101 (this package drives the Feetech servos or the simulation) or '
                        'external (a ros2_control stack owns the joints: joint_states from its '
                        'joint_state_broadcaster, goals to joint_command_topic; hardware only)'),
    ('joint_command_topic', 'forward_position_controller/commands',
     'driver:=external: the forward position controller\'s command topic '
     '(std_msgs/Float64MultiArray, in the order of its joints parameter)'),
    ('discovery', 'localhost', 'DDS discovery: localhost (this machine only) or subnet (actor '
                               'and learner on different machines; ROS_STATIC_PEERS is honoured)'),
    ('part', 'all', 'train: the nodes that run here: all, robot (everything but the learner: '
                    'the robot\'s computer) or learner (the learner alone: a GPU machine)'),
    ('wandb', 'false', 'train: the learner also logs its metrics to a Weights & Biases run under '
                       'run_dir/wandb, offline unless WANDB_MODE says otherwise (needs the '
                       'wandb package; `hilserl eval --wandb` logs an evaluation)'),
    ('robots', '1', 'train, sim: this many simulated arms, each (driver, camera, teleop, actor, '
                    'recorder) in its namespace robot_0 ... robot_{N-1} with its own episodes and '
                    'bags under run_dir/robot_i, feeding one learner'),
    ('keystore', '', 'SROS2 keystore directory (empty: no DDS security): every node runs in its '
                     'enclave /hilserl/<mode>/<namespace>/<node> with ROS_SECURITY_ENABLE=true '
                     'and ROS_SECURITY_STRATEGY=Enforce (policy: hilserl security-policy)'),
)
ROBOT_NAMESPACE = 'robot_{}'
ENCLAVE_ROOT = '/hilserl'
# The nodes that publish the graph's commands, weights and experience: the only ones the
# driver, actor and learner accept them from (`trusted_publishers`; anyone on the domain can
# publish on a topic)
ACTOR, LEARNER = 'sac_actor', 'sac_learner'


@dataclass(frozen=True)
class GraphArgs:
    mode: str = 'train'
    backend: str = 'sim'
    config: str = ''
    robot_config: str = ''
    checkpoint: str = ''
    record: bool = True
    rviz: bool = False
    teleop: str = 'sim'
    num_episodes: int = 0
    namespace: str = ''
    run_dir: str = 'outputs/run'
    success_source: str = 'sim'
    classifier_model: str = ''
    demo_dir: str = ''
    device: str = ''
    driver: str = 'so101'
    joint_command_topic: str = 'forward_position_controller/commands'
    discovery: str = 'localhost'
    part: str = 'all'
    robots: int = 1
    keystore: str = ''
    wandb: bool = False
    behaviour_mix: str = 'expert:1'   # record: the simulated human's per-episode behaviours
    seed_offset: int = 0              # added to the config's seed (resets, behaviours)
    record_camera: bool = False       # the bags also hold the full camera frame (eval videos)
    # the graph's token (hilserl.common.run_lock): its nodes share the run directory's lock
    # with whoever holds it under this token (`hilserl`); empty: build_graph makes one
    run_lock: str = ''

    def __post_init__(self):
        checks = [(self.mode in MODES, 'mode', f'one of {MODES}'),
                  (self.backend in BACKENDS, 'backend', f'one of {BACKENDS}'),
                  (self.teleop in TELEOP_DEVICES, 'teleop', f'one of {TELEOP_DEVICES}'),
                  (self.driver in DRIVERS, 'driver', f'one of {DRIVERS}'),
                  (self.discovery in DISCOVERY_RANGES, 'discovery',
                   f'one of {tuple(DISCOVERY_RANGES)}'),
                  (self.part in PARTS, 'part', f'one of {PARTS}'),
                  (self.part == 'all' or self.mode == 'train', 'part',
                   'all outside train (only train has a learner to run apart)'),
                  (bool(self.joint_command_topic.strip('/')), 'joint_command_topic',
                   'a topic name'),
                  (self.success_source in SUCCESS_SOURCES, 'success_source',
                   f'one of {SUCCESS_SOURCES}'),
                  (self.num_episodes >= 0, 'num_episodes', '>= 0'),
                  (1 <= self.robots <= 64, 'robots', 'between 1 and 64'),
                  (self.robots == 1 or (self.mode == 'train' and self.backend == 'sim'),
                   'robots', '1 outside train on the simulation (several arms share a learner)'),
                  (not self.namespace.startswith('/') or len(self.namespace) > 1, 'namespace',
                   'a name such as arm1')]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f'{name}={getattr(self, name)!r}: must be {expected}')
        if self.driver == 'external' and self.backend != 'hardware':
            raise ValueError('driver=external needs backend=hardware (a real arm behind a '
                             'ros2_control stack; the simulation is driven by so101_driver)')
        if self.mode == 'eval' and not self.checkpoint:
            raise ValueError('eval needs checkpoint (a pretrained_model directory)')
        if self.success_source == 'key' and self.teleop not in HUMAN_DEVICES:
            raise ValueError(f'success_source=key needs a human at a device (teleop one of '
                             f'{HUMAN_DEVICES})')
        if self.success_source == 'classifier' and not self.classifier_model:
            raise ValueError('success_source=classifier needs classifier_model')
        if self.success_source == 'sim' and self.backend != 'sim':
            raise ValueError('success_source=sim needs backend=sim (no ground truth on hardware)')
        if self.teleop == 'sim' and self.backend != 'sim' and self.mode != 'eval':
            raise ValueError('teleop=sim (the simulated human) needs backend=sim; on hardware '
                             'use keyboard, gamepad or leader')
        if self.keystore and not (Path(self.keystore) / 'enclaves').is_dir():
            raise ValueError(f'keystore={self.keystore!r}: not an SROS2 keystore (no enclaves/ '
                             'folder); make one with `ros2 security create_keystore DIR`')

    def config_path(self) -> Path:
        if self.config:
            return Path(self.config)
        # the simulated arm learns with a small trained encoder on a CPU; a real arm is the
        # seed's set-up (frozen pretrained ResNet-10)
        return share_path('config', 'sim_learn_conv.yaml' if self.backend == 'sim' else
                          'train.yaml')

    def environment(self) -> Dict[str, str]:
        """What the graph's nodes start with beyond NODE_ENVIRONMENT: the discovery range and,
        with a keystore, DDS security (a node without its enclave's keys does not start)."""
        return {'ROS_AUTOMATIC_DISCOVERY_RANGE': DISCOVERY_RANGES[self.discovery],
                **self.security_environment()}

    def security_environment(self) -> Dict[str, str]:
        if not self.keystore:
            return {}
        return {'ROS_SECURITY_KEYSTORE': str(Path(self.keystore).resolve()),
                'ROS_SECURITY_ENABLE': 'true', 'ROS_SECURITY_STRATEGY': 'Enforce'}

    def written_dir(self) -> Path:
        """The directory the graph writes, whose lock it holds: an eval writes only under
        <run_dir>/eval, so a run can be evaluated while it trains."""
        return Path(self.run_dir) / 'eval' if self.mode == 'eval' else Path(self.run_dir)

    def robot_config_path(self) -> Path:
        if self.robot_config:
            return Path(self.robot_config)
        name = 'sim_robot.yaml' if self.backend == 'sim' else 'so101_follower.yaml'
        return share_path('config', name)


@dataclass(frozen=True)
class NodeSpec:
    name: str                      # node name (also the console script / launch executable)
    module: str                    # python -m target on machines without a distro
    parameters: Dict[str, object] = field(default_factory=dict)
    parameter_files: Tuple[str, ...] = ()
    needs_terminal: bool = False   # reads keys from the terminal (keyboard / leader teleop)
    namespace: str = ''            # below the graph's namespace: one arm of several (robot_0)
    remappings: Tuple[Tuple[str, str], ...] = ()  # (from, to): topics shared across arms
    enclave: str = ''              # SROS2 enclave (--enclave): its keys and permissions
    program: str = ''              # the console script when not `name` (a second camera's)

    @property
    def executable(self) -> str:
        return self.program or self.name

    @property
    def label(self) -> str:
        """Unique in a graph: the node name, under its arm's namespace where there are several."""
        return f'{self.namespace}/{self.name}' if self.namespace else self.name


def _join(*parts: str) -> str:
    return '/'.join(p.strip('/') for p in parts if p.strip('/'))


def node_namespace(graph_namespace: str, spec: NodeSpec) -> str:
    """The node's namespace: the graph's (namespace:=) with the arm's below it; '' for none."""
    joined = _join(graph_namespace, spec.namespace)
    return f'/{joined}' if joined else ''


def node_remappings(graph_namespace: str, spec: NodeSpec) -> List[Tuple[str, str]]:
    """/clock is global by convention: each namespaced graph (and each simulated arm) keeps its
    simulated clock apart. Then the node's own remappings."""
    namespace = node_namespace(graph_namespace, spec)
    clock = [('/clock', f'{namespace}/clock')] if namespace else []
    return clock + list(spec.remappings)


def node_enclave(mode: str, graph_namespace: str, spec: NodeSpec) -> str:
    """The node's SROS2 enclave: /hilserl/<mode>/<namespace>/<node>. One per node and mode, so
    that one keystore holds the train, eval and record graphs' permissions side by side."""
    return '/' + _join(ENCLAVE_ROOT, mode, graph_namespace, spec.namespace, spec.name)


def keyboard_teleop_command(namespace: str = '', device: str = 'keyboard',
                            security: Optional[Dict[str, str]] = None, enclave: str = '') -> str:
    """What gives a graph's keyboard a terminal of its own where its nodes have none (`ros2
    launch`): the whole teleop for teleop:=keyboard, the episode labels beside a leader arm.
    With a keystore: its security environment and enclave."""
    ros_args = []
    if namespace.strip('/'):
        ros_args += ['-r', f'__ns:=/{namespace.strip("/")}']
    if device == 'leader':
        ros_args += ['-p', 'labels_only:=true']
    if enclave:
        ros_args += ['--enclave', enclave]
    environment = [f'{name}={value}' for name, value in (security or {}).items()]
    return ' '.join(environment + ['ros2 run hilserl keyboard_teleop']
                    + (['--ros-args'] + ros_args if ros_args else []))


def camera_view_topics(cfg: TrainConfig) -> List[str]:
    """The policy view topic of each configured camera, in image.cameras order."""
    return [camera_topics(name)[1] for name in cfg.image.camera_names]


def recorded_publishers(mode: str, backend: str, teleop: str,
                        views: Sequence[str] = (Topics.IMAGE_CROP,)) -> List[str]:
    """The recorded topics the graph's own nodes publish from start-up: the recorder is ready
    (and the first episode starts) once each has a publisher matched to it. A keyboard under
    `ros2 launch` runs in its own terminal, maybe later: not waited for. `views`: the
    cameras' policy view topics."""
    topics = [*views, Topics.JOINT_STATES, Topics.TCP_POSE, Topics.EE_ACTION,
              Topics.POLICY_ACTION, Topics.EPISODE_EVENTS, Topics.REWARD]
    if mode in ('train', 'record'):
        topics.append(Topics.TRANSITIONS)
    if backend == 'sim':
        topics += [Topics.SIM_SUCCESS, Topics.SIM_CUBE_POSE]
    if teleop == 'sim':  # the simulated human's labels are what its episodes are judged by
        topics += [Topics.HUMAN_ACTION, Topics.INTERVENTION, Topics.EPISODE_LABEL]
    return topics


def robot_file_disagreements(args: GraphArgs) -> List[str]:
    """One line for each value the robot file sets that the graph's arguments override
    (today: the backend), so a file cannot switch the backend behind the user's back."""
    import yaml
    try:
        in_file = [section.get('backend')
                   for section in node_sections(args.robot_config_path(), 'so101_driver')]
    except (OSError, yaml.YAMLError):
        return []  # a missing or broken file is refused by the node that reads it
    wanted = 'external' if args.driver == 'external' else args.backend
    return [f'{args.robot_config_path()} says backend: {backend}; the graph runs backend '
            f'{wanted} as asked (backend:= / --backend wins over the file)'
            for backend in in_file if backend is not None and backend != wanted]


def build_graph(args: GraphArgs, cfg: Optional[TrainConfig] = None) -> List[NodeSpec]:
    """The graph's nodes. With the sim backend the driver owns simulated time (/clock) and every
    node runs on it (`use_sim_time`): the actor answers each observation tick, the simulated
    human answers each policy proposal, and the driver advances one control period per answer
    (waiting for the learner in training when `sim.min_updates_per_step` > 0).

    With `robots` > 1 every arm's nodes run in a namespace of their own (robot_i, each with its
    simulated clock, seed, episodes and bags under run_dir/robot_i); the arms' actors take the
    one learner's weights and their drivers its progress (pacing counts all arms' transitions),
    and the learner, on the wall clock, takes every arm's transitions and episode events."""
    cfg = cfg or load_train_config(args.config_path())
    run_dir = Path(args.run_dir).resolve()
    # every node that writes the run directory holds its lock under this one token
    lock = {'run_lock': args.run_lock or new_graph_token()}
    config_file = str(args.config_path().resolve())
    seed = cfg.seed + args.seed_offset + {'train': 0, 'eval': 1000, 'record': 2000}[args.mode]
    several = args.robots > 1
    nodes: List[NodeSpec] = []
    for index in range(args.robots):
        namespace = ROBOT_NAMESPACE.format(index) if several else ''
        # the learner's topics, in the graph's namespace, not the arm's
        shared = tuple((topic, '/' + _join(args.namespace, topic))
                       for topic in (Topics.POLICY_WEIGHTS, Topics.LEARNER_PROGRESS)
                       if several)
        nodes += _robot_nodes(args, cfg, run_dir / namespace if several else run_dir,
                              seed + 100 * index, namespace, shared, lock)
    if args.mode == 'train':
        nodes.append(NodeSpec(LEARNER, 'hilserl_policy.learner_node', {
            'config_file': config_file, 'run_dir': str(run_dir),
            'demo_dir': str(Path(args.demo_dir).resolve()) if args.demo_dir else '',
            'device': args.device, 'trusted_publishers': [ACTOR], 'wandb': bool(args.wandb),
            'robot_namespaces': [ROBOT_NAMESPACE.format(i) for i in range(args.robots)]
            if several else [''], **lock}))
    if args.backend == 'sim':
        for node in nodes:
            # several arms run several simulated clocks: the learner keeps the wall clock
            node.parameters['use_sim_time'] = not (several and node.name == 'sac_learner')
    nodes = [replace(node, enclave=node_enclave(args.mode, args.namespace, node)) for node in nodes]
    if args.part != 'all':  # the two halves of one training graph on two machines
        nodes = [n for n in nodes if (n.name == 'sac_learner') == (args.part == 'learner')]
    return nodes


def _robot_nodes(args: GraphArgs, cfg: TrainConfig, run_dir: Path, seed: int, namespace: str,
                 shared: Tuple[Tuple[str, str], ...], lock: Dict[str, str]) -> List[NodeSpec]:
    """One arm: driver, camera, teleop, (classifier), actor and recorder."""
    config_file = str(args.config_path().resolve())
    robot_file = str(args.robot_config_path().resolve())
    task, act = cfg.task, cfg.action
    eval_mode = args.mode == 'eval'
    sim_clock = args.backend == 'sim'
    # The simulated human would spoil an evaluation: it takes part in train and record only.
    teleop = 'none' if eval_mode and args.teleop == 'sim' else args.teleop
    arm = {'namespace': namespace}
    driver = {
        # the task's geometry comes from the training config, the hardware from the robot file
        'ee_step_m': list(act.ee_step_m), 'gripper_step_rad': act.gripper_step_rad,
        'workspace_min_m': list(task.workspace_min_m),
        'workspace_max_m': list(task.workspace_max_m),
        'reset_tcp_xyz_m': list(task.reset_tcp_xyz_m),
        'reset_gripper_rad': task.reset_gripper_rad,
        # the seed evaluates from the home pose: task.eval_random_ee_reset
        'random_ee_reset': task.eval_random_ee_reset if eval_mode else task.random_ee_reset,
        'random_ee_range_xy_m': task.random_ee_range_xy_m,
        'seed': seed, 'trusted_publishers': [ACTOR]}
    # the graph's backend wins over a robot file's (its parameters come after the file's)
    driver['backend'] = args.backend
    if args.driver == 'external':  # EE control here, the joints behind the user's controller
        driver.update({'backend': 'external', 'on_exit': 'hold',
                       'external_command_topic': args.joint_command_topic})
    if sim_clock:
        driver.update({
            'sim_clock': True, 'control_rate_hz': task.control_rate_hz,
            'action_timeout_s': cfg.sim.action_timeout_s,
            'min_updates_per_step': cfg.sim.min_updates_per_step if args.mode == 'train' else 0.0,
            # a person at the keys needs the world at the speed of the wall clock
            'max_real_time_factor': 1.0 if teleop in HUMAN_DEVICES else 0.0})
    nodes = [
        NodeSpec('so101_driver', 'so101_driver.driver_node', driver, (robot_file,), **arm,
                 remappings=tuple(r for r in shared if r[0] == Topics.LEARNER_PROGRESS))]
    for camera in cfg.image.cameras:  # one node each; its robot-file section: /**/<name>_camera
        nodes.append(NodeSpec(camera_node_name(camera.name), 'so101_driver.camera_node', {
            'crop_tlhw_px': list(camera.crop_tlhw_px),
            'resize_hw_px': list(cfg.image.resize_hw_px),
            'camera_name': camera.name,
            # a simulated arm has a simulated camera, whatever the robot file says; on
            # hardware the file names the camera's kind (opencv)
            **({'backend': 'sim'} if sim_clock else {})}, (robot_file,), **arm,
            program=camera_node_name(DEFAULT_CAMERA)))
    if teleop != 'none':
        nodes.append(NodeSpec('teleop', 'so101_driver.teleop_node', {
            'device': teleop, 'control_rate_hz': task.control_rate_hz,
            'ee_step_m': list(act.ee_step_m), 'seed': seed,
            **({'behaviour_mix': args.behaviour_mix} if teleop == 'sim' else {})},
            # the leader arm's port and calibration: a /**/teleop section of the robot file
            parameter_files=(robot_file,) if teleop == 'leader' else (),
            needs_terminal=teleop in ('keyboard', 'leader'), **arm))
    if args.success_source == 'classifier':
        nodes.append(NodeSpec('reward_classifier', 'reward_classifier_node.classifier_node', {
            'model_dir': str(Path(args.classifier_model).resolve()),
            # 0: the checkpoint's own threshold. Consecutive positives are counted once, by the
            # actor's RewardTracker (task.success_frames_to_end): the node reports every frame.
            'threshold': task.classifier_threshold or 0.0, 'debounce_frames': 1,
            'camera_names': list(cfg.image.camera_names)}, **arm))
    episodes_dir = run_dir / 'eval' if eval_mode else run_dir
    nodes.append(NodeSpec(ACTOR, 'hilserl_policy.actor_node', {
        'config_file': config_file, 'mode': args.mode,
        'checkpoint': str(Path(args.checkpoint).resolve()) if args.checkpoint else '',
        'success_source': args.success_source,
        'num_episodes': args.num_episodes or (10 if eval_mode else 0),
        'output_dir': str(run_dir / ('eval' if eval_mode else 'train')),
        'run_dir': str(episodes_dir),
        'sim_clock': sim_clock, 'wait_for_teleop': sim_clock and teleop == 'sim',
        'wait_for_recorder': bool(args.record),
        'trusted_publishers': [LEARNER],
        'device': 'cpu', **lock},
        **arm, remappings=tuple(r for r in shared if r[0] == Topics.POLICY_WEIGHTS)))
    if args.record:
        nodes.append(NodeSpec('episode_recorder', 'hilserl_tools.recorder_node', {
            'run_dir': str(episodes_dir), 'config_digest': cfg.digest(),
            'sim_clock': sim_clock, 'record_raw_image': bool(args.record_camera),
            'camera_view_topics': camera_view_topics(cfg),
            'required_topics': recorded_publishers(args.mode, args.backend, teleop,
                                                   camera_view_topics(cfg)),
            'trusted_publishers': [ACTOR], **lock}, **arm))
    return nodes
