"""The peers' task mechanics (issue #26 item 7), without ROS: the grasp penalty on
state-changing gripper commands, min-max state normalisation inside the policy, and the
detector's success gated on a closed gripper."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hilserl.configuration.config import (ConfigError, ObservationConfig, TaskConfig,
                                          TrainConfig, load_train_config)
from hilserl.data.transition import decode_transition, encode_transition
from hilserl.learning.task import GripperCommands, RewardTracker
from hilserl.robot.kinematics import SO101Kinematics
from hilserl.robot.observation import state_bounds
from hilserl_policy.checkpoint import build_agent, load_pretrained, resume, save_checkpoint
from hilserl_policy.episode import EpisodeRunner
from hilserl_policy.networks import MinMaxStateNorm
from hilserl_policy.policy import build_policy
from hilserl_policy.replay_buffer import ReplayBuffer
from test_sac import HW, filled_buffer, tiny_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'config'
STEP = 0.05  # TaskConfig's step_penalty


# --- 1. gripper penalty ---------------------------------------------------------------------

def test_a_command_changes_the_gripper_state_only_when_it_reverses_the_last_one():
    gripper = GripperCommands(dead_band=0.5, start_closed=False)
    actions = [0.3, 1.0, -0.5, -0.6, -1.0, 0.0, 0.49, 0.51, 0.9, -0.2, -0.7]
    changes = [gripper.update(a) for a in actions]
    # open at the start: opening or staying (|a| <= 0.5) changes nothing, the first closing
    # does, repeating it does not; reopening does, and closing again
    assert changes == [False, False, False, True, False, False, False, True, False, False, True]
    assert gripper.changes == 3 and gripper.closed
    gripper.reset()
    assert gripper.changes == 0 and not gripper.closed
    closed = GripperCommands(dead_band=0.0, start_closed=True)
    assert [closed.update(a) for a in (-1.0, 0.0, 0.01, 0.02, -0.01)] == \
        [False, False, True, False, True]


def test_the_penalty_is_in_the_step_reward_and_the_episode_return():
    task = TaskConfig(gripper_penalty=0.02, episode_time_s=1.0)
    tracker = RewardTracker(task)
    rewards = [tracker.step(False, gripper_action=a)[0] for a in (0.0, -1.0, -1.0, 1.0)]
    assert rewards == pytest.approx([-STEP, -STEP - 0.02, -STEP, -STEP - 0.02])
    assert tracker.gripper_changes == 2
    assert tracker.episode_return == pytest.approx(sum(rewards))
    # on a success frame as well: the reward is the success reward less the penalty
    assert tracker.step(True, gripper_action=-1.0)[0] == pytest.approx(10.0 - 0.02)
    tracker.reset()
    assert tracker.gripper_changes == 0
    assert tracker.step(False, gripper_action=1.0)[0] == -STEP  # open after the reset already
    # a reset that leaves the gripper closed: the first opening is the change
    closed_start = RewardTracker(TaskConfig(gripper_penalty=0.02, reset_gripper_rad=0.1))
    assert closed_start.step(False, gripper_action=1.0)[0] == pytest.approx(-STEP - 0.02)
    # without a gripper action (callers from before the penalty) nothing is charged
    assert RewardTracker(task).step(False) == (-STEP, False, False)


def runner_with(cfg, policy_gripper):
    actions = iter(policy_gripper)
    return EpisodeRunner(cfg, lambda image, state: np.array([0, 0, 0, next(actions)],
                                                            np.float32))


def obs(i, gripper_rad=0.7):
    state = np.full(18, 0.0, np.float32)
    state[5] = gripper_rad
    return np.full((3, 4, 4), i, np.uint8), state


def test_the_transition_carries_the_penalty_of_its_own_executed_action():
    """The executed action pays: the human's while intervening, not the policy's proposal;
    the stored reward carries it through the wire format into the learner's replay batch."""
    cfg = TrainConfig(task=TaskConfig(episode_time_s=0.5, gripper_penalty=0.02))
    runner = runner_with(cfg, [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    runner.start()
    results = []
    for i in range(6):
        human = np.array([0, 0, 0, 1.0], np.float32) if i == 1 else None
        results.append(runner.step(*obs(i), success=False, human_action=human,
                                   intervention=i == 1))
        if results[-1].ended:
            break
    # executed gripper: -1 (closes: change), +1 (the human reopens: change), +1, +1, +1
    rewards = [r.transition.reward for r in results if r.transition is not None]
    assert rewards == pytest.approx([-STEP - 0.02, -STEP - 0.02, -STEP, -STEP, -STEP])
    assert runner.stats.gripper_changes == 2
    assert runner.stats.episode_return == pytest.approx(sum(rewards))
    end = json.loads(results[-1].events[0])
    assert end['gripper_changes'] == 2 and 'open_gripper_successes' not in end  # gating off
    assert end['return'] == pytest.approx(sum(rewards))
    # without the penalty the events are as they were
    plain = runner_with(TrainConfig(), [1.0])
    assert 'gripper_changes' not in json.loads(plain.start())
    assert plain.stats.gripper_changes is None
    buffer = ReplayBuffer(8, (3, 4, 4), 18, 4)
    for r in results[1:]:
        buffer.add(decode_transition(encode_transition(r.transition))[0])
    batch = buffer.sample(64, np.random.default_rng(0))
    np.testing.assert_allclose(sorted(set(np.asarray(batch['reward']).tolist())),
                               [-STEP - 0.02, -STEP], rtol=1e-6)


def test_the_seed_configuration_charges_the_grasp_penalty_and_the_simulation_does_not():
    assert TrainConfig().task.gripper_penalty == 0.0  # runs and checkpoints from before it
    seed = load_train_config(CONFIG_DIR / 'train.yaml').task
    assert seed.gripper_penalty == 0.02 and seed.gripper_dead_band == 0.5
    assert seed.reset_gripper_rad > seed.gripper_closed_below_rad  # episodes start open
    for name in ('sim_learn_conv.yaml', 'sim_learn.yaml'):
        assert load_train_config(CONFIG_DIR / name).task.gripper_penalty == 0.0, name


@pytest.mark.parametrize('task,match', [
    ({'gripper_penalty': -0.02}, r'task\.gripper_penalty=-0\.02: must be >= 0'),
    ({'gripper_penalty': float('inf')}, r'task\.gripper_penalty=inf'),
    ({'gripper_dead_band': 1.0}, r'task\.gripper_dead_band=1\.0'),
    ({'gripper_closed_below_rad': float('nan')}, r'task\.gripper_closed_below_rad=nan'),
])
def test_bad_gripper_settings_name_the_field(task, match):
    with pytest.raises(ConfigError, match=match):
        load_train_config(None, {'task': task})


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


# --- 3. success gated on a closed gripper ----------------------------------------------------

def test_the_detector_counts_only_while_the_gripper_is_closed():
    task = TaskConfig(classifier_requires_gripper_closed=True, success_frames_to_end=2,
                      gripper_closed_below_rad=0.4)
    tracker = RewardTracker(task)
    assert tracker.step(True, gripper_rad=0.15) == (10.0, False, False)  # holding the cube
    assert tracker.step(True, gripper_rad=0.7) == (-STEP, False, False)  # open: not counted
    assert tracker.open_gripper_successes == 1
    assert tracker.step(True, gripper_rad=0.4) == (-STEP, False, False)  # the bound is open
    assert tracker.step(True, gripper_rad=0.2) == (10.0, False, False)   # the streak restarted
    assert tracker.step(True, gripper_rad=0.2) == (10.0, True, False)
    # the person's key is final, open gripper or not
    tracker.reset()
    assert tracker.step(False, key_success=True, gripper_rad=0.9) == (10.0, True, False)
    # without the option the gripper is not consulted
    assert RewardTracker(TaskConfig()).step(True, gripper_rad=1.5)[0] == 10.0
    with pytest.raises(ValueError, match='gripper position'):
        RewardTracker(task).step(True)


def test_the_actor_gates_on_the_gripper_joint_of_the_state_it_judges():
    cfg = TrainConfig(task=TaskConfig(classifier_requires_gripper_closed=True,
                                      episode_time_s=1.0))
    runner = runner_with(cfg, [0.0] * 10)
    runner.start()
    runner.step(*obs(0, gripper_rad=0.7), success=False, human_action=None, intervention=False)
    open_frame = runner.step(*obs(1, gripper_rad=0.7), success=True, human_action=None,
                             intervention=False)
    assert open_frame.reward == -STEP and not open_frame.ended
    closed = runner.step(*obs(2, gripper_rad=0.1), success=True, human_action=None,
                         intervention=False)
    assert closed.reward == 10.0 and closed.ended and closed.transition.terminated
    end = json.loads(closed.events[0])
    assert end['open_gripper_successes'] == 1 and end['outcome'] == 'success'
    assert 'gripper_changes' not in end  # no penalty configured


def test_gating_needs_the_gripper_in_the_state():
    assert ObservationConfig(state_features=('ee_xyz', 'gripper_pos')).gripper_index == 3
    assert ObservationConfig(state_features=('joint_vel', 'joint_pos')).gripper_index == 11
    with pytest.raises(ConfigError, match=r'task\.classifier_requires_gripper_closed=True: '
                                          r'needs the gripper position'):
        load_train_config(None, {'task': {'classifier_requires_gripper_closed': True},
                                 'observation': {'state_features': ['ee_xyz', 'ee_euler']}})
    cfg = load_train_config(None, {'task': {'classifier_requires_gripper_closed': True},
                                   'observation': {'state_features': ['ee_xyz', 'gripper_pos']}})
    assert cfg.observation.gripper_index == 3
