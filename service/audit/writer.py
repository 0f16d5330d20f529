"""The append path's plumbing: taking turns at the chain head, and the connection the
appends of one process go through.

Appends are serialised twice over: within the process by a mutex, and on SQLite
across processes by an exclusive `flock` on `<database>.lock`, taken before
`BEGIN IMMEDIATE` and released after `COMMIT`. Writers that use the lock
therefore queue in the kernel and are woken the moment the holder is done,
instead of polling SQLite's write lock (SQLite's busy handler sleeps up to 100
ms between tries). Writers that do not use it (an old release, a maintenance
shell) still meet SQLite's own locking, where the busy timeout applies as
before. Waits are bounded by the busy timeout either way: the store answers
"unavailable" rather than hang behind a wedged writer.

The transaction itself runs on the driver's own connection (sqlite3 or psycopg)
with plain SQL: one read of the chain head, one multi-row insert, one update of
the head (on PostgreSQL pipelined: two round trips, COMMIT included). A write
connection is kept checked out between appends (PostgreSQL's
pre-ping is then paid only when a connection is replaced) and dropped after any
operational failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.audit import schema
from service.audit.deadline import Watch, deadlines_for
from service.messages import one_line

log = logging.getLogger("deficiency.audit")

T = TypeVar("T")

#: Record columns in the order the writer binds them.
INSERT_COLUMNS = (
    "seq", "recorded_at", "decision_id", "loan_id", "ruleset_name", "ruleset_version",
    "ruleset_sha256", "facts", "decision", "trace", "duration_ms", "idempotency_key",
    "request_hash", "prev_hash", "hash",
)

# Objects a forked child inherited and must neither use nor let the garbage collector
# close (that would act on the parent's connection or lock).
_inherited: list[Any] = []


class WriterUnavailable(Exception):
    """The write lock or the database could not be had (the caller maps this)."""


class Statements:
    """The append path's SQL for one dialect."""

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"
        mark = "?" if self.sqlite else "%s"
        self.mark = mark
        records, head = schema.records.name, schema.chain_head.name
        lock = "" if self.sqlite else " FOR UPDATE"
        # IMMEDIATE takes SQLite's write lock at once. On PostgreSQL the connection is in
        # autocommit mode and the transaction begun explicitly, so BEGIN travels with
        # the head's SELECT (psycopg waits for its own BEGIN in a pipeline).
        self.begin = "BEGIN IMMEDIATE" if self.sqlite else "BEGIN"
        self.head = f"SELECT seq, hash, frontier FROM {head} WHERE id = {schema.HEAD_ID}{lock}"
        self._insert_head = f"INSERT INTO {records} ({', '.join(INSERT_COLUMNS)}) VALUES "
        self._row = f"({', '.join([mark] * len(INSERT_COLUMNS))})"
        self._inserts: dict[int, str] = {}
        self.update_head = (f"UPDATE {head} SET seq = {mark}, hash = {mark}, "
                            f"frontier = {mark} WHERE id = {schema.HEAD_ID}")
        self._records = records
        self._tree = f"INSERT INTO {schema.tree_nodes.name} (node, hash) VALUES "
        self.checkpoint = (f"INSERT INTO {schema.checkpoints.name} (tree_size, root, note) "
                           f"VALUES ({mark}, {mark}, {mark})")
        self.archive = (f"INSERT INTO {schema.rulesets.name} "
                        "(sha256, name, version, files, archived_at) "
                        f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark}) "
                        "ON CONFLICT (sha256) DO NOTHING")
        self.archived = f"SELECT sha256 FROM {schema.rulesets.name} WHERE sha256 = {mark}"

    def tree(self, nodes: int) -> str:
        """One INSERT of `nodes` tree nodes."""
        return self._tree + ", ".join([f"({self.mark}, {self.mark})"] * nodes)

    def insert(self, rows: int) -> str:
        """One INSERT of `rows` rows: a single statement (one step of the database, and
        one release of the GIL, however many records the group holds)."""
        statement = self._inserts.get(rows)
        if statement is None:
            statement = self._insert_head + ", ".join([self._row] * rows)
            if len(self._inserts) < 64:
                self._inserts[rows] = statement
        return statement

    def landed(self, ids: int) -> str:
        """The hashes recorded under `ids` decision ids."""
        return (f"SELECT decision_id, hash FROM {self._records} "
                f"WHERE decision_id IN ({', '.join([self.mark] * ids)})")

    def conflicts(self, ids: int, keys: int) -> str:
        """Which of `ids` decision ids or `keys` idempotency keys are taken."""
        sql = (f"SELECT decision_id, idempotency_key FROM {self._records} "
               f"WHERE decision_id IN ({', '.join([self.mark] * ids)})")
        if keys:
            sql += f" OR idempotency_key IN ({', '.join([self.mark] * keys)})"
        return sql


class _Ticket:
    __slots__ = ("abandoned", "done", "error", "granted", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.granted = False
        self.abandoned = False
        self.error: OSError | None = None


class _FlockWaiter:
    """A thread that waits in `flock` for others, so that they can stop waiting in time.

    `flock` cannot time out by itself. Each wait is on a descriptor of its own (its
    own open file description, so the lock it gets is distinct from any other this
    process holds); a caller that gives up marks its ticket abandoned, and the
    descriptor is closed — releasing the lock, if it was granted late — by this
    thread.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[int, _Ticket]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-flock-wait", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            fd, ticket = self._requests.get()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                ticket.error = exc
            with ticket.lock:
                if ticket.abandoned or ticket.error is not None:
                    os.close(fd)
                else:
                    ticket.granted = True
            ticket.done.set()

    def acquire(self, path: str, timeout: float) -> int:
        """A new descriptor of `path` holding the exclusive lock; closing it releases it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        ticket = _Ticket()
        self._requests.put((fd, ticket))
        ticket.done.wait(max(timeout, 0.0))
        with ticket.lock:
            if ticket.granted:
                return fd
            ticket.abandoned = True  # the waiter thread closes fd
            if ticket.error is not None:
                raise ticket.error
        raise TimeoutError("another process holds the audit write lock")


class Writer:
    """Turns at the chain head, and the connection to take them on. One per store."""

    def __init__(self, engine: Engine, *, timeout: float) -> None:
        self._engine = engine
        self._timeout = timeout
        self.deadlines = deadlines_for(engine)
        self.statements = Statements(engine.dialect.name)
        database = engine.url.database
        self._lock_path = f"{database}.lock" if self.statements.sqlite and database else None
        self._dbapi = engine.dialect.loaded_dbapi
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        self._connection: Any = None  # a pooled connection, checked out
        self._fd: int | None = None
        self._waiter: _FlockWaiter | None = None

    def _after_fork(self) -> None:
        # The parent's connection and lock file description are not ours to use (the
        # flock is shared with the parent through it) or to close.
        _inherited.append((self._connection, self._fd))
        self._reset()

    # -- turns -----------------------------------------------------------------------

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the write turn (this process's mutex, and the SQLite lock file)."""
        if self._pid != os.getpid():
            self._after_fork()
        deadline = time.monotonic() + self._timeout
        if not self._mutex.acquire(timeout=self._timeout):
            raise WriterUnavailable("audit store busy: another append in this process "
                                    "did not finish in time")
        try:
            fd = self._lock_fd()
            held = self._flock(fd, deadline) if fd is not None else None
            try:
                yield
            finally:
                if held is not None:
                    if held == fd:
                        fcntl.flock(held, fcntl.LOCK_UN)
                    else:
                        os.close(held)  # a waiter's descriptor: closing it unlocks
        finally:
            self._mutex.release()

    def _lock_fd(self) -> int | None:
        if self._fd is None and self._lock_path is not None:
            try:
                self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                # Not fatal: SQLite's own locking (with its busy timeout) still holds.
                log.warning("audit write lock %s unusable (%s); relying on SQLite's locking",
                            self._lock_path, exc)
                self._lock_path = None
        return self._fd

    def _flock(self, fd: int, deadline: float) -> int:
        """Take the lock file's lock; returns the descriptor that holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        if self._waiter is None:
            self._waiter = _FlockWaiter()
        assert self._lock_path is not None
        try:
            return self._waiter.acquire(self._lock_path, deadline - time.monotonic())
        except TimeoutError as exc:
            raise WriterUnavailable(f"audit store busy: {exc}") from None
        except OSError as exc:
            raise WriterUnavailable(f"audit write lock failed: {exc}") from exc

    # -- the connection --------------------------------------------------------------

    def run(self, transaction: Callable[[Any], T],
            landed: Callable[[Any], bool] | None = None) -> T:
        """Call `transaction(dbapi_connection)` holding the turn; commit on return,
        roll back on error. Operational failures (server gone, lock timeout, disk
        full) drop the connection and raise WriterUnavailable; anything else (a
        unique-constraint violation as the driver's IntegrityError) is re-raised.

        A kept connection found dead by the transaction (the server restarted or
        killed it while it sat idle) is replaced and the transaction run again,
        once: it failed before COMMIT was sent, so nothing of it was written.

        A failure once COMMIT was sent leaves the outcome unknown (the connection
        may have died after the database committed, before it said so). Then
        `landed(dbapi_connection)`, on a fresh connection and still holding the
        turn, tells: True, the transaction's records are there and its result is
        returned; otherwise (False, or no answer) WriterUnavailable.
        """
        with self.turn():
            if self._closed:
                raise WriterUnavailable("audit store closed")
            for attempt in (1, 2):
                with self.deadlines.bounded(self._timeout) as watch:
                    fresh = self._connection is None
                    try:
                        if fresh:
                            self._connection = self._engine.raw_connection()
                            if not self.statements.sqlite:
                                self._connection.driver_connection.autocommit = True
                        connection = self._connection.driver_connection
                    except (self._dbapi.OperationalError, self._dbapi.InterfaceError,
                            sa.exc.DBAPIError) as exc:
                        self._drop()
                        raise WriterUnavailable(_cause(exc, watch)) from exc
                    committing = False
                    try:
                        # PostgreSQL: the head's SELECT is one round trip; the inserts,
                        # the head's update and COMMIT go together in a second one.
                        with self._pipeline(connection):
                            result = transaction(connection)
                            committing = True
                            self._send_commit(connection)
                    except (self._dbapi.OperationalError, self._dbapi.InterfaceError) as exc:
                        dead = self._engine.dialect.is_disconnect(exc, connection, None)
                        self._drop()
                        if dead and not committing and not fresh and attempt == 1 \
                                and not watch.expired:
                            log.info("audit write connection was closed; reconnecting")
                            continue
                        failure = WriterUnavailable(_cause(exc, watch))
                        failure.__cause__ = exc
                        if not committing or landed is None:
                            raise failure from exc
                    except BaseException:
                        self._rollback()
                        raise
                    else:
                        return result
                # COMMIT was sent and failed: whether it landed is asked outside the
                # deadline that may have cut it (expired, it would cut the question too).
                if self._landed(landed, failure):
                    return result
                raise failure
            raise AssertionError("unreachable")  # pragma: no cover

    def _send_commit(self, connection: Any) -> None:
        if self.statements.sqlite:
            connection.commit()
        else:
            # Queued in the pipeline: it goes with the inserts when the pipeline ends,
            # and that one wait tells whether all of it was done.
            connection.execute("COMMIT")

    def _landed(self, landed: Callable[[Any], bool], failure: Exception) -> bool:
        """Whether a transaction whose COMMIT failed is committed after all (asked with
        a deadline of its own: the database may still not answer)."""
        with self.deadlines.bounded(self._timeout) as watch:
            try:
                pooled = self._engine.raw_connection()
                try:
                    verdict = landed(pooled.driver_connection)
                    pooled.driver_connection.rollback()
                except BaseException:
                    pooled.invalidate()
                    raise
            except (self._dbapi.Error, sa.exc.DBAPIError) as exc:
                log.warning("audit commit failed (%s) and the database cannot be asked "
                            "whether it committed (%s)", failure, _cause(exc, watch))
                return False
        pooled.close()
        if verdict:
            log.warning("audit commit acknowledgement lost (%s), but the records are "
                        "committed", failure)
        return verdict

    def _pipeline(self, connection: Any) -> contextlib.AbstractContextManager[Any]:
        if self.statements.sqlite or not hasattr(connection, "pipeline"):
            return contextlib.nullcontext()
        return connection.pipeline()  # type: ignore[no-any-return]

    def _rollback(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.driver_connection.rollback()
        except Exception:  # the connection is in no state to be reused
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.invalidate()

    def close(self) -> None:
        """Give the connection back and close the lock file (waits for a running append)."""
        if self._pid != os.getpid():
            self._after_fork()
        acquired = self._mutex.acquire(timeout=self._timeout)
        try:
            self._closed = True
            connection, self._connection = self._connection, None
            if connection is not None:
                with contextlib.suppress(Exception):
                    if not self.statements.sqlite:  # back to the pool as it came
                        connection.driver_connection.autocommit = False
                    connection.close()
            if self._fd is not None:
                os.close(self._fd)
            self._fd = None
        finally:
            if acquired:
                self._mutex.release()


def _cause(exc: BaseException, watch: Watch) -> str:
    return watch.cause if watch.expired else one_line(exc)
