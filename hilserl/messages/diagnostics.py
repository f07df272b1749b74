"""Diagnostic levels and entries produced by the ROS-free cores; nodes turn them into messages."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels


@dataclass(frozen=True)
class DiagnosticEntry:
    name: str
    level: int
    message: str
    values: Dict[str, str]
