"""Several simulated arms, one learner (`hilserl train --robots N`): each arm's driver, camera,
simulated human, actor and recorder in its namespace robot_i with its own simulated clock, seed,
episodes and bags; the one learner takes every arm's transitions and sends its weights to all.
"""
import json
import re
import subprocess
import sys

import pytest

from conftest import TINY_TRAIN_CONFIG, free_domain_id
from hilserl.data.bags import complete_episodes, read_episode
from hilserl.ros.graph import GraphArgs, build_graph, node_namespace, node_remappings
from hilserl_tools.process_graph import node_command


def _by_label(nodes):
    return {node.label: node for node in nodes}


def test_each_arm_gets_its_namespace_clock_seed_and_run_dir_and_shares_the_learner(tmp_path):
    nodes = _by_label(build_graph(GraphArgs(robots=3, run_dir=str(tmp_path), namespace='lab')))
    arm_nodes = ('so101_driver', 'gripper_camera', 'teleop', 'sac_actor', 'episode_recorder')
    assert set(nodes) == {f'robot_{i}/{name}' for i in range(3) for name in arm_nodes} | \
        {'sac_learner'}
    learner = nodes['sac_learner']
    assert learner.parameters['robot_namespaces'] == ['robot_0', 'robot_1', 'robot_2']
    assert learner.parameters['use_sim_time'] is False  # three simulated clocks: the wall's
    assert node_namespace('lab', learner) == '/lab'
    seeds, run_dirs = set(), set()
    for i in range(3):
        actor, driver = nodes[f'robot_{i}/sac_actor'], nodes[f'robot_{i}/so101_driver']
        assert node_namespace('lab', actor) == f'/lab/robot_{i}'
        assert actor.parameters['use_sim_time'] is True
        # its own clock; the learner's weights and progress from the graph's namespace
        assert dict(node_remappings('lab', actor)) == {'/clock': f'/lab/robot_{i}/clock',
                                                       'policy_weights': '/lab/policy_weights'}
        assert dict(node_remappings('lab', driver)) == {
            '/clock': f'/lab/robot_{i}/clock', 'learner/progress': '/lab/learner/progress'}
        assert nodes[f'robot_{i}/episode_recorder'].parameters['run_dir'] == \
            str(tmp_path / f'robot_{i}')
        seeds.add(driver.parameters['seed'])
        run_dirs.add(actor.parameters['run_dir'])
    assert len(seeds) == 3 and len(run_dirs) == 3
    command = node_command(nodes['robot_1/sac_actor'], tmp_path / 'params', 'lab')
    joined = ' '.join(command)
    assert '-r __ns:=/lab/robot_1' in joined and '-r /clock:=/lab/robot_1/clock' in joined
    assert '-r policy_weights:=/lab/policy_weights' in joined
    # one arm: nothing renamed, as before
    single = _by_label(build_graph(GraphArgs(run_dir=str(tmp_path))))
    assert 'sac_actor' in single and single['sac_learner'].parameters['robot_namespaces'] == ['']
    assert node_remappings('', single['sac_actor']) == []


@pytest.mark.parametrize('change, message', [
    ({'mode': 'record'}, 'robots'), ({'backend': 'hardware', 'teleop': 'keyboard',
                                      'success_source': 'key'}, 'robots'),
    ({'robots': 0}, 'robots')])
def test_several_arms_only_train_on_the_simulation(change, message):
    with pytest.raises(ValueError, match=message):
        GraphArgs(**{'robots': 2, **change})


def test_two_arms_feed_one_learner(tmp_path):
    """`hilserl train --robots 2`: both arms run their episodes with the learner's weights,
    each arm's bags hold its own episodes, every transition of both is stored once."""
    config = tmp_path / 'tiny.yaml'
    config.write_text(TINY_TRAIN_CONFIG)
    run_dir = tmp_path / 'run'
    result = subprocess.run(
        [sys.executable, '-m', 'hilserl_tools.cli', 'train', '--robots', '2', '--episodes', '2',
         '--demos', '1', '--config', str(config), '--run-dir', str(run_dir), '--device', 'cpu',
         '--domain-id', str(free_domain_id()), '--max-minutes', '8'],
        capture_output=True, text=True, timeout=700)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    ended = re.findall(r'\[(robot_\d)/sac_actor\].*episode (\d+) ended: \w+, (\d+) steps.*'
                       r'policy weights step (-?\d+)', out)
    assert sorted((robot, int(n)) for robot, n, _, _ in ended) == \
        [('robot_0', 0), ('robot_0', 1), ('robot_1', 0), ('robot_1', 1)], out[-4000:]
    for robot in ('robot_0', 'robot_1'):  # the learner's weights reached both arms
        assert max(int(w) for r, _, _, w in ended if r == robot) >= 1, out[-4000:]
    first_cube = {}
    for robot in ('robot_0', 'robot_1'):
        episodes = complete_episodes(run_dir / robot)
        assert [meta['episode'] for _, meta in episodes] == [0, 1]
        for path, meta in episodes:
            assert meta['counts']['transitions'] == meta['steps'], meta
        cube = read_episode(episodes[0][0], ['sim/cube_pose']).messages['sim/cube_pose'][0][1]
        first_cube[robot] = (cube.pose.position.x, cube.pose.position.y)
    assert first_cube['robot_0'] != first_cube['robot_1']  # each arm resets with its own seed
    assert not (run_dir / 'episodes').exists()  # no arm writes into the learner's folder
    # the final checkpoint's counters: every transition of both arms stored, none missing
    last = (run_dir / 'checkpoints' / 'last').read_text().strip()
    state = json.loads((run_dir / 'checkpoints' / last / 'training_state' /
                        'state.json').read_text())
    sent = sum(int(steps) for _, _, steps, _ in ended)
    counts = state['transitions']
    assert counts['received'] == counts['stored'] == sent and counts['missing'] == 0, counts
    assert sorted((e['robot'], e['episode']) for e in state['episodes']) == \
        [('robot_0', 0), ('robot_0', 1), ('robot_1', 0), ('robot_1', 1)]
