"""What `deficiency test` counts as covered: rules, constant entries and thresholds.

- A rule is covered when some case applied it (its trace entry says `applied`).
- A **constant entry** is one key of a table constant, or one value of a list constant,
  that a rule's condition uses (`{in: name}`, `{not_in: name}`, `name[key_path]` in a
  comparison). Each (rule, constant, fact path, entry) is one item. It is covered only
  by a case that *reaches* the rule with the fact equal to the entry: the rule matched,
  or every top-level condition of the rule that does not use the constant held (the
  reference evaluator, on the case's final context). So the key OK of
  `judgment_limit_days` is covered for `time-barred` only by a case with jurisdiction OK
  that is a foreclosed mortgage with no judgment sought, whichever way the limit goes.
- A **threshold** (`lt`/`lte`/`gt`/`gte`) is measured for being seen true, false and
  exactly at the boundary. Without a table lookup it is measured on every case where its
  path has a value. With `table[key_path]` in its limit it is one threshold per entry of
  the table, measured only on cases that reach the rule (as above, the other top-level
  conditions held) and whose key path selects that entry: CA's 90-day cases say nothing
  about OK's 90 days.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine.reference import holds, leaf_holds, operand
from ..policy import expr as ex
from ..policy.model import COMPARISONS, IN, NOT_IN, All, Leaf, Rule, Ruleset, walk_leaves


def _conjuncts(rule: Rule) -> tuple:
    return rule.when.items if isinstance(rule.when, All) else (rule.when,)


def constant_of(leaf: Leaf, rs: Ruleset) -> str | None:
    """The list or table constant an `in`/`not_in` leaf names, None for a written-out
    list (the loader keeps the name on the leaf)."""
    return leaf.constant if leaf.op in (IN, NOT_IN) else None


def _uses(leaf: Leaf, rs: Ruleset) -> list[tuple[str, str, tuple]]:
    """(constant, fact path that selects the entry, entries) for each constant the leaf
    uses."""
    name = constant_of(leaf, rs)
    if name is not None:
        return [(name, leaf.path, tuple(leaf.value))]
    if leaf.is_expr:
        return [(lk.table, lk.key, tuple(rs.tables[lk.table]))
                for lk in ex.lookups(leaf.value) if lk.table in rs.tables]
    return []


@dataclass(frozen=True)
class EntryItem:
    rule: Rule
    constant: str
    path: str
    entry: Any
    others: tuple  # the rule's top-level conditions that do not use the constant on path
    label: str


@dataclass(frozen=True)
class ThresholdItem:
    rule: Rule
    leaf: Leaf
    label: str
    key: tuple[str, Any] | None = None  # (key path, table entry) for a keyed threshold
    others: tuple = ()  # for a keyed threshold: the conditions that must hold


def entry_items(rs: Ruleset) -> list[EntryItem]:
    items: dict[tuple, EntryItem] = {}
    for rule in rs.rules:
        conjuncts = _conjuncts(rule)
        uses: dict[tuple[str, str], dict[Any, None]] = {}
        involved: dict[tuple[str, str], set[int]] = {}
        for i, cond in enumerate(conjuncts):
            for leaf in walk_leaves(cond):
                for name, path, entries in _uses(leaf, rs):
                    uses.setdefault((name, path), {}).update(dict.fromkeys(entries))
                    involved.setdefault((name, path), set()).add(i)
        paths_of: dict[str, set[str]] = {}
        for name, path in uses:
            paths_of.setdefault(name, set()).add(path)
        for (name, path), entries in uses.items():
            others = tuple(c for i, c in enumerate(conjuncts) if i not in involved[(name, path)])
            via = f" for {path}" if len(paths_of[name]) > 1 else ""
            for entry in entries:
                items.setdefault((rule.id, name, path, entry), EntryItem(
                    rule, name, path, entry, others,
                    f"{name}[{entry}] (used by {rule.id}{via})"))
    return list(items.values())


def threshold_items(rs: Ruleset) -> list[ThresholdItem]:
    out: list[ThresholdItem] = []
    for rule in rs.rules:
        conjuncts = _conjuncts(rule)
        for i, cond in enumerate(conjuncts):
            for leaf in walk_leaves(cond):
                if leaf.op not in COMPARISONS:
                    continue
                base = f"{rule.id}: {leaf.path} {leaf.op} ({leaf.pos})"
                looked = ex.lookups(leaf.value) if leaf.is_expr else []
                if not looked:
                    out.append(ThresholdItem(rule, leaf, base))
                    continue
                others = tuple(c for j, c in enumerate(conjuncts) if j != i)
                for lk in looked:
                    for entry in rs.tables.get(lk.table, {}):
                        out.append(ThresholdItem(rule, leaf, f"{base} for {lk.table}[{entry}]",
                                                 (lk.key, entry), others))
    return out


class Coverage:
    """Accumulates, case by case, what the cases exercised."""

    def __init__(self, rs: Ruleset) -> None:
        self.rs = rs
        self._entry_items = entry_items(rs)
        self.entries = {item.label: False for item in self._entry_items}
        self._thresholds = threshold_items(rs)
        self.thresholds = {t.label: [False, False, False] for t in self._thresholds}

    def _reaches(self, rule: Rule, others: tuple, ctx: dict, matched: set[str]) -> bool:
        return rule.id in matched or all(holds(c, ctx, self.rs) for c in others)

    def add(self, ctx: dict, trace: list[dict]) -> None:
        """One case's final context and its decision trace (every matched rule is in it)."""
        rs = self.rs
        matched = {t["rule"] for t in trace}
        for item in self._entry_items:
            if (not self.entries[item.label] and ctx.get(item.path) == item.entry
                    and self._reaches(item.rule, item.others, ctx, matched)):
                self.entries[item.label] = True
        for t in self._thresholds:
            value = ctx.get(t.leaf.path)
            if value is None:
                continue
            if t.key is not None and (ctx.get(t.key[0]) != t.key[1]
                                      or not self._reaches(t.rule, t.others, ctx, matched)):
                continue
            seen = self.thresholds[t.label]
            seen[0 if leaf_holds(t.leaf, ctx, rs) else 1] = True
            if operand(t.leaf, ctx, rs) == value:
                seen[2] = True
