"""Evaluate a checkpoint: the deterministic policy for num_episodes (default 10) episodes, then
the launch ends; the actor prints the success table and writes eval_summary.json.

  ros2 launch hilserl eval.launch.py checkpoint:=outputs/run/checkpoints/000500 teleop:=none
"""
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    graph = PathJoinSubstitution([FindPackageShare('hilserl'), 'launch', 'graph.launch.py'])
    return LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(graph), launch_arguments={'mode': 'eval'}.items())])
