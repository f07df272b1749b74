"""The hilserl graph (train, eval or record), shared by train.launch.py and eval.launch.py: driver,
gripper camera, teleop, (reward classifier), SAC actor (+ learner in train), episode recorder,
robot_state_publisher and, with rviz:=true, RViz. The node list and parameters come from
hilserl.graph, which the `hilserl` command runs too.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import (Command, LaunchConfiguration, PathJoinSubstitution,
                                  PythonExpression)
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from hilserl.graph import LAUNCH_ARGUMENTS
from hilserl.launch_support import graph_actions
from hilserl.process_graph import NODE_ENVIRONMENT


def generate_launch_description():
    share = FindPackageShare('hilserl')
    urdf = PathJoinSubstitution([share, 'urdf', 'so101.urdf'])
    namespace = LaunchConfiguration('namespace')
    return LaunchDescription(
        [DeclareLaunchArgument('mode', default_value='train', choices=['train', 'eval', 'record'],
                               description='train (actor + learner), eval (checkpoint) or '
                                           'record (the human acts: demonstrations)')]
        + [DeclareLaunchArgument(name, default_value=default, description=description)
           for name, default, description in LAUNCH_ARGUMENTS]
        + [SetEnvironmentVariable(name, value) for name, value in NODE_ENVIRONMENT.items()]
        + [
            OpaqueFunction(function=graph_actions),
            Node(package='robot_state_publisher', executable='robot_state_publisher',
                 namespace=namespace, output='screen',
                 parameters=[{'robot_description': ParameterValue(Command(['cat ', urdf]),
                                                                  value_type=str),
                              # the simulated arm's driver owns time (/clock)
                              'use_sim_time': PythonExpression(
                                  ["'", LaunchConfiguration('backend'), "' == 'sim'"])}]),
            Node(package='rviz2', executable='rviz2', namespace=namespace,
                 arguments=['-d', PathJoinSubstitution([share, 'config', 'hilserl.rviz'])],
                 condition=IfCondition(LaunchConfiguration('rviz'))),
        ])
