"""Config fields that are also node parameters: one default, one description, one range, written
once on the dataclass (`param(...)`), declared by the node from there
(`hilserl.ros.node.declare_config`). No ROS here."""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Sequence, Tuple


def param(default, description: str, *, float_range: Optional[Sequence[float]] = None,
          int_range: Optional[Sequence[int]] = None):
    """A dataclass field declared as a node parameter of the same name."""
    return dataclasses.field(default=default, metadata={'parameter': {
        'description': description, 'float_range': float_range, 'int_range': int_range}})


def parameter_fields(cls) -> Iterator[Tuple[str, object, dict]]:
    """(name, default, {description, float_range, int_range}) of each `param` field of `cls`."""
    for f in dataclasses.fields(cls):
        spec = f.metadata.get('parameter')
        if spec is not None:
            yield f.name, f.default, spec
