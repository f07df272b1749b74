"""Glue between the graph description (hilserl.graph) and ROS 2 launch: used by
launch/graph.launch.py (included by train.launch.py and eval.launch.py). launch / launch_ros are imported lazily, so this
module imports (and is tested) on machines without a distro."""
from __future__ import annotations

from typing import List

from hilserl.graph import LAUNCH_ARGUMENTS, GraphArgs, build_graph

SIGTERM_TIMEOUT_S = 30


def graph_args_from_context(context) -> GraphArgs:
    from launch.substitutions import LaunchConfiguration
    mode = LaunchConfiguration('mode').perform(context)
    values = {name: LaunchConfiguration(name).perform(context)
              for name, _, _ in LAUNCH_ARGUMENTS}
    for flag in ('record', 'rviz'):
        values[flag] = values[flag].lower() in ('true', '1', 'yes')
    values['num_episodes'] = int(values['num_episodes'])
    return GraphArgs(mode=mode, **values)


def graph_actions(context) -> List:
    """OpaqueFunction body: one launch_ros Node per graph node; in eval the launch ends when
    the actor has run its episodes."""
    from launch.actions import EmitEvent, RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown
    from launch_ros.actions import Node
    args = graph_args_from_context(context)
    actions, actor = [], None
    for spec in build_graph(args):
        # launch escalates to SIGTERM after sigterm_timeout (default 5 s): the driver's exit
        # move (<= 6 s) and the learner's final checkpoint need longer
        node = Node(package='hilserl', executable=spec.executable, name=spec.name,
                    namespace=args.namespace, output='screen', emulate_tty=True,
                    parameters=[*spec.parameter_files, spec.parameters],
                    sigterm_timeout=str(SIGTERM_TIMEOUT_S))
        actions.append(node)
        if spec.name == 'sac_actor':
            actor = node
    if actor is not None:
        actions.append(RegisterEventHandler(OnProcessExit(
            target_action=actor, on_exit=[EmitEvent(event=Shutdown(reason='actor finished'))])))
    return actions
