"""Train HIL-SERL (see graph.launch.py for every argument).

  ros2 launch hilserl train.launch.py                       # simulated arm, simulated human
  ros2 launch hilserl train.launch.py backend:=hardware teleop:=leader \
      success_source:=classifier classifier_model:=outputs/classifier rviz:=true
"""
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    graph = PathJoinSubstitution([FindPackageShare('hilserl'), 'launch', 'graph.launch.py'])
    return LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(graph), launch_arguments={'mode': 'train'}.items())])
