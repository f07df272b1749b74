"""SAC networks: observation encoder, tanh-Gaussian actor, batched critic ensemble.

The encoder is split in two so a frozen backbone can run once per batch (or never, with cached
features): `backbone(images) -> feature map` and `ObservationEncoder.embed(fmap, state)`.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import nn
from torch.distributions import Normal

from hilserl.learning.encoders import (ImageNormalizer, SpatialEmbedding, build_encoder,
                                       feature_shape, load_pretrained_encoder, network_input)
from hilserl.configuration.pretrained import frozen_without_weights_message


class Backbone(nn.Module):
    """uint8 images (B, 3 * n_frames, H, W) -> feature maps (B, n_frames, C, h, w). Every
    3-channel frame, of every camera, is one image through the same network in one batch."""

    def __init__(self, name: str, image_hw: Tuple[int, int], frozen: bool,
                 pretrained_path=None, weights_from_checkpoint: bool = False):
        """`weights_from_checkpoint`: the caller loads a whole checkpoint (the frozen encoder
        included) right after: `pretrained_path` is neither needed nor read."""
        super().__init__()
        self.normalize = ImageNormalizer()
        self.net = build_encoder(name)
        self.load_report = 'image encoder initialised at random (trained)'
        if weights_from_checkpoint:
            self.load_report = 'image encoder from the checkpoint'
        elif pretrained_path:
            self.load_report = load_pretrained_encoder(self.net, pretrained_path)
        elif frozen:  # no silent random features
            raise ValueError(frozen_without_weights_message())
        self.frozen = frozen
        if frozen:
            self.net.requires_grad_(False)
            self.net.eval()
        self.fmap_shape = feature_shape(self.net, image_hw)
        self.net.to(memory_format=torch.channels_last)  # about 2x faster convolutions on CPU

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.net.eval()  # a frozen encoder computes as loaded
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        frames = c // 3
        x = network_input(self.net, self.normalize, images.reshape(b * frames, 3, h, w))
        if self.frozen:
            with torch.no_grad():
                fmap = self.net(x)
        else:
            fmap = self.net(x)
        return fmap.reshape(b, frames, *fmap.shape[1:])


class MinMaxStateNorm(nn.Module):
    """State -> [-1, 1]: 2 (s - min) / (max - min) - 1 per value, clipped (a joint pushed past
    its limit or a velocity spike stays in the encoder's range). The bounds are buffers: the
    policy's state dict carries them, so a checkpoint and the weights streamed to actors map
    the state exactly as the learner did."""

    def __init__(self, low, high):
        super().__init__()
        low = torch.as_tensor(low, dtype=torch.float32)
        high = torch.as_tensor(high, dtype=torch.float32)
        if low.shape != high.shape or low.dim() != 1 or not bool(torch.all(high > low)):
            raise ValueError(f'state bounds need min < max per value: {low} / {high}')
        self.register_buffer('low', low)
        self.register_buffer('high', high)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        scaled = 2 * (state - self.low) / (self.high - self.low) - 1
        return scaled.clamp(-1.0, 1.0)


class ObservationEncoder(nn.Module):
    """Feature maps + state -> latent: spatial embedding (its own per camera) of every frame of
    every camera, joined -> Linear -> LN -> tanh; [min-max normalisation ->] Linear -> LN ->
    tanh for the state; concatenated."""

    def __init__(self, fmap_shape, n_frames: int, state_dim: int, latent_dim: int,
                 spatial_features: int = 8, state_bounds=None, cameras: int = 1):
        """`n_frames`: feature maps per observation, all cameras' (stacked frames x cameras,
        camera-major). `state_bounds`: (min, max) per state value for
        observation.state_normalisation min_max; None: the raw state (the state dict has no
        normaliser then, as before)."""
        super().__init__()
        if n_frames % cameras:
            raise ValueError(f'{n_frames} frames do not split into {cameras} cameras')
        self.cameras = cameras
        self.state_norm = MinMaxStateNorm(*state_bounds) if state_bounds is not None else None
        channels, h, w = fmap_shape
        # one kernel per channel of each camera (one camera: the layout before cameras)
        self.spatial = SpatialEmbedding(channels * cameras, h, w, spatial_features)
        self.image_proj = nn.Sequential(
            nn.Linear(channels * spatial_features * n_frames, latent_dim),
            nn.LayerNorm(latent_dim), nn.Tanh())
        self.state_proj = nn.Sequential(nn.Linear(state_dim, latent_dim),
                                        nn.LayerNorm(latent_dim), nn.Tanh())
        self.out_dim = 2 * latent_dim

    def forward(self, fmaps: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        b, total = fmaps.shape[:2]
        c, h, w = fmaps.shape[2:]
        # (B, cameras x frames, C, h, w) camera-major -> (B x frames, cameras x C, h, w): each
        # camera's channels meet their own spatial kernels
        per_tick = fmaps.reshape(b, self.cameras, total // self.cameras, c, h, w).transpose(1, 2)
        spatial = self.spatial(per_tick.reshape(-1, self.cameras * c, h, w).float()).reshape(b, -1)
        if self.state_norm is not None:
            state = self.state_norm(state)
        return torch.cat([self.image_proj(spatial), self.state_proj(state)], dim=-1)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, layer_norm: bool = False
        ) -> nn.Sequential:
    layers, width = [], in_dim
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(nn.ReLU())
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class TanhGaussianActor(nn.Module):
    """Embedding -> tanh-squashed Gaussian over actions in [-1, 1]."""

    def __init__(self, in_dim: int, action_dim: int, hidden: Sequence[int],
                 log_std_min: float, log_std_max: float):
        super().__init__()
        self.net = mlp(in_dim, hidden, 2 * action_dim, layer_norm=True)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.action_dim = action_dim

    def mean_log_std(self, embedding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(embedding).chunk(2, dim=-1)
        # squash log_std smoothly into [min, max] (jaxrl / drqv2 style)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (
            torch.tanh(log_std) + 1)
        return mean, log_std

    def distribution(self, embedding: torch.Tensor) -> Normal:
        mean, log_std = self.mean_log_std(embedding)
        return Normal(mean, log_std.exp())

    def sample(self, embedding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample in [-1, 1] and its log-probability (B,). Written out rather
        than through torch.distributions, whose argument checks cost more than the MLP when
        acting on one observation."""
        mean, log_std = self.mean_log_std(embedding)
        noise = torch.randn_like(mean)
        raw = mean + noise * log_std.exp()
        action = torch.tanh(raw)
        gaussian = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        # log|d tanh/dx| = 2 (log 2 - x - softplus(-2x)), numerically stable
        correction = 2 * (math.log(2) - raw - nn.functional.softplus(-2 * raw))
        return action, (gaussian - correction).sum(-1)

    def deterministic(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mean_log_std(embedding)[0])


class EnsembleLinear(nn.Module):
    """E independent linear layers run as one batched matmul: (E, B, in) -> (E, B, out)."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    def __init__(self, members: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(members, 1, dim))

    def forward(self, x):
        return nn.functional.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class CriticEnsemble(nn.Module):
    """Q(s, a) for E critics in one forward pass: (B, in), (B, A) -> (E, B)."""

    def __init__(self, members: int, in_dim: int, action_dim: int, hidden: Sequence[int],
                 layer_norm: bool):
        super().__init__()
        layers, width = [], in_dim + action_dim
        for h in hidden:
            layers.append(EnsembleLinear(members, width, h))
            if layer_norm:
                layers.append(EnsembleLayerNorm(members, h))
            layers.append(nn.ReLU())
            width = h
        layers.append(EnsembleLinear(members, width, 1))
        self.net = nn.Sequential(*layers)
        self.members = members

    def forward(self, embedding: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([embedding, action], dim=-1)
        x = x.unsqueeze(0).expand(self.members, *x.shape)
        return self.net(x).squeeze(-1)


class GraspCritic(nn.Module):
    """Discrete gripper critic (DQN): Q over {close, stay, open} = {-1, 0, +1}."""

    ACTIONS = (-1.0, 0.0, 1.0)

    def __init__(self, in_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.net = mlp(in_dim, hidden, len(self.ACTIONS), layer_norm=True)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)

    @classmethod
    def to_index(cls, gripper: torch.Tensor) -> torch.Tensor:
        """Continuous gripper command -> nearest discrete action index (thresholds +-0.5)."""
        return (torch.round(gripper.clamp(-1, 1)) + 1).long()

    @classmethod
    def to_value(cls, index: torch.Tensor) -> torch.Tensor:
        return index.float() - 1.0
