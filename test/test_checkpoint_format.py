"""No pickle in anything a run loads: a checkpoint's optimiser and RNG state are safetensors +
JSON and come back exactly; a checkpoint in the old pickled format is refused in one line naming
`hilserl convert-checkpoint`, which converts it once through torch's restricted unpickler; a
crafted pickle (in an old checkpoint or a replay segment) is refused and its code never runs."""
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

from hilserl.configuration.config import ActionConfig
from hilserl.configuration.run_dir import LegacyCheckpoint
from hilserl_policy.checkpoint import resume, save_checkpoint
from hilserl_policy.replay_buffer import ReplayBuffer
from hilserl_tools import cli
from test_sac import build_agent, filled_buffer, tiny_config

PICKLE_MAGIC = (b'\x80',)  # protocol 2+ pickles start with PROTO


class CreatesMarker:
    """Unpickling this calls open(marker, 'w'): the file appears iff the pickle's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def trained_checkpoint(run, discrete=False):
    cfg = tiny_config(action=ActionConfig(gripper_mode='discrete')) if discrete \
        else tiny_config()
    agent = build_agent(cfg)
    buffer, rng = filled_buffer()
    for _ in range(2):
        agent.update(lambda: buffer.sample(16, rng))
    agent.rng.random(3)  # the numpy generator away from its seed
    return agent, save_checkpoint(run, agent, cfg, buffer, None)


def optimizers(agent):
    return {'critic_opt': agent.critic_opt, 'actor_opt': agent.actor_opt,
            'temperature_opt': agent.temperature_opt, 'grasp_opt': agent.grasp_opt}


def assert_same_training_state(a, b):
    for name, optimizer in optimizers(a).items():
        other = optimizers(b)[name]
        if optimizer is None:
            assert other is None
            continue
        left, right = optimizer.state_dict(), other.state_dict()
        assert left['param_groups'] == right['param_groups'], name
        assert left['state'].keys() == right['state'].keys(), name
        for index, entries in left['state'].items():
            assert entries.keys() == right['state'][index].keys()
            for key, value in entries.items():
                assert torch.equal(value, right['state'][index][key]), (name, index, key)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert a.rng.bit_generator.state == b.rng.bit_generator.state


def write_old_format(checkpoint, agent):
    """The training state as checkpoints before safetensors kept it: one pickle (the code that
    wrote it, verbatim), none of the new files."""
    state_dir = checkpoint / 'training_state'
    torch.save({'critic_opt': agent.critic_opt.state_dict(),
                'actor_opt': agent.actor_opt.state_dict(),
                'temperature_opt': agent.temperature_opt.state_dict(),
                'grasp_opt': agent.grasp_opt.state_dict() if agent.grasp_opt else None,
                'generator': agent.generator.get_state(),
                'rng': agent.rng.bit_generator.state}, state_dir / 'optimizers.pt')
    shutil.rmtree(state_dir / 'optimizers')
    for name in ('rng_state.safetensors', 'rng_state.json'):
        (state_dir / name).unlink()


def holds_a_pickle(path) -> bool:
    data = path.read_bytes()
    if zipfile.is_zipfile(path):  # torch.save's format: a zip with data.pkl inside
        return any(n.endswith('.pkl') for n in zipfile.ZipFile(path).namelist())
    return data.startswith(PICKLE_MAGIC)


@pytest.mark.parametrize('discrete', [False, True])  # True: with the grasp critic's optimiser
def test_optimiser_and_rng_state_round_trip_as_safetensors_and_json(tmp_path, discrete):
    agent, path = trained_checkpoint(tmp_path / 'run', discrete)
    files = [p for p in path.rglob('*') if p.is_file()]
    assert {p.suffix for p in files} <= {'.safetensors', '.json'}
    assert not any(holds_a_pickle(p) for p in files)
    assert (path / 'training_state' / 'optimizers' / 'critic_opt' /
            'optimizer_state.safetensors').is_file()
    resumed = resume(path)[0]
    assert_same_training_state(agent, resumed)
    # and training goes on identically from both
    buffer, _ = filled_buffer(seed=3)
    batch = buffer.sample(16, np.random.default_rng(5))
    torch.manual_seed(0)
    m1 = agent.update(lambda: batch)
    torch.manual_seed(0)
    m2 = resumed.update(lambda: batch)
    assert m1['critic_loss'] == pytest.approx(m2['critic_loss'], rel=1e-6)
    assert_same_training_state(agent, resumed)


def test_an_old_checkpoint_is_refused_in_one_line_then_converted_once(tmp_path, capsys,
                                                                      monkeypatch):
    run = tmp_path / 'run'
    agent, path = trained_checkpoint(run, discrete=True)
    write_old_format(path, agent)
    with pytest.raises(LegacyCheckpoint) as info:
        resume(path)
    message = str(info.value)
    assert '\n' not in message and f'hilserl convert-checkpoint {run}' in message
    # `hilserl train` on that run refuses before any node starts, naming the command
    monkeypatch.setattr(cli, '_start_graph', lambda *a, **k: pytest.fail('graph started'))
    config = tmp_path / 'run_config.yaml'
    from hilserl.configuration.config import save_config
    save_config(tiny_config(action=ActionConfig(gripper_mode='discrete')), config)
    assert cli.main(['train', '--config', str(config), '--run-dir', str(run),
                     '--demos', '0']) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'hilserl convert-checkpoint' in err, err

    assert cli.main(['convert-checkpoint', str(run)]) == 0
    assert f'{path}: training state converted' in capsys.readouterr().out
    assert not (path / 'training_state' / 'optimizers.pt').exists()
    assert_same_training_state(agent, resume(path)[0])
    assert cli.main(['convert-checkpoint', str(path)]) == 0  # once: nothing left to do
    assert 'nothing to convert' in capsys.readouterr().out


def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_its_code_never_runs(tmp_path, capsys):
    run = tmp_path / 'run'
    agent, path = trained_checkpoint(run)
    write_old_format(path, agent)
    marker = tmp_path / 'code_ran'
    crafted = path / 'training_state' / 'optimizers.pt'
    torch.save({'critic_opt': CreatesMarker(marker)}, crafted)
    # the payload is live: an unrestricted load runs it (on a copy, then the marker goes)
    shutil.copy(crafted, tmp_path / 'copy.pt')
    torch.load(tmp_path / 'copy.pt', weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(LegacyCheckpoint):  # a resume never reads it
        resume(path)
    assert cli.main(['convert-checkpoint', str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0, err
    assert str(crafted) in err and 'cannot be converted safely' in err, err
    assert not marker.exists()
    assert crafted.is_file() and not (path / 'training_state' / 'rng_state.json').exists()


def test_a_crafted_pickle_in_a_replay_segment_is_refused_and_its_code_never_runs(tmp_path):
    buffer, _ = filled_buffer(n=10)
    manifest = tmp_path / 'ckpt' / 'online_buffer.json'
    segment = buffer.save_incremental(tmp_path / 'segments', manifest)
    marker = tmp_path / 'code_ran'
    with np.load(segment) as data:
        arrays = {k: data[k] for k in data.files}
    assert pickle.loads(pickle.dumps(CreatesMarker(marker))) is not None and marker.exists()
    marker.unlink()
    # an object array (numpy pickles its items) in place of the rewards
    arrays['reward'] = np.array([CreatesMarker(marker)] * len(arrays['reward']), dtype=object)
    np.savez(segment, **arrays)
    with pytest.raises(ValueError, match='allow_pickle'):
        ReplayBuffer.load_incremental(manifest)
    assert not marker.exists()
    # and as the images of a whole-buffer file, which are streamed from the file's bytes
    whole = tmp_path / 'whole.npz'
    buffer.save(whole)
    with np.load(whole) as data:
        arrays = {k: data[k] for k in data.files}
    arrays['image'] = np.array([CreatesMarker(marker)] * len(buffer), dtype=object)
    np.savez(whole, **arrays)
    with pytest.raises(IOError, match='not uint8'):
        ReplayBuffer.load(whole)
    assert not marker.exists()
