"""What a newcomer types first: the default configuration per backend, encoder weights fetched by
`hilserl fetch-encoder` (offline here: one line), checkpoints named as a run writes them, flag
errors that name the flag, and `bag-info` over a folder."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hilserl.configuration.run_dir import checkpoint_model_dir
from hilserl.ros.graph import GraphArgs
from hilserl_tools import cli

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_config_is_the_one_that_learns_on_the_simulated_arm():
    assert GraphArgs(mode='train').config_path().name == 'sim_learn_conv.yaml'
    assert GraphArgs(mode='train', backend='hardware', teleop='keyboard',
                     success_source='key').config_path().name == 'train.yaml'
    assert GraphArgs(mode='train', config='mine.yaml').config_path() == Path('mine.yaml')


def test_train_without_config_starts_on_the_sim_without_hub_weights(tmp_path, monkeypatch):
    """`make train` then `hilserl train` on the same run: one configuration, no hub weights."""
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'empty_hf'))
    for name in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'XDG_CACHE_HOME'):
        monkeypatch.delenv(name, raising=False)
    started = []
    monkeypatch.setattr(cli, '_start_graph', lambda *a, **k: started.append(a) or 0)
    run = str(tmp_path / 'run')
    assert cli.main(['train', '--run-dir', run, '--demos', '0',
                     '--config', str(ROOT / 'config' / 'sim_learn_conv.yaml')]) == 0
    assert cli.main(['train', '--run-dir', run, '--demos', '0']) == 0   # the same run resumes
    assert len(started) == 2 and started[1][1] == started[0][1]          # the same TrainConfig


def fetch(tmp_path, *args):
    env = {k: v for k, v in os.environ.items()
           if k not in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'XDG_CACHE_HOME')}
    env.update(HF_HOME=str(tmp_path / 'hf'), HF_HUB_OFFLINE='1', PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, '-m', 'hilserl_tools.cli', 'fetch-encoder', *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_fetch_encoder_offline_is_one_line_and_a_cached_repo_needs_no_network(tmp_path):
    pytest.importorskip('huggingface_hub')
    result = fetch(tmp_path)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert '\n' not in line and 'cannot download helper2424/resnet10' in line
    assert 'hilserl fetch-encoder helper2424/resnet10' in line
    from hilserl.learning.encoders import ResNet10, save_encoder_weights
    snapshot = tmp_path / 'hf' / 'hub' / 'models--helper2424--resnet10' / 'snapshots' / 'ab12'
    save_encoder_weights(ResNet10(), snapshot)
    result = fetch(tmp_path)
    assert result.returncode == 0 and str(snapshot) in result.stdout, result.stderr
    result = fetch(tmp_path, 'not a repo')
    assert result.returncode == 2 and 'not a Hugging Face repo id' in result.stderr


def _fake_checkpoint(run: Path, step: int) -> Path:
    """A checkpoint's shape on disk (config.json + model.safetensors), as the learner lays it."""
    model = run / 'checkpoints' / f'{step:06d}' / 'pretrained_model'
    model.mkdir(parents=True)
    (model / 'config.json').write_text('{}')
    (model / 'model.safetensors').write_bytes(b'')
    return model


def test_a_checkpoint_is_found_from_last_the_run_or_its_folder_and_a_wrong_one_lists(tmp_path):
    run = tmp_path / 'run'
    old, new = _fake_checkpoint(run, 100), _fake_checkpoint(run, 200)
    (run / 'checkpoints' / 'last').write_text('000100\n')  # the marker wins over the newest
    assert checkpoint_model_dir(run / 'checkpoints' / 'last') == old
    assert checkpoint_model_dir(run) == old and checkpoint_model_dir(run / 'checkpoints') == old
    (run / 'checkpoints' / 'last').unlink()
    assert checkpoint_model_dir(run) == new
    assert checkpoint_model_dir(run / 'checkpoints' / '000100') == old
    with pytest.raises(FileNotFoundError) as error:
        checkpoint_model_dir(run / 'checkpoints' / '000500')
    message = str(error.value)
    assert 'does not exist' in message and '000100' in message and '000200' in message
    assert '\n' not in message


def test_a_wrong_flag_value_names_the_flag(capsys):
    for argv, flag in ((['train', '--episodes', '-3'], '--episodes'),
                       (['train', '--robots', '0'], '--robots'),
                       (['record', '--episodes', 'x'], '--episodes'),
                       (['eval', '--max-minutes', 'nan'], '--max-minutes'),
                       (['train', '--domain-id', '900'], '--domain-id')):
        with pytest.raises(SystemExit) as exit_code:
            cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert exit_code.value.code == 2 and flag in err and 'pass a' in err, (argv, err)
        assert 'num_episodes=' not in err


def test_bag_info_tabulates_a_folder_of_episodes(sim_episodes, capsys):
    run, episodes = sim_episodes
    assert cli.main(['bag-info', str(run)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ['episode', 'outcome', 'steps', 'return']
    assert len(lines) == len(episodes) + 2
    for (path, meta), line in zip(episodes, lines[1:-1]):
        assert line.split()[:3] == [path.name, meta['outcome'], str(meta['steps'])]
    assert lines[-1].startswith(f'{len(episodes)} episodes: ')
    assert cli.main(['bag-info', str(episodes[0][0])]) == 0   # one episode: its topics
    assert 'messages:' in capsys.readouterr().out
    assert cli.main(['bag-info', str(run / 'nothing')]) == 2


def test_demos_at_another_image_size_are_resized_or_refused_never_dropped(sim_episodes, tmp_path,
                                                                          capsys, monkeypatch):
    from hilserl.data.demos import fit_image_size, load_demo_transitions
    run, episodes = sim_episodes
    as_recorded = list(load_demo_transitions(run))
    assert as_recorded[0].image.shape == (3, 128, 128)
    resized = []
    small = list(load_demo_transitions(run, image_shape=(3, 64, 64), resized=resized))
    assert len(small) == len(as_recorded) and len(resized) == len(episodes)
    assert all(t.image.shape == t.next_image.shape == (3, 64, 64) for t in small)
    assert abs(float(small[0].image.mean()) - float(as_recorded[0].image.mean())) < 2.0
    for wrong in ((6, 64, 64), (3, 64, 96)):
        with pytest.raises(ValueError, match=r'demo images are 3x128x128, this configuration '
                                             f'needs {"x".join(map(str, wrong))}'):
            fit_image_size(as_recorded[0], wrong, 'demos')
    # the command says so before the graph starts (the default sim config is 64x64)
    started = []
    monkeypatch.setattr(cli, '_start_graph', lambda *a, **k: started.append(a) or 0)
    assert cli.main(['train', '--run-dir', str(tmp_path / 'run'), '--demo-dir', str(run)]) == 0
    assert f'demos in {run} were recorded at 3x128x128: the learner resizes them to 3x64x64' \
        in capsys.readouterr().out and started
    bad = tmp_path / 'six.yaml'
    bad.write_text((ROOT / 'config' / 'sim_learn_conv.yaml').read_text() +
                   'observation:\n  n_obs_steps: 2\n')
    assert cli.main(['train', '--run-dir', str(tmp_path / 'run6'), '--demo-dir', str(run),
                     '--config', str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'needs 6x64x64' in err and len(started) == 1
