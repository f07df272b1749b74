"""Lighting drift: the brightness (mean) and contrast (standard deviation) of each colour channel
of the images a classifier was trained on, stored beside it (`lighting.json`), and a watch on
the live images. A classifier shown a scene lit unlike its training images can report success
(or miss it) for no reason a person would see; the watch warns when the live images stay
outside the training range for a while. A warning, not a stop.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from hilserl.messages.diagnostics import OK, WARN, DiagnosticEntry

LIGHTING_FILE = 'lighting.json'
CHANNELS = ('r', 'g', 'b')
DIAGNOSTIC_NAME = 'reward_classifier/lighting'
# Classifier training scales each image's brightness and contrast by up to this fraction either
# way (train.augment): the model has seen that much more than the images themselves show.
AUGMENTATION_JITTER = 0.2
# The range: the 1st..99th percentile of the training images' statistics, widened by that
# jitter and a couple of grey levels (nearly black or flat channels).
PERCENTILES = (1.0, 99.0)
RELATIVE_MARGIN = AUGMENTATION_JITTER
ABSOLUTE_MARGIN = 2.0

Triple = Tuple[float, float, float]


def image_statistics(images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(N, H, W, 3) or (H, W, 3) uint8 -> (N, 2, 3): each image's per-channel mean
    (brightness) and standard deviation (contrast), in grey levels 0..255."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f'images of shape {images.shape}: expected (N, H, W, 3)')
    out = np.empty((len(images), 2, 3), np.float64)
    for start in range(0, len(images), chunk):  # float copies of a chunk, not of them all
        part = images[start:start + chunk].astype(np.float32)
        out[start:start + chunk, 0] = part.mean(axis=(1, 2))
        out[start:start + chunk, 1] = part.std(axis=(1, 2))
    return out


def _triple(values) -> Triple:
    values = tuple(float(v) for v in values)
    if len(values) != 3 or not all(np.isfinite(values)):
        raise ValueError(f'{values}: expected 3 finite numbers (r, g, b)')
    return values


@dataclass(frozen=True)
class LightingRange:
    """Per channel (r, g, b), the brightness and contrast the classifier's training covers."""
    brightness_low: Triple
    brightness_high: Triple
    contrast_low: Triple
    contrast_high: Triple

    def __post_init__(self):
        for name in ('brightness_low', 'brightness_high', 'contrast_low', 'contrast_high'):
            object.__setattr__(self, name, _triple(getattr(self, name)))
        for stat in ('brightness', 'contrast'):
            low, high = getattr(self, f'{stat}_low'), getattr(self, f'{stat}_high')
            if any(lo > hi for lo, hi in zip(low, high)):
                raise ValueError(f'{stat}_low {low} above {stat}_high {high}')

    @classmethod
    def from_images(cls, images: np.ndarray, percentiles=PERCENTILES,
                    relative_margin: float = RELATIVE_MARGIN,
                    absolute_margin: float = ABSOLUTE_MARGIN) -> 'LightingRange':
        stats = image_statistics(images)
        if not len(stats):
            raise ValueError('no images to take lighting statistics from')
        low, high = np.percentile(stats, percentiles, axis=0)  # each (2, 3)
        low = np.maximum(low * (1 - relative_margin) - absolute_margin, 0.0)
        high = np.minimum(high * (1 + relative_margin) + absolute_margin, 255.0)
        return cls(tuple(low[0]), tuple(high[0]), tuple(low[1]), tuple(high[1]))

    def deviations(self, stats: np.ndarray) -> List[str]:
        """(2, 3) statistics of one image -> what lies outside, e.g. 'brightness g 31 < 95'."""
        found = []
        for row, stat in enumerate(('brightness', 'contrast')):
            low, high = getattr(self, f'{stat}_low'), getattr(self, f'{stat}_high')
            for c, channel in enumerate(CHANNELS):
                value = float(stats[row, c])
                if value < low[c]:
                    found.append(f'{stat} {channel} {value:.0f} < {low[c]:.0f}')
                elif value > high[c]:
                    found.append(f'{stat} {channel} {value:.0f} > {high[c]:.0f}')
        return found

    def describe(self) -> str:
        def span(low, high):
            return ', '.join(f'{c} {lo:.0f}-{hi:.0f}' for c, lo, hi in zip(CHANNELS, low, high))
        return (f'brightness {span(self.brightness_low, self.brightness_high)}; contrast '
                f'{span(self.contrast_low, self.contrast_high)}')


def lighting_json(lighting: LightingRange) -> dict:
    """The JSON of `lighting.json` (written beside the classifier's weights)."""
    return {'statistics': 'per-channel mean (brightness) and standard deviation (contrast) of '
                          'each training image, grey levels 0..255',
            'percentiles': list(PERCENTILES), 'relative_margin': RELATIVE_MARGIN,
            'absolute_margin': ABSOLUTE_MARGIN,
            **{name: list(values) for name, values in asdict(lighting).items()}}


def load_lighting(model_dir) -> Optional[LightingRange]:
    """The lighting range stored with a classifier; None for one trained before it existed."""
    path = Path(model_dir) / LIGHTING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        names = ('brightness_low', 'brightness_high', 'contrast_low', 'contrast_high')
        return LightingRange(*(data[name] for name in names))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f'{path}: not a lighting range ({exc}); retrain the classifier or '
                         f'delete the file to run without the drift check') from None


@dataclass(frozen=True)
class LightingUpdate:
    changed: bool                  # drift began or ended with this image: publish diagnostics
    log_line: Optional[str] = None  # the first drift of the run: print it (once)


class LightingDriftTracker:
    """Live images against the training range: drifting once every image for `hold_s` seconds
    (by the images' own stamps: simulated or camera time) lay outside it, over once one lies
    inside again."""

    def __init__(self, lighting: LightingRange, hold_s: float):
        if not (np.isfinite(hold_s) and hold_s > 0):
            raise ValueError(f'lighting_drift_s={hold_s}: must be > 0')
        self.lighting = lighting
        self.hold_s = float(hold_s)
        self.outside_since_s: Optional[float] = None
        self.drifting = False
        self.drift_count = 0     # drifts so far (each warned in diagnostics, the first logged)
        self.last_stats: Optional[np.ndarray] = None
        self.last_deviations: List[str] = []

    def update(self, view: np.ndarray, stamp_s: float) -> LightingUpdate:
        """One (H, W, 3) uint8 image taken at `stamp_s`."""
        self.last_stats = image_statistics(view)[0]
        self.last_deviations = self.lighting.deviations(self.last_stats)
        if not self.last_deviations:
            self.outside_since_s = None
            ended, self.drifting = self.drifting, False
            return LightingUpdate(changed=ended)
        if self.outside_since_s is None or stamp_s < self.outside_since_s:  # clock went back
            self.outside_since_s = stamp_s
        if self.drifting or stamp_s - self.outside_since_s < self.hold_s:
            return LightingUpdate(changed=False)
        self.drifting = True
        self.drift_count += 1
        line = None
        if self.drift_count == 1:
            line = (f'lighting drift: for {stamp_s - self.outside_since_s:.1f} s the camera '
                    f'images were outside the brightness/contrast the classifier was trained on '
                    f'({"; ".join(self.last_deviations)}; trained on {self.lighting.describe()})'
                    ': its success decisions may be wrong. Training goes on; further drift is '
                    f'reported in diagnostics ({DIAGNOSTIC_NAME}) only')
        return LightingUpdate(changed=True, log_line=line)

    def entry(self) -> DiagnosticEntry:
        values = {'drifts': str(self.drift_count), 'hold_s': f'{self.hold_s:g}',
                  'training_range': self.lighting.describe()}
        if self.last_stats is not None:
            values['brightness_rgb'] = ' '.join(f'{v:.0f}' for v in self.last_stats[0])
            values['contrast_rgb'] = ' '.join(f'{v:.0f}' for v in self.last_stats[1])
        if self.drifting:
            return DiagnosticEntry(DIAGNOSTIC_NAME, WARN, 'images outside the training '
                                   f'lighting: {"; ".join(self.last_deviations)}', values)
        return DiagnosticEntry(DIAGNOSTIC_NAME, OK, 'within the training lighting', values)


def drift_tracker(model_dir, hold_s: float) -> Tuple[Optional[LightingDriftTracker], str]:
    """(the drift watch for the classifier in `model_dir`, '') or (None, why there is none)."""
    try:
        lighting = load_lighting(model_dir)
    except ValueError as exc:  # a damaged file: the classifier itself still works
        return None, str(exc)
    if lighting is None:
        return None, (f'{model_dir} has no {LIGHTING_FILE} (trained before it was stored; train '
                      'it again for the check)')
    if hold_s == 0:
        return None, 'lighting_drift_s 0'
    return LightingDriftTracker(lighting, hold_s), ''


def unchecked_entry(reason: str) -> DiagnosticEntry:
    """The diagnostics of a classifier without a lighting range."""
    return DiagnosticEntry(DIAGNOSTIC_NAME, OK, f'drift check off: {reason}', {})
