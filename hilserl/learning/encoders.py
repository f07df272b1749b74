"""Image encoders shared by the reward classifier and the SAC policy (torch, ROS-free).

`resnet10`: the seed's pretrained ResNet-10 (`helper2424/resnet10`, GroupNorm, one basic block
per stage, 64-128-256-512), computing what the upstream model computes; its config.json +
model.safetensors (a local directory or the local Hugging Face cache, see
hilserl.configuration.pretrained) load as saved.
`small_conv`: a patchify stem and three 3x3 convolutions, cheap enough to train on a CPU.
"""
from __future__ import annotations

import json
import math
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


def _same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """TF/JAX "SAME" padding of one dimension: (before, after), the odd pixel after."""
    total = max(0, (math.ceil(size / stride) - 1) * stride + kernel - size)
    return total // 2, total - total // 2


class _SameConv(nn.Module):
    """Bias-free convolution with "SAME" padding (as the JAX original); weight at `conv`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        # stride 1 pads (k - 1) / 2 on each side: the convolution's own padding, no copy
        self.conv = nn.Conv2d(cin, cout, kernel, stride,
                              padding=(kernel - 1) // 2 if stride == 1 else 0, bias=False)

    def forward(self, x):
        if self.stride == 1:
            return self.conv(x)
        top, bottom = _same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = _same_padding(x.shape[-1], self.kernel, self.stride)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self.conv(x)


class _GroupNorm(nn.Module):
    """GroupNorm(4 groups, eps 1e-5); parameters at `group_norm` (the upstream names)."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-5)

    def forward(self, x):
        return self.group_norm(x)


class _SameMaxPool(nn.Module):
    """3x3 stride-2 max-pool with "SAME" padding: the extra row/column at the bottom/right,
    padded with -inf."""

    def __init__(self, kernel: int = 3, stride: int = 2):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        top, bottom = _same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = _same_padding(x.shape[-1], self.kernel, self.stride)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=float('-inf'))
        return F.max_pool2d(x, self.kernel, self.stride)


class _BasicBlock(nn.Module):
    """conv3x3 (stride s) -> GN -> ReLU -> conv3x3 -> GN, + shortcut (conv1x1 stride s -> GN
    when the width changes), -> ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _SameConv(cin, cout, 3, stride)
        self.norm1 = _GroupNorm(cout)
        self.conv2 = _SameConv(cout, cout, 3, 1)
        self.norm2 = _GroupNorm(cout)
        self.shortcut = (nn.Sequential(_SameConv(cin, cout, 1, stride), _GroupNorm(cout))
                         if cin != cout else None)

    def forward(self, x):
        out = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class _Stages(nn.Module):
    def __init__(self, widths: Tuple[int, ...], cin: int):
        super().__init__()
        blocks = []
        for i, width in enumerate(widths):
            blocks.append(_BasicBlock(cin, width, 1 if i == 0 else 2))
            cin = width
        self.stages = nn.ModuleList(blocks)

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return x


class ResNet10(nn.Module):
    """The seed's `helper2424/resnet10` (HIL-SERL's ResNet-10, converted from JAX): ImageNet-
    normalised (B, 3, H, W) -> the last feature map (B, 512, H/32, W/32), no pooler.

    Stem: conv 7x7 stride 2 (padding 3, no bias) -> GroupNorm(4) -> ReLU -> max-pool 3x3
    stride 2 ("SAME"); then one basic block per stage (64, 128, 256, 512; stride 1, 2, 2, 2).
    Parameter names are the upstream ones (`embedder.0.weight`, `embedder.1.group_norm.*`,
    `encoder.stages.N.{conv1,conv2}.conv.weight`, `...{norm1,norm2}.group_norm.*`,
    `...shortcut.{0.conv,1.group_norm}.*`): its model.safetensors loads as saved."""

    model_type = 'resnet10'
    widths = (64, 128, 256, 512)
    embedding_size = 64

    def __init__(self):
        super().__init__()
        self.embedder = nn.Sequential(
            nn.Conv2d(3, self.embedding_size, 7, 2, padding=3, bias=False),
            _GroupNorm(self.embedding_size), nn.ReLU(), _SameMaxPool(3, 2))
        self.encoder = _Stages(self.widths, self.embedding_size)
        self.out_channels = self.widths[-1]

    def forward(self, x):
        return self.encoder(self.embedder(x))

    def hub_config(self) -> dict:
        """The upstream config.json fields of this architecture."""
        return {'model_type': self.model_type, 'num_channels': 3,
                'embedding_size': self.embedding_size, 'hidden_sizes': list(self.widths),
                'depths': [1] * len(self.widths), 'hidden_act': 'relu', 'pooler': None}


class SmallConv(nn.Module):
    """(B, 3, H, W) raw pixels 0..255 -> (B, 32, H/16, W/16) feature map.

    A 4x4 stride-4 "patchify" stem, then strided 3x3 convolutions: the size of LeRobot's small
    encoder (~29k parameters) at about a third of the compute, because no layer runs at full
    resolution. The ImageNet normalisation is folded into the stem (exact: the stem has no
    padding), which saves a full-resolution float pass per image."""

    raw_pixel_input = True
    model_type = 'small_conv'

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


# key prefixes of weights saved inside a larger model: a hilserl policy checkpoint's
# `pretrained_model/` holds its backbone under 'backbone.net.' (reuse a previous run's encoder)
_WEIGHT_PREFIXES = ('backbone.net.',)


def load_pretrained_encoder(encoder: nn.Module, path) -> str:
    """Load encoder weights named by `path`: a directory with model.safetensors (and
    config.json), or a repo id in the local Hugging Face cache (`helper2424/resnet10` for
    resnet10), or a hilserl policy checkpoint's `pretrained_model/`. Returns a one-line report;
    raises PretrainedWeightsMissing when there are no weights there, ValueError when they do
    not fit (another architecture, missing or mis-shaped tensors)."""
    from safetensors.torch import load_file

    from hilserl.configuration.pretrained import WEIGHTS_FILE, resolve_pretrained_dir
    directory = resolve_pretrained_dir(str(path))
    weights_path = directory / WEIGHTS_FILE
    config_path = directory / 'config.json'
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    expected = getattr(encoder, 'model_type', None)
    if 'model_type' in config and expected and config['model_type'] != expected:
        raise ValueError(f'{config_path}: model_type {config["model_type"]!r} is not the '
                         f'{expected!r} encoder (for resnet10: helper2424/resnet10)')
    state = {}
    for key, value in load_file(str(weights_path)).items():
        for prefix in _WEIGHT_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    own = encoder.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = sorted(set(own) - set(usable))
    if missing:
        raise ValueError(f'{weights_path}: {len(missing)} of {len(own)} encoder tensors missing '
                         f'or mis-shaped, e.g. {missing[:4]}')
    encoder.load_state_dict(usable)
    name = config.get('_name_or_path') or str(path)
    return (f'loaded pretrained {type(encoder).__name__} weights from {name} '
            f'({len(usable)} tensors, {directory})')


def save_encoder_weights(encoder: nn.Module, directory) -> Path:
    """Write `encoder`'s weights as a directory `load_pretrained_encoder` reads: model.safetensors
    + config.json, in the upstream `helper2424/resnet10` layout for resnet10 (export an encoder,
    or give tests and benchmarks weights in that layout)."""
    from safetensors.torch import save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
              str(directory / 'model.safetensors'))
    config = encoder.hub_config() if hasattr(encoder, 'hub_config') else \
        {'model_type': getattr(encoder, 'model_type', type(encoder).__name__)}
    (directory / 'config.json').write_text(json.dumps(config, indent=2))
    return directory


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
