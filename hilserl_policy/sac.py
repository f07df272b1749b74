"""SAC + DrQ for image + state observations, RLPD by configuration (drqv2 / jaxrl style): the
algorithm around a `Policy` (hilserl_policy/policy.py: backbone, encoder, actor head, grasp
critic), owning what only training needs: critics and their targets, the temperature, the
optimisers and `update()`.

`update(sample)` draws `utd_ratio` batches: every batch updates the critics (and the discrete
grasp critic) with a Polyak target step; the last one also updates the actor and the temperature.
It returns a metrics dict and never logs. Losses return (loss, metrics).
A frozen backbone runs once per batch (obs and next_obs, augmented) under no_grad; the resulting
feature maps are shared by critics, actor and grasp critic.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hilserl.configuration.config import AlgorithmConfig, PolicyConfig
from hilserl.learning.augment import random_shift
from hilserl_policy.networks import CriticEnsemble, GraspCritic
from hilserl_policy.policy import Policy, resolve_device  # noqa: F401 - resolve_device re-exported

Batch = Dict[str, np.ndarray]


class SAC(nn.Module):
    def __init__(self, policy_cfg: PolicyConfig, cfg: AlgorithmConfig, image_shape,
                 state_dim: int, action_dim: int, discrete_gripper: bool = False,
                 device: str = 'cpu', seed: int = 0, weights_from_checkpoint: bool = False,
                 state_bounds=None, cameras: int = 1):
        """`cfg`: the algorithm's settings; the rest are the arguments of the `Policy` it
        trains (built first, from the same seed, so an actor's `build_policy` starts from the
        same weights)."""
        super().__init__()
        self.cfg = cfg
        self.policy = Policy(policy_cfg, image_shape, state_dim, action_dim, discrete_gripper,
                             'cpu', seed, weights_from_checkpoint, state_bounds, cameras)
        self.image_shape = self.policy.image_shape
        self.state_dim, self.action_dim = state_dim, action_dim
        self.discrete_gripper = discrete_gripper
        self.continuous_dim = self.policy.continuous_dim
        emb = self.encoder.out_dim
        self.critic = CriticEnsemble(cfg.num_critics, emb, self.continuous_dim,
                                     policy_cfg.hidden_dims, cfg.critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.grasp_target = (copy.deepcopy(self.grasp_critic).requires_grad_(False)
                             if discrete_gripper else None)
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(cfg.temperature_init))))
        self.target_entropy = (cfg.target_entropy if cfg.target_entropy is not None
                               else -self.continuous_dim / 2.0)
        self.device = self.policy.device = resolve_device(device)
        self.to(self.device)
        critic_params = list(self.critic.parameters()) + list(self.encoder.parameters())
        if not policy_cfg.freeze_encoder:
            critic_params += list(self.backbone.net.parameters())
        self.critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.temperature_opt = torch.optim.Adam([self.log_alpha], lr=cfg.temperature_lr)
        self.grasp_opt = (torch.optim.Adam(self.grasp_critic.parameters(), lr=cfg.critic_lr)
                          if discrete_gripper else None)
        self.generator = torch.Generator().manual_seed(seed)
        # the feature cache is filled from another thread than the update: its own generator
        self.cache_generator = torch.Generator().manual_seed(seed + 1)
        self.rng = np.random.default_rng(seed)
        self.step = 0  # optimisation steps (one actor update each)

    # the policy's parts, which the losses train
    @property
    def backbone(self):
        return self.policy.backbone

    @property
    def encoder(self):
        return self.policy.encoder

    @property
    def actor(self):
        return self.policy.actor

    @property
    def grasp_critic(self):
        return self.policy.grasp_critic

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def act(self, image: np.ndarray, state: np.ndarray, deterministic: bool) -> np.ndarray:
        return self.policy.act(image, state, deterministic)

    def policy_state(self) -> Dict[str, torch.Tensor]:
        return self.policy.policy_state()

    def load_policy_state(self, state: Dict[str, torch.Tensor]) -> None:
        self.policy.load_policy_state(state)

    def backbone_digest(self) -> str:
        return self.policy.backbone_digest()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.policy._acting_programs.clear()  # a frozen backbone's constants may be replaced
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def algorithm_state(self) -> Dict[str, torch.Tensor]:
        """What training adds to the policy's weights: critics, targets, temperature."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith('policy.')}

    # --- losses -------------------------------------------------------------------------------
    def critic_loss(self, emb, next_emb, batch) -> Tuple[torch.Tensor, Dict[str, float]]:
        cfg = self.cfg
        reward, terminated = batch['reward'], batch['terminated']
        action = batch['action'][:, :self.continuous_dim]
        n = reward.shape[0]
        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(next_emb)
            target_q = self.critic_target(next_emb, next_action)
            if cfg.num_subsample_critics is not None:
                pick = torch.randperm(cfg.num_critics, generator=self.generator)
                target_q = target_q[pick[:cfg.num_subsample_critics].to(self.device)]
            next_v = target_q.min(dim=0).values
            if cfg.use_backup_entropy:
                next_v = next_v - self.alpha * next_log_prob
            # `terminated` stops bootstrapping; `truncated` (time limit) does not
            td_target = reward + cfg.discount * (1.0 - terminated) * next_v
        assert td_target.shape == (n,), td_target.shape
        q = self.critic(emb, action)
        assert q.shape == (cfg.num_critics, n), q.shape
        loss = F.mse_loss(q, td_target.unsqueeze(0).expand_as(q), reduction='none').mean(1).sum()
        return loss, {'critic_loss': loss.item(), 'q_mean': q.mean().item(),
                      'td_target_mean': td_target.mean().item()}

    def grasp_critic_loss(self, emb, next_emb, batch) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Double DQN over {close, stay, open} on the (detached) shared embedding."""
        reward, terminated = batch['reward'], batch['terminated']
        index = GraspCritic.to_index(batch['action'][:, -1])
        with torch.no_grad():
            best_next = self.grasp_critic(next_emb).argmax(-1, keepdim=True)
            next_q = self.grasp_target(next_emb).gather(-1, best_next).squeeze(-1)
            target = reward + self.cfg.discount * (1.0 - terminated) * next_q
        assert target.shape == reward.shape, target.shape
        q = self.grasp_critic(emb).gather(-1, index.unsqueeze(-1)).squeeze(-1)
        loss = F.mse_loss(q, target)
        return loss, {'grasp_critic_loss': loss.item()}

    def actor_loss(self, emb, batch=None) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, float]]:
        action, log_prob = self.actor.sample(emb)
        q = self.critic(emb, action).min(dim=0).values
        loss = (self.alpha.detach() * log_prob - q).mean()
        metrics = {'entropy': -log_prob.mean().item()}
        if self.cfg.bc_weight > 0 and batch is not None:
            human = batch['intervention'] > 0.5
            if bool(human.any()):
                mean_action = torch.tanh(self.actor.mean_log_std(emb[human])[0])
                bc = F.mse_loss(mean_action, batch['action'][human, :self.continuous_dim])
                loss = loss + self.cfg.bc_weight * q.abs().mean().detach() * bc
                metrics['bc_loss'] = bc.item()
        metrics['actor_loss'] = loss.item()
        return loss, log_prob.detach(), metrics

    def temperature_loss(self, log_prob) -> Tuple[torch.Tensor, Dict[str, float]]:
        loss = -(self.alpha * (log_prob + self.target_entropy)).mean()
        return loss, {'temperature_loss': loss.item(), 'alpha': self.alpha.item()}

    # --- update -------------------------------------------------------------------------------
    def to_tensors(self, batch: Batch) -> Dict[str, torch.Tensor]:
        out = {}
        for key, value in batch.items():
            tensor = torch.as_tensor(value, device=self.device)
            if key not in ('image', 'next_image', 'features', 'next_features'):
                tensor = tensor.float()
            out[key] = tensor
        return out

    @torch.inference_mode()
    def featurize(self, images: np.ndarray) -> np.ndarray:
        """Feature cache: uint8 (N, C, H, W) -> float16 (N, K, frames, c, h, w), the frozen
        backbone's features of K random shifts of each image (K = feature_cache_shifts; one
        unshifted view when augmentation is off)."""
        k = self.cfg.feature_cache_shifts
        x = torch.as_tensor(images, device=self.device)
        n = x.shape[0]
        x = x.repeat_interleave(k, dim=0)
        if self.cfg.use_augmentation:
            x = random_shift(x, self.cfg.augmentation_pad, self.cache_generator)
        fmaps = self.backbone(x)
        return fmaps.reshape(n, k, *fmaps.shape[1:]).to(torch.float16).cpu().numpy()

    def _pick_cached(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, ...) cached features -> (B, ...): one random shift per sample."""
        pick = torch.randint(0, features.shape[1], (features.shape[0],),
                             generator=self.generator).to(self.device)
        return features[torch.arange(features.shape[0], device=self.device), pick].float()

    def encode_batch(self, batch: Dict[str, torch.Tensor], augment: bool = True
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Augmented obs and next_obs (independent shifts) -> backbone feature maps."""
        if 'features' in batch:  # feature cache: the backbone already ran at insertion
            return self._pick_cached(batch['features']), self._pick_cached(batch['next_features'])
        images, next_images = batch['image'], batch['next_image']
        if augment and self.cfg.use_augmentation:
            pad = self.cfg.augmentation_pad
            images = random_shift(images, pad, self.generator)
            next_images = random_shift(next_images, pad, self.generator)
        fmaps = self.backbone(images)
        with torch.no_grad():  # the TD target carries no gradient
            next_fmaps = self.backbone(next_images)
        return fmaps, next_fmaps

    def _optimise(self, optimizer, loss, params):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(params, self.cfg.grad_clip_norm)
        optimizer.step()
        return float(norm)

    def update(self, sample: Callable[[], Batch],
               should_stop: Optional[Callable[[], bool]] = None) -> Dict[str, float]:
        """One optimisation step: utd_ratio critic updates, then actor and temperature.
        `should_stop` is asked between critic updates (a shutdown must not wait for a whole
        step): when it says so the step ends there, uncounted, with metrics['interrupted']."""
        metrics: Dict[str, float] = {}
        for i in range(self.cfg.utd_ratio):
            if i and should_stop is not None and should_stop():
                return {**metrics, 'interrupted': 1.0, 'step': self.step}
            batch = self.to_tensors(sample())
            fmaps, next_fmaps = self.encode_batch(batch)
            emb = self.encoder(fmaps, batch['state'])
            with torch.no_grad():
                next_emb = self.encoder(next_fmaps, batch['next_state'])
            loss, m = self.critic_loss(emb, next_emb, batch)
            m['critic_grad_norm'] = self._optimise(self.critic_opt, loss,
                                                   self.critic_opt.param_groups[0]['params'])
            if self.discrete_gripper:
                g_loss, gm = self.grasp_critic_loss(emb.detach(), next_emb, batch)
                self._optimise(self.grasp_opt, g_loss, list(self.grasp_critic.parameters()))
                m.update(gm)
                polyak_update(self.grasp_critic, self.grasp_target, self.cfg.tau)
            polyak_update(self.critic, self.critic_target, self.cfg.tau)
            metrics.update(m)
        # actor and temperature on the last batch's (detached) embedding
        emb = emb.detach()
        loss, log_prob, m = self.actor_loss(emb, batch)
        m['actor_grad_norm'] = self._optimise(self.actor_opt, loss, list(self.actor.parameters()))
        metrics.update(m)
        t_loss, tm = self.temperature_loss(log_prob)
        self._optimise(self.temperature_opt, t_loss, [self.log_alpha])
        metrics.update(tm)
        metrics['reward_mean'] = batch['reward'].mean().item()
        self.step += 1
        metrics['step'] = self.step
        return metrics


@torch.no_grad()
def polyak_update(source: nn.Module, target: nn.Module, tau: float) -> None:
    for p, tp in zip(source.parameters(), target.parameters()):
        tp.lerp_(p, tau)
