"""Image encoders shared by the reward classifier and the SAC policy (torch, ROS-free).

`resnet10`: a ResNet with one basic block per stage (64-128-256-512), the HIL-SERL encoder.
Parameter names follow the Hugging Face `ResNetModel` layout so locally downloaded pretrained
weights (config.json + model.safetensors, e.g. a ResNet-10 from the hub) load directly.
`small_conv`: a patchify stem and three 3x3 convolutions, cheap enough to train on a CPU.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNormalizer(nn.Module):
    """uint8 (B, 3, H, W) or float in [0, 255] -> ImageNet-normalised float."""

    def __init__(self):
        super().__init__()
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # one fused pass that keeps the input's memory format (channels_last stays so)
        return torch.addcmul(-self.mean / self.std, images.float(), 1.0 / self.std)


class _ConvNorm(nn.Module):
    """Conv + BatchNorm (+ ReLU) with HF ResNet names: convolution / normalization."""

    def __init__(self, cin, cout, kernel, stride, activation=True):
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.normalization = nn.BatchNorm2d(cout)
        self.activation = nn.ReLU() if activation else nn.Identity()

    def forward(self, x):
        return self.activation(self.normalization(self.convolution(x)))


class _BasicLayer(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.shortcut = _ConvNorm(cin, cout, 1, stride, activation=False) \
            if (cin != cout or stride != 1) else nn.Identity()
        self.layer = nn.Sequential(_ConvNorm(cin, cout, 3, stride), _ConvNorm(cout, cout, 3, 1,
                                                                              activation=False))
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(self.layer(x) + self.shortcut(x))


class _Stage(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.layers = nn.Sequential(_BasicLayer(cin, cout, stride))

    def forward(self, x):
        return self.layers(x)


class _Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedder = _ConvNorm(3, 64, 7, 2)
        self.pooler = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        return self.pooler(self.embedder(x))


class _Stages(nn.Module):
    def __init__(self, widths):
        super().__init__()
        stages, cin = [], 64
        for i, width in enumerate(widths):
            stages.append(_Stage(cin, width, 1 if i == 0 else 2))
            cin = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return x


class ResNet10(nn.Module):
    """(B, 3, H, W) normalised -> (B, 512, H/32, W/32) feature map."""

    def __init__(self, widths: Tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        self.embedder = _Embedder()
        self.encoder = _Stages(widths)
        self.out_channels = widths[-1]

    def forward(self, x):
        return self.encoder(self.embedder(x))


class SmallConv(nn.Module):
    """(B, 3, H, W) raw pixels 0..255 -> (B, 32, H/16, W/16) feature map.

    A 4x4 stride-4 "patchify" stem, then strided 3x3 convolutions: the size of LeRobot's small
    encoder (~29k parameters) at about a third of the compute, because no layer runs at full
    resolution. The ImageNet normalisation is folded into the stem (exact: the stem has no
    padding), which saves a full-resolution float pass per image."""

    raw_pixel_input = True

    def __init__(self, channels: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 4, 4)
        self.net = nn.Sequential(  # in-place ReLUs: one copy fewer per layer
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(inplace=True))
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)
        self.out_channels = channels

    def forward(self, x):
        # conv(W, (x - m) / s) == conv(W / s, x) + (b - sum(W * m / s))
        weight = self.stem.weight / self.std
        bias = self.stem.bias - (self.stem.weight * (self.mean / self.std)).sum((1, 2, 3))
        return self.net(F.conv2d(x, weight, bias, stride=4))


def network_input(net: nn.Module, normalizer: ImageNormalizer, images: torch.Tensor
                  ) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> the float input `net` expects, channels_last (faster convs)."""
    x = images.contiguous(memory_format=torch.channels_last)
    return x.float() if getattr(net, 'raw_pixel_input', False) else normalizer(x)


def build_encoder(name: str) -> nn.Module:
    if name == 'resnet10':
        return ResNet10()
    if name == 'small_conv':
        return SmallConv()
    raise ValueError(f"encoder {name!r}: choose 'resnet10' or 'small_conv'")


def feature_shape(encoder: nn.Module, image_hw: Tuple[int, int]) -> Tuple[int, int, int]:
    with torch.no_grad():
        was_training = encoder.training
        encoder.eval()
        out = encoder(torch.zeros(1, 3, *image_hw))
        encoder.train(was_training)
    return tuple(out.shape[1:])


def load_pretrained_encoder(encoder: nn.Module, directory) -> str:
    """Load encoder weights from a directory's model.safetensors: Hugging Face format (keys
    optionally prefixed 'resnet.', 'model.' or 'encoder_model.', e.g. a ResNet-10 from the hub)
    or a hilserl policy checkpoint's `pretrained_model/` (keys 'backbone.net.*': reuse the
    encoder a previous run trained). Returns a one-line report; raises with the mismatching
    keys if they do not fit."""
    from safetensors.torch import load_file
    directory = Path(directory)
    weights_path = directory / 'model.safetensors'
    if not weights_path.is_file():
        raise FileNotFoundError(f'no model.safetensors in {directory} (download the pretrained '
                                'encoder once where you are online, then point here)')
    state = load_file(str(weights_path))
    cleaned = {}
    for key, value in state.items():
        for prefix in ('resnet.', 'model.', 'encoder_model.', 'backbone.net.'):
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    own = encoder.state_dict()
    usable = {k: v for k, v in cleaned.items() if k in own and own[k].shape == v.shape}
    missing = sorted(set(own) - set(usable))
    if missing:
        raise ValueError(f'{weights_path}: {len(missing)} encoder tensors missing or mis-shaped, '
                         f'e.g. {missing[:5]}')
    encoder.load_state_dict(usable)
    config = directory / 'config.json'
    name = json.loads(config.read_text()).get('_name_or_path', directory.name) \
        if config.is_file() else directory.name
    return (f'loaded pretrained {type(encoder).__name__} weights from {name} '
            f'({len(usable)} tensors)')


class SpatialEmbedding(nn.Module):
    """Learned per-channel spatial weighting (HIL-SERL's image embedding) -> (B, C * features)."""

    def __init__(self, channels: int, height: int, width: int, num_features: int = 8):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(channels, height, width, num_features) * 0.02)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        # one (B, hw) x (hw, F) product per channel as a batched matmul (far faster on CPU than
        # einsum('bchw,chwf->bcf')); a contiguous (C, B, hw) operand lets bmm run as one batched
        # GEMM instead of a per-channel loop of copies (2x at batch 512, 4x at batch 1)
        out = torch.bmm(fmap.flatten(2).transpose(0, 1).contiguous(), self.kernel.flatten(1, 2))
        return out.transpose(0, 1).flatten(1)
