"""Diagnostic levels and entries produced by the ROS-free cores; nodes turn them into messages."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Dict

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels


@dataclass(frozen=True)
class DiagnosticEntry:
    name: str
    level: int
    message: str
    values: Dict[str, str]


class ForeignTally:
    """Messages a node refused because their publisher is not one of the topic's trusted nodes
    (`trusted_publishers`): counted per topic and publisher node for the diagnostics."""

    def __init__(self):
        self.by_source: Counter = Counter()  # 'topic <- node' -> messages refused

    def count(self, topic: str, publisher: str) -> None:
        self.by_source[f'{topic} <- {publisher}'] += 1

    @property
    def total(self) -> int:
        return sum(self.by_source.values())

    def values(self) -> Dict[str, str]:
        """Diagnostic values: foreign_messages (total) and foreign_publishers (JSON)."""
        return {'foreign_messages': str(self.total),
                'foreign_publishers': json.dumps(dict(self.by_source))}
