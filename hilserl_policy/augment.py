"""DrQ random-shift augmentation: replicate-pad by `pad` px, then crop back at a random offset.

Used inside the SAC update on obs and next_obs (independent shifts) and by the reward
classifier's training. Keeps shape and dtype; identity at pad 0.
"""
from __future__ import annotations

from typing import Optional

import torch


def random_shift(images: torch.Tensor, pad: int,
                 generator: Optional[torch.Generator] = None,
                 shifts: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W), same dtype. `shifts` (B, 2) of (dy, dx) in [0, 2*pad]
    fixes the offsets (used by the exactness tests and the feature cache)."""
    if pad == 0:
        return images
    b, c, h, w = images.shape
    if shifts is None:
        shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    padded = replicate_pad(images, pad)
    out = torch.empty_like(images)
    # one slice copy per distinct offset: far cheaper than a per-pixel gather
    codes = shifts[:, 0] * (2 * pad + 1) + shifts[:, 1]
    for code in torch.unique(codes).tolist():
        rows = (codes == code).nonzero().squeeze(1)
        dy, dx = divmod(code, 2 * pad + 1)
        out[rows] = padded[rows, :, dy:dy + h, dx:dx + w]
    return out


def replicate_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Edge-replicating pad in the input dtype (F.pad's replicate mode rejects uint8)."""
    b, c, h, w = images.shape
    out = images.new_empty((b, c, h + 2 * pad, w + 2 * pad))
    out[:, :, pad:pad + h, pad:pad + w] = images
    out[:, :, :pad, pad:pad + w] = images[:, :, :1]
    out[:, :, pad + h:, pad:pad + w] = images[:, :, -1:]
    out[:, :, :, :pad] = out[:, :, :, pad:pad + 1]
    out[:, :, :, pad + w:] = out[:, :, :, pad + w - 1:pad + w]
    return out
