"""Policy weights as they cross DDS from learner to actors (std_msgs/UInt8MultiArray):
safetensors bytes with metadata (step, backbone digest). Transitions: hilserl.data.transition."""
from __future__ import annotations

import json
import struct
from typing import Dict, Tuple


def encode_weights(state: Dict, metadata: Dict[str, str]) -> bytes:
    from safetensors.torch import save
    return save(state, metadata={k: str(v) for k, v in metadata.items()})


def decode_weights(data) -> Tuple[Dict, Dict[str, str]]:
    """(state dict, metadata); ValueError for anything that is not such a payload (any
    participant on the domain can publish on the topic)."""
    from safetensors.torch import load
    raw = bytes(data)
    try:
        state = load(raw)
        # safetensors keeps metadata in its JSON header: parse it directly from the bytes
        (n,) = struct.unpack('<Q', raw[:8])
        metadata = json.loads(raw[8:8 + n]).get('__metadata__', {}) or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
        raise ValueError(f'not a policy weights payload ({type(exc).__name__}: {exc})') from None
    if not isinstance(metadata, dict):
        raise ValueError('not a policy weights payload (its metadata is not a mapping)')
    return state, metadata
