"""What the analysis reports: a finding (gap, conflict, shadowed, unreachable, or
"analysis incomplete"), with the rules, the position and an example fact set."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...policy.model import Rule
from ...policy.yamlsafe import Pos

if TYPE_CHECKING:
    from .search import Analyzer


@dataclass
class Finding:
    kind: str  # gap | conflict | shadowed | unreachable | incomplete
    severity: str  # error | warning
    stage: str
    message: str
    rules: list[str] = field(default_factory=list)
    pos: Pos | None = None
    regions: list[dict] = field(default_factory=list)
    example: dict | None = None
    details: list[str] = field(default_factory=list)
    truncated: bool = False

    def to_json(self) -> dict:
        return {
            "kind": self.kind, "severity": self.severity, "stage": self.stage,
            "message": self.message, "rules": list(self.rules),
            "file": self.pos.file if self.pos else None,
            "line": self.pos.line if self.pos else None,
            "column": self.pos.column if self.pos else None,
            "regions": self.regions, "regions_truncated": self.truncated,
            "example": self.example,
        }


def out_of_budget(an: Analyzer, stage: str, what: str, rule: Rule | None = None) -> Finding:
    """The "analysis incomplete" warning of a question that ran out of its budget."""
    why = (f"the time budget ({an.time_budget:g} s)" if time.monotonic() > an.deadline
           else f"the node budget ({an.node_budget} partial assignments)")
    message = f"analysis incomplete: {what} in stage {stage} ran out of {why}"
    return Finding("incomplete", "warning", stage, message,
                   [rule.id] if rule else [], rule.pos if rule else None)
