"""Static checks of the ament_python layout (launch_ros and colcon are not installable here)."""
import ast
import importlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from hilserl.messages.conventions import TOPIC_QOS

ROOT = Path(__file__).resolve().parents[1]


def entry_points():
    tree = ast.parse((ROOT / 'setup.py').read_text())
    scripts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                re.match(r'^[\w-]+ = [\w.]+:\w+$', node.value):
            scripts.append(node.value)
    return scripts


def test_package_xml_is_format_3_and_named_hilserl():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'hilserl'
    assert root.find('export/build_type').text == 'ament_python'
    assert (ROOT / 'resource' / 'hilserl').is_file()


def test_every_console_script_resolves():
    scripts = entry_points()
    assert any(s.startswith('hilserl = ') for s in scripts)
    for script in scripts:
        _name, target = script.split(' = ')
        module, func = target.split(':')
        assert callable(getattr(importlib.import_module(module), func)), script


def test_exec_depends_cover_ros_imports():
    declared = {e.text for e in ET.parse(ROOT / 'package.xml').getroot().iter('exec_depend')}
    ros_packages = {'rclpy', 'std_msgs', 'std_srvs', 'sensor_msgs', 'geometry_msgs',
                    'visualization_msgs', 'diagnostic_msgs', 'builtin_interfaces',
                    'rcl_interfaces', 'ament_index_python'}
    imported = set()
    for path in ROOT.glob('*/**/*.py'):
        top = path.parts[len(ROOT.parts)]
        if top in ('test', 'bench', 'build') or top.startswith('.'):  # venvs, .git
            continue
        for match in re.finditer(r'^\s*(?:from|import) (\w+)', path.read_text(), re.M):
            if match.group(1) in ros_packages:
                imported.add(match.group(1))
    assert imported <= declared, f'missing exec_depend: {sorted(imported - declared)}'


def test_topic_names_are_relative():
    for topic in TOPIC_QOS:
        assert not topic.startswith('/'), topic


def test_robot_files_hold_no_value_the_graph_sets():
    """A robot parameter file holds hardware values only: a key the graph passes from the
    training config (action scale, workspace, home pose, crop) would be overridden there, an
    edit without effect."""
    import yaml

    from hilserl.ros.graph import GraphArgs, build_graph
    for robot in sorted((ROOT / 'config').glob('*.yaml')):
        sections = yaml.safe_load(robot.read_text())
        if not any(key.startswith('/**/') for key in sections or {}):
            continue  # not a ROS parameters file (training configs)
        for mode, backend in (('train', 'sim'), ('record', 'hardware'), ('eval', 'sim')):
            extra = {'checkpoint': 'x'} if mode == 'eval' else {}
            graph = build_graph(GraphArgs(mode=mode, backend=backend, robot_config=str(robot),
                                          teleop='keyboard' if backend == 'hardware' else 'sim',
                                          success_source='key' if backend == 'hardware'
                                          else 'sim', **extra))
            for node in graph:
                in_file = sections.get(f'/**/{node.executable}', {}).get('ros__parameters', {})
                both = sorted(set(in_file) & set(node.parameters) - {'backend'})
                assert not both, f'{robot.name}: {node.executable} {both} are set by the graph'
