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
    out = torch.empty_like(images)  # keeps a channels-last input channels-last
    # one slice copy per image: cheaper than a gather, and than grouping equal offsets
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


def replicate_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Edge-replicating pad in the input dtype and memory format (F.pad's replicate mode
    rejects uint8)."""
    b, c, h, w = images.shape
    layout = (torch.channels_last if images.is_contiguous(memory_format=torch.channels_last)
              and not images.is_contiguous() else torch.contiguous_format)
    out = torch.empty((b, c, h + 2 * pad, w + 2 * pad), dtype=images.dtype,
                      device=images.device, memory_format=layout)
    out[:, :, pad:pad + h, pad:pad + w] = images
    out[:, :, :pad, pad:pad + w] = images[:, :, :1]
    out[:, :, pad + h:, pad:pad + w] = images[:, :, -1:]
    out[:, :, :, :pad] = out[:, :, :, pad:pad + 1]
    out[:, :, :, pad + w:] = out[:, :, :, pad + w - 1:pad + w]
    return out
