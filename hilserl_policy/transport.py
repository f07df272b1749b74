"""Policy weights as they cross DDS from learner to actors (std_msgs/UInt8MultiArray):
safetensors bytes with metadata (step, backbone digest), and what an actor accepts of them
(`WeightsGate`). Transitions: hilserl.data.transition."""
from __future__ import annotations

import json
import re
import struct
from typing import Dict, Optional, Tuple


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


class WeightsRefused(ValueError):
    """A policy weights message the actor does not apply; `reason` is one word for the
    diagnostics' count (payload, step, stale, digest, keys, shape, dtype, non_finite)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class WeightsGate:
    """What an actor accepts on `policy_weights` (any participant can publish there): exactly
    the tensors its own policy sends (`expected`: name -> tensor, the learner's
    `policy_state()` of the same configuration) with their shapes and dtypes, all finite, from
    a learner step newer than the last one applied, and, with a frozen encoder, that encoder's
    digest. A message that fails any check changes nothing."""

    def __init__(self, expected: Dict, backbone_digest: Optional[str] = None):
        self.expected = {name: (tuple(t.shape), t.dtype) for name, t in expected.items()}
        self.backbone_digest = backbone_digest
        # the newest learner step applied; a checkpoint's own step does not count: a learner
        # that starts afresh beside an actor started from a checkpoint is still its learner
        self.applied_step: Optional[int] = None

    def check(self, data) -> Tuple[Dict, int]:
        """(state dict, learner step) of an acceptable message; WeightsRefused otherwise."""
        import torch
        try:
            state, meta = decode_weights(data)
        except ValueError as exc:
            raise WeightsRefused('payload', str(exc)) from None
        step = meta.get('step')
        if not isinstance(step, str) or not re.fullmatch(r'-?[0-9]{1,18}', step):
            raise WeightsRefused('step', f'policy weights without a learner step ({step!r})')
        step = int(step)
        if self.applied_step is not None and step <= self.applied_step:
            raise WeightsRefused('stale', f'policy weights of learner step {step}: not newer '
                                 f'than step {self.applied_step}, in use')
        digest = meta.get('backbone_digest')
        if digest and digest != self.backbone_digest:
            raise WeightsRefused('digest', 'the learner\'s frozen image encoder differs from '
                                 'this actor\'s (same seed and pretrained_encoder_path on both?)')
        unknown = sorted(set(state) - set(self.expected))
        missing = sorted(set(self.expected) - set(state))
        if unknown or missing:
            raise WeightsRefused('keys', f'policy weights with {len(unknown)} tensors this policy '
                                 f'does not have (e.g. {unknown[:2]}) and without {len(missing)} '
                                 f'it has (e.g. {missing[:2]})')
        for name, tensor in state.items():
            shape, dtype = self.expected[name]
            if tuple(tensor.shape) != shape:
                raise WeightsRefused('shape', f'policy weights {name} has shape '
                                     f'{tuple(tensor.shape)}, expected {shape}')
            if tensor.dtype != dtype:
                raise WeightsRefused('dtype', f'policy weights {name} is {tensor.dtype}, '
                                     f'expected {dtype}')
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise WeightsRefused('non_finite', f'policy weights {name} has non-finite '
                                     'values')
        return state, step

    def applied(self, step: int) -> None:
        self.applied_step = step
