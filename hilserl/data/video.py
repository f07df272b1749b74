"""MP4 files from RGB frames with PyAV: one writer for the LeRobot export and the episode
videos (`hilserl eval --video`, `hilserl replay --video`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import numpy as np


class VideoError(ValueError):
    """This PyAV cannot write what was asked (no encoder); the message says what is missing."""


def encode_mp4(path: Path, frames: Iterable[np.ndarray], fps: int, height: int, width: int,
               codecs: Sequence[str], options: Optional[Dict[str, Dict[str, str]]] = None
               ) -> str:
    """Frames (H, W, 3) uint8 RGB into one MP4, frame i at time i / fps, with the first of
    `codecs` this PyAV has (`options[codec]` its encoder options). Returns the codec's name."""
    import av
    codec = next((c for c in codecs if c in av.codecs_available), None)
    if codec is None:
        raise VideoError(f'this PyAV has none of the video encoders {list(codecs)}')
    if height % 2 or width % 2:
        raise ValueError(f'{width}x{height}: yuv420p video needs an even width and height')
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault('SVT_LOG', '1')  # SVT-AV1: errors only, not its banner
    with av.open(str(path), 'w') as container:
        stream = container.add_stream(codec, rate=fps, options=(options or {}).get(codec, {}))
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        return stream.codec_context.codec.canonical_name
