"""SQLAlchemy engines for the audit log: SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

import os
import sqlite3
import time
import weakref
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from service.audit.chain import canonical_json
from service.audit.deadline import deadlines_for

#: Seconds a store waits on the database (locks, and a PostgreSQL server that stops
#: answering) before StoreUnavailable: the default of `audit.timeout`.
STORE_TIMEOUT = 10

# Execution option naming the SQLite BEGIN flavour for a connection's transaction.
SQLITE_BEGIN = "audit_sqlite_begin"


def normalise_url(url: str) -> URL:
    """Parse `url`; PostgreSQL URLs are pointed at the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if parsed.get_driver_name() != "pysqlite":
            raise ValueError(f"unsupported SQLite driver: {parsed.drivername}")
        if not parsed.database or parsed.database == ":memory:" or parsed.query.get("mode"):
            # Every pooled connection would get its own empty database.
            raise ValueError("the audit log needs a SQLite file, not an in-memory database")
        return parsed
    raise ValueError(f"unsupported audit store URL scheme: {parsed.drivername}")


def create_audit_engine(url: str, *, busy_timeout: float = STORE_TIMEOUT) -> Engine:
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed, busy_timeout)
    else:
        engine = _postgresql_engine(parsed, busy_timeout)
    _forget_connections_in_forked_children(engine)
    deadlines_for(engine)  # before the first connection: it must see every one
    return engine


def _forget_connections_in_forked_children(engine: Engine) -> None:
    # A forked process (a worker forked with the store open) must not talk over its parent's
    # sockets or SQLite handles; it opens its own, leaving the parent's alone.
    ref = weakref.ref(engine)

    def after_fork() -> None:
        forked = ref()
        if forked is not None:
            forked.dispose(close=False)

    os.register_at_fork(after_in_child=after_fork)


def _sqlite_engine(url: URL, busy_timeout: float) -> Engine:
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
        pool_size=5,
        max_overflow=10,
        pool_timeout=busy_timeout,
        json_serializer=canonical_json,
    )
    busy_ms = int(busy_timeout * 1000)

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, decides when transactions begin, so
        # writers can ask for BEGIN IMMEDIATE (see the "begin" hook below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock other openers may hold.
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            _switch_to_wal(cursor, busy_timeout)
            # FULL fsyncs the WAL on every commit: a decision answered 2xx survives
            # power loss, not just a process crash (NORMAL only promises the latter).
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        # IMMEDIATE takes the write lock up front, so two appenders never both read
        # the same chain head; readers use a plain (deferred) snapshot.
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _switch_to_wal(cursor: sqlite3.Cursor, busy_timeout: float) -> None:
    """Put the database in WAL mode, waiting up to `busy_timeout` for other openers.

    SQLite answers "database is locked" at once, without calling the busy
    handler, when a journal-mode change could deadlock with another connection
    (several processes opening a new file together: the server's workers), and
    answers the old mode for a change it declines. So this
    retries by hand until the deadline.
    """
    deadline = time.monotonic() + busy_timeout
    pause = 0.001
    while True:
        failure: Exception | None = None
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
            if mode.lower() != "wal":
                (mode,) = cursor.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            failure = exc
        else:
            if mode.lower() == "wal":
                return
        if time.monotonic() + pause > deadline:
            raise failure or sqlite3.OperationalError(
                f"cannot switch the audit database to WAL mode (it stays {mode!r})")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _postgresql_engine(url: URL, busy_timeout: float) -> Engine:
    connect_args: dict[str, Any] = {"application_name": "deficiency-audit"}
    if "connect_timeout" not in url.query:
        # Whole seconds; libpq treats 1 as 2.
        connect_args["connect_timeout"] = max(2, min(5, round(busy_timeout)))
    if "options" not in url.query:
        # An append stuck behind a wedged chain-head lock should fail (503) rather
        # than hang its request thread forever. (A server that stops answering at
        # all is cut off by the store's deadlines: service.audit.deadline.)
        connect_args["options"] = f"-c lock_timeout={max(1, int(busy_timeout * 1000))}"
    return sa.create_engine(
        url,
        connect_args=connect_args,
        # pre_ping replaces connections that died with a restarted server, so the
        # store recovers on its own once PostgreSQL is back.
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_timeout=10,
        pool_recycle=1800,
        json_serializer=canonical_json,
    )


def write_options(engine: Engine) -> dict[str, Any]:
    """Execution options for a connection that will append to the chain."""
    return {SQLITE_BEGIN: "IMMEDIATE"} if engine.dialect.name == "sqlite" else {}
