"""Which rules can matter where: rules that require different values of the same
enumerated fact (jurisdiction, disposition method, loan type, investor, …) never
match the same facts.

A rule's *requirements* are read off the conjuncts of its condition: `path: value`
and `path: {in: [...]}` on a fact of a finite kind. Two rules whose requirements
leave no common value for some path cannot both match (`disjoint`); and at a node
of the search, a rule whose requirement excludes the value the node gave that path
is false there (`Partition.live`). Both only ever drop rules whose condition is
false wherever it is dropped, so every question gets the answer it would get
without them, and a policy of one rule per state × method is analysed in time
roughly linear in its size instead of quadratic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ...policy.model import EQ, IN, All, Leaf, Rule
from .domain import Domain

Requirements = dict[str, frozenset]


def requirements(cond: Any, domain: Domain) -> Requirements:
    """For each finite fact path the condition requires (a top-level conjunct, nested
    `all` included), the values it allows."""
    found: Requirements = {}
    stack = [cond]
    while stack:
        node = stack.pop()
        if isinstance(node, All):
            stack.extend(node.items)
            continue
        if not isinstance(node, Leaf) or node.is_expr or node.op not in (EQ, IN):
            continue
        var = domain.vars.get(node.path)
        if var is None or not var.finite or domain.path_class(node.path) != "fact":
            continue
        allowed = frozenset([node.value]) if node.op == EQ else frozenset(node.value)
        found[node.path] = found[node.path] & allowed if node.path in found else allowed
    return found


def disjoint(a: Requirements, b: Requirements) -> bool:
    """Whether no facts meet both (some path allows no common value)."""
    if len(b) < len(a):
        a, b = b, a
    return any(path in b and not (allowed & b[path]) for path, allowed in a.items())


def _meets(required: Requirements, sigma: dict) -> bool:
    """False when the node gave a required path a value the requirement excludes."""
    for path, allowed in required.items():
        if path in sigma and sigma[path] not in allowed:
            return False
    return True


class Requirement:
    """The requirements of a ruleset's rules, computed once per analysis. `exhaustive`:
    none are read (every rule is asked about everywhere, as before the partition: the
    tests compare both)."""

    def __init__(self, domain: Domain, *, exhaustive: bool = False) -> None:
        self._domain = domain
        self._exhaustive = exhaustive
        self._cache: dict[int, Requirements] = {}

    def of(self, rule: Rule) -> Requirements:
        found = self._cache.get(id(rule))
        if found is None:
            found = {} if self._exhaustive else requirements(rule.when, self._domain)
            self._cache[id(rule)] = found
        return found


def _best_key(required: Sequence[Requirements]) -> str | None:
    """The path whose values split the rules most finely: the fewest rules left to look
    at, summed over the values (a rule without the path is left for every value)."""
    best, best_cost = None, None
    for path in {p for req in required for p in req}:
        by_value: Counter = Counter()
        free = 0
        for req in required:
            if path in req:
                by_value.update(req[path])
            else:
                free += 1
        cost = sum(n * n for n in by_value.values()) + free * len(required)
        if best_cost is None or cost < best_cost or (cost == best_cost and path < best):
            best, best_cost = path, cost
    return best


class Partition:
    """A list of rules, indexed by the value each requires of the path that splits them
    most finely: `live(sigma)` is the sub-list (in the original order) of the rules not
    already false at a node because of an enumerated value it fixed."""

    def __init__(self, rules: Sequence[Rule], requirement: Requirement) -> None:
        self.rules = list(rules)
        self._required = [requirement.of(r) for r in self.rules]
        self._key = _best_key(self._required)
        self._by_value: dict[Any, list[int]] = {}
        self._free: list[int] = []
        for index, req in enumerate(self._required):
            if self._key is not None and self._key in req:
                for value in req[self._key]:
                    self._by_value.setdefault(value, []).append(index)
            else:
                self._free.append(index)
        self._merged: dict[Any, list[int]] = {}

    def compatible(self, required: Requirements) -> list[Rule]:
        """The rules (in order) that can match some facts meeting `required`."""
        key = self._key
        if key is not None and key in required:
            indices = sorted({i for value in required[key]
                              for i in self._by_value.get(value, ())} | set(self._free))
        else:
            indices = range(len(self.rules))  # type: ignore[assignment]
        return [self.rules[i] for i in indices if not disjoint(required, self._required[i])]

    def live(self, sigma: dict) -> list[Rule]:
        key = self._key
        if key is not None and key in sigma:
            value = sigma[key]
            indices = self._merged.get(value)
            if indices is None:
                indices = sorted(self._by_value.get(value, []) + self._free)
                self._merged[value] = indices
        else:
            indices = range(len(self.rules))  # type: ignore[assignment]
        required, rules = self._required, self.rules
        return [rules[i] for i in indices if _meets(required[i], sigma)]
