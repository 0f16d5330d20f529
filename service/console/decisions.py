"""Decisions: search the log (by loan id, time range, bearer, action, deciding rule,
ruleset version and jurisdiction), page through it, take the page as CSV; one decision
with its amounts, trace, why-not, receipt check and evidence bundle.

Every filter but the deciding rule is asked of the database; the deciding rule (in the
trace) is read from the records it returns, newest first, at most `SCAN_BUDGET` records
per page, and the page says where it stopped so the next one goes on from there.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, abort, render_template, request

from ..api.decisions import stored_decision
from ..api.handle import service
from ..audit.notes import Verifier
from ..audit.record_check import check_record
from ..audit.store import encode_cursor
from ..commands.evidence import BundleUnavailable, bundle_text, make_bundle
from ..facts import FIELDS_BY_PATH, JURISDICTIONS
from ..policy.schema import ACTIONS, BEARERS
from ..tooling.replay import deciding_rule
from .present import decision_view, rulesets
from .session import needs

bp = Blueprint("decisions", __name__)

PAGE = 50
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
SCAN_BUDGET = 5000
_BATCH = 500
_LOAN_ID_MAX = FIELDS_BY_PATH["loan.id"].max_length or 128
CSV_COLUMNS = ("decision_id", "recorded_at", "loan_id", "jurisdiction", "loan_type", "bearer",
               "action", "deficiency", "borrower_owes", "lender_absorbs", "deciding_rule",
               "ruleset_version")


@dataclass
class Search:
    loan_id: str = ""
    since: str = ""
    until: str = ""
    bearer: str = ""
    action: str = ""
    rule: str = ""
    version: str = ""
    jurisdiction: str = ""
    cursor: str = ""
    errors: list[tuple[str, str]] = field(default_factory=list)

    def query(self, **changes: str) -> dict[str, str]:
        """The non-empty parameters (for links), with `changes`."""
        values = {k: getattr(self, k) for k in ("loan_id", "since", "until", "bearer",
                                                 "action", "rule", "version",
                                                 "jurisdiction", "cursor")}
        values.update(changes)
        return {k: v for k, v in values.items() if v}


def parse_search(args: Any) -> Search:
    s = Search(**{k: args.get(k, "").strip() for k in (
        "loan_id", "since", "until", "bearer", "action", "rule", "version", "jurisdiction",
        "cursor")})
    if len(s.loan_id) > _LOAN_ID_MAX or not s.loan_id.isprintable():
        s.errors.append(("loan_id", f"at most {_LOAN_ID_MAX} printable characters"))
    for name in ("since", "until"):
        text = getattr(s, name)
        if text and _day(text) is None:
            s.errors.append((name, f"{text!r} is not a date (YYYY-MM-DD)"))
    since, until = _day(s.since), _day(s.until)
    if since is not None and until is not None and since > until:
        s.errors.append(("until", "must not be before since"))
    for name, allowed in (("bearer", BEARERS), ("action", ACTIONS),
                          ("jurisdiction", JURISDICTIONS)):
        if getattr(s, name) and getattr(s, name) not in allowed:
            s.errors.append((name, f"not one of {', '.join(allowed)}"))
    for name in ("rule", "version"):
        if len(getattr(s, name)) > 200:
            s.errors.append((name, "at most 200 characters"))
    return s


def _day(text: str) -> datetime.date | None:
    """A date written YYYY-MM-DD (nothing else `fromisoformat` would take), or None."""
    if not _DATE.fullmatch(text):
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return None


def _moment(text: str, *, after: bool = False) -> datetime.datetime | None:
    day = _day(text)
    if day is None:
        return None
    start = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
    return start + datetime.timedelta(days=1) if after else start


def _equal(s: Search) -> dict[str, str]:
    """The filters the database answers, as paths into a record's documents."""
    paths = {"decision.outcome.bearer": s.bearer, "decision.outcome.action": s.action,
             "facts.jurisdiction": s.jurisdiction}
    return {path: value for path, value in paths.items() if value}


@dataclass
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None
    scanned: int
    budget_spent: bool


def run_search(s: Search) -> Page:
    """One page of matching records, newest first; raises ValueError for a bad cursor."""
    store = service().audit.store()
    rows: list[dict[str, Any]] = []
    cursor = s.cursor or None
    scanned = 0
    since, until = _moment(s.since), _moment(s.until, after=True)
    while True:
        batch, after = store.query(loan_id=s.loan_id or None, since=since, until=until,
                                   ruleset_version=s.version or None, equal=_equal(s),
                                   limit=_BATCH, cursor=cursor)
        for record in batch:
            scanned += 1
            if not s.rule or deciding_rule(record["trace"]) == s.rule:
                rows.append(_row(record))
            if len(rows) == PAGE or scanned == SCAN_BUDGET:
                more = after is not None or record is not batch[-1]
                return Page(rows, encode_cursor(record["seq"]) if more else None, scanned,
                            len(rows) < PAGE and more)
        if after is None:
            return Page(rows, None, scanned, False)
        cursor = after


def _row(record: dict[str, Any]) -> dict[str, Any]:
    decision, facts = record["decision"], record["facts"]
    outcome, amounts = decision.get("outcome") or {}, decision.get("amounts") or {}
    return {
        "decision_id": record["decision_id"], "recorded_at": record["recorded_at"],
        "loan_id": record["loan_id"], "jurisdiction": facts.get("jurisdiction"),
        "loan_type": (facts.get("loan") or {}).get("type"),
        "bearer": outcome.get("bearer"), "action": outcome.get("action"),
        "deficiency": amounts.get("deficiency"), "borrower_owes": outcome.get("borrower_owes"),
        "lender_absorbs": outcome.get("lender_absorbs"),
        "deciding_rule": deciding_rule(record["trace"]),
        "ruleset_version": record["ruleset_version"],
    }


def _choices() -> dict[str, Any]:
    rs = service().rulesets.ruleset
    return {"bearers": BEARERS, "actions": ACTIONS, "jurisdictions": JURISDICTIONS,
            "rules": [r.id for r in rs.rules if r.sets("outcome.bearer")]}


@bp.get("/decisions")
@needs("audit:read")
def search() -> Any:
    s = parse_search(request.args)
    page = None
    status = 200
    if not s.errors:
        try:
            page = run_search(s)
        except ValueError:
            s.errors.append(("cursor", "not a cursor this console gave (start the search "
                                       "again)"))
    if s.errors:
        status = 400
    return render_template("console/decisions.html", s=s, page=page, budget=SCAN_BUDGET,
                           **_choices()), status


def _csv_cell(value: Any) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@bp.get("/decisions.csv")
@needs("audit:read")
def search_csv() -> Any:
    s = parse_search(request.args)
    if s.errors:
        abort(400, "; ".join(f"{k}: {m}" for k, m in s.errors))
    try:
        page = run_search(s)
    except ValueError:
        abort(400, "cursor: not a cursor this console gave")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in page.rows:
        writer.writerow([_csv_cell(row[c]) for c in CSV_COLUMNS])
    return Response(out.getvalue(), mimetype="text/csv", headers={
        "Content-Disposition": 'attachment; filename="decisions.csv"'})


@bp.get("/decisions/<ulid:decision_id>")
@needs("audit:read")
def one(decision_id: str) -> Any:
    store = service().audit.store()
    record = store.get(decision_id.upper())
    if record is None:
        abort(404, f"No decision {decision_id} is recorded.")
    decision = stored_decision(record)
    rs = rulesets().get(record["ruleset_sha256"])
    view = decision_view(decision, record["facts"], rs)
    vkey = store.verifier_key
    return render_template("console/decision.html", view=view, record=record,
                           receipt=check_record(store, record, Verifier(vkey) if vkey else None))


@bp.get("/decisions/<ulid:decision_id>/bundle")
@needs("audit:read")
def bundle(decision_id: str) -> Any:
    store = service().audit.store()
    vkey = store.verifier_key
    if vkey is None:
        abort(409, "The log signs no checkpoints, so there is no evidence bundle.")
    try:
        made = make_bundle(store, decision_id.upper(), vkey)
    except BundleUnavailable as exc:
        abort(404 if exc.not_found else 409, str(exc))
    return Response(bundle_text(made) + "\n", mimetype="application/json", headers={
        "Content-Disposition": f'attachment; filename="evidence-{decision_id.upper()}.json"'})
