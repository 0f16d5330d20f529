"""The audit log: every decision, durably appended to a hash chain.

One interface over SQLite (the default, a file) and PostgreSQL (by URL):
`open_store(url)` migrates the schema and returns an `AuditStore`. Appends take
turns on the chain head (a lock file and BEGIN IMMEDIATE on SQLite, a row lock on
PostgreSQL; see `writer.py`), so the chain stays a single line however many
processes write to it. Each record is encoded once (`prepare`): the canonical
JSON of its facts, decision and trace is both what is stored and what its hash
covers.

Reads return plain JSON-ready dicts: the record's fields as appended, with
`recorded_at` as an ISO 8601 UTC string, plus `seq`, `prev_hash` and `hash`.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.engine import Engine

from service.audit import schema
from service.audit.chain import (
    CONTENT_FIELDS,
    ChainWalk,
    content_hash,
    format_timestamp,
)
from service.audit.database import STORE_TIMEOUT, create_audit_engine
from service.audit.deadline import Deadlines, deadlines_for
from service.audit.migrate import upgrade
from service.audit.records import (
    DuplicateDecisionId,
    DuplicateIdempotencyKey,
    NewRecord,
    PreparedRecord,
    StoreUnavailable,
    VerifyResult,
    prepare,
)
from service.audit.writer import Writer, WriterUnavailable
from service.messages import one_line

MAX_QUERY_LIMIT = 1000
# Rows per INSERT statement: 64 rows of 15 parameters stay below the smallest limit on
# parameters per statement (999, SQLite before 3.32).
_ROWS_PER_INSERT = 64

_records = schema.records
_head = schema.chain_head


@contextmanager
def _operational_errors() -> Iterator[None]:
    """Turn 'the database is not there right now' into StoreUnavailable."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
        raise StoreUnavailable(f"audit store unavailable: {one_line(exc)}") from exc
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"audit store unavailable: {one_line(exc)}") from exc
        raise


@contextmanager
def _answered_within(deadlines: Deadlines, seconds: float) -> Iterator[None]:
    """`_operational_errors`, and a database that does not answer within `seconds` cut
    off (`service.audit.deadline`) and reported as such."""
    with deadlines.bounded(seconds) as watch:
        try:
            with _operational_errors():
                yield
        except StoreUnavailable as exc:
            if watch.expired:
                raise StoreUnavailable(f"audit store unavailable: {watch.cause}") from exc
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

    def __init__(self, engine: Engine, *, busy_timeout: float = STORE_TIMEOUT) -> None:
        self._engine = engine
        self._busy_timeout = busy_timeout
        self._writer = Writer(engine, timeout=busy_timeout)
        self._deadlines = self._writer.deadlines
        self._sql = self._writer.statements
        self._integrity_error: type[Exception] = engine.dialect.loaded_dbapi.IntegrityError
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
        prepared = [prepare(record) for record in records]
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
        return self.commit_each([prepare(record) for record in records])

    def commit_each(self, prepared: list[PreparedRecord]) -> list[Exception | None]:
        if not prepared:
            return []
        try:
            return self._commit(prepared, all_or_nothing=False)
        except StoreUnavailable as exc:
            return [self._unavailable_copy(exc) for _ in prepared]
        except self._integrity_error:
            # The check under the chain lock should make this impossible; if a
            # constraint fires anyway, isolate the offender instead of failing all.
            return [self._commit_one(p) for p in prepared]

    def _commit_one(self, prepared: PreparedRecord) -> Exception | None:
        try:
            self._commit([prepared], all_or_nothing=True)
        except (StoreUnavailable, DuplicateIdempotencyKey, DuplicateDecisionId,
                self._integrity_error) as exc:
            return exc
        return None

    @staticmethod
    def _unavailable_copy(exc: StoreUnavailable) -> StoreUnavailable:
        # A fresh instance per waiter: one exception object raised in several
        # threads would have its traceback rewritten by each.
        copy = StoreUnavailable(*exc.args)
        copy.__cause__ = exc.__cause__
        return copy

    def _commit(self, prepared: list[PreparedRecord], *,
                all_or_nothing: bool) -> list[Exception | None]:
        """One transaction. all_or_nothing: raise the first duplicate, write nothing;
        otherwise write the rest and return the per-record errors.

        Duplicates are looked up first only when a record carries an idempotency
        key (a retried request may well repeat one); fresh decision ids are left to
        the unique index, and only if it objects is the transaction redone with the
        lookup, to say which record was the duplicate.
        """
        check = any(p.idempotency_key is not None for p in prepared)
        try:
            errors = self._transaction(prepared, all_or_nothing, check)
        except self._integrity_error:
            if check:
                raise
            errors = self._transaction(prepared, all_or_nothing, True)
        if any(error is None for error in errors):
            with self._counter_lock:
                self._transactions += 1
        return errors

    def _transaction(self, prepared: list[PreparedRecord], all_or_nothing: bool,
                     check: bool) -> list[Exception | None]:
        sql = self._sql
        sqlite = sql.sqlite
        written: dict[str, str] = {}  # decision id -> hash, of the rows inserted

        def write(connection: Any) -> list[Exception | None]:
            written.clear()
            cursor = connection.cursor()
            conflicts = connection.cursor() if check else None
            try:
                # On SQLite the write lock is taken now: nobody else can read the same
                # chain head (the writer's lock file makes this wait-free).
                cursor.execute(sql.begin)
                # The chain head row is the turnstile (FOR UPDATE on PostgreSQL).
                cursor.execute(sql.head)
                if conflicts is not None:
                    # Sent before the head is read: on PostgreSQL it travels in the same
                    # round trip, and runs after the lock is taken (a pipeline keeps order).
                    self._ask_conflicts(conflicts, prepared)
                head = cursor.fetchone()
                if head is None:
                    raise RuntimeError("audit chain head row is missing")
                seq, prev_hash = head
                errors: list[Exception | None]
                if conflicts is not None:
                    errors = self._conflicts(conflicts, prepared)
                    if all_or_nothing:
                        for error in errors:
                            if error is not None:
                                raise error  # rolls back: nothing written
                else:
                    errors = [None] * len(prepared)
                rows = []
                for item, error in zip(prepared, errors, strict=True):
                    if error is not None:
                        continue
                    seq += 1
                    record_hash = content_hash(item.content, seq, prev_hash)
                    written[item.decision_id] = record_hash
                    rows.append((seq, item.sqlite_time if sqlite else item.recorded_at,
                                 *item.row, prev_hash, record_hash))
                    prev_hash = record_hash
                if rows:
                    for start in range(0, len(rows), _ROWS_PER_INSERT):
                        chunk = rows[start:start + _ROWS_PER_INSERT]
                        cursor.execute(sql.insert(len(chunk)),
                                       [value for row in chunk for value in row])
                    cursor.execute(sql.update_head, (seq, prev_hash))
                return errors
            finally:
                cursor.close()
                if conflicts is not None:
                    conflicts.close()

        def landed(connection: Any) -> bool:
            """Whether the rows `write` inserted are all in the log."""
            if not written:
                return False
            cursor = connection.cursor()
            try:
                ids = list(written)
                found = 0
                for start in range(0, len(ids), _ROWS_PER_INSERT):
                    chunk = ids[start:start + _ROWS_PER_INSERT]
                    cursor.execute(sql.landed(len(chunk)), chunk)
                    # Our rows, not another's with the same id: the hash covers the seq.
                    found += sum(written.get(d) == h for d, h in cursor.fetchall())
            finally:
                cursor.close()
            return found == len(ids)

        try:
            return self._writer.run(write, landed)
        except WriterUnavailable as exc:
            raise StoreUnavailable(f"audit store unavailable: {exc}") from exc

    def _ask_conflicts(self, cursor: Any, prepared: list[PreparedRecord]) -> None:
        """Look up the decision ids and idempotency keys of `prepared` already taken
        (read by `_conflicts`). Runs under the chain lock, so nothing can slip in
        between this check and the insert."""
        ids = list({p.decision_id: None for p in prepared})
        keys = list({p.idempotency_key: None for p in prepared
                     if p.idempotency_key is not None})
        cursor.execute(self._sql.conflicts(len(ids), len(keys)), [*ids, *keys])

    @staticmethod
    def _conflicts(cursor: Any, prepared: list[PreparedRecord]) -> list[Exception | None]:
        """Per record: the duplicate it would create, or None (from `_ask_conflicts`)."""
        taken_ids: set[str] = set()
        taken_keys: dict[str, str] = {}
        for decision_id, key in cursor.fetchall():
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

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        """A connection for one short read; StoreUnavailable when the database is not
        there or does not answer within the busy timeout."""
        with _answered_within(self._deadlines, self._busy_timeout), \
                self._engine.connect() as connection:
            yield connection

    def get(self, decision_id: str) -> dict[str, Any] | None:
        return self._one(_records.c.decision_id == decision_id)

    def find_by_idempotency_key(self, key: str) -> dict[str, Any] | None:
        return self._one(_records.c.idempotency_key == key)

    def _one(self, condition: sa.ColumnElement[bool]) -> dict[str, Any] | None:
        with self._read() as connection:
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
        with self._read() as connection:
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
            with self._read() as connection:
                rows = connection.execute(statement).mappings().all()
            if not rows:
                return
            for row in rows:
                yield _record_dict(row)
            last = rows[-1]["seq"]

    def _last_seq(self) -> int:
        with self._read() as connection:
            return connection.execute(sa.select(sa.func.max(_records.c.seq))).scalar() or 0

    def count(self) -> int:
        with self._read() as connection:
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
        """Whether the database answers (within the busy timeout: a probe must not hang)."""
        with self._deadlines.bounded(self._busy_timeout):
            try:
                with self._engine.connect() as connection:
                    connection.execute(sa.text("SELECT 1"))
            except sa.exc.SQLAlchemyError:
                return False
        return True

    def close(self) -> None:
        self._writer.close()
        self._deadlines.stop()
        self._engine.dispose()


def open_store(url: str, *, busy_timeout: float = STORE_TIMEOUT) -> AuditStore:
    """Open (creating and migrating as needed) the audit log at `url`.

    `sqlite:///path/audit.db` (parent directories are created) or
    `postgresql://…` (driven by psycopg 3). `busy_timeout` is how long a writer
    waits for a lock held by another (SQLite, PostgreSQL) and for a PostgreSQL server
    that stops answering, before giving up with StoreUnavailable; opening (and
    migrating) is bounded by it too. Raises ValueError for an unusable URL and
    StoreUnavailable when the database cannot be reached or migrated.
    """
    engine = create_audit_engine(url, busy_timeout=busy_timeout)
    try:
        with _answered_within(deadlines_for(engine), busy_timeout):
            upgrade(engine)
    except CommandError as exc:
        engine.dispose()
        # Typically a database migrated by a newer release than this one.
        raise StoreUnavailable(f"audit schema cannot be migrated: {exc}") from exc
    except BaseException:
        engine.dispose()
        raise
    return AuditStore(engine, busy_timeout=busy_timeout)
