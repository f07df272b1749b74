"""The `hilserl` command's offline tools: record, config validation, clear errors."""
import json

from hilserl import cli
from hilserl.bags import list_episodes


def test_record_writes_episode_bags(tmp_path, capsys):
    assert cli.main(['record', '--episodes', '2', '--mix', 'expert:1', '--seed', '3',
                     '--output', str(tmp_path)]) == 0
    assert 'episode 2/2 (expert)' in capsys.readouterr().out
    episodes = list_episodes(tmp_path)
    assert len(episodes) == 2
    assert all(json.loads((e / 'episode.json').read_text())['source'] == 'sim'
               for e in episodes)


def test_config_errors_name_the_field_and_exit_2(tmp_path, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('action:\n  low: [-1, -1, -1, 0]\n  high: [1, 1, 1, 2]\n')
    assert cli.main(['config', '--config', str(bad)]) == 2
    err = capsys.readouterr().err
    assert '[0, 2]' in err and '[-1, 1]' in err
    assert cli.main(['config', '--config', str(tmp_path / 'missing.yaml')]) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert cli.main(['eval', '--record', 'false']) == 2  # eval without a checkpoint
    assert 'checkpoint' in capsys.readouterr().err
