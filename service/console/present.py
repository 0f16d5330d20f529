"""What the console's pages share: the rulesets decisions were made with (active or
archived, built once per worker) and their reviews, and a decision laid out for reading
(waterfall, trace, why not)."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app

from ..api.handle import service
from ..engine.whynot import why_not
from ..facts import FactsInvalid, validate_facts
from ..policy.model import Ruleset
from ..tooling.replay import deciding_rule
from ..tooling.reproduce import ArchiveError, archived_ruleset
from .charts import waterfall

EXTENSION = "deficiency.console"
_KEPT = 16  # archived rulesets kept built per worker


class Rulesets:
    """Rulesets by sha256: the active one, else built from the log's archive (once);
    and their reviews (`tooling.review`), kept once made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: dict[str, Ruleset] = {}
        self._reviews: dict[str, dict[str, Any]] = {}
        self._reviewing = threading.Lock()

    def review(self, sha256: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The review asked for `sha256`: kept, else `make()`, one at a time (each is a
        process of its own). A review whose files turned out to be another version
        (the rules directory changed on disk) is kept too, and says so by its sha256."""
        with self._reviewing:
            with self._lock:
                if sha256 in self._reviews:
                    return self._reviews[sha256]
            review = make()
            if review["sha256"] is None:  # it did not finish, or the files do not load
                return review
            self._keep(self._reviews, sha256, review)
            return review

    def get(self, sha256: str) -> Ruleset | None:
        active = service().rulesets.ruleset
        if active.sha256 == sha256:
            return active
        with self._lock:
            if sha256 in self._built:
                return self._built[sha256]
        archived = service().audit.store().ruleset(sha256)
        if archived is None:
            return None
        try:
            rs = archived_ruleset(archived["files"], sha256)
        except ArchiveError:
            return None
        self._keep(self._built, sha256, rs)
        return rs

    def _keep(self, kept: dict[str, Any], sha256: str, value: Any) -> None:
        """Keep `value`, forgetting the oldest kept beyond `_KEPT`."""
        with self._lock:
            if len(kept) >= _KEPT:
                kept.pop(next(iter(kept)))
            kept[sha256] = value


def rulesets() -> Rulesets:
    kept: Rulesets = current_app.extensions[EXTENSION]
    return kept


@dataclass
class DecisionView:
    decision: dict[str, Any]
    chart: Any
    trace: list[dict[str, Any]]
    why_not: list[dict[str, Any]] | None  # None: not computed; `why_not_note` says why
    deciding_rule: str | None
    why_not_note: str | None = None


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "; ".join(_shown(v) for v in value)
    return str(value)


def decision_view(decision: dict[str, Any], facts: Any, rs: Ruleset | None) -> DecisionView:
    """`facts`: the facts as posted or stored (validated again here, with the decision's
    `as_of` as today so nothing drifts with the date)."""
    rows = [{
        "stage": e.get("stage"), "rule": e.get("rule"), "priority": e.get("priority"),
        "matched": [(k, _shown(v)) for k, v in (e.get("matched") or {}).items()],
        "applied": bool(e.get("applied")), "overridden_by": e.get("overridden_by"),
        "set": [(k, _shown(v)) for k, v in (e.get("set") or {}).items()],
        "error": e.get("error"), "conflict": e.get("conflict") or [],
    } for e in decision.get("trace") or ()]
    reasons, note = _why_not(decision, facts, rs)
    return DecisionView(decision, waterfall(decision), rows, reasons,
                        deciding_rule(decision.get("trace")), note)


def _why_not(decision: dict[str, Any], facts: Any,
             rs: Ruleset | None) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The rules that did not match and why, worked out again with the reference
    evaluator; never contradicting the decision's own trace (a rule the trace shows as
    matched is left out, and the page says so)."""
    if rs is None:
        return None, ("The ruleset that made this decision is neither active nor archived "
                      "here, so the rules that did not match cannot be shown.")
    try:
        day = datetime.date.fromisoformat(decision["as_of"])
        reasons = why_not(rs, validate_facts(facts, today=day))
    except (FactsInvalid, KeyError, ValueError) as exc:
        return None, f"The stored facts cannot be evaluated again ({exc}), so the rules " \
                     "that did not match cannot be shown."
    traced = {e.get("rule") for e in decision.get("trace") or ()}
    disagree = sorted({r["rule"] for r in reasons} & traced)
    if not disagree:
        return reasons, None
    return ([r for r in reasons if r["rule"] not in traced],
            f"Worked out again, {', '.join(disagree)} would not match, but the recorded "
            "trace shows it matched; it is left out here.")
