"""The hilserl graph (train, eval or record), shared by train.launch.py and eval.launch.py: driver,
gripper camera, teleop, (reward classifier), SAC actor (+ learner in train), episode recorder,
robot_state_publisher and, with rviz:=true, RViz (each only where installed). The node list and
parameters come from hilserl.ros.graph, which the `hilserl` command runs too.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable

from hilserl.ros.graph import LAUNCH_ARGUMENTS, NODE_ENVIRONMENT
from hilserl.ros.launch_support import graph_actions, visualization_actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument('mode', default_value='train', choices=['train', 'eval', 'record'],
                               description='train (actor + learner), eval (checkpoint) or '
                                           'record (the human acts: demonstrations)')]
        + [DeclareLaunchArgument(name, default_value=default, description=description)
           for name, default, description in LAUNCH_ARGUMENTS]
        + [SetEnvironmentVariable(name, value) for name, value in NODE_ENVIRONMENT.items()]
        + [
            OpaqueFunction(function=graph_actions),
            OpaqueFunction(function=visualization_actions),
        ])
