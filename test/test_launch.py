"""Launch files: compile, reference only real executables/files, and (where launch_ros exists)
build their LaunchDescription. The graph description they share is tested directly."""
import ast
import py_compile
from pathlib import Path

import pytest
import yaml

from hilserl.ros.graph import LAUNCH_ARGUMENTS, GraphArgs, build_graph
from test_package_layout import entry_points

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))


def test_launch_files_compile():
    assert {p.name for p in LAUNCH_FILES} >= {'train.launch.py', 'eval.launch.py',
                                              'graph.launch.py'}
    for path in LAUNCH_FILES:
        py_compile.compile(str(path), doraise=True)


def test_launch_files_are_declarative():
    for path in LAUNCH_FILES:
        tree = ast.parse(path.read_text())
        imported = {n.names[0].name if isinstance(n, ast.Import) else n.module
                    for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))}
        assert not imported & {'argparse', 'os', 'yaml', 'json', 'sys'}, path.name
        calls = {n.func.id for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert 'open' not in calls, path.name


def test_graph_nodes_are_installed_console_scripts():
    scripts = {s.split(' = ')[0] for s in entry_points()}
    for mode, extra in (('train', {}), ('eval', {'checkpoint': 'x'})):
        nodes = build_graph(GraphArgs(mode=mode, **extra))
        names = [n.name for n in nodes]
        assert ('sac_learner' in names) == (mode == 'train')
        for node in nodes:
            assert node.executable in scripts, node.executable
            for path in node.parameter_files:
                data = yaml.safe_load(Path(path).read_text())
                # '/**/name': the section applies under any namespace
                assert f'/**/{node.name}' in data, f'{path} has no section for {node.name}'


def test_graph_arguments_have_descriptions_and_bad_values_are_refused():
    assert all(description for _, _, description in LAUNCH_ARGUMENTS)
    with pytest.raises(ValueError, match='backend'):
        GraphArgs(backend='gazebo')
    with pytest.raises(ValueError, match='checkpoint'):
        GraphArgs(mode='eval')
    with pytest.raises(ValueError, match='ground truth'):
        GraphArgs(backend='hardware')
    with pytest.raises(ValueError, match='classifier_model'):
        GraphArgs(success_source='classifier')


def test_driver_external_hands_the_joints_to_a_ros2_control_stack():
    args = dict(backend='hardware', teleop='keyboard', success_source='key')
    nodes = {n.name: n for n in build_graph(GraphArgs(**args, driver='external',
                                                      joint_command_topic='arm/commands'))}
    driver = nodes['so101_driver'].parameters
    assert (driver['backend'], driver['on_exit'], driver['external_command_topic']) == \
        ('external', 'hold', 'arm/commands')
    assert {n.name: n for n in build_graph(GraphArgs(**args))}[
        'so101_driver'].parameters['backend'] == 'hardware'  # so101: the backend argument
    with pytest.raises(ValueError, match='driver=external needs backend=hardware'):
        GraphArgs(driver='external')
    with pytest.raises(ValueError, match='driver'):
        GraphArgs(driver='gazebo')


def test_parts_split_the_training_graph_and_discovery_sets_the_range():
    whole = [n.name for n in build_graph(GraphArgs())]
    robot = [n.name for n in build_graph(GraphArgs(part='robot'))]
    learner = [n.name for n in build_graph(GraphArgs(part='learner'))]
    assert learner == ['sac_learner'] and sorted(robot + learner) == sorted(whole)
    assert GraphArgs(discovery='subnet').environment() == {
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
    assert GraphArgs().environment() == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    with pytest.raises(ValueError, match='part'):
        GraphArgs(mode='eval', checkpoint='x', part='robot')
    with pytest.raises(ValueError, match='discovery'):
        GraphArgs(discovery='wan')


def test_train_config_drives_the_driver_and_camera_parameters(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('task: {workspace_min_m: [0.12, -0.1, 0.02]}\n'
                      'image: {resize_hw_px: [96, 96]}\n')
    nodes = {n.name: n for n in build_graph(GraphArgs(config=str(config)))}
    assert nodes['so101_driver'].parameters['workspace_min_m'] == [0.12, -0.1, 0.02]
    assert nodes['gripper_camera'].parameters['resize_hw_px'] == [96, 96]


def test_rviz_config_is_yaml_with_the_suite_topics():
    data = yaml.safe_load((ROOT / 'config' / 'hilserl.rviz').read_text())
    topics = {d.get('Topic', {}).get('Value') for d in data['Visualization Manager']['Displays']
              if isinstance(d.get('Topic'), dict)}
    assert {'gripper_cam/image_raw', 'gripper_cam/image_crop', 'driver/markers',
            'episode/markers'} <= topics
    assert data['Visualization Manager']['Global Options']['Fixed Frame'] == 'base_link'


def test_launch_description_builds_when_launch_ros_is_available():
    pytest.importorskip('launch_ros', reason='launch_ros is not installable without a ROS 2 '
                        'distro; the static tests above cover the files')
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    for path in LAUNCH_FILES:
        description = get_launch_description_from_python_launch_file(str(path))
        assert description.entities


def test_classifier_threshold_and_eval_reset_come_from_the_training_config(tmp_path):
    """task.classifier_threshold reaches the reward_classifier node, which reports every frame
    (consecutive positives are counted once, by task.success_frames_to_end); eval resets follow
    task.eval_random_ee_reset, training resets task.random_ee_reset; task.reset_delay_s is the
    actor's wait before an episode."""
    def graph(mode, task_yaml, **extra):
        config = tmp_path / f'{mode}.yaml'
        config.write_text(f'task: {task_yaml}\n')
        return {n.name: n for n in build_graph(GraphArgs(
            mode=mode, config=str(config), success_source='classifier',
            classifier_model=str(tmp_path), **extra))}

    nodes = graph('train', '{classifier_threshold: 0.83, eval_random_ee_reset: false, '
                           'reset_delay_s: 1.5}')
    # the actor reads the settle time (task.reset_delay_s) from the same file: no copy
    assert 'reset_settle_s' not in nodes['sac_actor'].parameters
    assert nodes['sac_actor'].parameters['config_file'] == str((tmp_path / 'train.yaml').resolve())
    assert nodes['reward_classifier'].parameters['threshold'] == 0.83
    assert nodes['reward_classifier'].parameters['debounce_frames'] == 1
    assert nodes['so101_driver'].parameters['random_ee_reset'] is True
    nodes = graph('eval', '{eval_random_ee_reset: false}', checkpoint='x')
    assert nodes['reward_classifier'].parameters['threshold'] == 0.0  # the checkpoint's own
    assert nodes['so101_driver'].parameters['random_ee_reset'] is False
    nodes = graph('eval', '{eval_random_ee_reset: true}', checkpoint='x')
    assert nodes['so101_driver'].parameters['random_ee_reset'] is True


def test_the_graph_backend_wins_over_the_robot_file():
    from hilserl.ros.graph import robot_file_disagreements
    follower = str(ROOT / 'config' / 'so101_follower.yaml')
    args = GraphArgs(mode='train', backend='sim', robot_config=follower)
    nodes = {n.name: n for n in build_graph(args)}
    # the node's own parameters come after the robot file's: these win
    assert nodes['so101_driver'].parameter_files == (str(Path(follower).resolve()),)
    assert nodes['so101_driver'].parameters['backend'] == 'sim'
    assert nodes['gripper_camera'].parameters['backend'] == 'sim'
    (line,) = robot_file_disagreements(args)
    assert 'says backend: hardware; the graph runs backend sim as asked' in line
    hardware = GraphArgs(mode='train', backend='hardware', teleop='keyboard',
                         success_source='key', robot_config=follower)
    nodes = {n.name: n for n in build_graph(hardware)}
    assert nodes['so101_driver'].parameters['backend'] == 'hardware'
    assert 'backend' not in nodes['gripper_camera'].parameters   # the file's camera kind
    assert robot_file_disagreements(hardware) == []
