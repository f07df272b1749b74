"""Crop + resize from the camera frame to the policy view (shared by camera, classifier, sim)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def crop_resize(frame: np.ndarray, crop_tlhw_px: Sequence[int],
                resize_hw_px: Sequence[int]) -> np.ndarray:
    """(H, W, C) uint8 -> (h, w, C) uint8: crop [top, left, height, width], then area resize."""
    top, left, height, width = (int(v) for v in crop_tlhw_px)
    if frame.ndim != 3:
        raise ValueError(f'expected an (H, W, C) image, got shape {frame.shape}')
    if top < 0 or left < 0 or top + height > frame.shape[0] or left + width > frame.shape[1]:
        raise ValueError(f'crop {list(crop_tlhw_px)} leaves the {frame.shape[1]}x'
                         f'{frame.shape[0]} frame')
    view = frame[top:top + height, left:left + width]
    out_h, out_w = int(resize_hw_px[0]), int(resize_hw_px[1])
    if (out_h, out_w) == (height, width):
        return np.ascontiguousarray(view)
    resized = cv2.resize(view, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return resized if resized.ndim == 3 else resized[:, :, None]
