"""The audit log: every decision, durably appended to a hash chain.

One interface over SQLite (the default, a file) and PostgreSQL (by URL):
`open_store(url)` migrates the schema and returns an `AuditStore`. Appends take
turns on the chain head (BEGIN IMMEDIATE on SQLite, a row lock on PostgreSQL),
so the chain stays a single line however many processes write to it.

Reads return plain JSON-ready dicts: the record's fields as appended, with
`recorded_at` as an ISO 8601 UTC string, plus `seq`, `prev_hash` and `hash`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.engine import Engine

from service.audit import schema
from service.audit.chain import CONTENT_FIELDS, ChainWalk, canonical_json, format_timestamp
from service.audit.chain import record_hash as compute_hash
from service.audit.engine import create_audit_engine, write_options
from service.audit.migrate import upgrade

MAX_QUERY_LIMIT = 1000
GROUP_COMMIT_MAX_BATCH = 256

_records = schema.records
_head = schema.chain_head


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


@dataclass(frozen=True)
class _Prepared:
    """A validated record: its hashed content in JSON-ready form."""

    content: dict[str, Any]
    recorded_at: datetime

    @property
    def decision_id(self) -> str:
        return self.content["decision_id"]

    @property
    def idempotency_key(self) -> str | None:
        return self.content["idempotency_key"]


def _prepare(record: NewRecord) -> _Prepared:
    if not isinstance(record, NewRecord):
        raise TypeError(f"expected a NewRecord, got {type(record).__name__}")
    content = {name: getattr(record, name) for name in CONTENT_FIELDS}
    content["recorded_at"] = format_timestamp(record.recorded_at)
    try:
        canonical_json(content)  # refuse what cannot be hashed before taking any lock
    except (TypeError, ValueError) as exc:
        raise ValueError(f"record {record.decision_id} is not JSON-ready: {exc}") from exc
    return _Prepared(content, record.recorded_at)


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _operational_errors() -> Iterator[None]:
    """Turn 'the database is not there right now' into StoreUnavailable."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
        raise StoreUnavailable(f"audit store unavailable: {_one_line(exc)}") from exc
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"audit store unavailable: {_one_line(exc)}") from exc
        raise


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(str(seq).encode("ascii")).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> int:
    if not isinstance(cursor, str) or not cursor or len(cursor) > 32:
        raise ValueError("malformed cursor")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_",
                               validate=True)
        text = raw.decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("malformed cursor") from exc
    if not text.isdigit() or text.startswith("0") or _encode_cursor(int(text)) != cursor:
        raise ValueError("malformed cursor")
    return int(text)


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and (not isinstance(value, datetime) or value.utcoffset() is None):
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value


def _record_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    record = {name: row[name] for name in CONTENT_FIELDS}
    record["recorded_at"] = format_timestamp(row["recorded_at"])
    record["seq"] = row["seq"]
    record["prev_hash"] = row["prev_hash"]
    record["hash"] = row["hash"]
    return record


def _decode_raw(row: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A row read with `AuditStore._raw_columns` as a record dict, or why it cannot be."""
    record = dict(row)
    try:
        for name in ("facts", "decision", "trace"):
            record[name] = json.loads(record[name])
        recorded_at = record["recorded_at"]
        if isinstance(recorded_at, str):  # SQLite keeps naive UTC text
            recorded_at = datetime.fromisoformat(recorded_at).replace(tzinfo=UTC)
        record["recorded_at"] = format_timestamp(recorded_at)
    except (TypeError, ValueError) as exc:
        return record, f"record unreadable (content altered): {exc}"
    return record, None


class AuditStore:
    """Append-only, hash-chained decision log. Thread-safe; one per process."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._counter_lock = threading.Lock()
        self._transactions = 0

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    @property
    def transactions(self) -> int:
        """Append transactions committed through this store (for tests and metrics)."""
        return self._transactions

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------

    def append(self, records: Sequence[NewRecord]) -> None:
        """Append all records in one transaction, in order, or none of them.

        Raises DuplicateIdempotencyKey / DuplicateDecisionId when a record's key or
        id is already in the log (nothing is appended), ValueError for a batch that
        repeats a key or id, StoreUnavailable for operational failures.
        """
        prepared = [_prepare(record) for record in records]
        if not prepared:
            return
        keys = [p.idempotency_key for p in prepared if p.idempotency_key is not None]
        ids = [p.decision_id for p in prepared]
        if len(set(keys)) != len(keys) or len(set(ids)) != len(ids):
            raise ValueError("a batch must not repeat an idempotency key or decision id")
        self._commit(prepared, all_or_nothing=True)

    def append_each(self, records: Sequence[NewRecord]) -> list[Exception | None]:
        """Append in one transaction every record that can be appended.

        Returns one entry per record: None when it was committed, else the error
        that kept it out (a duplicate key or id, including one earlier in the same
        call). An operational failure keeps all of them out: each gets its own
        StoreUnavailable. This is what GroupCommitter commits a group with.
        """
        return self._commit_each([_prepare(record) for record in records])

    def _commit_each(self, prepared: list[_Prepared]) -> list[Exception | None]:
        if not prepared:
            return []
        try:
            return self._commit(prepared, all_or_nothing=False)
        except StoreUnavailable as exc:
            return [self._unavailable_copy(exc) for _ in prepared]
        except sa.exc.IntegrityError:
            # The pre-check under the chain lock should make this impossible; if a
            # constraint fires anyway, isolate the offender instead of failing all.
            return [self._commit_one(p) for p in prepared]

    def _commit_one(self, prepared: _Prepared) -> Exception | None:
        try:
            self._commit([prepared], all_or_nothing=True)
        except (StoreUnavailable, DuplicateIdempotencyKey, DuplicateDecisionId,
                sa.exc.IntegrityError) as exc:
            return exc
        return None

    @staticmethod
    def _unavailable_copy(exc: StoreUnavailable) -> StoreUnavailable:
        # A fresh instance per waiter: one exception object raised in several
        # threads would have its traceback rewritten by each.
        copy = StoreUnavailable(*exc.args)
        copy.__cause__ = exc.__cause__
        return copy

    def _commit(self, prepared: list[_Prepared], *,
                all_or_nothing: bool) -> list[Exception | None]:
        """One transaction. all_or_nothing: raise the first duplicate, write nothing;
        otherwise write the rest and return the per-record errors."""
        rows: list[dict[str, Any]] = []
        with _operational_errors(), self._engine.connect() as connection:
            connection.execution_options(**write_options(self._engine))
            with connection.begin():
                # The chain head row is the turnstile: holding it (FOR UPDATE on
                # PostgreSQL; BEGIN IMMEDIATE already serialises SQLite) means no
                # one else can read the same last hash or write the same seq.
                seq, prev_hash = connection.execute(
                    sa.select(_head.c.seq, _head.c.hash)
                    .where(_head.c.id == schema.HEAD_ID)
                    .with_for_update()
                ).one()
                errors = self._conflicts(connection, prepared)
                if all_or_nothing:
                    for error in errors:
                        if error is not None:
                            raise error  # rolls back: nothing written
                for item, error in zip(prepared, errors, strict=True):
                    if error is not None:
                        continue
                    seq += 1
                    row = {**item.content, "seq": seq, "prev_hash": prev_hash}
                    prev_hash = row["hash"] = compute_hash(row)
                    row["recorded_at"] = item.recorded_at
                    rows.append(row)
                if rows:
                    connection.execute(sa.insert(_records), rows)
                    connection.execute(
                        sa.update(_head)
                        .where(_head.c.id == schema.HEAD_ID)
                        .values(seq=seq, hash=prev_hash)
                    )
        if rows:
            with self._counter_lock:
                self._transactions += 1
        return errors

    @staticmethod
    def _conflicts(connection: sa.Connection,
                   prepared: list[_Prepared]) -> list[Exception | None]:
        """Per record: the duplicate it would create, or None. Runs under the chain
        lock, so nothing can slip in between this check and the insert."""
        ids = {p.decision_id for p in prepared}
        keys = {p.idempotency_key for p in prepared if p.idempotency_key is not None}
        condition = _records.c.decision_id.in_(ids)
        if keys:
            condition = condition | _records.c.idempotency_key.in_(keys)
        taken_ids: set[str] = set()
        taken_keys: dict[str, str] = {}
        for decision_id, key in connection.execute(
            sa.select(_records.c.decision_id, _records.c.idempotency_key).where(condition)
        ):
            taken_ids.add(decision_id)
            if key is not None:
                taken_keys[key] = decision_id
        errors: list[Exception | None] = []
        for item in prepared:
            key = item.idempotency_key
            if key is not None and key in taken_keys:
                errors.append(DuplicateIdempotencyKey(key, taken_keys[key]))
            elif item.decision_id in taken_ids:
                errors.append(DuplicateDecisionId(item.decision_id))
            else:
                errors.append(None)
                taken_ids.add(item.decision_id)
                if key is not None:
                    taken_keys[key] = item.decision_id
        return errors

    # -- reading ---------------------------------------------------------------------

    def get(self, decision_id: str) -> dict[str, Any] | None:
        return self._one(_records.c.decision_id == decision_id)

    def find_by_idempotency_key(self, key: str) -> dict[str, Any] | None:
        return self._one(_records.c.idempotency_key == key)

    def _one(self, condition: sa.ColumnElement[bool]) -> dict[str, Any] | None:
        with _operational_errors(), self._engine.connect() as connection:
            row = connection.execute(sa.select(_records).where(condition)).mappings().first()
        return None if row is None else _record_dict(row)

    def query(
        self,
        *,
        loan_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Records newest first (by seq, i.e. commit order), one page at a time.

        `since` is inclusive and `until` exclusive, on recorded_at. Pass the
        returned cursor back to get the next (older) page; None means no more.
        Raises ValueError for a malformed cursor, a naive datetime or a limit
        outside 1..MAX_QUERY_LIMIT.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) \
                or not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be an integer from 1 to {MAX_QUERY_LIMIT}")
        statement = sa.select(_records).where(*self._filters(loan_id, since, until))
        if cursor is not None:
            statement = statement.where(_records.c.seq < _decode_cursor(cursor))
        statement = statement.order_by(_records.c.seq.desc()).limit(limit + 1)
        with _operational_errors(), self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        page = [_record_dict(row) for row in rows[:limit]]
        next_cursor = _encode_cursor(page[-1]["seq"]) if len(rows) > limit else None
        return page, next_cursor

    @staticmethod
    def _filters(loan_id: str | None, since: datetime | None,
                 until: datetime | None) -> list[sa.ColumnElement[bool]]:
        filters = []
        if loan_id is not None:
            filters.append(_records.c.loan_id == loan_id)
        if _aware("since", since) is not None:
            filters.append(_records.c.recorded_at >= since)
        if _aware("until", until) is not None:
            filters.append(_records.c.recorded_at < until)
        return filters

    def iter_records(
        self, *, since: datetime | None = None, until: datetime | None = None,
        batch: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Every record in seq order, read in batches (no connection is held between
        them). Covers the log as it stood when iteration began."""
        if batch < 1:
            raise ValueError("batch must be positive")
        filters = self._filters(None, since, until)
        upper = self._last_seq()
        last = 0
        while last < upper:
            statement = (
                sa.select(_records)
                .where(_records.c.seq > last, _records.c.seq <= upper, *filters)
                .order_by(_records.c.seq)
                .limit(batch)
            )
            with _operational_errors(), self._engine.connect() as connection:
                rows = connection.execute(statement).mappings().all()
            if not rows:
                return
            for row in rows:
                yield _record_dict(row)
            last = rows[-1]["seq"]

    def _last_seq(self) -> int:
        with _operational_errors(), self._engine.connect() as connection:
            return connection.execute(sa.select(sa.func.max(_records.c.seq))).scalar() or 0

    def count(self) -> int:
        with _operational_errors(), self._engine.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(_records)).scalar()

    # -- verifying -------------------------------------------------------------------

    def verify(self, *, batch: int = 1000) -> VerifyResult:
        """Walk the chain in seq order, recomputing every hash; report the first bad
        record. Covers the log up to its last record when the walk starts, so it
        can run while the service appends."""
        with _operational_errors(), self._engine.connect() as connection:
            # One statement, one snapshot: the head and the last seq agree.
            head_seq, head_hash, upper = connection.execute(
                sa.select(
                    sa.select(_head.c.seq).where(_head.c.id == schema.HEAD_ID)
                    .scalar_subquery(),
                    sa.select(_head.c.hash).where(_head.c.id == schema.HEAD_ID)
                    .scalar_subquery(),
                    sa.select(sa.func.max(_records.c.seq)).scalar_subquery(),
                )
            ).one()
        walk = ChainWalk()
        last = 0
        columns = self._raw_columns()
        while upper is not None and last < upper:
            statement = (
                sa.select(*columns)
                .where(_records.c.seq > last, _records.c.seq <= upper)
                .order_by(_records.c.seq)
                .limit(batch)
            )
            with _operational_errors(), self._engine.connect() as connection:
                rows = connection.execute(statement).mappings().all()
            if not rows:
                break
            for row in rows:
                record, problem = _decode_raw(row)
                chain_break = (walk.check(record) if problem is None
                               else walk.unreadable(record, problem))
                if chain_break is not None:
                    return VerifyResult(False, walk.checked, chain_break.seq,
                                        chain_break.decision_id, chain_break.reason)
            last = rows[-1]["seq"]
        chain_break = walk.check_head(head_seq, head_hash)
        if chain_break is not None:
            return VerifyResult(False, walk.checked, chain_break.seq,
                                chain_break.decision_id, chain_break.reason)
        return VerifyResult(True, walk.checked)

    def _raw_columns(self) -> list[sa.ColumnElement[Any]]:
        """The record columns, with JSON (and SQLite's timestamp text) left unparsed:
        a tampered row holding garbage must be reported, not crash the walk."""
        sqlite = self.backend == "sqlite"
        columns: list[sa.ColumnElement[Any]] = []
        for column in _records.columns:
            if isinstance(column.type, sa.JSON):
                raw = sa.type_coerce(column, sa.Text) if sqlite else sa.cast(column, sa.Text)
                columns.append(raw.label(column.name))
            elif column.name == "recorded_at" and sqlite:
                columns.append(sa.type_coerce(column, sa.Text).label(column.name))
            else:
                columns.append(column)
        return columns

    # -- health ----------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            with self._engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    def close(self) -> None:
        self._engine.dispose()


def open_store(url: str, *, busy_timeout: float = 10.0) -> AuditStore:
    """Open (creating and migrating as needed) the audit log at `url`.

    `sqlite:///path/audit.db` (parent directories are created) or
    `postgresql://…` (driven by psycopg 3). `busy_timeout` is how long a SQLite
    writer waits for another to finish before giving up with StoreUnavailable.
    Raises ValueError for an unusable URL and StoreUnavailable when the database
    cannot be reached or migrated.
    """
    engine = create_audit_engine(url, busy_timeout=busy_timeout)
    try:
        with _operational_errors():
            upgrade(engine)
    except CommandError as exc:
        engine.dispose()
        # Typically a database migrated by a newer release than this one.
        raise StoreUnavailable(f"audit schema cannot be migrated: {exc}") from exc
    except BaseException:
        engine.dispose()
        raise
    return AuditStore(engine)


@dataclass
class _Pending:
    prepared: _Prepared
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class GroupCommitter:
    """Lets many threads append with one transaction (one fsync) per group.

    `submit` blocks until its record is committed, or raises what kept it out.
    A single writer thread takes whatever has queued up (at most `max_batch`)
    while the previous group was committing and commits it together, so the
    busier the server, the larger the groups.
    """

    def __init__(self, store: AuditStore, *, max_batch: int = GROUP_COMMIT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be positive")
        self._store = store
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._wakeup = threading.Condition()
        self._closed = False
        self.transactions = 0  # groups committed (or attempted)
        self.committed = 0  # records committed
        self._writer = threading.Thread(target=self._run, name="audit-group-commit",
                                        daemon=True)
        self._writer.start()

    def submit(self, record: NewRecord) -> None:
        pending = _Pending(_prepare(record))  # bad records fail here, not in the group
        with self._wakeup:
            if self._closed:
                raise RuntimeError("the audit group committer is closed")
            self._queue.append(pending)
            self._wakeup.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error

    def close(self) -> None:
        """Commit what is queued, then stop the writer thread."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._writer.join()

    def __enter__(self) -> GroupCommitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if not self._queue:
                    return  # closed and drained
                group = [self._queue.popleft()
                         for _ in range(min(len(self._queue), self._max_batch))]
            try:
                errors = self._store._commit_each([p.prepared for p in group])
            except Exception as exc:  # never leave a submitter waiting forever
                errors = [RuntimeError(f"audit writer failed: {exc!r}") for _ in group]
            self.transactions += 1
            self.committed += sum(error is None for error in errors)
            for pending, error in zip(group, errors, strict=True):
                pending.error = error
                pending.done.set()
