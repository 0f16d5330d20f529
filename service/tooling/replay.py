"""Replay: what a ruleset change would do to past decisions.

The facts of every recorded decision (optionally narrowed by time, jurisdiction,
loan type and the ruleset version that decided them) are decided again with
the candidate ruleset and compared with the decision as recorded. Nothing is
written: the audit log is only read.

Determinism: "old" is the decision as it was recorded, never a re-run of the old
rules, and the facts are the stored, normalised facts - `as_of` included - so a
replay gives the same answer whenever it is run, unless the rules differ.

A decision has *changed* when any of these differ (`COMPARED`): bearer, action,
borrower_owes, lender_absorbs, credit category, tax form, 1099-C event code.

Flow: the parent reads the log in `seq` order and sends the matching records in
chunks to worker processes (started with `spawn`: each loads the candidate
ruleset itself, so no durable-rules state is ever forked); at most two chunks per
worker are in flight, so memory stays bounded however long the log. Results are
merged in submission order, so the report does not depend on the worker count.

JSON report (`report_json`), schema ``deficiency.replay/1``::

    {
      "schema": "deficiency.replay/1",
      "candidate": {"dir": str, "name": str, "version": str, "sha256": str},
      "store": str,                       # the audit URL, password hidden
      "filters": {"since": ts|null, "until": ts|null, "jurisdictions": [str],
                  "loan_types": [str], "ruleset_version": str|null},
      "scanned": int,                     # records read in the time window
      "held": {                           # what those scanned records were about,
                                          # before the other filters; "?" if absent
        "jurisdictions": [{"jurisdiction": str, "records": int}],     # by code
        "loan_types": [{"loan_type": str, "records": int}]            # by type
      },
      "evaluated": int,                   # of those, matching the filters, re-decided
      "changed": int,                     # all changed decisions (see "changes")
      "failed": int,                      # facts that could not be decided again
      "warnings": [str],                  # what the replay cannot show: below
      "changed_fields": {field: int},     # for each field of COMPARED, changed decisions
      "transitions": [{"from": bearer, "to": bearer, "count": int}],   # changed only;
                                          # count desc, then from, to
      "money": {                          # new - old; + means borrowers owe more
        "borrower_owes_delta": money, "lender_absorbs_delta": money,
        "by_jurisdiction": [{"jurisdiction": str, "evaluated": int, "changed": int,
                             "borrower_owes_delta": money,
                             "lender_absorbs_delta": money}]          # by code
      },
      "changes_limit": int|null,          # --limit (default 50); null with --all
      "changes_shown": int,               # len(changes); < changed when cut
      "changes": [{"decision_id": str, "loan_id": str, "jurisdiction": str,
                   "recorded_at": ts, "ruleset_version": str, "as_of": date,
                   "fields": [field],     # what differs, in COMPARED order
                   "old": {field: value}, "new": {field: value},   # all COMPARED fields
                   "rule": {"old": rule id|null, "new": rule id|null}}],  # deciding
                                          # bearer rule; in log (seq) order;
                                          # the first changes_limit changes only
      "failures": [{"decision_id": str, "loan_id": str, "error": str}]
    }

A *warning* names each jurisdiction and loan type that the candidate's rules
name in a condition (`jurisdiction` or `loan.type` with eq or in) but that no
evaluated record is in, unless the jurisdiction or loan-type filter left it out
on purpose: "0 changed" then says nothing about it. The rule is simple on
purpose: it does not know which of those names the change touches.

Money is a string with two decimals (`"-1250.00"`), timestamps are the log's
(`2026-01-31T12:00:00.000000Z`). `since` is inclusive, `until` exclusive, on the
time each decision was recorded.
"""

from __future__ import annotations

import datetime
import multiprocessing
import signal
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..amounts import money_str
from ..messages import one_line
from ..policy.model import EQ, IN, walk_leaves

SCHEMA = "deficiency.replay/1"
CHUNK_SIZE = 500
DEFAULT_LIMIT = 50  # changed decisions listed in a report unless told otherwise

#: (report name, section of the decision, key): what a change is made of.
COMPARED: tuple[tuple[str, str, str], ...] = (
    ("bearer", "outcome", "bearer"),
    ("action", "outcome", "action"),
    ("borrower_owes", "outcome", "borrower_owes"),
    ("lender_absorbs", "outcome", "lender_absorbs"),
    ("credit_category", "credit_reporting", "category"),
    ("tax_form", "tax", "form"),
    ("event_code", "tax", "event_code"),
)
_MONEY_FIELDS = frozenset({"borrower_owes", "lender_absorbs"})
ZERO = Decimal("0.00")


class ReplayError(Exception):
    """The replay cannot go on (one line): the candidate changed on disk, a worker died."""


# --------------------------------------------------------------------------- comparing


def outcome_summary(decision: dict[str, Any]) -> dict[str, Any]:
    """The COMPARED fields of a decision (JSON form), None where absent."""
    summary: dict[str, Any] = {}
    for name, section, key in COMPARED:
        part = decision.get(section)
        summary[name] = part.get(key) if isinstance(part, dict) else None
    return summary


def deciding_rule(trace: Any) -> str | None:
    """The id of the rule that set the bearer, from a decision's trace."""
    if not isinstance(trace, list):
        return None
    for entry in trace:
        if isinstance(entry, dict) and entry.get("applied") \
                and "outcome.bearer" in (entry.get("set") or {}):
            return entry.get("rule")
    return None


def _money(value: Any) -> Decimal:
    try:
        return Decimal(value) if value is not None else ZERO
    except (InvalidOperation, TypeError, ValueError):
        return ZERO


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of the COMPARED fields that differ (money compared as amounts)."""
    changed = []
    for name, _, _ in COMPARED:
        a, b = old.get(name), new.get(name)
        if name in _MONEY_FIELDS:
            if _money(a) != _money(b) or (a is None) != (b is None):
                changed.append(name)
        elif a != b:
            changed.append(name)
    return changed


# --------------------------------------------------------------------------- tallying


@dataclass
class JurisdictionTally:
    evaluated: int = 0
    changed: int = 0
    borrower_owes_delta: Decimal = ZERO
    lender_absorbs_delta: Decimal = ZERO

    def merge(self, other: JurisdictionTally) -> None:
        self.evaluated += other.evaluated
        self.changed += other.changed
        self.borrower_owes_delta += other.borrower_owes_delta
        self.lender_absorbs_delta += other.lender_absorbs_delta


@dataclass
class Tally:
    """What the replay found; chunks are tallied apart and merged in log order."""

    scanned: int = 0
    evaluated: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    changed_fields: Counter[str] = field(default_factory=Counter)
    by_jurisdiction: dict[str, JurisdictionTally] = field(default_factory=dict)
    by_loan_type: Counter[str] = field(default_factory=Counter)  # evaluated
    held_jurisdictions: Counter[str] = field(default_factory=Counter)  # scanned
    held_loan_types: Counter[str] = field(default_factory=Counter)  # scanned

    @property
    def changed(self) -> int:
        return len(self.changes)

    @property
    def borrower_owes_delta(self) -> Decimal:
        return sum((j.borrower_owes_delta for j in self.by_jurisdiction.values()), ZERO)

    @property
    def lender_absorbs_delta(self) -> Decimal:
        return sum((j.lender_absorbs_delta for j in self.by_jurisdiction.values()), ZERO)

    def merge(self, other: Tally) -> None:
        self.scanned += other.scanned
        self.evaluated += other.evaluated
        self.changes.extend(other.changes)
        self.failures.extend(other.failures)
        self.transitions.update(other.transitions)
        self.changed_fields.update(other.changed_fields)
        self.by_loan_type.update(other.by_loan_type)
        self.held_jurisdictions.update(other.held_jurisdictions)
        self.held_loan_types.update(other.held_loan_types)
        for code, part in other.by_jurisdiction.items():
            self.by_jurisdiction.setdefault(code, JurisdictionTally()).merge(part)


#: One record to decide again: what the worker needs of it and nothing more.
#: (decision_id, loan_id, recorded_at, ruleset_version, facts, decision's as_of,
#:  old summary, old deciding rule)
WorkItem = tuple[str, str, str, str, dict, str | None, dict, str | None]


def codes(facts: Any) -> tuple[str, str]:
    """(jurisdiction, loan type) of stored facts; "?" for what is absent."""
    facts = facts if isinstance(facts, dict) else {}
    loan = facts.get("loan")
    kind = loan.get("type") if isinstance(loan, dict) else None
    return str(facts.get("jurisdiction", "?")), str(kind if kind is not None else "?")


def work_item(record: dict[str, Any]) -> WorkItem:
    decision = record.get("decision")
    decision = decision if isinstance(decision, dict) else {}
    return (record["decision_id"], record["loan_id"], record["recorded_at"],
            record.get("ruleset_version", ""), record["facts"], decision.get("as_of"),
            outcome_summary(decision), deciding_rule(record.get("trace")))


def decide_items(decider: Any, items: Iterable[WorkItem]) -> Tally:
    """Decide each item's facts again with `decider` and tally against the old outcome."""
    from ..facts import FactsInvalid, FieldError, validate_facts

    tally = Tally()
    for decision_id, loan_id, recorded_at, version, stored, as_of, old, old_rule in items:
        jurisdiction, loan_type = codes(stored)
        try:
            # Normalised facts carry as_of; the decision's own as_of stands in for a
            # record that lacks it - never today, which would make the replay drift.
            day = datetime.date.fromisoformat(as_of) if isinstance(as_of, str) else None
            if day is None and not (isinstance(stored, dict) and "as_of" in stored):
                raise FactsInvalid([FieldError("as_of", "not in the record")])
            facts = validate_facts(stored, today=day)
            decision = decider.decide_facts(facts)
        except FactsInvalid as exc:
            tally.failures.append({"decision_id": decision_id, "loan_id": loan_id,
                                   "error": f"stored facts no longer valid: {exc}"})
            continue
        except Exception as exc:  # one bad record must not end a 100,000-record replay
            tally.failures.append({"decision_id": decision_id, "loan_id": loan_id,
                                   "error": f"{type(exc).__name__}: {one_line(exc)}"})
            continue
        tally.evaluated += 1
        tally.by_loan_type[loan_type] += 1
        place = tally.by_jurisdiction.get(jurisdiction)
        if place is None:
            place = tally.by_jurisdiction[jurisdiction] = JurisdictionTally()
        place.evaluated += 1
        new = outcome_summary(decision)
        changed = differences(old, new)
        if not changed:
            continue
        place.changed += 1
        owes = _money(new["borrower_owes"]) - _money(old["borrower_owes"])
        absorbs = _money(new["lender_absorbs"]) - _money(old["lender_absorbs"])
        place.borrower_owes_delta += owes
        place.lender_absorbs_delta += absorbs
        tally.transitions[(str(old["bearer"]), str(new["bearer"]))] += 1
        tally.changed_fields.update(changed)
        tally.changes.append({
            "decision_id": decision_id,
            "loan_id": loan_id,
            "jurisdiction": jurisdiction,
            "recorded_at": recorded_at,
            "ruleset_version": version,
            "as_of": decision["as_of"],
            "fields": changed,
            "old": old,
            "new": new,
            "rule": {"old": old_rule, "new": deciding_rule(decision["trace"])},
        })
    return tally


# --------------------------------------------------------------------------- selecting


@dataclass(frozen=True)
class Filters:
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    jurisdictions: frozenset[str] = frozenset()
    loan_types: frozenset[str] = frozenset()
    ruleset_version: str | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.ruleset_version is not None \
                and record.get("ruleset_version") != self.ruleset_version:
            return False
        facts = record.get("facts")
        if not isinstance(facts, dict):
            return not (self.jurisdictions or self.loan_types)
        if self.jurisdictions and facts.get("jurisdiction") not in self.jurisdictions:
            return False
        if self.loan_types:
            loan = facts.get("loan")
            if not isinstance(loan, dict) or loan.get("type") not in self.loan_types:
                return False
        return True

    def as_json(self) -> dict[str, Any]:
        return {
            "since": _timestamp(self.since),
            "until": _timestamp(self.until),
            "jurisdictions": sorted(self.jurisdictions),
            "loan_types": sorted(self.loan_types),
            "ruleset_version": self.ruleset_version,
        }


def _timestamp(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _chunks(records: Iterable[dict[str, Any]], filters: Filters, size: int,
            tally: Tally) -> Iterator[list[WorkItem]]:
    chunk: list[WorkItem] = []
    for record in records:
        tally.scanned += 1
        jurisdiction, loan_type = codes(record.get("facts"))
        tally.held_jurisdictions[jurisdiction] += 1
        tally.held_loan_types[loan_type] += 1
        if not filters.matches(record):
            continue
        chunk.append(work_item(record))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- running


def load_candidate(directory: str | Path) -> Any:
    """The candidate ruleset; raises PolicyError (with .problems) when it is invalid."""
    from ..policy.loader import load_ruleset

    return load_ruleset(Path(directory))


def replay(
    store: Any,
    candidate: str | Path,
    *,
    filters: Filters | None = None,
    workers: int = 1,
    ruleset: Any = None,
    chunk_size: int = CHUNK_SIZE,
) -> Tally:
    """Decide the selected records of `store` again with the ruleset in `candidate`.

    `ruleset` is the candidate already loaded (loaded here otherwise); with more
    than one worker each worker process loads it again and must find the same
    sha256. Raises PolicyError, EngineError, ReplayError, StoreUnavailable.
    """
    from ..engine.decide import Decider

    filters = filters or Filters()
    directory = Path(candidate).resolve()
    rs = ruleset if ruleset is not None else load_candidate(directory)
    decider = Decider(rs)  # engine limits fail here, once, before any worker starts
    tally = Tally()
    records = store.iter_records(since=filters.since, until=filters.until, batch=1000)
    chunks = _chunks(records, filters, chunk_size, tally)
    if workers <= 1:  # no process to gain: decide here, nothing pickled
        try:
            for chunk in chunks:
                tally.merge(decide_items(decider, chunk))
        finally:
            decider.close()
        return tally
    decider.close()
    _in_workers(chunks, directory, rs.sha256, workers, tally)
    return tally


def _in_workers(chunks: Iterator[list[WorkItem]], directory: Path, sha256: str,
                workers: int, tally: Tally) -> None:
    context = multiprocessing.get_context("spawn")
    pending: deque[Future[Tally]] = deque()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_init_worker, initargs=(str(directory), sha256))
    try:
        for chunk in chunks:
            pending.append(pool.submit(_decide_chunk, chunk))
            if len(pending) >= 2 * workers:  # bounded: the log is never read ahead
                tally.merge(pending.popleft().result())
        while pending:
            tally.merge(pending.popleft().result())
    except BrokenProcessPool as exc:
        raise ReplayError(f"a replay worker process died: {one_line(exc)}") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_worker_candidate: tuple[str, str] | None = None
_worker_decider: Any = None


def _init_worker(directory: str, sha256: str) -> None:
    global _worker_candidate
    # Ctrl-C is the parent's to handle: it cancels the work and shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_candidate = (directory, sha256)


def _decide_chunk(items: Sequence[WorkItem]) -> Tally:
    global _worker_decider
    if _worker_decider is None:
        _worker_decider = _worker_load()
    return decide_items(_worker_decider, items)


def _worker_load() -> Any:
    """The worker's own Decider (exceptions cross back to the parent as ReplayError)."""
    from ..engine.decide import Decider
    from ..policy.loader import PolicyError

    assert _worker_candidate is not None
    directory, sha256 = _worker_candidate
    try:
        rs = load_candidate(directory)
    except PolicyError as exc:
        first = exc.problems[0] if exc.problems else exc
        raise ReplayError(f"candidate ruleset changed during the replay: {first}") from None
    if rs.sha256 != sha256:
        raise ReplayError(f"candidate ruleset {directory} changed during the replay "
                          f"(sha256 {rs.sha256[:12]}, expected {sha256[:12]})")
    try:
        return Decider(rs)
    except Exception as exc:
        raise ReplayError(f"worker cannot load the candidate: {one_line(exc)}") from None


# --------------------------------------------------------------------------- coverage


@dataclass(frozen=True)
class Named:
    """The jurisdictions and loan types a ruleset's conditions name (eq or in)."""

    jurisdictions: frozenset[str] = frozenset()
    loan_types: frozenset[str] = frozenset()


def named_in(ruleset: Any) -> Named:
    """What `ruleset`'s rules test `jurisdiction` and `loan.type` for being."""
    found: dict[str, set[str]] = {"jurisdiction": set(), "loan.type": set()}
    for rule in ruleset.rules:
        for leaf in walk_leaves(rule.when):
            if leaf.path in found and leaf.op in (EQ, IN) and not leaf.is_expr:
                values = leaf.value if leaf.op == IN else (leaf.value,)
                found[leaf.path].update(str(v) for v in values)
    return Named(frozenset(found["jurisdiction"]), frozenset(found["loan.type"]))


def coverage_warnings(tally: Tally, filters: Filters, named: Named) -> list[str]:
    """One line per kind of name the candidate uses that no evaluated record is in,
    unless a filter left that name out on purpose."""
    window = " in the time window" if filters.since or filters.until else ""
    lines = []
    for kind, names, chosen, evaluated, held in (
            ("in", named.jurisdictions, filters.jurisdictions, tally.by_jurisdiction,
             tally.held_jurisdictions),
            ("on loan type", named.loan_types, filters.loan_types, tally.by_loan_type,
             tally.held_loan_types)):
        missing = sorted(n for n in names if n not in evaluated and (not chosen or n in chosen))
        absent = [n for n in missing if n not in held]
        left_out = [n for n in missing if n in held]
        if absent:
            lines.append(f"the log holds no decision{window} {kind} {', '.join(absent)}, "
                         f"which the candidate's rules name: {_unseen(absent)}")
        if left_out:
            lines.append(f"no decision {kind} {', '.join(left_out)} was evaluated (the log "
                         f"holds some{window}, but the other filters or failures left them "
                         f"out), which the candidate's rules name: {_unseen(left_out)}")
    return lines


def _unseen(names: list[str]) -> str:
    return f"replay cannot show {'its' if len(names) == 1 else 'their'} effect"


# --------------------------------------------------------------------------- reporting


@dataclass
class ReplayReport:
    candidate_dir: str
    candidate: dict[str, str]  # name, version, sha256
    store: str
    filters: Filters
    tally: Tally
    seconds: float = 0.0
    named: Named = field(default_factory=Named)  # what the candidate's rules name
    limit: int | None = DEFAULT_LIMIT  # changed decisions listed; None: all

    @property
    def warnings(self) -> list[str]:
        return coverage_warnings(self.tally, self.filters, self.named)

    @property
    def shown(self) -> list[dict[str, Any]]:
        """The changed decisions the report lists: the first `limit`, in log order."""
        changes = self.tally.changes
        return changes if self.limit is None else changes[:self.limit]


def report_json(report: ReplayReport) -> dict[str, Any]:
    """The report as the documented JSON (schema deficiency.replay/1); deterministic."""
    t = report.tally
    return {
        "schema": SCHEMA,
        "candidate": {"dir": report.candidate_dir, **report.candidate},
        "store": report.store,
        "filters": report.filters.as_json(),
        "scanned": t.scanned,
        "held": {
            "jurisdictions": [{"jurisdiction": code, "records": n}
                              for code, n in sorted(t.held_jurisdictions.items())],
            "loan_types": [{"loan_type": kind, "records": n}
                           for kind, n in sorted(t.held_loan_types.items())],
        },
        "evaluated": t.evaluated,
        "changed": t.changed,
        "failed": len(t.failures),
        "warnings": report.warnings,
        "changed_fields": {name: t.changed_fields.get(name, 0) for name, _, _ in COMPARED},
        "transitions": [{"from": old, "to": new, "count": count}
                        for (old, new), count in _sorted_transitions(t.transitions)],
        "money": {
            "borrower_owes_delta": money_str(t.borrower_owes_delta),
            "lender_absorbs_delta": money_str(t.lender_absorbs_delta),
            "by_jurisdiction": [
                {"jurisdiction": code, "evaluated": j.evaluated, "changed": j.changed,
                 "borrower_owes_delta": money_str(j.borrower_owes_delta),
                 "lender_absorbs_delta": money_str(j.lender_absorbs_delta)}
                for code, j in sorted(t.by_jurisdiction.items())
            ],
        },
        "changes_limit": report.limit,
        "changes_shown": len(report.shown),
        "changes": report.shown,
        "failures": t.failures,
    }


def _sorted_transitions(
        transitions: Counter[tuple[str, str]]) -> list[tuple[tuple[str, str], int]]:
    return sorted(transitions.items(), key=lambda item: (-item[1], item[0]))


def _signed(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01')):+,.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]],
           right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def render_text(report: ReplayReport) -> str:
    t = report.tally
    c = report.candidate
    lines = [
        f"Replay against candidate {c['name']} {c['version']} (sha256 {c['sha256'][:12]}) "
        f"from {report.candidate_dir}",
        f"Audit log: {report.store}",
        "Filters: " + _filters_text(report.filters),
        *_held_lines(report),
    ]
    share = f" ({t.changed / t.evaluated:.2%})" if t.evaluated else ""
    lines.append(f"Evaluated {t.evaluated:,} of {t.scanned:,} recorded decisions "
                 f"in {report.seconds:.1f} s: {t.changed:,} changed{share}, "
                 f"{len(t.failures):,} could not be decided again.")
    lines += [f"warning: {w}" for w in report.warnings]
    if t.changed:
        lines += _changed_lines(t)
        lines += _listed_lines(report)
    if t.failures:
        lines += ["", "Could not be decided again:"]
        lines += [f"  {x['loan_id']}  {x['decision_id']}  {x['error']}" for x in t.failures]
    return "\n".join(lines) + "\n"


def _filters_text(f: Filters) -> str:
    chosen = [f"{k} {v}" for k, v in (("since", _timestamp(f.since)),
                                      ("until", _timestamp(f.until)),
                                      ("ruleset version", f.ruleset_version)) if v]
    if f.jurisdictions:
        chosen.append("jurisdiction " + ",".join(sorted(f.jurisdictions)))
    if f.loan_types:
        chosen.append("loan type " + ",".join(sorted(f.loan_types)))
    return "; ".join(chosen) if chosen else "none"


def _held_lines(report: ReplayReport) -> list[str]:
    """What the scanned records were about, whatever the filters."""
    t, f = report.tally, report.filters
    where = "in the time window" if f.since or f.until else "in the whole log"
    return [f"Held {where}: {t.scanned:,} recorded decisions",
            "  by jurisdiction: " + _counts(t.held_jurisdictions),
            "  by loan type: " + _counts(t.held_loan_types)]


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in sorted(counter.items())) or "none"


def _changed_lines(t: Tally) -> list[str]:
    """Changed fields, bearer transitions and money moved."""
    lines = ["", "Changed fields: " + ", ".join(
        f"{name} {t.changed_fields[name]:,}" for name, _, _ in COMPARED
        if t.changed_fields.get(name))]
    lines += ["", "Bearer transitions (changed decisions):"]
    lines += _table(("old", "new", "count"),
                    [(old, new, f"{n:,}") for (old, new), n
                     in _sorted_transitions(t.transitions)], right=frozenset({2}))
    lines += ["", "Money moved (new - old; + means borrowers owe more):"]
    rows = [(code, f"{j.evaluated:,}", f"{j.changed:,}", _signed(j.borrower_owes_delta),
             _signed(j.lender_absorbs_delta))
            for code, j in sorted(t.by_jurisdiction.items()) if j.changed]
    rows.append(("total", f"{t.evaluated:,}", f"{t.changed:,}",
                 _signed(t.borrower_owes_delta), _signed(t.lender_absorbs_delta)))
    lines += _table(("jurisdiction", "evaluated", "changed", "borrower_owes",
                     "lender_absorbs"), rows, right=frozenset({1, 2, 3, 4}))
    unchanged = sorted(code for code, j in t.by_jurisdiction.items() if not j.changed)
    if unchanged:
        lines.append(f"  no change in: {', '.join(unchanged)}")
    return lines


def _listed_lines(report: ReplayReport) -> list[str]:
    """The changed decisions, the first `limit` of them, and how many more there are."""
    shown, total = report.shown, report.tally.changed
    if not shown:
        return ["", f"Changed decisions: {total:,} not listed (--limit N or --all to "
                    "list them)."]
    first = "" if len(shown) == total else f", the first {len(shown):,} of {total:,}"
    lines = ["", f"Changed decisions (log order{first}):"]
    lines += _table(
        ("loan_id", "decision_id", "jur", "bearer", "borrower_owes", "rule", "changed"),
        [(ch["loan_id"], ch["decision_id"], ch["jurisdiction"],
          f"{ch['old']['bearer']} -> {ch['new']['bearer']}",
          f"{ch['old']['borrower_owes']} -> {ch['new']['borrower_owes']}",
          f"{ch['rule']['old']} -> {ch['rule']['new']}",
          ",".join(ch["fields"]))
         for ch in shown])
    if len(shown) < total:
        lines.append(f"  {total - len(shown):,} more not shown: --limit N lists the first N, "
                     "--all lists every one.")
    return lines
