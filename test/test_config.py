import dataclasses
from pathlib import Path

import pytest
import yaml

from hilserl.configuration.config import (AlgorithmConfig, ConfigError, LearnerConfig, PolicyConfig,
                                          ReplayConfig, TrainConfig, load_train_config, save_config,
                                          with_fields)

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'config'


def test_shipped_train_yaml_is_the_seed_configuration():
    cfg = load_train_config(CONFIG_DIR / 'train.yaml')
    assert cfg.action.names == ('dx', 'dy', 'dz', 'gripper')
    assert cfg.action.low == (-1.0,) * 4 and cfg.action.high == (1.0,) * 4
    assert cfg.image.camera_names == ('gripper',)  # the flat image fields: the one camera
    assert cfg.image.cameras[0].crop_tlhw_px == (0, 80, 480, 480)
    assert cfg.image.resize_hw_px == (128, 128)
    assert cfg.observation.state_dim == 18 and cfg.observation.n_obs_steps == 1
    assert cfg.algorithm.utd_ratio == 20 and cfg.algorithm.discount == 0.97
    assert cfg.algorithm.temperature_init == 0.01 and cfg.algorithm.augmentation_pad == 4
    assert cfg.task.random_ee_reset and cfg.task.random_ee_range_xy_m == 0.03
    assert cfg.task.max_episode_steps == 100
    # success: classifier probability >= 0.7, counted from step 31, 10 consecutive frames end
    # the episode; evaluation resets to the home pose (README "Seed values vs ours")
    assert (cfg.task.success_frames_to_end, cfg.task.min_steps_before_success) == (10, 30)
    assert cfg.task.classifier_threshold == 0.7 and cfg.task.eval_random_ee_reset is False
    assert cfg.task.reset_delay_s == 2.0
    assert cfg.learner.keep_last_checkpoints == 3
    # HIL-SERL's grasp penalty (the seed's own value is not known); the raw state, ungated
    # success (README "Seed values vs ours")
    assert cfg.task.gripper_penalty == 0.02 and cfg.observation.state_normalisation == 'none'
    assert cfg.task.classifier_requires_gripper_closed is False


def test_simulated_learning_configuration_keeps_its_success_and_reset_rules():
    task = load_train_config(CONFIG_DIR / 'sim_learn_conv.yaml').task
    assert (task.success_frames_to_end, task.min_steps_before_success) == (1, 0)
    assert task.classifier_threshold is None and task.eval_random_ee_reset is True
    assert task.reset_delay_s == 0.5
    assert task.gripper_penalty == 0.0  # its learning results were measured without it


def test_every_yaml_value_has_a_comment():
    for line in (CONFIG_DIR / 'train.yaml').read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith('#') or stripped.endswith(':'):
            continue
        if stripped.split(':')[0] in ('critic_lr', 'temperature_lr', 'log_std_max'):
            continue  # grouped with the commented line above
        assert '#' in stripped, f'value without a unit/explanation comment: {line!r}'


def test_gripper_range_mismatch_with_tanh_is_refused(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text(yaml.safe_dump({'action': {'low': [-1, -1, -1, 0], 'high': [1, 1, 1, 2]}}))
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    message = str(info.value)
    assert "'gripper'" in message and '[0, 2]' in message and '[-1, 1]' in message
    assert 'tanh' in message


@pytest.mark.parametrize('overrides,match', [
    ({'algorithm': {'discount': 1.5}}, r'algorithm\.discount=1\.5'),
    ({'algorithm': {'utd_ratio': 0}}, r'algorithm\.utd_ratio=0'),
    ({'algorithm': {'utd_ratio': 2.5}}, r'algorithm\.utd_ratio=2\.5'),
    ({'algorithm': {'bogus': 1}}, r"unknown keys \['bogus'\]"),
    ({'policy': {'squash': 'sigmoid'}}, r'policy\.squash'),
    ({'replay': {'online_ratio': 1.5}}, r'replay\.online_ratio=1\.5'),
    ({'learner': {'device': 'tpu'}}, r'learner\.device'),
    ({'algorithm': {'feature_cache_shifts': 2},
      'policy': {'freeze_encoder': False, 'pretrained_encoder_path': None}},
     r'algorithm\.feature_cache_shifts=2.*policy\.freeze_encoder'),
    # a configuration written before the split: its sac keys are checked in their sections
    ({'sac': {'discount': 1.5}}, r'algorithm\.discount=1\.5'),
    ({'sac': {'bogus': 1}}, r"sac: unknown key 'bogus'.*split into policy, algorithm"),
    ({'sac': {'utd_ratio': 4}, 'algorithm': {'utd_ratio': 5}},
     r'sac\.utd_ratio and algorithm\.utd_ratio are both given'),
    ({'image': {'crop_tlhw_px': [0, 200, 480, 480]}}, 'leaves the 640x480 frame'),
    ({'task': {'reset_tcp_xyz_m': [0.5, 0, 0.07]}}, r'task\.reset_tcp_xyz_m\[0\]=0\.5'),
    ({'action': {'ee_step_m': [0.02, 0.02, 0.2]}}, 'unsafe'),
    ({'task': {'random_ee_reset': 'yes'}}, 'true or false'),
    ({'observation': {'state_features': ['joint_pos', 'torque']}}, 'unknown feature'),
    ({'action': {'low': [-1, -1, -1, float('nan')]}}, 'finite'),
    ({'task': {'classifier_threshold': 1.0}}, r'task\.classifier_threshold=1\.0'),
    ({'task': {'success_frames_to_end': 0}}, r'task\.success_frames_to_end=0'),
    ({'task': {'min_steps_before_success': 95, 'success_frames_to_end': 10}},
     r'task\.min_steps_before_success=95.*never end'),
    ({'task': {'eval_random_ee_reset': 1}}, 'true or false'),
    ({'task': {'reset_delay_s': -1}}, r'task\.reset_delay_s=-1'),
    ({'task': {'reset_timeout_s': float('inf')}}, r'task\.reset_timeout_s=inf'),
    ({'learner': {'keep_last_checkpoints': -1}}, r'learner\.keep_last_checkpoints=-1'),
])
def test_bad_values_name_field_and_value(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_train_config(None, overrides)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match='does not exist'):
        load_train_config(tmp_path / 'nope.yaml')


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_train_config(CONFIG_DIR / 'train.yaml', {'algorithm': {'utd_ratio': 4}})
    save_config(cfg, tmp_path / 'config.yaml')
    again = load_train_config(tmp_path / 'config.yaml')
    assert again == cfg and again.digest() == cfg.digest()
    assert TrainConfig().digest() != cfg.digest()


def test_every_shipped_training_configuration_loads():
    for name in ('train.yaml', 'sim_learn.yaml', 'sim_learn_conv.yaml'):
        cfg = load_train_config(CONFIG_DIR / name)
        assert cfg.algorithm.bc_weight >= 0, name
        # a frozen encoder always names its pretrained weights (the seed's ResNet-10 here)
        assert not cfg.policy.freeze_encoder or cfg.policy.pretrained_encoder_path, name
    assert load_train_config(CONFIG_DIR / 'sim_learn_conv.yaml').algorithm.bc_weight == 0.4
    seed, default = load_train_config(CONFIG_DIR / 'train.yaml').policy, TrainConfig().policy
    assert (seed.encoder, seed.freeze_encoder, seed.pretrained_encoder_path) == \
        (default.encoder, default.freeze_encoder, default.pretrained_encoder_path) == \
        ('resnet10', True, 'helper2424/resnet10')
    # the cached variant freezes a previous run's encoder: refused until it is named
    with pytest.raises(ConfigError, match='pretrained_encoder_path') as info:
        load_train_config(CONFIG_DIR / 'sim_learn_cached.yaml')
    assert '\n' not in str(info.value)
    cfg = load_train_config(CONFIG_DIR / 'sim_learn_cached.yaml',
                            {'policy': {'pretrained_encoder_path': 'run/pretrained_model'}})
    assert cfg.policy.freeze_encoder and cfg.algorithm.feature_cache_shifts == 2


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    """A crash before the rename leaves the old content (and no half-written file)."""
    import os

    from hilserl.common.files import write_text_atomic
    target = tmp_path / 'sub' / 'config.yaml'
    write_text_atomic(target, 'old: 1\n')
    assert target.read_text() == 'old: 1\n'

    def crash(*args):
        raise OSError('killed')
    monkeypatch.setattr(os, 'replace', crash)
    with pytest.raises(OSError):
        write_text_atomic(target, 'new: 2\n')
    assert target.read_text() == 'old: 1\n'
    monkeypatch.undo()
    write_text_atomic(target, 'new: 2\n')
    assert target.read_text() == 'new: 2\n' and sorted(p.name for p in target.parent.iterdir()) \
        == ['config.yaml']


def test_a_configuration_from_before_the_split_loads_into_the_sections():
    """Checkpoints, run directories and users' files written with one `sac:` section load as
    they did: each key in its section, the rest of the file unchanged."""
    legacy = load_train_config(None, {'seed': 3, 'sac': {
        'encoder': 'small_conv', 'freeze_encoder': False, 'pretrained_encoder_path': None,
        'utd_ratio': 4, 'online_ratio': 0.25, 'keep_last_checkpoints': 5}})
    split = load_train_config(None, {
        'seed': 3, 'policy': {'encoder': 'small_conv', 'freeze_encoder': False,
                              'pretrained_encoder_path': None},
        'algorithm': {'utd_ratio': 4}, 'replay': {'online_ratio': 0.25},
        'learner': {'keep_last_checkpoints': 5}})
    assert legacy == split and legacy.digest() == split.digest()
    assert (legacy.policy.encoder, legacy.algorithm.utd_ratio, legacy.replay.online_ratio,
            legacy.learner.keep_last_checkpoints) == ('small_conv', 4, 0.25, 5)
    # every field of the four sections has exactly one home
    owners = [f.name for cls in (PolicyConfig, AlgorithmConfig, ReplayConfig, LearnerConfig)
              for f in dataclasses.fields(cls)]
    assert len(owners) == len(set(owners))
    assert with_fields(TrainConfig(), utd_ratio=3, device='cpu').algorithm.utd_ratio == 3
    with pytest.raises(ConfigError, match='not a field'):
        with_fields(TrainConfig(), bogus=1)
