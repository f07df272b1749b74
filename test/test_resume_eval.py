"""Resume and eval that cannot silently go wrong: a run directory's remembered configuration,
checkpoint clean-up and time-based checkpoints, counters across resumes, episode numbering and
eval on a checkpoint's own configuration (ROS-free, except the CLI refusing before any node)."""
import dataclasses

import numpy as np
import pytest

from hilserl_tools import cli
from hilserl.configuration.config import ConfigError, LearnerConfig, load_train_config
from hilserl.configuration.run_dir import (RUN_CONFIG_NAME, RunConfigMismatch, check_run_config,
                                           checkpoint_model_dir, config_differences,
                                           load_checkpoint_config, next_episode_index,
                                           record_run_config, remove_stale_checkpoints)
from hilserl_policy.checkpoint import save_checkpoint
from hilserl_policy.learner import Learner
from test_sac import tiny_config, transition


def test_config_differences_name_dotted_paths():
    old = {'sac': {'batch_size': 16, 'hidden_dims': [32, 32]}, 'seed': 0, 'gone': 1}
    new = {'sac': {'batch_size': 32, 'hidden_dims': (32, 32)}, 'seed': 0, 'added': 2}
    assert config_differences(old, new) == ['added', 'gone', 'sac.batch_size']


def test_a_run_directory_refuses_a_different_configuration(tmp_path):
    cfg = tiny_config()
    assert check_run_config(tmp_path, cfg) is None  # fresh run
    path = record_run_config(tmp_path, cfg)
    assert path == tmp_path / RUN_CONFIG_NAME
    assert path.read_text().startswith(f'# hilserl run configuration, digest {cfg.digest()}')
    assert load_train_config(path) == cfg  # also a config file to resume with
    record_run_config(tmp_path, cfg)  # same configuration: fine
    # operational settings may change on resume
    record_run_config(tmp_path, tiny_config(device='cpu', checkpoint_every_steps=7,
                                            checkpoint_every_s=9.0))
    changed = dataclasses.replace(tiny_config(batch_size=32), seed=3)
    with pytest.raises(RunConfigMismatch) as info:
        record_run_config(tmp_path, changed)
    message = str(info.value)
    assert '\n' not in message and 'algorithm.batch_size, seed' in message
    assert str(tmp_path) in message


def test_a_run_without_run_config_is_compared_with_its_checkpoint(tmp_path):
    cfg = tiny_config()
    learner = Learner(cfg, tmp_path, resume_from_latest=False)
    save_checkpoint(tmp_path, learner.agent, cfg)
    (tmp_path / RUN_CONFIG_NAME).unlink(missing_ok=True)
    check_run_config(tmp_path, cfg)
    with pytest.raises(RunConfigMismatch, match='algorithm.utd_ratio'):
        check_run_config(tmp_path, tiny_config(utd_ratio=3))


def test_checkpoint_every_s_is_validated():
    with pytest.raises(ConfigError, match='learner.checkpoint_every_s'):
        LearnerConfig(checkpoint_every_s=0.0)
    assert LearnerConfig().checkpoint_every_s == 300.0


def test_stale_tmp_checkpoints_are_removed_at_learner_start(tmp_path):
    root = tmp_path / 'checkpoints'
    (root / '000010.tmp' / 'pretrained_model').mkdir(parents=True)
    (root / 'last.tmp').write_text('000010')
    (root / '000005').mkdir()
    assert len(remove_stale_checkpoints(tmp_path)) == 2
    (root / '000020.tmp').mkdir()
    Learner(tiny_config(), tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ['000005']


def test_learner_checkpoints_by_time_as_well_as_by_steps(tmp_path):
    cfg = tiny_config(checkpoint_every_steps=1000, checkpoint_every_s=60.0)
    learner = Learner(cfg, tmp_path)
    rng = np.random.default_rng(0)
    for _ in range(8):
        learner.add(transition(rng))
    learner.train_step()
    assert learner.maybe_checkpoint(now_s=learner.last_checkpoint_s + 1.0) is None
    path = learner.maybe_checkpoint(now_s=learner.last_checkpoint_s + 61.0)
    assert path is not None and path.name == '000001'
    # nothing new since: no second checkpoint
    assert learner.maybe_checkpoint(now_s=learner.last_checkpoint_s + 61.0) is None


def test_episode_and_transition_counters_continue_across_resumes(tmp_path):
    cfg = tiny_config()
    learner = Learner(cfg, tmp_path)
    rng = np.random.default_rng(0)
    for step in range(1, 9):
        learner.submit(transition(rng), episode=0, step=step)
    while learner.store_next(timeout_s=0.0) is not None:
        pass
    for i in range(3):
        learner.record_episode({'event': 'end', 'episode': i, 'success': i == 1, 'steps': 4})
    learner.train_step()
    learner.checkpoint()
    resumed = Learner(cfg, tmp_path)
    assert resumed.episode_counts() == (3, 1)
    assert [e['episode'] for e in resumed.episodes] == [0, 1, 2]
    assert resumed.counts['received'] == resumed.counts['stored'] == 8
    resumed.record_episode({'event': 'end', 'episode': 3, 'success': True, 'steps': 2})
    assert resumed.episode_counts() == (4, 2)


def test_next_episode_index_continues_after_the_highest_episode(tmp_path):
    assert next_episode_index(tmp_path) == 0
    episodes = tmp_path / 'episodes'
    for name in ('episode_000000', 'episode_000004', 'episode_000002_1', 'notes'):
        (episodes / name).mkdir(parents=True)
    assert next_episode_index(tmp_path) == 5
    (episodes / 'episode_000007_2').mkdir()
    assert next_episode_index(tmp_path) == 8


def _checkpoint(tmp_path, **sac):
    cfg = dataclasses.replace(tiny_config(**sac), seed=5)
    learner = Learner(cfg, tmp_path / 'run', resume_from_latest=False)
    return save_checkpoint(tmp_path / 'run', learner.agent, cfg), cfg


def test_a_checkpoint_config_loads_from_the_checkpoint_or_its_model_folder(tmp_path):
    checkpoint, cfg = _checkpoint(tmp_path)
    for path in (checkpoint, checkpoint / 'pretrained_model'):
        loaded, config_path = load_checkpoint_config(path)
        assert loaded == cfg and config_path == checkpoint / 'pretrained_model' / 'config.json'
        assert checkpoint_model_dir(path) == checkpoint / 'pretrained_model'
        # every node reads the checkpoint's config.json as its config_file
        assert load_train_config(config_path) == cfg
    with pytest.raises(FileNotFoundError, match='does not exist'):
        checkpoint_model_dir(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='not a policy checkpoint'):
        checkpoint_model_dir(tmp_path)


def test_eval_uses_the_checkpoint_config_and_checks_it_before_any_node(tmp_path, monkeypatch):
    checkpoint, cfg = _checkpoint(tmp_path)
    started = []
    monkeypatch.setattr(cli, '_start_graph', lambda *a, **k: started.append(a) or 0)
    assert cli.main(['eval', '--checkpoint', str(checkpoint), '--run-dir',
                     str(tmp_path / 'run')]) == 0
    graph_args, graph_cfg = started[0][0], started[0][1]
    assert graph_cfg == cfg and graph_args.teleop == 'none'
    assert graph_args.config == str(checkpoint / 'pretrained_model' / 'config.json')
    assert graph_args.run_dir == str(tmp_path / 'run')
    # without --run-dir the eval goes with the checkpoint's run, whichever form names it
    for named in (checkpoint, checkpoint / 'pretrained_model', tmp_path / 'run',
                  tmp_path / 'run' / 'checkpoints' / 'last'):
        started.clear()
        assert cli.main(['eval', '--checkpoint', str(named)]) == 0
        assert started[0][0].run_dir == str(tmp_path / 'run'), named
    # a missing checkpoint: one line, exit 2, nothing started
    started.clear()
    assert cli.main(['eval', '--checkpoint', str(tmp_path / 'missing')]) == 2
    assert not started


def test_eval_refuses_a_config_whose_policy_view_differs_from_the_checkpoint(tmp_path, capsys):
    checkpoint, _ = _checkpoint(tmp_path)
    other = tmp_path / 'other.yaml'
    other.write_text('image:\n  resize_hw_px: [64, 64]\n')
    assert cli.main(['eval', '--checkpoint', str(checkpoint), '--config', str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'image.resize_hw_px' in err


def test_train_refuses_to_resume_with_another_config_before_any_node(tmp_path, capsys,
                                                                     monkeypatch):
    run = tmp_path / 'run'
    first = tmp_path / 'a.yaml'
    # a run started before the sac section was split, resumed with a configuration after it
    first.write_text('sac:\n  batch_size: 32\n')
    record_run_config(run, load_train_config(first))
    second = tmp_path / 'b.yaml'
    second.write_text('algorithm:\n  batch_size: 64\n')
    monkeypatch.setattr(cli, '_start_graph', lambda *a, **k: pytest.fail('graph started'))
    assert cli.main(['train', '--config', str(second), '--run-dir', str(run),
                     '--demos', '0']) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'algorithm.batch_size' in err and 'hilserl train' in err


def test_learner_node_refuses_a_run_started_with_another_config(ros_context, tmp_path):
    pytest.importorskip('rclpy')
    from rclpy.parameter import Parameter

    from hilserl_policy.learner_node import LearnerNode
    run = tmp_path / 'run'
    record_run_config(run, load_train_config())
    other = tmp_path / 'other.yaml'
    other.write_text('task:\n  episode_time_s: 5.0\n')
    with pytest.raises(SystemExit) as info:  # spin_node lets it through: exit code 2
        LearnerNode(context=ros_context, parameter_overrides=[
            Parameter('config_file', value=str(other)), Parameter('run_dir', value=str(run))])
    assert info.value.code == 2
    assert not (run / 'checkpoints').exists()


def test_eval_of_a_make_train_checkpoint_sees_its_64px_view(tmp_path, monkeypatch):
    from hilserl.ros.graph import build_graph
    from hilserl.common.paths import share_path
    from hilserl_policy.checkpoint import build_agent
    cfg = load_train_config(share_path('config', 'sim_learn_conv.yaml'))
    assert tuple(cfg.image.resize_hw_px) == (64, 64)  # unlike the default 128x128
    checkpoint = save_checkpoint(tmp_path / 'run', build_agent(cfg, device='cpu'), cfg)
    started = []
    monkeypatch.setattr(cli, '_start_graph', lambda *a, **k: started.append(a) or 0)
    assert cli.main(['eval', '--checkpoint', str(checkpoint), '--episodes', '10']) == 0
    nodes = {n.name: n for n in build_graph(started[0][0], started[0][1])}
    assert nodes['gripper_camera'].parameters['resize_hw_px'] == [64, 64]
    config_file = nodes['sac_actor'].parameters['config_file']
    assert load_train_config(config_file) == cfg
