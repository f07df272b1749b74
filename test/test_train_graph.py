"""The train and eval graphs end to end on the simulated arm (each node its own process, as the
`hilserl` command runs them); every recorded bag is read back with rosbags."""
import json
import os
import re

import numpy as np
import pytest

from hilserl_tools import cli
from hilserl.data.bags import list_episodes, read_episode
from hilserl.messages.conventions import Topics
from hilserl.messages.conversions import image_to_array
from hilserl_policy.checkpoint import latest_checkpoint
from hilserl.data.transition import TransitionDecoder

from conftest import TINY_TRAIN_CONFIG as TINY


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('graph')
    config = root / 'tiny.yaml'
    config.write_text(TINY)
    run = root / 'run'
    domain = str(60 + os.getpid() % 30)
    code = cli.main(['train', '--config', str(config), '--run-dir', str(run), '--episodes', '3',
                     '--demos', '1', '--domain-id', domain, '--device', 'cpu',
                     '--max-minutes', '4'])
    return code, config, run, domain


def test_train_graph_runs_episodes_and_writes_bags_checkpoints_metrics(trained):
    code, _, run, _ = trained
    assert code == 0
    episodes = list_episodes(run / 'episodes')
    assert len(episodes) == 3
    for path in episodes:
        meta = json.loads((path / 'episode.json').read_text())
        assert meta['outcome'] in ('success', 'timeout') and meta['steps'] >= 1
        data = read_episode(path)
        for topic in (Topics.IMAGE_CROP, Topics.JOINT_STATES, Topics.TCP_POSE, Topics.EE_ACTION,
                      Topics.POLICY_ACTION, Topics.INTERVENTION, Topics.REWARD,
                      Topics.EPISODE_EVENTS, Topics.TRANSITIONS):
            assert data.messages.get(topic), f'{path.name}: no {topic}'
        image = image_to_array(data.messages[Topics.IMAGE_CROP][0][1])
        assert image.shape == (128, 128, 3) and image.std() > 1.0  # decodes, not blank
        decoder = TransitionDecoder()  # each image is in the bag once
        transitions = [decoder.decode(np.asarray(m.data, np.uint8).tobytes())[0]
                       for _, m in data.messages[Topics.TRANSITIONS]]
        assert len(transitions) == meta['steps']
        assert transitions[-1].terminated or transitions[-1].truncated
        sources = {m.layout.dim[0].label for _, m in data.messages[Topics.EE_ACTION]}
        assert sources <= {'policy', 'human'}
        events = [json.loads(m.data)['event'] for _, m in data.messages[Topics.EPISODE_EVENTS]]
        assert events[0] == 'start' and events.count('end') == 1
    checkpoint = latest_checkpoint(run)
    assert checkpoint is not None
    assert (checkpoint / 'training_state' / 'online_buffer.json').is_file()
    header = (run / 'metrics.csv').read_text().splitlines()[0]
    assert 'critic_loss' in header


def test_eval_graph_prints_the_table_and_writes_a_summary(trained, capsys):
    _, config, run, domain = trained
    code = cli.main(['eval', '--config', str(config), '--run-dir', str(run), '--checkpoint',
                     str(latest_checkpoint(run)), '--episodes', '2', '--teleop', 'none',
                     '--domain-id', domain, '--record', 'false', '--max-minutes', '3'])
    assert code == 0
    out = capsys.readouterr().out
    assert '| Episode | Steps | Reward | Result |' in out
    # the actor reports how long its policy took per proposal (bench/actor_in_graph.py reads it)
    latency = re.search(r'policy act latency: (\d+) acts, p50 [\d.]+ ms, p99 [\d.]+ ms', out)
    assert latency and int(latency.group(1)) >= 2, out[-3000:]
    summary = json.loads((run / 'eval' / 'eval_summary.json').read_text())
    assert summary['episodes'] == 2 and 0.0 <= summary['success_rate'] <= 1.0
