"""SAC + DrQ for image + state observations, RLPD by configuration (drqv2 / jaxrl style).

`update(sample)` draws `utd_ratio` batches: every batch updates the critics (and the discrete
grasp critic) with a Polyak target step; the last one also updates the actor and the temperature.
It returns a metrics dict and never logs. Losses return (loss, metrics).
A frozen backbone runs once per batch (obs and next_obs, augmented) under no_grad; the resulting
feature maps are shared by critics, actor and grasp critic.
"""
from __future__ import annotations

import copy
import hashlib
import warnings
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hilserl.config import SACConfig
from hilserl.augment import random_shift
from hilserl_policy.networks import (Backbone, CriticEnsemble, GraspCritic, ObservationEncoder,
                                     TanhGaussianActor)

Batch = Dict[str, np.ndarray]


def resolve_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device={name!r} requested but CUDA is not available')
    return device


class SAC(nn.Module):
    def __init__(self, cfg: SACConfig, image_shape, state_dim: int, action_dim: int,
                 discrete_gripper: bool = False, device: str = 'cpu', seed: int = 0,
                 weights_from_checkpoint: bool = False):
        """`weights_from_checkpoint`: a checkpoint's state is loaded right after (its frozen
        encoder included), so the pretrained encoder directory is not read."""
        super().__init__()
        self.cfg = cfg
        self.image_shape = tuple(image_shape)
        self.state_dim, self.action_dim = state_dim, action_dim
        self.discrete_gripper = discrete_gripper
        # the continuous part: all dims, or all but the gripper when a grasp critic picks it
        self.continuous_dim = action_dim - 1 if discrete_gripper else action_dim
        torch.manual_seed(seed)  # initial weights are reproducible from the seed
        channels, h, w = self.image_shape
        self.backbone = Backbone(cfg.encoder, (h, w), cfg.freeze_encoder,
                                 cfg.pretrained_encoder_path, weights_from_checkpoint)
        self.encoder = ObservationEncoder(self.backbone.fmap_shape, channels // 3, state_dim,
                                          cfg.latent_dim)
        emb = self.encoder.out_dim
        self.actor = TanhGaussianActor(emb, self.continuous_dim, cfg.hidden_dims,
                                       cfg.log_std_min, cfg.log_std_max)
        self.critic = CriticEnsemble(cfg.num_critics, emb, self.continuous_dim, cfg.hidden_dims,
                                     cfg.critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.grasp_critic = GraspCritic(emb, cfg.hidden_dims) if discrete_gripper else None
        self.grasp_target = (copy.deepcopy(self.grasp_critic).requires_grad_(False)
                             if discrete_gripper else None)
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(cfg.temperature_init))))
        self.target_entropy = (cfg.target_entropy if cfg.target_entropy is not None
                               else -self.continuous_dim / 2.0)
        self.device = resolve_device(device)
        self.to(self.device)
        critic_params = list(self.critic.parameters()) + list(self.encoder.parameters())
        if not cfg.freeze_encoder:
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
        self._acting_programs: Dict[tuple, nn.Module] = {}
        self.step = 0  # optimisation steps (one actor update each)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    # --- acting -------------------------------------------------------------------------------
    @torch.inference_mode()
    def act(self, image: np.ndarray, state: np.ndarray, deterministic: bool) -> np.ndarray:
        """One observation ((C, H, W) uint8, (D,) float32) -> action (A,) float32 in [-1, 1].

        Runs a traced graph of backbone -> encoder -> actor head (see `acting_program`): at
        batch 1 the per-module Python overhead is most of the cost. The squashing and sampling
        arithmetic runs in numpy on the few outputs (noise from torch's generator), for the
        same reason."""
        images = torch.as_tensor(image, device=self.device).unsqueeze(0)
        states = torch.as_tensor(state, dtype=torch.float32, device=self.device).unsqueeze(0)
        mean, log_std, grasp_q = (t[0].float().cpu().numpy()
                                  for t in self.acting_program(images, states)(images, states))
        raw = mean if deterministic else (
            mean + torch.randn(mean.shape).numpy() * np.exp(log_std))
        action = np.tanh(raw).astype(np.float32)
        if self.discrete_gripper:
            value = GraspCritic.to_value(torch.tensor(int(grasp_q.argmax()))).item()
            action = np.append(action, np.float32(value))
        return action

    def acting_program(self, images: torch.Tensor, states: torch.Tensor
                       ) -> Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, ...]]:
        """The acting graph for these input shapes, traced once: (images, states) -> (mean,
        log_std, grasp Q). The traced heads (and a trained backbone) share parameters and
        buffers with this module, so weights loaded in place (`load_policy_state`, an optimiser
        step) are used at once; a frozen backbone is also frozen into constants and rebuilt
        when its weights are replaced."""
        key = (tuple(images.shape), tuple(states.shape))
        program = self._acting_programs.get(key)
        if program is None:
            try:
                backbone, heads = self._trace_acting_program(images, states)
            except Exception as error:  # e.g. a torch without TorchScript: same maths, slower
                warnings.warn(f'acting graph not traced ({error}); acting module by module')
                backbone = self.backbone
                heads = _ActingHeads(self.encoder, self.actor, self.grasp_critic)
            program = lambda x, s: heads(backbone(x), s)  # noqa: E731
            self._acting_programs[key] = program
        return program

    def _trace_acting_program(self, images: torch.Tensor, states: torch.Tensor):
        modes = [(m, m.training) for m in self.modules()]
        self.eval()  # acting never uses dropout or batch statistics
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # torch 2.13 marks TorchScript deprecated; it is still the cheapest way to run
                # a small graph at batch 1 (torch.compile costs a long compile per weight set)
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                warnings.simplefilter('ignore', DeprecationWarning)
                backbone = torch.jit.trace(self.backbone, images, check_trace=False)
                if self.cfg.freeze_encoder:
                    backbone = torch.jit.freeze(backbone)
                heads = _ActingHeads(self.encoder, self.actor, self.grasp_critic)
                heads = torch.jit.trace(heads, (self.backbone(images), states), check_trace=False)
                return backbone, heads
        finally:
            for module, mode in modes:
                module.training = mode

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._acting_programs.clear()  # a frozen backbone's constants may be replaced
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

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

    # --- weights ------------------------------------------------------------------------------
    def policy_state(self) -> Dict[str, torch.Tensor]:
        """What an actor needs: encoder head, actor, grasp critic, and the backbone when it is
        trained (a frozen one is loaded by the actor from the same pretrained weights; see
        `backbone_digest`)."""
        parts = {'encoder': self.encoder, 'actor': self.actor}
        if self.grasp_critic is not None:
            parts['grasp_critic'] = self.grasp_critic
        if not self.cfg.freeze_encoder:
            parts['backbone'] = self.backbone
        return {f'{name}.{k}': v.detach().cpu().contiguous()
                for name, module in parts.items() for k, v in module.state_dict().items()}

    def load_policy_state(self, state: Dict[str, torch.Tensor]) -> None:
        modules = {'encoder': self.encoder, 'actor': self.actor, 'backbone': self.backbone,
                   'grasp_critic': self.grasp_critic}
        grouped: Dict[str, Dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            name, _, rest = key.partition('.')
            if name not in modules or modules[name] is None:
                raise KeyError(f'policy weights carry unknown part {name!r}')
            grouped.setdefault(name, {})[rest] = value
        for name, part in grouped.items():
            modules[name].load_state_dict(part)
        if 'backbone' in grouped:
            self._acting_programs.clear()

    def backbone_digest(self) -> str:
        if self.cfg.freeze_encoder and getattr(self, '_frozen_digest', None):
            return self._frozen_digest
        h = hashlib.sha256()
        for key, value in sorted(self.backbone.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()[:16]
        if self.cfg.freeze_encoder:
            self._frozen_digest = digest  # frozen weights never change: hash once
        return digest


class _ActingHeads(nn.Module):
    """Feature maps + state -> (mean, log_std, grasp Q): the traceable acting head."""

    def __init__(self, encoder: nn.Module, actor: TanhGaussianActor, grasp_critic):
        super().__init__()
        self.encoder, self.actor, self.grasp_critic = encoder, actor, grasp_critic

    def forward(self, fmaps: torch.Tensor, states: torch.Tensor):
        emb = self.encoder(fmaps, states)
        mean, log_std = self.actor.mean_log_std(emb)
        grasp_q = self.grasp_critic(emb) if self.grasp_critic is not None else mean[:, :0]
        return mean, log_std, grasp_q


@torch.no_grad()
def polyak_update(source: nn.Module, target: nn.Module, tau: float) -> None:
    for p, tp in zip(source.parameters(), target.parameters()):
        tp.lerp_(p, tau)
