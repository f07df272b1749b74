"""Glue between the graph description (hilserl.ros.graph) and ROS 2 launch: used by
launch/graph.launch.py (included by train.launch.py and eval.launch.py). launch / launch_ros are
imported lazily, so this module imports (and is tested) on machines without a distro."""
from __future__ import annotations

from typing import List

from hilserl.common.optional_packages import require_wandb
from hilserl.common.run_lock import check_run_lock
from hilserl.configuration.config import load_train_config
from hilserl.ros.graph import (LAUNCH_ARGUMENTS, ROBOT_NAMESPACE, GraphArgs, NodeSpec, build_graph,
                               keyboard_teleop_command, node_enclave, node_namespace,
                               node_remappings, robot_file_disagreements)
from hilserl.ros.security import check_keystore
from hilserl.configuration.pretrained import check_encoder_weights

SIGTERM_TIMEOUT_S = 30


def graph_args_from_context(context) -> GraphArgs:
    from launch.substitutions import LaunchConfiguration
    mode = LaunchConfiguration('mode').perform(context)
    values = {name: LaunchConfiguration(name).perform(context)
              for name, _, _ in LAUNCH_ARGUMENTS}
    for flag in ('record', 'rviz', 'wandb'):
        values[flag] = values[flag].lower() in ('true', '1', 'yes')
    for number in ('num_episodes', 'robots'):
        values[number] = int(values[number])
    if mode == 'eval' and not values['config'] and values['checkpoint']:
        # the policy must see what it was trained on: the checkpoint's own configuration
        from hilserl.configuration.run_dir import load_checkpoint_config
        values['config'] = str(load_checkpoint_config(values['checkpoint'])[1])
    if mode == 'eval' and values['teleop'] == 'sim':
        values['teleop'] = 'none'  # the simulated human would spoil an evaluation
    return GraphArgs(mode=mode, **values)


def graph_actions(context) -> List:
    """OpaqueFunction body: one launch_ros Node per graph node; in eval the launch ends when
    the actor has run its episodes."""
    from launch.actions import EmitEvent, LogInfo, RegisterEventHandler, SetEnvironmentVariable
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown
    from launch_ros.actions import Node
    args = graph_args_from_context(context)
    cfg = load_train_config(args.config_path())
    if args.mode == 'train':  # before any node starts: the encoder weights are here
        check_encoder_weights(cfg.policy)
        if args.wandb and args.part != 'robot':
            require_wandb('wandb:=true')
    # another graph on this run directory: refused before any node starts (the nodes that
    # write it hold the lock; this process only looks)
    check_run_lock(args.written_dir())
    actions = [SetEnvironmentVariable(k, v) for k, v in args.environment().items()]
    actions += [LogInfo(msg=line) for line in robot_file_disagreements(args)]
    actors = []
    nodes = build_graph(args, cfg)
    check_keystore(args, nodes)
    for spec in nodes:
        if spec.needs_terminal:  # launched nodes have no stdin: the keys get a terminal apart
            device = spec.parameters['device']
            keyboard = keyboard_teleop_command(
                args.namespace, device, args.security_environment(),
                node_enclave(args.mode, args.namespace, NodeSpec('keyboard_teleop', ''))
                if args.keystore else '')
            actions.append(LogInfo(msg=f'teleop:={device}: run `{keyboard}` in a terminal of '
                                       'its own for the keys'))
            if device == 'keyboard':
                continue  # keyboard_teleop is the whole device
        # launch escalates to SIGTERM after sigterm_timeout (default 5 s): the driver's exit
        # move (<= 6 s) and the learner's final checkpoint need longer
        node = Node(package='hilserl', executable=spec.executable, name=spec.name,
                    namespace=node_namespace(args.namespace, spec), output='screen',
                    emulate_tty=True, parameters=[*spec.parameter_files, spec.parameters],
                    remappings=node_remappings(args.namespace, spec),
                    ros_arguments=['--enclave', spec.enclave],
                    sigterm_timeout=str(SIGTERM_TIMEOUT_S))
        actions.append(node)
        if spec.name == 'sac_actor':
            actors.append(node)
    # the launch ends when every arm's actor has run its episodes
    finished = set()

    def actor_exited(event, _context, node_count=len(actors)):
        finished.add(id(event.action))
        if len(finished) == node_count:
            return [EmitEvent(event=Shutdown(reason='actor finished'))]
        return None

    for actor in actors:
        actions.append(RegisterEventHandler(OnProcessExit(target_action=actor,
                                                          on_exit=actor_exited)))
    return actions


def _installed(package: str) -> bool:
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    try:
        get_package_prefix(package)
        return True
    except PackageNotFoundError:
        return False


def visualization_actions(context) -> List:
    """OpaqueFunction body: robot_state_publisher (URDF + TF from joint_states) and, with
    rviz:=true, RViz. Both are C++ packages of a ROS 2 distro: where one is not installed the
    graph runs without it and says so in one INFO line."""
    from launch.actions import LogInfo
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from hilserl.common.paths import share_path
    namespace = LaunchConfiguration('namespace').perform(context)
    sim = LaunchConfiguration('backend').perform(context) == 'sim'
    rviz = LaunchConfiguration('rviz').perform(context).lower() in ('true', '1', 'yes')
    robots = int(LaunchConfiguration('robots').perform(context))
    if LaunchConfiguration('keystore').perform(context):
        # their topics are not in the graph's policy: without an enclave they would not start
        return [LogInfo(msg='keystore:= given: no robot_state_publisher or RViz (not in the '
                            'SROS2 policy; run them in an enclave of your own)')]
    # one robot description (and TF) per arm, in the arm's namespace
    arms = [NodeSpec('robot_state_publisher', '', namespace=ROBOT_NAMESPACE.format(i)
                     if robots > 1 else '') for i in range(robots)]
    actions = []
    if _installed('robot_state_publisher'):
        actions += [Node(
            package='robot_state_publisher', executable='robot_state_publisher',
            namespace=node_namespace(namespace, arm), output='screen',
            parameters=[{'robot_description': share_path('urdf', 'so101.urdf').read_text(),
                         'use_sim_time': sim}],  # the simulated arm's driver owns /clock
            remappings=node_remappings(namespace, arm)) for arm in arms]
    else:
        actions.append(LogInfo(msg='robot_state_publisher is not installed: no robot '
                                   'description or TF (joint_states and tcp_pose still are)'))
    if rviz and _installed('rviz2'):
        actions.append(Node(package='rviz2', executable='rviz2',
                            namespace=node_namespace(namespace, arms[0]),
                            arguments=['-d', str(share_path('config', 'hilserl.rviz'))],
                            parameters=[{'use_sim_time': sim}],
                            remappings=node_remappings(namespace, arms[0])))
    elif rviz:
        actions.append(LogInfo(msg='rviz:=true but rviz2 is not installed: no RViz'))
    return actions


def install_like_colcon(source_dir, work_dir, python: str) -> dict:
    """Install the package from `source_dir` into `work_dir`/install as `colcon build` installs
    an ament_python package (scripts under lib/hilserl, share/ data); returns the environment
    additions that make `ros2 launch hilserl ...` find it (tests and benchmarks)."""
    import os
    import subprocess
    from pathlib import Path
    work = Path(work_dir)
    prefix = work / 'install'
    subprocess.run([python, 'setup.py', '-q', 'egg_info', '--egg-base', str(work),
                    'build', '--build-base', str(work / 'build'), 'install', '--prefix',
                    str(prefix), '--install-scripts', str(prefix / 'lib' / 'hilserl'),
                    '--single-version-externally-managed', '--root', '/'],
                   cwd=source_dir, check=True, capture_output=True)
    site = next(prefix.glob('lib/python3*/site-packages'))
    return {'AMENT_PREFIX_PATH': str(prefix),
            'PYTHONPATH': os.pathsep.join([str(site), os.environ.get('PYTHONPATH', '')])}
