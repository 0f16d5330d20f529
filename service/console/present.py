"""What the console's pages share: the rulesets decisions were made with (active or
archived, built once per worker), a decision laid out for reading (waterfall, trace,
why not), and a record's receipt checked against the latest signed checkpoint."""

from __future__ import annotations

import base64
import datetime
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app

from ..api.handle import service
from ..audit import AuditStore, merkle
from ..audit.chain import record_hash
from ..audit.notes import NoteError, Verifier
from ..engine.whynot import why_not
from ..facts import FactsInvalid, validate_facts
from ..policy.model import Ruleset
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

    def review(self, sha256: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The review of `sha256`: kept, else `make()` (kept when it is of that ruleset:
        a directory whose files changed meanwhile gives another sha256)."""
        with self._lock:
            if sha256 in self._reviews:
                return self._reviews[sha256]
        review = make()
        if review["sha256"] == sha256:
            with self._lock:
                self._reviews[sha256] = review
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
        with self._lock:
            if len(self._built) >= _KEPT:
                self._built.pop(next(iter(self._built)))
            self._built[sha256] = rs
        return rs


def rulesets() -> Rulesets:
    kept: Rulesets = current_app.extensions[EXTENSION]
    return kept


def deciding_rule(decision: dict[str, Any]) -> str | None:
    """The rule that set the bearer (applied, not overridden)."""
    for entry in decision.get("trace") or ():
        if entry.get("applied") and "outcome.bearer" in (entry.get("set") or {}):
            return str(entry["rule"])
    return None


@dataclass
class DecisionView:
    decision: dict[str, Any]
    chart: Any
    trace: list[dict[str, Any]]
    why_not: list[dict[str, Any]] | None  # None: the ruleset is not at hand
    deciding_rule: str | None


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
        "error": e.get("error"),
    } for e in decision.get("trace") or ()]
    reasons = None
    if rs is not None:
        try:
            day = datetime.date.fromisoformat(decision["as_of"])
            reasons = why_not(rs, validate_facts(facts, today=day))
        except (FactsInvalid, KeyError, ValueError):
            reasons = None
    return DecisionView(decision, waterfall(decision), rows, reasons, deciding_rule(decision))


@dataclass
class ReceiptCheck:
    ok: bool
    message: str
    tree_size: int | None = None
    checkpoint: str | None = None


def check_receipt(store: AuditStore, record: dict[str, Any]) -> ReceiptCheck:
    """Whether the record, as the log holds it now, is in the tree of the latest signed
    checkpoint: the record's hash recomputed from its content, its inclusion proof
    checked against the checkpoint's root, the checkpoint's signature checked with the
    service's verifier key."""
    if record_hash(record) != record["hash"]:
        return ReceiptCheck(False, "the record's content does not hash to its hash: it was "
                                   "altered after it was written")
    note = store.latest_checkpoint()
    vkey = store.verifier_key
    if note is None or vkey is None:
        return ReceiptCheck(False, "the log holds no signed checkpoint yet")
    try:
        checkpoint = Verifier(vkey).checkpoint(note)
    except NoteError as exc:
        return ReceiptCheck(False, f"the latest checkpoint does not verify: {exc}", None, note)
    index = record["seq"] - 1
    if index >= checkpoint.size:
        return ReceiptCheck(False, f"not yet covered: the latest signed checkpoint is of "
                                   f"{checkpoint.size} records, this is leaf {index}",
                            checkpoint.size, note)
    try:
        proof = store.inclusion_proof(record["decision_id"], checkpoint.size)
        if proof is None:
            raise LookupError("the decision is not in the log")
        merkle.verify_inclusion(index, checkpoint.size, merkle.record_leaf(record["hash"]),
                                [base64.b64decode(h) for h in proof["inclusion_proof"]],
                                checkpoint.root)
    except (LookupError, merkle.ProofError) as exc:
        return ReceiptCheck(False, f"the inclusion proof does not hold: {exc}",
                            checkpoint.size, note)
    return ReceiptCheck(True, f"leaf {index} is in the signed tree of {checkpoint.size} "
                              f"records (checkpoint signed by {Verifier(vkey).name})",
                        checkpoint.size, note)
