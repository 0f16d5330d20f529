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
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.engine import Engine

from service.audit import merkle, schema
from service.audit.chain import (
    CONTENT_FIELDS,
    ChainBreak,
    ChainWalk,
    canonical_bytes,
    canonical_json,
    content_hash,
    format_timestamp,
)
from service.audit.database import STORE_TIMEOUT, create_audit_engine
from service.audit.deadline import Deadlines, deadlines_for
from service.audit.migrate import upgrade
from service.audit.notes import Signer, Verifier
from service.audit.proofs import LogReads
from service.audit.receipts import Receipt, TreeGroup
from service.audit.records import (
    DuplicateDecisionId,
    DuplicateIdempotencyKey,
    NewRecord,
    PreparedRecord,
    StoreUnavailable,
    VerifyResult,
    prepare,
)
from service.audit.verification import Expected, KeptCheckpoints, TreeCheck
from service.audit.writer import Writer, WriterUnavailable
from service.messages import one_line

log = logging.getLogger("deficiency.audit")

MAX_QUERY_LIMIT = 1000
# Rows per INSERT statement: 64 rows of 15 parameters stay below the smallest limit on
# parameters per statement (999, SQLite before 3.32).
_ROWS_PER_INSERT = 64
_NODES_PER_INSERT = 400

_records = schema.records
_head = schema.chain_head
_tree = schema.tree_nodes
_checkpoints = schema.checkpoints
_rulesets = schema.rulesets


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


def encode_cursor(seq: int) -> str:
    """The cursor `query` takes to continue with the records older than `seq`."""
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
    if not text.isdigit() or text.startswith("0") or encode_cursor(int(text)) != cursor:
        raise ValueError("malformed cursor")
    return int(text)


def _equal(ruleset_version: str | None,
           paths: Mapping[str, str]) -> list[sa.ColumnElement[bool]]:
    """SQL for `query`'s equality filters (JSON paths read as text, on either database)."""
    filters = []
    if ruleset_version is not None:
        filters.append(_records.c.ruleset_version == ruleset_version)
    for dotted, value in paths.items():
        column, *path = dotted.split(".")
        if column not in ("decision", "facts") or not path or not all(path):
            raise ValueError(f"{dotted!r} is not a path into a record's decision or facts")
        filters.append(_records.c[column][tuple(path)].as_string() == value)
    return filters


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and (not isinstance(value, datetime) or value.utcoffset() is None):
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value


def _receipt(group: TreeGroup | None, decision_id: str) -> Receipt:
    assert group is not None  # a record was committed, so the tree grew
    return group.receipt(decision_id)


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


class AuditStore(LogReads):
    """Append-only, hash-chained decision log. Thread-safe; one per process."""

    def __init__(self, engine: Engine, *, busy_timeout: float = STORE_TIMEOUT,
                 signer: Signer | None = None,
                 checkpoint_file: str | Path | None = None) -> None:
        self._engine = engine
        self._signer = signer
        self._checkpoint_file = None if checkpoint_file is None else Path(checkpoint_file)
        self._archived: set[str] = set()  # ruleset sha256s known to be archived
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
    def verifier_key(self) -> str | None:
        """The verifier key of the checkpoints this store signs (None: it signs none)."""
        return None if self._signer is None else self._signer.verifier_key

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
        """`append_each` for records `prepare` has made already."""
        return [o if isinstance(o, Exception) else None for o in self.commit_receipted(prepared)]

    def commit_receipted(self, prepared: list[PreparedRecord]) -> list[Exception | Receipt]:
        """`commit_each`, with each committed record's receipt in place of None."""
        if not prepared:
            return []
        try:
            errors, group = self._commit(prepared, all_or_nothing=False)
        except StoreUnavailable as exc:
            return [self._unavailable_copy(exc) for _ in prepared]
        except self._integrity_error:
            # The check under the chain lock should make this impossible; if a
            # constraint fires anyway, isolate the offender instead of failing all.
            return [self._commit_one(p) for p in prepared]
        return [error if error is not None else _receipt(group, item.decision_id)
                for item, error in zip(prepared, errors, strict=True)]

    def _commit_one(self, prepared: PreparedRecord) -> Exception | Receipt:
        try:
            _, group = self._commit([prepared], all_or_nothing=True)
        except (StoreUnavailable, DuplicateIdempotencyKey, DuplicateDecisionId,
                self._integrity_error) as exc:
            return exc
        return _receipt(group, prepared.decision_id)

    @staticmethod
    def _unavailable_copy(exc: StoreUnavailable) -> StoreUnavailable:
        # A fresh instance per waiter: one exception object raised in several
        # threads would have its traceback rewritten by each.
        copy = StoreUnavailable(*exc.args)
        copy.__cause__ = exc.__cause__
        return copy

    def _commit(self, prepared: list[PreparedRecord], *, all_or_nothing: bool,
                ) -> tuple[list[Exception | None], TreeGroup | None]:
        """One transaction. all_or_nothing: raise the first duplicate, write nothing;
        otherwise write the rest and return the per-record errors.

        Duplicates are looked up first only when a record carries an idempotency
        key (a retried request may well repeat one); fresh decision ids are left to
        the unique index, and only if it objects is the transaction redone with the
        lookup, to say which record was the duplicate.
        """
        check = any(p.idempotency_key is not None for p in prepared)
        try:
            errors, group = self._transaction(prepared, all_or_nothing, check)
        except self._integrity_error:
            if check:
                raise
            errors, group = self._transaction(prepared, all_or_nothing, True)
        if any(error is None for error in errors):
            with self._counter_lock:
                self._transactions += 1
        return errors, group

    def _transaction(self, prepared: list[PreparedRecord], all_or_nothing: bool,
                     check: bool) -> tuple[list[Exception | None], TreeGroup | None]:
        sql = self._sql
        sqlite = sql.sqlite
        written: dict[str, str] = {}  # decision id -> hash, of the rows inserted
        outcome: list[Any] = [None, ()]  # the group's tree, the rulesets it archives

        def write(connection: Any) -> list[Exception | None]:
            written.clear()
            outcome[:] = [None, ()]
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
                seq, prev_hash, frontier_blob = head
                first = seq
                errors: list[Exception | None]
                if conflicts is not None:
                    errors = self._conflicts(conflicts, prepared)
                    if all_or_nothing:
                        for error in errors:
                            if error is not None:
                                raise error  # rolls back: nothing written
                else:
                    errors = [None] * len(prepared)
                frontier = merkle.split_frontier(frontier_blob, seq)
                tree = merkle.TreeBuilder(seq, frontier)
                created: dict[int, bytes] = {}
                rows = []
                leaves: dict[str, int] = {}
                rulesets: dict[str, tuple[str, str, str, Any]] = {}
                for item, error in zip(prepared, errors, strict=True):
                    if error is not None:
                        continue
                    leaves[item.decision_id] = seq
                    seq += 1
                    record_hash = content_hash(item.content, seq, prev_hash)
                    written[item.decision_id] = record_hash
                    rows.append((seq, item.sqlite_time if sqlite else item.recorded_at,
                                 *item.row, prev_hash, record_hash))
                    tree.add(merkle.record_leaf(record_hash), created)
                    prev_hash = record_hash
                    if item.ruleset is not None and item.ruleset[0] not in self._archived:
                        rulesets[item.ruleset[0]] = item.ruleset
                if rows:
                    for start in range(0, len(rows), _ROWS_PER_INSERT):
                        chunk = rows[start:start + _ROWS_PER_INSERT]
                        cursor.execute(sql.insert(len(chunk)),
                                       [value for row in chunk for value in row])
                    nodes = list(created.items())
                    for start in range(0, len(nodes), _NODES_PER_INSERT):
                        chunk_nodes = nodes[start:start + _NODES_PER_INSERT]
                        cursor.execute(sql.tree(len(chunk_nodes)),
                                       [v for node in chunk_nodes for v in node])
                    new_frontier = tree.frontier
                    note = self._sign(cursor, seq, merkle.root_from_frontier(new_frontier))
                    cursor.execute(sql.update_head, (seq, prev_hash, b"".join(new_frontier)))
                    self._archive(cursor, rulesets.values())
                    old = dict(zip((merkle.node_id(*n) for n in merkle.frontier_nodes(first)),
                                   frontier, strict=True))
                    outcome[:] = [TreeGroup(first, seq, {**old, **created}, leaves, note),
                                  tuple(rulesets)]
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
            errors = self._writer.run(write, landed)
        except WriterUnavailable as exc:
            raise StoreUnavailable(f"audit store unavailable: {exc}") from exc
        group, archived = outcome
        self._archived.update(archived)  # committed: they stay archived
        if group is not None and group.checkpoint is not None:
            self._copy_out(group.size, group.checkpoint)
        return errors, group

    def _sign(self, cursor: Any, size: int, root: bytes) -> str | None:
        """Sign the tree's checkpoint and keep it (in the append's transaction)."""
        if self._signer is None:
            return None
        note = self._signer.checkpoint(size, root)
        cursor.execute(self._sql.checkpoint, (size, root, note))
        return note

    def _archive(self, cursor: Any, rulesets: Any) -> None:
        for sha256, name, version, files in rulesets:
            cursor.execute(self._sql.archive, (
                sha256, name, version, canonical_json(dict(files)),
                datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
                if self._sql.sqlite else datetime.now(UTC)))

    def _copy_out(self, size: int, note: str) -> None:
        """Append a checkpoint to the checkpoint file (one JSON line, one write): a copy
        outside the database. A failure is logged, not raised: the records are
        committed and their answer must not turn into an error."""
        path = self._checkpoint_file
        if path is None:
            return
        line = canonical_bytes({"checkpoint": note, "tree_size": size}) + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("checkpoint of tree size %d not copied to %s: %s", size, path, exc)

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
        ruleset_version: str | None = None,
        equal: Mapping[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Records newest first (by seq, i.e. commit order), one page at a time.

        `since` is inclusive and `until` exclusive, on recorded_at. `equal` maps a
        dotted path into a record's `decision` or `facts` document
        (`"decision.outcome.bearer"`, `"facts.jurisdiction"`) to the text it must hold.
        Pass the returned cursor back to get the next (older) page; None means no more.
        Raises ValueError for a malformed cursor, a naive datetime, a path outside
        those two documents or a limit outside 1..MAX_QUERY_LIMIT.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) \
                or not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be an integer from 1 to {MAX_QUERY_LIMIT}")
        statement = sa.select(_records).where(*self._filters(loan_id, since, until),
                                              *_equal(ruleset_version, equal or {}))
        if cursor is not None:
            statement = statement.where(_records.c.seq < _decode_cursor(cursor))
        statement = statement.order_by(_records.c.seq.desc()).limit(limit + 1)
        with self._read() as connection:
            rows = connection.execute(statement).mappings().all()
        page = [_record_dict(row) for row in rows[:limit]]
        next_cursor = encode_cursor(page[-1]["seq"]) if len(rows) > limit else None
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

    def sign_head(self) -> str | None:
        """Sign a checkpoint of the tree as it stands, unless one of its size is kept
        already (a log migrated to the tree, or a new one, has none yet). Returns the
        new note, or None."""
        if self._signer is None:
            return None
        sql = self._sql
        signed: list[tuple[int, str]] = []

        def write(connection: Any) -> None:
            signed.clear()
            cursor = connection.cursor()
            try:
                cursor.execute(sql.begin)
                cursor.execute(sql.head)
                size, _, blob = cursor.fetchone()
                cursor.execute(f"SELECT 1 FROM {_checkpoints.name} WHERE tree_size = {sql.mark}",
                               (size,))
                if cursor.fetchone() is None:
                    root = merkle.root_from_frontier(merkle.split_frontier(blob, size))
                    signed.append((size, self._sign(cursor, size, root) or ""))
            finally:
                cursor.close()

        try:
            self._writer.run(write)
        except WriterUnavailable as exc:
            raise StoreUnavailable(f"audit store unavailable: {exc}") from exc
        for size, note in signed:
            self._copy_out(size, note)
            return note
        return None

    # -- verifying -------------------------------------------------------------------

    def verify(self, *, batch: int = 1000, verifier: Verifier | None = None,
               checkpoints: Sequence[Expected] = (),
               leaves: Mapping[int, tuple[bytes, str]] | None = None,
               progress: Callable[[int, int], bool] | None = None) -> VerifyResult:
        """Walk the chain in seq order, recomputing every hash, and rebuild the Merkle
        tree from the records; report the first problem.

        The tree is compared with the subtrees and the frontier the store keeps, with
        every checkpoint it keeps (their signatures checked with `verifier`, when
        given) and with `checkpoints` (roots vouched for elsewhere: signed checkpoints
        already checked by the caller); `leaves` are leaf hashes receipts vouch for,
        by leaf index. Covers the log up to its last record when the walk starts, so
        it can run while the service appends.

        `progress(checked, last_seq)` is called after each batch; when it returns False
        the walk stops there and the result says so (`stopped`: sound so far, not
        complete)."""
        with _operational_errors(), self._engine.connect() as connection:
            # One statement, one snapshot: the head and the last seq agree.
            head_seq, head_hash, head_frontier, upper = connection.execute(
                sa.select(
                    *(sa.select(column).where(_head.c.id == schema.HEAD_ID).scalar_subquery()
                      for column in (_head.c.seq, _head.c.hash, _head.c.frontier)),
                    sa.select(sa.func.max(_records.c.seq)).scalar_subquery(),
                )
            ).one()
        walk = ChainWalk()
        kept = self._kept_checkpoints(verifier, head_seq or 0)
        tree = TreeCheck([kept, sorted(checkpoints, key=lambda e: e.size)], leaves or {},
                         self.stored_nodes)

        def result(problem: ChainBreak | None) -> VerifyResult:
            if problem is None:
                return VerifyResult(True, walk.checked, tree_size=tree.size, root=tree.root(),
                                    checkpoints_checked=tree.matched,
                                    latest_checkpoint=kept.latest)
            decision_id = problem.decision_id
            if decision_id is None and problem.seq is not None:
                decision_id = self._decision_at(problem.seq)
            return VerifyResult(False, walk.checked, problem.seq, decision_id, problem.reason,
                                checkpoints_checked=tree.matched, latest_checkpoint=kept.latest)

        last = 0
        columns = self._raw_columns()
        problem = tree.start()
        while problem is None and upper is not None and last < upper:
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
                record, unreadable = _decode_raw(row)
                problem = (walk.check(record) if unreadable is None
                           else walk.unreadable(record, unreadable))
                if problem is None:
                    problem = tree.add(record["seq"], record["decision_id"], record["hash"])
                if problem is not None:
                    break
            last = rows[-1]["seq"]
            if problem is None and progress is not None and last < upper \
                    and not progress(walk.checked, upper):
                return VerifyResult(True, walk.checked, stopped=True,
                                    checkpoints_checked=tree.matched,
                                    latest_checkpoint=kept.latest)
        if problem is None:
            problem = walk.check_head(head_seq, head_hash)
        if problem is None:
            problem = tree.finish() or kept.problem
        if problem is None and head_seq is not None and head_seq == tree.size:
            try:
                frontier: list[bytes] | None = merkle.split_frontier(head_frontier, head_seq)
            except ValueError:
                frontier = None
            if frontier != tree.frontier:
                problem = ChainBreak(None, None, "the chain head's Merkle frontier does not"
                                                 " match the records (head altered)")
        return result(problem)

    def _kept_checkpoints(self, verifier: Verifier | None, head: int) -> KeptCheckpoints:
        return KeptCheckpoints(self.checkpoints(after=-1), verifier, head)

    def _decision_at(self, seq: int) -> str | None:
        with self._read() as connection:
            return connection.execute(sa.select(_records.c.decision_id)
                                      .where(_records.c.seq == seq)).scalar()

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


def open_store(url: str, *, busy_timeout: float = STORE_TIMEOUT, signer: Signer | None = None,
               checkpoint_file: str | Path | None = None) -> AuditStore:
    """Open (creating and migrating as needed) the audit log at `url`.

    `sqlite:///path/audit.db` (parent directories are created) or
    `postgresql://…` (driven by psycopg 3). `busy_timeout` is how long a writer
    waits for a lock held by another (SQLite, PostgreSQL) and for a PostgreSQL server
    that stops answering, before giving up with StoreUnavailable; opening (and
    migrating) is bounded by it too. Raises ValueError for an unusable URL and
    StoreUnavailable when the database cannot be reached or migrated.

    With a `signer`, every commit group's checkpoint is signed and kept (and appended
    to `checkpoint_file`), and the tree as it stands is signed now if no checkpoint
    of its size is kept yet.
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
    store = AuditStore(engine, busy_timeout=busy_timeout, signer=signer,
                       checkpoint_file=checkpoint_file)
    try:
        store.sign_head()
    except BaseException:
        store.close()
        raise
    return store
