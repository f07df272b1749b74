"""The peers' task mechanics (issue #26 item 7), without ROS: min-max state normalisation
inside the policy."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from hilserl.configuration.config import (ConfigError, ObservationConfig, TrainConfig,
                                          load_train_config)
from hilserl.robot.kinematics import SO101Kinematics
from hilserl.robot.observation import state_bounds
from hilserl_policy.checkpoint import build_agent, load_pretrained, resume, save_checkpoint
from hilserl_policy.networks import MinMaxStateNorm
from hilserl_policy.policy import build_policy
from test_sac import HW, filled_buffer, tiny_config


# --- 2. state normalisation -----------------------------------------------------------------

def test_min_max_maps_the_bounds_to_minus_one_and_one_and_clips_beyond():
    norm = MinMaxStateNorm([0.0, -2.0, 10.0], [1.0, 2.0, 20.0])
    states = torch.tensor([[0.0, -2.0, 10.0], [1.0, 2.0, 20.0], [0.5, 0.0, 15.0],
                           [0.25, 1.0, 12.0], [-3.0, 7.0, 1e6]])
    expected = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0],
                             [-0.5, 0.5, -0.6], [-1.0, 1.0, 1.0]])
    torch.testing.assert_close(norm(states), expected)
    with pytest.raises(ValueError, match='min < max'):
        MinMaxStateNorm([0.0, 1.0], [1.0, 1.0])


def min_max(**observation):
    """The small test configuration with observation.state_normalisation: min_max."""
    return dataclasses.replace(tiny_config(), observation=ObservationConfig(
        state_normalisation='min_max', **observation))


def test_derived_bounds_are_the_joint_limits_the_workspace_and_the_angle_ranges():
    assert state_bounds(TrainConfig()) is None  # none: the raw state, as before
    cfg = min_max(state_velocity_bound_rad_s=2.0)
    low, high = state_bounds(cfg)
    kin = SO101Kinematics()
    assert low.dtype == high.dtype == np.float32 and low.shape == high.shape == (18,)
    np.testing.assert_allclose(low[:6], [*kin.lower, kin.gripper_limits[0]], rtol=1e-6)
    np.testing.assert_allclose(high[:6], [*kin.upper, kin.gripper_limits[1]], rtol=1e-6)
    assert low[6:12].tolist() == [-2.0] * 6 and high[6:12].tolist() == [2.0] * 6
    np.testing.assert_allclose(low[12:15], cfg.task.workspace_min_m, rtol=1e-6)
    np.testing.assert_allclose(high[12:15], cfg.task.workspace_max_m, rtol=1e-6)
    np.testing.assert_allclose(high[15:], [math.pi, math.pi / 2, math.pi], rtol=1e-6)
    given = min_max(state_min=tuple(range(18)), state_max=tuple(range(1, 19)))
    low, high = state_bounds(given)
    assert low.tolist() == list(range(18)) and high.tolist() == list(range(1, 19))
    gripper_only = min_max(state_features=('ee_xyz', 'gripper_pos'))
    np.testing.assert_allclose(state_bounds(gripper_only)[1][3], kin.gripper_limits[1])


def test_the_policy_normalises_the_state_where_it_encodes_it_for_actor_and_learner():
    cfg = min_max()
    low, high = state_bounds(cfg)
    agent, actor = build_agent(cfg), build_policy(cfg)
    assert torch.equal(agent.encoder.state_norm.low, torch.as_tensor(low))
    fmaps = agent.backbone(torch.zeros(1, 3, *HW, dtype=torch.uint8))
    state = torch.as_tensor((low + high)[None] / 2)  # the middle of the box
    by_hand = agent.encoder.state_proj(torch.zeros(1, 18))
    torch.testing.assert_close(agent.encoder(fmaps, state)[:, -by_hand.shape[1]:], by_hand)
    # past the bounds the encoder sees the bounds (clipped)
    torch.testing.assert_close(agent.encoder(fmaps, torch.as_tensor(high * 50)[None]),
                               agent.encoder(fmaps, torch.as_tensor(high)[None]))
    # the actor's policy (traced acting graph) and the learner's act alike on raw states
    image = np.zeros((3, *HW), np.uint8)
    raw = (high * 3).astype(np.float32)
    np.testing.assert_array_equal(agent.act(image, raw, True), actor.act(image, raw, True))
    # the streamed weights carry the bounds, and an actor already acting (its graph traced)
    # maps the state with the learner's from then on; none keeps the state dict of before
    weights = agent.policy_state()
    assert {'encoder.state_norm.low', 'encoder.state_norm.high'} <= set(weights)
    weights['encoder.state_norm.high'] = weights['encoder.state_norm.high'] * 4
    agent.policy.load_policy_state(weights)
    actor.load_policy_state(weights)
    np.testing.assert_array_equal(agent.act(image, raw, True), actor.act(image, raw, True))
    assert not np.array_equal(actor.act(image, raw, True), build_policy(cfg).act(image, raw, True))
    assert not any('state_norm' in k for k in build_agent(tiny_config()).state_dict())


def test_a_checkpoint_carries_the_normalisation(tmp_path):
    """The option and explicit bounds are in the checkpoint's config; the bounds it used are
    in its weights, so later changes to the URDF or workspace do not move them."""
    cfg = min_max(state_velocity_bound_rad_s=1.5)
    agent = build_agent(cfg)
    buffer, rng = filled_buffer()
    agent.update(lambda: buffer.sample(16, rng))
    path = save_checkpoint(tmp_path, agent, cfg, buffer, None)
    saved = json.loads((path / 'pretrained_model' / 'config.json').read_text())
    assert saved['train_config']['observation']['state_normalisation'] == 'min_max'
    loaded, loaded_cfg = load_pretrained(path)
    assert loaded_cfg == cfg
    for name in ('low', 'high'):
        assert torch.equal(getattr(loaded.encoder.state_norm, name),
                           getattr(agent.encoder.state_norm, name))
    image = rng.integers(0, 256, (3, *HW), dtype=np.uint8)
    state = (rng.normal(size=18) * 5).astype(np.float32)
    np.testing.assert_array_equal(agent.act(image, state, True), loaded.act(image, state, True))
    assert torch.equal(resume(path)[0].encoder.state_norm.high, agent.encoder.state_norm.high)


def test_a_checkpoint_from_before_the_option_loads_and_acts_as_it_did(tmp_path):
    cfg = tiny_config()
    agent = build_agent(cfg)
    path = save_checkpoint(tmp_path, agent, cfg)
    config_path = path / 'pretrained_model' / 'config.json'
    meta = json.loads(config_path.read_text())
    new_fields = {'state_normalisation', 'state_min', 'state_max', 'state_velocity_bound_rad_s'}
    meta['train_config']['observation'] = {
        k: v for k, v in meta['train_config']['observation'].items() if k not in new_fields}
    meta['train_config']['task'] = {
        k: v for k, v in meta['train_config']['task'].items() if not k.startswith('gripper_')
        and k != 'classifier_requires_gripper_closed'}
    config_path.write_text(json.dumps(meta))
    loaded, loaded_cfg = load_pretrained(path)
    assert loaded_cfg == cfg and loaded.encoder.state_norm is None
    image, state = np.zeros((3, *HW), np.uint8), np.full(18, 3.0, np.float32)
    np.testing.assert_array_equal(agent.act(image, state, True), loaded.act(image, state, True))


@pytest.mark.parametrize('observation,match', [
    ({'state_normalisation': 'mean_std'}, r"observation\.state_normalisation='mean_std'"),
    ({'state_normalisation': 'min_max', 'state_min': [0.0] * 17, 'state_max': [1.0] * 17},
     r'observation\.state_min=.*needs 18 values'),
    ({'state_normalisation': 'min_max', 'state_min': [0.0] * 18,
      'state_max': [1.0] * 17 + [float('nan')]}, r'observation\.state_max\[17\]=nan'),
    ({'state_normalisation': 'min_max', 'state_min': [0.0] * 18,
      'state_max': [1.0] * 3 + [0.0] + [1.0] * 14},
     r'observation\.state_min\[3\]=0\.0: must be < observation\.state_max\[3\]=0\.0'),
    ({'state_normalisation': 'min_max', 'state_min': [0.0] * 18},
     r'observation\.state_min=.*needs observation\.state_min and state_max both'),
    ({'state_min': [0.0] * 18, 'state_max': [1.0] * 18},
     r"observation\.state_min=.*min_max only \(it is 'none'\)"),
    ({'state_velocity_bound_rad_s': 0}, r'observation\.state_velocity_bound_rad_s=0'),
])
def test_bad_normalisation_settings_name_the_field(observation, match):
    with pytest.raises(ConfigError, match=match):
        load_train_config(None, {'observation': observation})
