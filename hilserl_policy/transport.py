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
    from safetensors.torch import load
    raw = bytes(data)
    state = load(raw)
    # safetensors keeps metadata in its JSON header: parse it directly from the bytes
    (n,) = struct.unpack('<Q', raw[:8])
    metadata = json.loads(raw[8:8 + n]).get('__metadata__', {}) or {}
    return state, metadata
