"""The analyzer of one ruleset: its parts, and the depth-first search over partial
assignments of the fact paths that every question of `deficiency check` runs."""

from __future__ import annotations

import time
from typing import Any

from ...engine.decide import Decider
from ...engine.resolver import plan_rules
from ...policy.model import Ruleset
from .conditions import Conditions
from .domain import Domain
from .limits import NODE_BUDGET, TIME_BUDGET
from .partition import Partition, Requirement
from .representatives import Representatives
from .stages import Node, Stages


class OutOfBudget(Exception):
    """The question ran out of nodes or time (or of anything to split on)."""


class Analyzer:
    """One ruleset's analysis: its variables (`domain`), representative values,
    three-valued `conditions`, stage views, the reference `decider` confirming
    findings, and the budgets shared by its questions."""

    def __init__(self, rs: Ruleset, *, node_budget: int = NODE_BUDGET,
                 time_budget: float = TIME_BUDGET, exhaustive: bool = False) -> None:
        self.rs = rs
        self.node_budget = node_budget
        self.deadline = time.monotonic() + time_budget
        self.time_budget = time_budget
        self.stage_index = {s: i for i, s in enumerate(rs.stages)}
        self.sorted_rules = {s: sorted(rs.stage_rules(s), key=lambda r: (-r.priority, r.order))
                             for s in rs.stages}
        self.plans = plan_rules(rs)
        self.decider = Decider(rs, "reference")
        self.nodes = 0
        self.stats: dict[str, Any] = {"nodes": 0, "questions": 0}
        self.skipped: list[str] = []  # questions not started: the time budget ran out
        self.domain = Domain(rs)
        self.conditions = Conditions(rs, self.domain)
        self.representatives = Representatives(rs, self.domain, self.stage_index)
        self.requirement = Requirement(self.domain, exhaustive=exhaustive)
        self.partitions = {s: Partition(rules, self.requirement)
                           for s, rules in self.sorted_rules.items()}
        self.stages = Stages(rs, self.domain, self.conditions, self.sorted_rules, self.plans,
                             self.partitions)
        #: A rule's place in its stage's resolution order.
        self.rank = {r: i for rules in self.sorted_rules.values() for i, r in enumerate(rules)}

    def _tick(self) -> None:
        self.nodes += 1
        self.stats["nodes"] += 1
        if self.nodes > self.node_budget or time.monotonic() > self.deadline:
            raise OutOfBudget

    def search(self, k: int, goal: Any, on_true: Any, on_false: Any = None) -> None:
        """Depth-first over partial assignments, for a question about stage k.
        `goal(node)` -> True | False | path to split on; `on_true(node)` returns "stop",
        "unwind" (skip the remaining numeric alternatives up to the nearest enum
        split) or None."""
        self.nodes = 0
        self.stats["questions"] += 1
        domain = self.domain

        def dfs(sigma: dict) -> str | None:
            self._tick()
            node = Node(self.stages, sigma)
            state, open_need = (self.stages.verify(node, k) if len(sigma) > len(domain.fixed)
                                else ("ok", None))
            if state == "inconsistent":
                return None
            g = goal(node)
            if g is True and state == "open":
                g = open_need  # an assumed output is not known yet: learn more first
            if g is True:
                return on_true(node)
            if g is False:
                if on_false is not None:
                    on_false(node)
                return None
            if g in sigma:  # pragma: no cover - a bug in the three-valued evaluation
                raise RuntimeError(f"analysis split on {g} twice")
            var = domain.vars.get(g)
            if var is None:  # an earlier stage's output: assume each possible value
                if g not in node.pending:  # nothing left to split on: give up, soundly
                    raise OutOfBudget
                values = sorted(node.pending[g], key=repr)
                finite = True
            else:
                values = self.representatives.candidates(var, sigma)
                finite = var.finite
            for value in values:
                signal = dfs({**sigma, g: value})
                if signal == "stop":
                    return "stop"
                if signal == "unwind":
                    if finite:
                        continue
                    return "unwind"
            return None

        dfs(dict(domain.fixed))

