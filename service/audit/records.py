"""What is appended to the audit log: a new record, its validation and its encoding
(`prepare`), and the errors an append can end in."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.audit.chain import Fragment, canonical_bytes


class StoreUnavailable(Exception):
    """The database cannot be reached or a transaction failed for an operational
    reason (server down, lock timeout, disk full). Worth retrying later: 503."""


class DuplicateIdempotencyKey(Exception):
    """A record with this idempotency key is already in the log."""

    def __init__(self, key: str, decision_id: str) -> None:
        super().__init__(f"idempotency key {key!r} already recorded for decision {decision_id}")
        self.key = key
        self.decision_id = decision_id


class DuplicateDecisionId(Exception):
    """A record with this decision id is already in the log."""

    def __init__(self, decision_id: str) -> None:
        super().__init__(f"decision {decision_id} is already recorded")
        self.decision_id = decision_id


@dataclass(frozen=True)
class NewRecord:
    """A decision to append. facts, decision and trace are JSON-ready already
    (str/int/bool/None/list/dict, money as strings)."""

    decision_id: str
    recorded_at: datetime
    loan_id: str
    ruleset_name: str
    ruleset_version: str
    ruleset_sha256: str
    facts: dict
    decision: dict
    trace: list
    duration_ms: float
    idempotency_key: str | None = None
    request_hash: str | None = None
    #: The ruleset's files (name -> exact text), archived with the first record that
    #: names its sha256; not part of the record itself.
    ruleset_files: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("decision_id", "loan_id", "ruleset_name", "ruleset_version",
                     "ruleset_sha256"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        for name in ("idempotency_key", "request_hash"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string or None")
        if not isinstance(self.recorded_at, datetime) or self.recorded_at.utcoffset() is None:
            raise ValueError("recorded_at must be a timezone-aware datetime")
        for name, kind in (("facts", dict), ("decision", dict), ("trace", list)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}")
        files = self.ruleset_files
        if files is not None and (not isinstance(files, Mapping) or not files or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
            raise ValueError("ruleset_files must map file names to their text")
        duration = self.duration_ms
        if isinstance(duration, bool) or not isinstance(duration, int | float) \
                or not math.isfinite(duration) or duration < 0:
            raise ValueError("duration_ms must be a finite, non-negative number")
        # Stored as UTC and as a float: normalise now so the hash computed at append
        # equals the hash recomputed from what the database gives back.
        object.__setattr__(self, "recorded_at", self.recorded_at.astimezone(UTC))
        object.__setattr__(self, "duration_ms", float(duration))


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    first_bad_decision_id: str | None = None
    reason: str | None = None
    # What the walk saw besides the verdict (not compared: two results are equal when
    # their verdicts are).
    #: The tree's size and root as recomputed from the records (when the walk got there).
    tree_size: int | None = field(default=None, compare=False)
    root: bytes | None = field(default=None, compare=False)
    #: Signed checkpoints compared with the recomputed tree (stored and given).
    checkpoints_checked: int = field(default=0, compare=False)
    #: The size of the latest checkpoint stored in the log (None: none is).
    latest_checkpoint: int | None = field(default=None, compare=False)
    #: The walk was stopped by its caller before the end: no problem in `checked`
    #: records, the rest not looked at.
    stopped: bool = field(default=False, compare=False)


class PreparedRecord:
    """A validated record, encoded once: its facts, decision and trace as canonical JSON
    bytes, from which both the hashed content (as fragments) and the column values
    are made when it is written. `parts` is the plain tuple it is made of."""

    __slots__ = ("_content", "_row", "decision_id", "idempotency_key", "parts", "ruleset",
                 "sqlite_time")

    def __init__(self, parts: tuple[Any, ...],
                 ruleset: tuple[str, str, str, Mapping[str, str]] | None = None) -> None:
        self.parts = parts
        #: (sha256, name, version, files) to archive, or None.
        self.ruleset = ruleset
        self.decision_id: str = parts[0]
        # SQLite keeps naive UTC text, spelled as SQLAlchemy spells it (so reads and
        # range queries through SQLAlchemy see the same values).
        self.sqlite_time: str = parts[1]
        self.idempotency_key: str | None = parts[10]
        self._content: dict[str, Any] | None = None
        self._row: tuple[Any, ...] | None = None

    @property
    def recorded_at(self) -> datetime:
        return datetime.fromisoformat(self.sqlite_time).replace(tzinfo=UTC)

    @property
    def content(self) -> dict[str, Any]:
        """The fields the record's hash covers (facts, decision, trace as fragments)."""
        if self._content is None:
            (decision_id, sqlite_time, loan_id, ruleset_name, ruleset_version, ruleset_sha256,
             facts, decision, trace, duration_ms, idempotency_key, request_hash) = self.parts
            self._content = {
                "decision_id": decision_id,
                "recorded_at": f"{sqlite_time[:10]}T{sqlite_time[11:]}Z",  # format_timestamp
                "loan_id": loan_id,
                "ruleset_name": ruleset_name,
                "ruleset_version": ruleset_version,
                "ruleset_sha256": ruleset_sha256,
                "facts": Fragment(facts),
                "decision": Fragment(decision),
                "trace": Fragment(trace),
                "duration_ms": duration_ms,
                "idempotency_key": idempotency_key,
                "request_hash": request_hash,
            }
        return self._content

    @property
    def row(self) -> tuple[Any, ...]:
        """Column values after seq and recorded_at, up to (not including) prev_hash."""
        if self._row is None:
            (decision_id, _, loan_id, ruleset_name, ruleset_version, ruleset_sha256,
             facts, decision, trace, duration_ms, idempotency_key, request_hash) = self.parts
            self._row = (decision_id, loan_id, ruleset_name, ruleset_version, ruleset_sha256,
                         facts.decode("utf-8"), decision.decode("utf-8"),
                         trace.decode("utf-8"), duration_ms, idempotency_key, request_hash)
        return self._row


def prepare(record: NewRecord) -> PreparedRecord:
    """Validate and encode a record for appending (ValueError if it is not JSON-ready)."""
    if not isinstance(record, NewRecord):
        raise TypeError(f"expected a NewRecord, got {type(record).__name__}")
    try:
        facts = canonical_bytes(record.facts)
        decision = canonical_bytes(record.decision)
        trace = canonical_bytes(record.trace)
        # The scalars must encode too (a lone surrogate would not), before any lock.
        canonical_bytes([record.decision_id, record.loan_id, record.ruleset_name,
                         record.ruleset_version, record.ruleset_sha256,
                         record.idempotency_key, record.request_hash])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"record {record.decision_id} is not JSON-ready: {exc}") from exc
    ruleset = None
    if record.ruleset_files is not None:
        ruleset = (record.ruleset_sha256, record.ruleset_name, record.ruleset_version,
                   record.ruleset_files)
    # recorded_at is UTC already (NewRecord normalises it).
    return PreparedRecord((
        record.decision_id, record.recorded_at.strftime("%Y-%m-%d %H:%M:%S.%f"),
        record.loan_id, record.ruleset_name, record.ruleset_version, record.ruleset_sha256,
        facts, decision, trace, record.duration_ms, record.idempotency_key,
        record.request_hash), ruleset)
