"""SAC core, drqv2/LeRobot-style unit tests on a tiny configuration (32x32 images)."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from hilserl.configuration.config import TrainConfig, ActionConfig, ImageConfig, with_fields
from hilserl.learning.augment import random_shift, replicate_pad
from hilserl_policy.checkpoint import (build_agent, latest_checkpoint, load_pretrained, resume,
                                       save_checkpoint)
from hilserl_policy.learner import Learner
from hilserl_policy.replay_buffer import ReplayBuffer, sample_mixed
from hilserl_policy.sac import polyak_update
from hilserl_policy.transport import decode_weights, encode_weights
from hilserl.data.transition import Transition, decode_transition, encode_transition

HW = (32, 32)
SMALL = dict(batch_size=16, utd_ratio=2, hidden_dims=(32, 32), latent_dim=16,
             encoder='small_conv', freeze_encoder=False, pretrained_encoder_path=None,
             learning_starts=4, online_buffer_capacity=64, offline_buffer_capacity=64,
             device='cpu')


def tiny_config(action=None, **fields):
    """A small configuration; `fields` of the policy, algorithm, replay and learner sections
    by name."""
    cfg = TrainConfig(image=ImageConfig(resize_hw_px=HW), **({'action': action} if action else {}))
    return with_fields(cfg, **{**SMALL, **fields})


def transition(rng, intervention=False, terminated=False, image=None, reward=0.0):
    image = rng.integers(0, 256, (3, *HW), dtype=np.uint8) if image is None else image
    return Transition(image, rng.normal(size=18).astype(np.float32),
                      rng.uniform(-1, 1, 4).astype(np.float32), reward,
                      rng.integers(0, 256, (3, *HW), dtype=np.uint8),
                      rng.normal(size=18).astype(np.float32), terminated, False, intervention)


def filled_buffer(n=40, seed=0):
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(64, (3, *HW), 18, 4)
    for i in range(n):
        buffer.add(transition(rng, terminated=(i % 10 == 9), reward=float(i % 10 == 9)))
    return buffer, rng


def make_agent(**sac):
    return build_agent(tiny_config(**sac))


def test_actions_are_in_bounds_with_the_right_shape():
    agent = make_agent()
    rng = np.random.default_rng(0)
    for deterministic in (True, False):
        for _ in range(20):
            a = agent.act(rng.integers(0, 256, (3, *HW), dtype=np.uint8),
                          rng.normal(size=18).astype(np.float32) * 10, deterministic)
            assert a.shape == (4,) and a.dtype == np.float32
            assert np.all(np.abs(a) <= 1.0)


def test_deterministic_action_is_repeatable_and_stochastic_is_not():
    agent = make_agent()
    img = np.zeros((3, *HW), np.uint8)
    s = np.zeros(18, np.float32)
    assert np.array_equal(agent.act(img, s, True), agent.act(img, s, True))
    assert not np.array_equal(agent.act(img, s, False), agent.act(img, s, False))


def test_update_gives_finite_metrics_and_changes_the_critics():
    agent = make_agent()
    buffer, rng = filled_buffer()
    before = [p.detach().clone() for p in agent.critic.parameters()]
    metrics = agent.update(lambda: buffer.sample(16, rng))
    for key in ('critic_loss', 'actor_loss', 'temperature_loss', 'alpha', 'q_mean', 'entropy'):
        assert np.isfinite(metrics[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.critic.parameters()))
    assert agent.step == 1


def test_target_update_is_polyak():
    agent = make_agent()
    target_before = [p.detach().clone() for p in agent.critic_target.parameters()]
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)
    polyak_update(agent.critic, agent.critic_target, 0.1)
    for old, new, online in zip(target_before, agent.critic_target.parameters(),
                                agent.critic.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)


def test_temperature_moves_toward_the_target_entropy():
    agent = make_agent(temperature_lr=0.05)
    emb = torch.zeros(64, agent.encoder.out_dim)
    # entropy above target (log_prob low) -> alpha decreases; below -> increases
    loss, _ = agent.temperature_loss(torch.full((64,), -agent.target_entropy - 5.0))
    alpha0 = agent.alpha.item()
    agent._optimise(agent.temperature_opt, loss, [agent.log_alpha])
    assert agent.alpha.item() < alpha0
    loss, _ = agent.temperature_loss(torch.full((64,), -agent.target_entropy + 5.0))
    alpha1 = agent.alpha.item()
    agent._optimise(agent.temperature_opt, loss, [agent.log_alpha])
    assert agent.alpha.item() > alpha1
    del emb


def constant_critics(ensemble, values):
    """Each member of a critic ensemble outputs its constant, whatever the input."""
    with torch.no_grad():
        ensemble.net[-1].weight.zero_()
        ensemble.net[-1].bias[:, 0, 0] = torch.tensor(values)


def constant_head(net, values):
    with torch.no_grad():
        net[-1].weight.zero_()
        net[-1].bias.copy_(torch.tensor(values))


def constant_grasp_agent():
    """Discrete gripper, discount 0.97; the online grasp critic values {close, stay, open} at
    0, 0, 1 (it picks open), the target at 9, 7, 3, whatever the input."""
    agent = build_agent(tiny_config(discount=0.97, action=ActionConfig(gripper_mode='discrete')))
    constant_head(agent.grasp_critic.net, [0.0, 0.0, 1.0])
    constant_head(agent.grasp_target.net, [9.0, 7.0, 3.0])
    return agent


@pytest.mark.parametrize('terminated, expected', [(1.0, 1.0), (0.0, 1.0 + 0.97 * 2.0)])
def test_td_target_is_reward_plus_discounted_min_critic_unless_terminated(terminated, expected):
    """Target critics at 5 and 2: r + gamma * min = 1 + 0.97 * 2 while the episode goes on
    (or was truncated), exactly r once terminated; max (5) or no mask give other numbers."""
    agent = make_agent(discount=0.97, use_backup_entropy=False)
    constant_critics(agent.critic_target, [5.0, 2.0])
    emb = torch.randn(8, agent.encoder.out_dim)
    batch = {'reward': torch.ones(8), 'terminated': torch.full((8,), terminated),
             'action': torch.zeros(8, 4)}
    _, metrics = agent.critic_loss(emb, emb, batch)
    assert metrics['td_target_mean'] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize('terminated, expected', [(1.0, 1.0), (0.0, 1.0 + 0.97 * 3.0)])
def test_grasp_td_target_bootstraps_the_target_at_the_online_argmax_unless_terminated(
        terminated, expected):
    """Double DQN: the online grasp critic picks `open` (index 2), the target values it at 3;
    the taken action (stay) is valued 0 online, so the loss is the target squared."""
    agent = constant_grasp_agent()
    emb = torch.randn(8, agent.encoder.out_dim)
    batch = {'reward': torch.ones(8), 'terminated': torch.full((8,), terminated),
             'action': torch.zeros(8, 4)}
    _, metrics = agent.grasp_critic_loss(emb, emb, batch)
    assert metrics['grasp_critic_loss'] == pytest.approx(expected ** 2, rel=1e-5)


def test_temperature_loss_is_exactly_minus_alpha_times_log_prob_plus_target():
    agent = make_agent(temperature_init=0.2, target_entropy=-1.5)
    log_prob = torch.tensor([0.5, -2.0, 1.0, 3.5])
    loss, metrics = agent.temperature_loss(log_prob)
    expected = -0.2 * float(np.mean([0.5 - 1.5, -2.0 - 1.5, 1.0 - 1.5, 3.5 - 1.5]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics == pytest.approx({'temperature_loss': expected, 'alpha': 0.2}, rel=1e-5)


def test_actor_loss_with_behaviour_cloning_on_the_human_samples_exactly():
    """loss = mean(alpha log pi - min Q) + bc_weight * mean|min Q| * MSE(tanh(mean), human action)
    over the intervention samples only; the same noise gives the same sample."""
    agent = make_agent(bc_weight=0.4, temperature_init=0.1)
    constant_critics(agent.critic, [3.0, -2.0])
    emb = torch.randn(6, agent.encoder.out_dim)
    batch = {'intervention': torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0]),
             'action': torch.rand(6, 4) * 2 - 1}
    torch.manual_seed(7)
    loss, log_prob, metrics = agent.actor_loss(emb, batch)
    torch.manual_seed(7)
    _, reference_log_prob = agent.actor.sample(emb)
    human = batch['intervention'] > 0.5
    mean_action = torch.tanh(agent.actor.mean_log_std(emb)[0][human])
    bc = float(((mean_action.detach() - batch['action'][human, :4]) ** 2).mean())
    sac_part = float((0.1 * reference_log_prob.detach() - (-2.0)).mean())
    assert metrics['bc_loss'] == pytest.approx(bc, rel=1e-5)
    assert loss.item() == pytest.approx(sac_part + 0.4 * 2.0 * bc, rel=1e-5)
    assert torch.allclose(log_prob, reference_log_prob)
    # nobody intervened: no behaviour cloning term, and no bc_loss metric
    torch.manual_seed(7)
    loss, _, metrics = agent.actor_loss(emb, {**batch, 'intervention': torch.zeros(6)})
    assert 'bc_loss' not in metrics and loss.item() == pytest.approx(sac_part, rel=1e-5)
    # bc_weight 0 is plain SAC: no behaviour cloning even with the human in the batch
    plain = make_agent(bc_weight=0.0)
    assert 'bc_loss' not in plain.actor_loss(emb, batch)[2]


def test_grasp_critic_loss_per_sample_with_varying_values():
    """Random (not constant) grasp critics: each sample's taken action is valued at its own
    index and bootstrapped at its own online argmax, so a shape slip that broadcasts one
    sample's value against another's changes the loss."""
    from hilserl_policy.networks import GraspCritic
    agent = build_agent(tiny_config(discount=0.9, action=ActionConfig(gripper_mode='discrete')))
    with torch.no_grad():
        for p in agent.grasp_target.parameters():  # the target differs from the online critic
            p.add_(torch.randn_like(p) * 0.5)
    emb, next_emb = torch.randn(6, agent.encoder.out_dim), torch.randn(6, agent.encoder.out_dim)
    batch = {'reward': torch.tensor([1.0, 0.0, 0.5, -1.0, 2.0, 0.0]),
             'terminated': torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
             'action': torch.zeros(6, 4)}
    batch['action'][:, -1] = torch.tensor([-1.0, 0.0, 1.0, 1.0, -1.0, 0.0])
    loss, metrics = agent.grasp_critic_loss(emb, next_emb, batch)
    with torch.no_grad():
        online, target = agent.grasp_critic(next_emb), agent.grasp_target(next_emb)
        taken = agent.grasp_critic(emb)
        expected = 0.0
        for i in range(6):
            best = int(online[i].argmax())
            y = float(batch['reward'][i]) + 0.9 * (1 - float(batch['terminated'][i])) * \
                float(target[i, best])
            index = int(GraspCritic.to_index(batch['action'][i:i + 1, -1])[0])
            expected += (float(taken[i, index]) - y) ** 2 / 6
    assert metrics['grasp_critic_loss'] == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_actor_loss_uses_the_pessimistic_critic():
    """Critics at 5 and 2: the actor maximises min Q = 2 (minus the entropy term)."""
    agent = make_agent()
    constant_critics(agent.critic, [5.0, 2.0])
    emb = torch.randn(8, agent.encoder.out_dim)
    loss, _, metrics = agent.actor_loss(emb)
    alpha = agent.alpha.item()
    assert loss.item() == pytest.approx(-alpha * metrics['entropy'] - 2.0, abs=1e-4)


def test_terminated_stops_bootstrapping_but_truncated_does_not():
    """A mixed batch: terminated rows get r; the others (running or truncated: the batch has no
    truncated field, a time limit bootstraps) r + gamma * V."""
    agent = make_agent(discount=0.97)
    constant_critics(agent.critic_target, [100.0, 100.0])
    emb = torch.randn(8, agent.encoder.out_dim)
    batch = {'reward': torch.ones(8), 'terminated': torch.tensor([1.0] * 4 + [0.0] * 4),
             'action': torch.zeros(8, 4)}
    _, m = agent.critic_loss(emb, emb, batch)
    assert m['td_target_mean'] == pytest.approx((1.0 + (1.0 + 0.97 * 100.0)) / 2, abs=1e-4)


def test_augmentation_keeps_shape_and_dtype_and_is_identity_at_pad_zero():
    x = torch.randint(0, 256, (5, 3, 16, 12), dtype=torch.uint8)
    assert torch.equal(random_shift(x, 0), x)
    y = random_shift(x, 4, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    centred = random_shift(x, 4, shifts=torch.full((5, 2), 4))
    assert torch.equal(centred, x)
    shifted = random_shift(x, 2, shifts=torch.tensor([[0, 2]] * 5))  # up 2 rows, same columns
    assert torch.equal(shifted[:, :, 2:], x[:, :, :-2])
    assert torch.equal(shifted[:, :, 0], x[:, :, 0])  # replicated edge
    assert torch.equal(replicate_pad(x, 3).float(),
                       torch.nn.functional.pad(x.float(), (3, 3, 3, 3), mode='replicate'))


def test_channels_last_batches_shift_to_the_same_pixels_and_stay_channels_last():
    x = torch.randint(0, 256, (6, 3, 16, 12), dtype=torch.uint8)
    x_last = x.contiguous(memory_format=torch.channels_last)
    shifts = torch.randint(0, 9, (6, 2), generator=torch.Generator().manual_seed(1))
    y, y_last = random_shift(x, 4, shifts=shifts), random_shift(x_last, 4, shifts=shifts)
    assert torch.equal(y, y_last)
    assert y_last.is_contiguous(memory_format=torch.channels_last) and y.is_contiguous()


def test_sampled_image_batches_are_channels_last_views_of_the_stored_images(tmp_path):
    online, rng = filled_buffer(20)
    offline = ReplayBuffer(64, (3, *HW), 18, 4, image_dir=tmp_path)
    for i in range(10):
        offline.add(transition(rng, terminated=i == 9))
    batch = sample_mixed(online, offline, 16, 0.5, np.random.default_rng(2))
    assert batch['image'].shape == (16, 3, *HW)
    assert torch.as_tensor(batch['image']).is_contiguous(memory_format=torch.channels_last)
    replayed = np.random.default_rng(2)  # the same draws, one buffer at a time
    expected = np.concatenate([online.sample(8, replayed)['image'],
                               offline.sample(8, replayed)['image']])
    np.testing.assert_array_equal(batch['image'], expected)


def test_allocator_setting_applies_on_glibc():
    import platform
    from hilserl.learning.allocator import retain_freed_memory
    assert retain_freed_memory() == (platform.libc_ver()[0] == 'glibc')


def test_checkpoint_round_trip_restores_identical_actions(tmp_path):
    cfg = tiny_config()
    agent = build_agent(cfg)
    buffer, rng = filled_buffer()
    agent.update(lambda: buffer.sample(16, rng))
    path = save_checkpoint(tmp_path, agent, cfg, buffer, None)
    assert path.name == '000001'
    assert (path / 'pretrained_model' / 'config.json').is_file()
    assert latest_checkpoint(tmp_path) == path
    loaded, loaded_cfg = load_pretrained(path)
    assert loaded_cfg == cfg
    img = rng.integers(0, 256, (3, *HW), dtype=np.uint8)
    state = rng.normal(size=18).astype(np.float32)
    np.testing.assert_array_equal(agent.act(img, state, True), loaded.act(img, state, True))
    resumed, _, online, offline, _ = resume(path)
    assert resumed.step == 1 and len(online) == len(buffer) and offline is None
    # optimiser state restored: the next update is identical on both
    batch = buffer.sample(16, np.random.default_rng(5))
    torch.manual_seed(0)  # the actor's sampling noise comes from the global generator
    m1 = agent.update(lambda: batch)
    torch.manual_seed(0)
    m2 = resumed.update(lambda: batch)
    assert m1['critic_loss'] == pytest.approx(m2['critic_loss'], rel=1e-5)


def test_pretrained_model_is_the_policy_and_training_state_the_algorithm(tmp_path):
    """What an actor loads is the policy's state dict (no critics); the critics, targets and
    temperature come back from training_state; a checkpoint written before the split (the whole
    agent in pretrained_model) still loads both ways."""
    from safetensors.torch import load_file, save_file
    from hilserl_policy.policy import Policy
    cfg = tiny_config()
    agent = build_agent(cfg)
    buffer, rng = filled_buffer()
    agent.update(lambda: buffer.sample(16, rng))
    path = save_checkpoint(tmp_path, agent, cfg, buffer, None)
    weights = load_file(str(path / 'pretrained_model' / 'model.safetensors'))
    assert set(weights) == set(agent.policy.state_dict())
    assert not any(k.startswith(('critic', 'log_alpha')) for k in weights)
    loaded, _ = load_pretrained(path)
    assert isinstance(loaded, Policy) and not hasattr(loaded, 'critic') and loaded.step == 1
    resumed = resume(path)[0]
    for key, value in agent.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    # the layout before the split: everything in pretrained_model, no algorithm.safetensors
    save_file({k.removeprefix('policy.'): v.contiguous() for k, v in agent.state_dict().items()},
              str(path / 'pretrained_model' / 'model.safetensors'))
    (path / 'training_state' / 'algorithm.safetensors').unlink()
    old = resume(path)[0]
    assert all(torch.equal(old.state_dict()[k], v) for k, v in agent.state_dict().items())
    assert all(torch.equal(load_pretrained(path)[0].state_dict()[k], v)
               for k, v in agent.policy.state_dict().items())


def test_the_actor_side_needs_no_algorithm_module():
    import subprocess
    import sys
    code = ('import sys, hilserl_policy.policy; '
            'print(sorted(m for m in sys.modules if m.startswith("hilserl_policy")))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout
    assert eval(out) == ['hilserl_policy', 'hilserl_policy.networks', 'hilserl_policy.policy']


def test_rlpd_sampling_is_50_50():
    online, rng = filled_buffer()
    offline = ReplayBuffer(64, (3, *HW), 18, 4)
    for _ in range(10):
        offline.add(transition(rng, intervention=True))
    batch = sample_mixed(online, offline, 256, 0.5, rng)
    assert len(batch['reward']) == 256
    assert int(batch['intervention'].sum()) == 128
    # with an empty offline buffer everything comes from the online one
    empty = ReplayBuffer(8, (3, *HW), 18, 4)
    assert not sample_mixed(online, empty, 32, 0.5, rng)['intervention'].any()


def test_interventions_land_in_both_buffers(tmp_path):
    learner = Learner(tiny_config(), tmp_path, resume_from_latest=False)
    rng = np.random.default_rng(0)
    learner.add(transition(rng, intervention=False))
    learner.add(transition(rng, intervention=True))
    assert len(learner.online) == 2 and len(learner.offline) == 1
    assert learner.offline.all()['intervention'].all()
    bad = dataclasses.replace(transition(rng), action=np.array([np.nan, 0, 0, 0], np.float32))
    assert not learner.add(bad) and learner.rejected == 1


@pytest.mark.parametrize('on_disk', [False, True])
def test_next_image_is_stored_once_inside_an_episode_and_kept_at_breaks(on_disk, tmp_path):
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(8, (3, *HW), 18, 4, image_dir=tmp_path if on_disk else None)
    assert buffer.images.on_disk == on_disk
    frames = [rng.integers(0, 256, (3, *HW), dtype=np.uint8) for _ in range(12)]
    expected_next = []
    for i in range(11):
        end = i in (4, 9)
        nxt = frames[i + 1] if not end else rng.integers(0, 256, (3, *HW), dtype=np.uint8)
        t = transition(rng, image=frames[i], terminated=end)
        buffer.add(dataclasses.replace(t, next_image=nxt))
        expected_next.append(nxt)
    data = buffer.all()
    assert len(data['reward']) == 8  # ring kept the newest 8
    for got, want in zip(data['next_image'], expected_next[-8:]):
        assert np.array_equal(got, want)
    assert buffer.next_stored.sum() <= 2


def test_buffer_save_load_round_trip(tmp_path):
    buffer, _ = filled_buffer(20)
    buffer.save(tmp_path / 'b.npz')
    loaded = ReplayBuffer.load(tmp_path / 'b.npz')
    on_disk = ReplayBuffer.load(tmp_path / 'b.npz', image_dir=tmp_path / 'images')
    assert on_disk.images.on_disk and not loaded.images.on_disk
    a, b, c = buffer.all(), loaded.all(), on_disk.all()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], c[key])
    # the image file is unnamed: nothing is left behind in the directory
    assert list((tmp_path / 'images').iterdir()) == []
    rng = np.random.default_rng(5)
    index = rng.integers(0, 20, 50)
    np.testing.assert_array_equal(on_disk.sample(50, np.random.default_rng(5))['image'],
                                  loaded.sample(50, np.random.default_rng(5))['image'])
    assert on_disk.images[index].shape == (50, 3, *HW)


def test_saved_buffer_stores_next_images_only_at_stream_breaks_and_reads_format_1(tmp_path):
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(32, (3, *HW), 18, 4)
    frames = [rng.integers(0, 256, (3, *HW), dtype=np.uint8) for _ in range(41)]
    for i in range(40):  # a stream of episodes of 10; the ring keeps the newest 32
        end = i % 10 == 9
        nxt = rng.integers(0, 256, (3, *HW), dtype=np.uint8) if end else frames[i + 1]
        buffer.add(dataclasses.replace(transition(rng, image=frames[i], terminated=end),
                                       next_image=nxt))
    buffer.save(tmp_path / 'b.npz')
    loaded = ReplayBuffer.load(tmp_path / 'b.npz')
    for key, value in buffer.all().items():
        np.testing.assert_array_equal(value, loaded.all()[key])
    with np.load(tmp_path / 'b.npz') as data:
        assert data['next_break_index'].tolist() == [1, 11, 21, 31]  # oldest kept: i = 8
        assert data['image'].shape == (32, 3, *HW)
    # the previous format (every next image stored) still loads
    np.savez(tmp_path / 'old.npz', capacity=32, total_added=40, **buffer.all())
    old = ReplayBuffer.load(tmp_path / 'old.npz')
    for key, value in buffer.all().items():
        np.testing.assert_array_equal(value, old.all()[key])
    with pytest.raises(FileNotFoundError):
        ReplayBuffer.load(tmp_path / 'missing.npz')


def test_bad_transitions_are_refused():
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(8, (3, *HW), 18, 4)
    with pytest.raises(ValueError, match='state'):
        buffer.add(dataclasses.replace(transition(rng), state=np.zeros(5, np.float32)))
    with pytest.raises(ValueError, match='leaves'):
        buffer.add(dataclasses.replace(transition(rng), action=np.full(4, 2.0, np.float32)))
    with pytest.raises(ValueError, match='image'):
        buffer.add(dataclasses.replace(transition(rng), image=np.zeros((3, 8, 8), np.uint8)))


def test_transition_and_weight_encodings_round_trip():
    rng = np.random.default_rng(0)
    t = transition(rng, intervention=True)
    decoded, header = decode_transition(encode_transition(t, episode=3, step=7))
    for field in dataclasses.fields(Transition):
        np.testing.assert_array_equal(getattr(decoded, field.name), getattr(t, field.name))
    assert header['episode'] == 3
    with pytest.raises(ValueError):
        decode_transition(b'garbage')
    with pytest.raises(ValueError):
        decode_transition(encode_transition(t)[:-10])
    agent = make_agent()
    state, meta = decode_weights(encode_weights(agent.policy_state(), {'step': 4}))
    assert meta['step'] == '4'
    other = make_agent()
    other.load_policy_state(state)
    img, s = np.zeros((3, *HW), np.uint8), np.zeros(18, np.float32)
    np.testing.assert_array_equal(agent.act(img, s, True), other.act(img, s, True))


def test_discrete_grasp_critic_picks_the_gripper():
    cfg = tiny_config(action=ActionConfig(gripper_mode='discrete'))
    agent = build_agent(cfg)
    assert agent.continuous_dim == 3
    buffer, rng = filled_buffer()
    metrics = agent.update(lambda: buffer.sample(16, rng))
    assert np.isfinite(metrics['grasp_critic_loss'])
    a = agent.act(np.zeros((3, *HW), np.uint8), np.zeros(18, np.float32), True)
    assert a.shape == (4,) and a[3] in (-1.0, 0.0, 1.0)


def test_subsampled_critic_targets_and_frozen_resnet_encoder_run(encoder_weights):
    agent = make_agent(num_critics=4, num_subsample_critics=2, encoder='resnet10',
                       freeze_encoder=True, pretrained_encoder_path=encoder_weights('resnet10'))
    buffer, rng = filled_buffer()
    frozen = [p.detach().clone() for p in agent.backbone.parameters()]
    agent.update(lambda: buffer.sample(16, rng))
    assert all(torch.equal(a, b) for a, b in zip(frozen, agent.backbone.parameters()))
    assert not any(k.startswith('backbone') for k in agent.policy_state())


@pytest.mark.parametrize('has_cuda', [False, True])
def test_device_auto_falls_back_to_cpu_and_bad_device_is_refused(monkeypatch, has_cuda):
    """Both ways on any machine: CUDA's availability is what torch reports, set here."""
    from hilserl_policy.sac import resolve_device
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: has_cuda)
    assert resolve_device('auto').type == ('cuda' if has_cuda else 'cpu')
    assert resolve_device('cpu').type == 'cpu'
    if has_cuda:
        assert resolve_device('cuda:0') == torch.device('cuda', 0)
    else:
        with pytest.raises(ValueError, match='CUDA is not available'):
            resolve_device('cuda')
    with pytest.raises(RuntimeError):
        resolve_device('gpu')  # not a torch device name


# --- fast path: feature cache (exactness guards) -------------------------------------------------

@pytest.fixture
def cached_agent(encoder_weights):
    """A frozen (pretrained) small conv encoder with a feature cache of 3 shifts."""
    return lambda **sac: make_agent(encoder='small_conv', freeze_encoder=True,
                                    feature_cache_shifts=3,
                                    pretrained_encoder_path=encoder_weights('small_conv'), **sac)


def test_cached_features_are_the_backbone_on_shifted_images(cached_agent):
    agent = cached_agent()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 3, *HW), dtype=np.uint8)
    cached = agent.featurize(image)[0]                      # (K, frames, c, h, w) float16
    assert cached.shape[0] == 3 and cached.dtype == np.float16
    pad = agent.cfg.augmentation_pad
    shifts = torch.tensor([(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)])
    every_shift = random_shift(torch.from_numpy(image).repeat(len(shifts), 1, 1, 1), pad,
                               shifts=shifts)
    with torch.no_grad():
        reference = agent.backbone(every_shift).numpy()
    for k in range(3):  # each cached view is the backbone's output for one of the 81 shifts
        errors = np.abs(reference - cached[k].astype(np.float32)).reshape(len(shifts), -1)
        assert errors.max(axis=1).min() < 2e-3 * max(1.0, np.abs(reference).max())


def test_cached_and_direct_paths_give_the_same_loss_and_gradients(cached_agent):
    agent = cached_agent(use_augmentation=False)
    buffer = ReplayBuffer(64, (3, *HW), 18, 4, featurizer=agent.featurize)
    rng = np.random.default_rng(1)
    for i in range(30):
        buffer.add(transition(rng, terminated=(i % 10 == 9)))
    assert 'image' not in buffer.sample(4, np.random.default_rng(2))  # pixels not copied
    batch = agent.to_tensors(buffer.sample(16, np.random.default_rng(2), images=True))
    direct = {k: v for k, v in batch.items() if k not in ('features', 'next_features')}
    results = []
    for b in (batch, direct):
        torch.manual_seed(0)
        fmaps, next_fmaps = agent.encode_batch(b)
        emb = agent.encoder(fmaps, b['state'])
        with torch.no_grad():
            next_emb = agent.encoder(next_fmaps, b['next_state'])
        loss, _ = agent.critic_loss(emb, next_emb, b)
        agent.critic_opt.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in agent.critic.parameters()]
        results.append((loss.item(), grads))
    # the only difference is the float16 storage of the cached features
    assert results[0][0] == pytest.approx(results[1][0], rel=2e-3)
    for g_cached, g_direct in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g_cached, g_direct, rtol=2e-2, atol=2e-3)


def test_feature_cache_follows_next_images_across_episode_breaks(cached_agent):
    agent = cached_agent(use_augmentation=False)
    buffer = ReplayBuffer(8, (3, *HW), 18, 4, featurizer=agent.featurize)
    rng = np.random.default_rng(3)
    for i in range(11):
        buffer.add(transition(rng, terminated=(i in (4, 9))))
    data = buffer.all()
    for next_image, next_features in zip(data['next_image'], data['next_features']):
        np.testing.assert_array_equal(agent.featurize(next_image[None])[0], next_features)


def test_feature_cache_needs_a_frozen_encoder():
    from hilserl.configuration.config import ConfigError
    with pytest.raises(ConfigError, match='freeze_encoder'):
        with_fields(TrainConfig(), freeze_encoder=False, pretrained_encoder_path=None,
                    feature_cache_shifts=2)


def test_queued_transitions_are_stored_as_one_batch_with_features_computed_once(
        tmp_path, encoder_weights):
    """Transitions that queued up are stored by one store_next call, the frozen encoder run once
    for all their images (an intervention's features shared by both buffers); an invalid one
    in the batch is dropped with its reason and the rest stored."""
    cfg = tiny_config(encoder='small_conv', freeze_encoder=True, feature_cache_shifts=2,
                      pretrained_encoder_path=encoder_weights('small_conv'))
    learner = Learner(cfg, tmp_path)
    calls = []
    featurize = learner.online.featurizer

    def counting(images):
        calls.append(len(images))
        return featurize(images)
    learner.online.featurizer = learner.offline.featurizer = counting
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 3, *HW), dtype=np.uint8)  # one stream: next = following
    sent = [dataclasses.replace(transition(rng, intervention=(i % 2 == 0)), image=images[i],
                                next_image=images[i + 1]) for i in range(6)]
    bad = transition(rng)
    bad.state[0] = np.nan
    for t in sent[:3] + [bad] + sent[3:]:
        learner.submit(t)
    assert learner.pending == 7
    results = learner.store_next(timeout_s=0.0)
    assert [ok for ok, _ in results] == [True] * 3 + [False] + [True] * 3
    assert 'state' in results[3][1] and learner.counts['dropped'] == 1
    # one batch for the six images; the offline buffer (interventions 0, 2, 4 only) also needs
    # the next image's features where its stream breaks (after 0 and after 2)
    assert calls == [6, 1, 1] and learner.pending == 0 and learner.counts['stored'] == 6
    assert learner.store_next(timeout_s=0.0) is None
    online, offline = learner.online.all(), learner.offline.all()
    np.testing.assert_array_equal(online['image'], images[:6])
    np.testing.assert_array_equal(offline['image'], images[0:6:2])
    # the interventions' cache entries are the same values in both buffers (computed once)
    np.testing.assert_array_equal(learner.offline.features[:3], learner.online.features[0:6:2])
    assert np.abs(learner.online.features[:6]).sum(axis=tuple(range(1, 6))).min() > 0


def test_learner_resumes_from_its_last_checkpoint(tmp_path):
    cfg = tiny_config(checkpoint_every_steps=2)
    learner = Learner(cfg, tmp_path)
    rng = np.random.default_rng(0)
    for i in range(12):
        learner.add(transition(rng, intervention=(i % 3 == 0), terminated=(i == 11)))
    assert learner.ready()
    for _ in range(3):
        learner.train_step()  # checkpoint at step 2, then one more step
    assert (tmp_path / 'metrics.csv').read_text().count('\n') == 4
    crashed_step = learner.agent.step
    resumed = Learner(cfg, tmp_path)  # after a crash: the last complete checkpoint
    assert resumed.resumed_from.name == '000002' and resumed.agent.step == 2 < crashed_step
    assert len(resumed.online) == 12 and len(resumed.offline) == 4
    resumed.train_step()
    assert resumed.agent.step == 3


def test_actor_log_prob_matches_torch_distributions():
    agent = make_agent()
    emb = torch.randn(64, agent.encoder.out_dim)
    torch.manual_seed(3)
    action, log_prob = agent.actor.sample(emb)
    dist = agent.actor.distribution(emb)
    raw = torch.atanh(action.clamp(-1 + 1e-6, 1 - 1e-6))
    expected = (dist.log_prob(raw) - torch.log(1 - action.pow(2) + 1e-12)).sum(-1)
    torch.testing.assert_close(log_prob, expected, rtol=1e-3, atol=1e-2)


def module_path_action(agent, image, state):
    """The straightforward acting path, module by module, in eval mode."""
    agent.eval()
    with torch.no_grad():
        emb = agent.encoder(agent.backbone(torch.as_tensor(image).unsqueeze(0)),
                            torch.as_tensor(state).unsqueeze(0))
        action = agent.actor.deterministic(emb)[0].numpy()
    agent.train()
    return action


@pytest.mark.parametrize('encoder,frozen', [('small_conv', False), ('resnet10', False),
                                            ('resnet10', True)])
def test_traced_acting_path_equals_the_module_path_after_weight_loads(encoder, frozen,
                                                                      encoder_weights):
    weights = encoder_weights(encoder) if frozen else None
    agent = make_agent(encoder=encoder, freeze_encoder=frozen, pretrained_encoder_path=weights)
    # the donor's frozen encoder differs too: a checkpoint load must replace the traced one
    donor_weights = encoder_weights(encoder, seed=1) if frozen else None
    donor = build_agent(dataclasses.replace(tiny_config(
        encoder=encoder, freeze_encoder=frozen, pretrained_encoder_path=donor_weights), seed=11))
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (3, *HW), dtype=np.uint8)
    state = rng.normal(size=18).astype(np.float32)
    first = agent.act(image, state, True)  # traces the acting program
    np.testing.assert_allclose(first, module_path_action(agent, image, state), atol=1e-5)
    # weights pushed by the learner are loaded in place: the traced program must follow them
    agent.load_policy_state(donor.policy_state())
    after = agent.act(image, state, True)
    np.testing.assert_allclose(after, module_path_action(agent, image, state), atol=1e-5)
    assert not np.allclose(first, after)
    # a whole checkpoint load (a frozen backbone included) is followed as well
    agent.load_state_dict(donor.state_dict())
    np.testing.assert_allclose(agent.act(image, state, True),
                               module_path_action(agent, image, state), atol=1e-5)


def test_a_previous_runs_encoder_loads_frozen_from_its_checkpoint(tmp_path):
    trained = make_agent(encoder='small_conv', freeze_encoder=False)
    with torch.no_grad():
        trained.backbone.net.stem.weight.add_(0.5)  # as if trained
    path = save_checkpoint(tmp_path, trained, tiny_config(), None, None)
    reused = make_agent(encoder='small_conv', freeze_encoder=True, feature_cache_shifts=2,
                        pretrained_encoder_path=str(path / 'pretrained_model'))
    assert 'SmallConv' in reused.backbone.load_report
    for (key, a), b in zip(trained.backbone.net.state_dict().items(),
                           reused.backbone.net.state_dict().values()):
        assert torch.equal(a, b), key
    assert not any(p.requires_grad for p in reused.backbone.net.parameters())


def test_loading_a_buffer_recomputes_its_feature_cache_in_batches(tmp_path):
    calls = []

    def featurizer(images):  # deterministic stand-in: the first 8 pixels as features
        calls.append(len(images))
        return images.reshape(len(images), 1, -1)[:, :, :8].astype(np.float16)

    rng = np.random.default_rng(3)
    buffer = ReplayBuffer(32, (3, *HW), 18, 4)
    frames = [rng.integers(0, 256, (3, *HW), dtype=np.uint8) for _ in range(21)]
    for i in range(20):
        end = i % 7 == 6
        nxt = rng.integers(0, 256, (3, *HW), dtype=np.uint8) if end else frames[i + 1]
        buffer.add(dataclasses.replace(transition(rng, image=frames[i], terminated=end),
                                       next_image=nxt))
    buffer.save(tmp_path / 'b.npz')
    loaded = ReplayBuffer.load(tmp_path / 'b.npz', featurizer=featurizer)
    assert max(calls) > 1  # batched, not one image per call
    batch = loaded.sample(64, np.random.default_rng(0), images=True)
    np.testing.assert_array_equal(batch['features'], featurizer(batch['image']))
    np.testing.assert_array_equal(batch['next_features'], featurizer(batch['next_image']))


def test_bc_term_pulls_the_policy_toward_human_actions_only_when_weighted():
    target = np.array([0.6, -0.6, 0.6, -0.6], np.float32)
    rng = np.random.default_rng(4)
    buffer = ReplayBuffer(64, (3, *HW), 18, 4)
    for i in range(40):
        t = transition(rng, intervention=True, terminated=i % 10 == 9)
        buffer.add(dataclasses.replace(t, action=target))
    image = np.zeros((3, *HW), np.uint8)
    state = np.zeros(18, np.float32)
    errors = {}
    for weight in (0.0, 5.0):
        agent = make_agent(bc_weight=weight, actor_lr=3e-3)
        before = np.abs(agent.act(image, state, True) - target).mean()
        sample_rng = np.random.default_rng(0)
        for _ in range(30):
            metrics = agent.update(lambda: buffer.sample(16, sample_rng))
        assert ('bc_loss' in metrics) == (weight > 0)
        errors[weight] = (before, np.abs(agent.act(image, state, True) - target).mean())
    assert errors[5.0][1] < 0.5 * errors[5.0][0]
    assert errors[5.0][1] < errors[0.0][1]


def test_update_stops_between_critic_updates_when_asked():
    """A shutdown must not wait for a whole optimisation step (utd_ratio critic updates)."""
    agent = make_agent(utd_ratio=5)
    buffer, rng = filled_buffer()
    calls = []

    def sample():
        calls.append(1)
        return buffer.sample(16, rng)

    metrics = agent.update(sample, should_stop=lambda: len(calls) >= 2)
    assert metrics['interrupted'] == 1.0 and len(calls) == 2 and agent.step == 0
    assert 'actor_loss' not in metrics
    metrics = agent.update(sample, should_stop=lambda: False)
    assert agent.step == 1 and len(calls) == 7 and 'interrupted' not in metrics


def test_learner_and_actor_hold_the_same_frozen_resnet10(tmp_path, encoder_weights):
    """The actor builds its frozen encoder from the same pretrained weights as the learner (the
    weights it receives leave it out): same digest, the same action from its traced graph as
    from the learner's cached features, and a checkpoint restores the same encoder without
    reading the weights directory."""
    import shutil
    weights = encoder_weights('resnet10')
    cfg = tiny_config(encoder='resnet10', freeze_encoder=True, pretrained_encoder_path=weights,
                      feature_cache_shifts=1, use_augmentation=False)
    learner, actor = build_agent(cfg), build_agent(dataclasses.replace(cfg, seed=4))
    assert learner.backbone_digest() == actor.backbone_digest()
    actor.load_policy_state(learner.policy_state())  # the learner's weight push
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, *HW), dtype=np.uint8)
    state = rng.normal(size=18).astype(np.float32)
    acted = actor.act(image, state, True)  # traced, frozen backbone
    with torch.no_grad():
        cached = torch.from_numpy(learner.featurize(image[None])[:, 0].astype(np.float32))
        emb = learner.encoder(cached, torch.from_numpy(state)[None])
        learned = learner.actor.deterministic(emb)[0].numpy()
    np.testing.assert_allclose(acted, learned, atol=2e-3)  # float16 cache storage
    other = build_agent(tiny_config(encoder='resnet10', freeze_encoder=True,
                                    pretrained_encoder_path=encoder_weights('resnet10', seed=1)))
    assert other.backbone_digest() != learner.backbone_digest()
    path = save_checkpoint(tmp_path, learner, cfg)
    moved = tmp_path / 'elsewhere'
    shutil.move(weights, moved)  # the checkpoint alone is enough
    try:
        loaded, loaded_cfg = load_pretrained(path)
    finally:
        shutil.move(moved, weights)
    assert loaded_cfg == cfg and loaded.backbone_digest() == learner.backbone_digest()


# --- exact behaviour the mutation run (`make mutate`) found untested ------------------------

def test_subsampled_td_target_uses_the_min_of_a_random_subset_of_target_critics():
    """REDQ-style: num_subsample_critics=1 of critics at 5 and 2 bootstraps from one of them,
    picked at random per batch (so both values occur), never always the min of all."""
    agent = make_agent(discount=0.97, use_backup_entropy=False, num_subsample_critics=1)
    constant_critics(agent.critic_target, [5.0, 2.0])
    emb = torch.randn(8, agent.encoder.out_dim)
    batch = {'reward': torch.ones(8), 'terminated': torch.zeros(8), 'action': torch.zeros(8, 4)}
    targets = {round(agent.critic_loss(emb, emb, batch)[1]['td_target_mean'], 4)
               for _ in range(20)}
    assert targets == {round(1.0 + 0.97 * 5.0, 4), round(1.0 + 0.97 * 2.0, 4)}


def test_backup_entropy_subtracts_alpha_times_the_next_log_prob(monkeypatch):
    """use_backup_entropy: V(s') = min Q(s', a') - alpha * log pi(a'|s'); with log pi fixed at
    -1.5 and critics at 5 and 2 the target is r + gamma * (2 + 1.5 alpha)."""
    agent = make_agent(discount=0.97, use_backup_entropy=True, temperature_init=0.2)
    constant_critics(agent.critic_target, [5.0, 2.0])
    monkeypatch.setattr(agent.actor, 'sample',
                        lambda emb: (torch.zeros(len(emb), 4), torch.full((len(emb),), -1.5)))
    emb = torch.randn(8, agent.encoder.out_dim)
    batch = {'reward': torch.ones(8), 'terminated': torch.zeros(8), 'action': torch.zeros(8, 4)}
    _, metrics = agent.critic_loss(emb, emb, batch)
    assert agent.alpha.item() == pytest.approx(0.2)
    assert metrics['td_target_mean'] == pytest.approx(1.0 + 0.97 * (2.0 + 1.5 * 0.2), abs=1e-5)


def test_grasp_critic_is_trained_on_the_gripper_command_of_the_taken_action():
    """The taken grasp action is the last action dimension (+1: open, index 2, valued 1 online),
    not another dimension (0 there: stay, valued 0): loss (1 + 0.97 * 3 - 1)^2."""
    agent = constant_grasp_agent()
    emb = torch.randn(8, agent.encoder.out_dim)
    action = torch.zeros(8, 4)
    action[:, -1] = 1.0
    batch = {'reward': torch.ones(8), 'terminated': torch.zeros(8), 'action': action}
    _, metrics = agent.grasp_critic_loss(emb, emb, batch)
    assert metrics['grasp_critic_loss'] == pytest.approx((0.97 * 3.0) ** 2, rel=1e-5)


def _episode_transitions(rng, steps):
    """An episode's transitions: each step's image is the previous step's next image."""
    images = [rng.integers(0, 256, (3, *HW), dtype=np.uint8) for _ in range(steps + 1)]
    return [dataclasses.replace(transition(rng), image=images[i], next_image=images[i + 1])
            for i in range(steps)]


def test_each_image_goes_on_the_wire_once_and_streams_decode_exactly():
    from hilserl.data.transition import MissingPreviousImage, TransitionDecoder, TransitionEncoder
    rng = np.random.default_rng(4)
    encoder, decoder = TransitionEncoder(), TransitionDecoder()
    episodes = {0: _episode_transitions(rng, 4), 1: _episode_transitions(rng, 3)}
    sizes = []
    for episode, steps in episodes.items():
        for step, t in enumerate(steps, start=1):
            data = encoder.encode(t, episode, step)
            sizes.append(len(data))
            decoded, header = decoder.decode(data)
            for field in dataclasses.fields(Transition):
                np.testing.assert_array_equal(getattr(decoded, field.name),
                                              getattr(t, field.name))
            # an episode's first step carries both images, the others the next one only
            assert ('image' in header) == (step > 1), (episode, step)
    image_bytes = 3 * HW[0] * HW[1]
    assert sizes[0] - sizes[1] > image_bytes - 64  # one image less (header bytes aside)
    # a step whose image differs from the previous next image carries it
    t = episodes[1][-1]
    odd = dataclasses.replace(t, image=rng.integers(0, 256, (3, *HW), dtype=np.uint8))
    assert 'image' not in decoder.decode(encoder.encode(odd, 1, 4))[1]
    # a lost step: the next cannot be completed (and alone it never decodes), the one after can
    steps = _episode_transitions(rng, 3)
    sent = [encoder.encode(t, 2, i) for i, t in enumerate(steps, start=1)]
    decoder.decode(sent[0])
    with pytest.raises(MissingPreviousImage, match='step 3'):
        decoder.decode(sent[2])  # step 2 lost
    with pytest.raises(ValueError, match='did not arrive'):
        decode_transition(sent[1])
    fresh = TransitionDecoder()
    with pytest.raises(MissingPreviousImage):
        fresh.decode(sent[1])
    np.testing.assert_array_equal(fresh.decode(sent[2])[0].image, steps[2].image)


def test_onnxruntime_acting_backend_acts_as_the_torch_graph(encoder_weights):
    """policy.acting_backend onnxruntime: the frozen ResNet-10 runs in ONNX Runtime, its
    features within the tolerance of torch's, so the actions equal the torch graph's to float
    rounding; it is the backbone that actually runs (not a silent fallback); a weight push keeps
    using it."""
    pytest.importorskip('onnxruntime')
    from hilserl_policy.policy import ONNX_FEATURE_TOLERANCE, build_policy
    weights = encoder_weights('resnet10')
    cfg = tiny_config(encoder='resnet10', freeze_encoder=True, pretrained_encoder_path=weights)
    torch_policy = build_policy(cfg)
    onnx_policy = build_policy(with_fields(cfg, acting_backend='onnxruntime'))
    rng = np.random.default_rng(3)
    for _ in range(3):
        image = rng.integers(0, 256, (3, *HW), dtype=np.uint8)
        state = rng.normal(size=18).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # a fallback would warn
            np.testing.assert_allclose(onnx_policy.act(image, state, True),
                                       torch_policy.act(image, state, True), atol=1e-4)
    images = torch.as_tensor(image).unsqueeze(0)
    program = onnx_policy.acting_program(images, torch.zeros(1, 18))
    backbone = program.__closure__[0].cell_contents  # the backbone the program runs
    assert not isinstance(backbone, torch.jit.ScriptModule)
    with torch.no_grad():
        reference = torch_policy.backbone(images)
    assert float((backbone(images) - reference).abs().max()) <= \
        ONNX_FEATURE_TOLERANCE * float(reference.abs().max())
    with torch.no_grad():  # a weight push (heads only): the ONNX backbone stays in use
        for p in torch_policy.actor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    onnx_policy.load_policy_state(torch_policy.policy_state())
    assert onnx_policy.acting_program(images, torch.zeros(1, 18)) is program
    np.testing.assert_allclose(onnx_policy.act(image, state, True),
                               torch_policy.act(image, state, True), atol=1e-4)
    with pytest.raises(ValueError, match='acting_backend'):
        with_fields(cfg, acting_backend='tensorrt')


def test_a_malformed_weights_payload_is_a_value_error_not_a_crash():
    """Anyone on the domain can publish policy_weights: the actor counts and rejects what is not
    a weights payload (ValueError), it never dies of it."""
    from hilserl_policy.transport import decode_weights
    for payload in (b'', b'garbage', b'\xff' * 20, (5).to_bytes(8, 'little') + b'{}xyz'):
        with pytest.raises(ValueError, match='not a policy weights payload'):
            decode_weights(payload)
