"""The `hilserl` command's offline tools: record, config validation, clear errors."""
import json
from pathlib import Path

from hilserl_tools import cli
from hilserl.data.bags import list_episodes

ROOT = Path(__file__).resolve().parents[1]


def test_record_writes_episode_bags(tmp_path, capsys):
    from conftest import free_domain_id
    assert cli.main(['record', '--episodes', '2', '--mix', 'expert:1', '--seed', '3',
                     '--output', str(tmp_path), '--domain-id', str(free_domain_id())]) == 0
    out = capsys.readouterr().out
    assert 'episode 1 ended' in out and '2 episodes (' in out
    episodes = list_episodes(tmp_path)
    assert len(episodes) == 2
    metas = [json.loads((e / 'episode.json').read_text()) for e in episodes]
    assert all(m['outcome'] in ('success', 'timeout') and m['interventions'] == m['steps']
               for m in metas)
    assert cli.main(['record', '--mix', 'expert:2,clumsy:1', '--output', str(tmp_path)]) == 2
    assert 'clumsy' in capsys.readouterr().err  # refused before any node starts


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


def test_train_without_the_pretrained_encoder_is_refused_before_any_node(tmp_path, capsys,
                                                                         monkeypatch):
    """config/train.yaml (the default) freezes helper2424/resnet10: without it in the local
    Hugging Face cache `hilserl train` exits 2 with one line saying how to get it; with it
    there (random weights in the upstream layout here) the graph starts."""
    from hilserl.learning.encoders import ResNet10, save_encoder_weights
    monkeypatch.delenv('HF_HUB_CACHE', raising=False)
    monkeypatch.delenv('HUGGINGFACE_HUB_CACHE', raising=False)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    started = []
    monkeypatch.setattr(cli, '_start_graph', lambda *a, **k: started.append(a) or 0)
    args = ['train', '--run-dir', str(tmp_path / 'run'), '--demos', '0', '--config',
            str(ROOT / 'config' / 'train.yaml')]
    assert cli.main(args) == 2 and not started
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'hilserl fetch-encoder helper2424/resnet10' in err
    snapshot = tmp_path / 'hf' / 'hub' / 'models--helper2424--resnet10' / 'snapshots' / '0a1b'
    save_encoder_weights(ResNet10(), snapshot)
    assert cli.main(args) == 0 and len(started) == 1


def test_a_truncated_bag_is_one_line_and_skipped_as_a_demo(sim_episodes, tmp_path, capsys):
    import shutil

    from hilserl.data.demos import load_demo_transitions
    _, episodes = sim_episodes
    for i in range(2):
        shutil.copytree(episodes[i][0], tmp_path / 'run' / 'episodes' / f'episode_00000{i}')
    broken = tmp_path / 'run' / 'episodes' / 'episode_000001'
    mcap = next((broken / 'bag').glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:4000])  # a recorder killed mid-write
    assert cli.main(['bag-info', str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert 'unreadable bag' in err and str(broken) in err and '\n' not in err
    unreadable = []
    demos = list(load_demo_transitions(tmp_path / 'run', unreadable=unreadable))
    assert len(demos) == episodes[0][1]['steps'] and [p for p, _ in unreadable] == [broken]


def test_plot_draws_a_runs_curves_and_refuses_an_empty_directory(sim_episodes, tmp_path, capsys):
    import shutil

    import cv2
    _, episodes = sim_episodes
    run = tmp_path / 'run'
    for path, _ in episodes:
        shutil.copytree(path, run / 'episodes' / path.name)
    shutil.copytree(episodes[0][0], run / 'demos' / 'episodes' / 'episode_000000')  # not plotted
    (run / 'metrics.csv').write_text('critic_loss,actor_loss,step,step_time_s,wall_time\n' +
                                     ''.join(f'{1.0 / k},{-0.1 * k},{k},0.5,{1e9 + 2 * k}\n'
                                             for k in range(1, 30)))
    assert cli.main(['plot', str(run)]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(p.rsplit('/', 1)[-1] for p in written) == sorted(
        [f'{what}_vs_{x}.png' for what in ('success_intervention', 'return')
         for x in ('episodes', 'wall_time')] +
        [f'{what}_vs_{x}.png' for what in ('losses', 'updates_per_s')
         for x in ('steps', 'wall_time')])
    image = cv2.imread(str(run / 'plots' / 'success_intervention_vs_episodes.png'))
    assert image.shape == (420, 900, 3)
    blue = (image[..., 0] > 150) & (image[..., 1] < 120) & (image[..., 2] < 60)
    assert blue.sum() > 200  # the success line is drawn
    (tmp_path / 'empty').mkdir()
    assert cli.main(['plot', str(tmp_path / 'empty')]) == 2
    err = capsys.readouterr().err.strip()
    assert 'no episodes' in err and '\n' not in err


def test_progress_bars_only_at_a_terminal():
    import io

    from hilserl.common.progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    items = [1, 2, 3]
    piped = io.StringIO()
    assert progress_bar(items, 3, 'reading', stream=piped) is items and piped.getvalue() == ''
    terminal = Terminal()
    assert list(progress_bar(items, 3, 'reading', stream=terminal)) == items
    assert 'reading' in terminal.getvalue() and '/3 ' in terminal.getvalue()  # n/total


def test_record_output_shows_a_nodes_traceback_whole(capsys):
    """Record graphs hide start-up chatter, but a failing node's traceback is shown to its last
    line (the error), not cut after `Traceback (most recent call last):`."""
    from hilserl_tools.cli import _ProgressOnly
    show = _ProgressOnly()
    for line in ['[teleop] [INFO] node up', '[episode_recorder] Traceback (most recent call last):',
                 '[teleop] [INFO] still chatting', '[episode_recorder]   File "x.py", line 1',
                 '[episode_recorder] rclpy.exceptions.InvalidParameterTypeException: config_digest',
                 '[sac_actor] episode 0 started: go']:
        show(line)
    assert capsys.readouterr().out.splitlines() == [
        '[episode_recorder] Traceback (most recent call last):',
        '[episode_recorder]   File "x.py", line 1',
        '[episode_recorder] rclpy.exceptions.InvalidParameterTypeException: config_digest',
        '[sac_actor] episode 0 started: go']
