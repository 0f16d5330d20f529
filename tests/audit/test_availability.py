"""Opening, migrating, and failing (and recovering) the way the HTTP layer needs."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa

from service.audit import GroupCommitter, StoreUnavailable, open_store
from service.audit.database import normalise_url
from tests.audit.conftest import admin_engine
from tests.audit.records import (
    append_one,
    append_past_a_file_size_limit,
    join_or_kill,
    make_record,
)


@pytest.mark.parametrize("url, driver", [
    ("postgresql://u@db/audit", "postgresql+psycopg"),
    ("postgres://u@db/audit", "postgresql+psycopg"),
    ("postgresql+psycopg://u@db/audit", "postgresql+psycopg"),
    ("sqlite:///var/audit.db", "sqlite"),
])
def test_urls_are_normalised_to_the_supported_drivers(url, driver):
    assert normalise_url(url).drivername == driver


@pytest.mark.parametrize("url", [
    "sqlite://", "sqlite:///:memory:", "mysql://u@db/audit", "not a url",
    "sqlite+aiosqlite:///x.db",
])
def test_unusable_urls_are_value_errors(url):
    with pytest.raises(ValueError):
        open_store(url)


def test_opening_creates_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "audit.db"
    with open_store(f"sqlite:///{path}") as store:
        store.append([make_record(1)])
    assert path.is_file()


def test_sqlite_is_set_up_for_durability_and_concurrency(tmp_path):
    with open_store(f"sqlite:///{tmp_path}/audit.db") as store, \
            store._engine.connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA synchronous").scalar() == 2  # FULL
        assert pragma("PRAGMA busy_timeout").scalar() == 10_000


def _new_file_held_by_a_writer(path):
    """A fresh SQLite file (still in rollback-journal mode) whose write lock another
    connection holds, as when a second process is creating the schema."""
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE other_process (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO other_process VALUES (1)")
    return writer


def test_opening_waits_for_another_opener_holding_the_write_lock(tmp_path):
    # SQLite refuses the switch to WAL at once ("database is locked", no busy
    # handler) while another connection holds the write lock: worker processes
    # opening a new audit file together failed like this until it was retried.
    path = tmp_path / "audit.db"
    writer = _new_file_held_by_a_writer(path)
    release = threading.Timer(0.3, writer.execute, args=("COMMIT",))
    release.start()
    try:
        started = time.monotonic()
        with open_store(f"sqlite:///{path}", busy_timeout=5) as store:
            waited = time.monotonic() - started
            store.append([make_record(1)])
            with store._engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert store.count() == 1 and store.verify().ok
        assert waited >= 0.25
    finally:
        release.join()
        writer.close()


def test_opening_gives_up_on_a_write_lock_held_past_the_busy_timeout(tmp_path):
    path = tmp_path / "audit.db"
    writer = _new_file_held_by_a_writer(path)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            open_store(f"sqlite:///{path}", busy_timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 5
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_an_io_error_in_the_middle_of_a_write_refuses_it_and_leaves_nothing_behind(tmp_path):
    # The database and its WAL may not grow past 200 kB: writes beyond fail (EFBIG).
    url = f"sqlite:///{tmp_path}/audit.db"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=append_past_a_file_size_limit,
                            args=(url, 200_000, results), daemon=True)
    child.start()
    assert join_or_kill([child], timeout=120) == [0]
    appended, refused, causes, after = results.get(timeout=10)
    assert appended > 0 and refused > 0 and after == 20
    assert causes == ["audit store unavailable: disk I/O error"]
    with open_store(url) as store:
        # Exactly the appends that returned: none of the refused ones, none half-written.
        assert store.count() == appended + after
        assert [r["loan_id"] for r in store.iter_records()] == \
            ["limited"] * appended + ["after"] * after
        result = store.verify()
        assert result.ok and result.checked == appended + after


def _commit_then_lose_the_answer(store, monkeypatch, *, commits: bool, then=None) -> list[int]:
    """Make the store's next COMMIT fail as a connection dropped at that moment would:
    after the database committed (`commits`) or before. `then` runs after it."""
    writer = store._writer
    calls: list[int] = []

    def send_commit(connection):
        calls.append(1)
        monkeypatch.setattr(writer, "_send_commit", lambda c: c.commit())  # once only
        if commits:
            connection.commit()
        else:
            connection.rollback()
        if then is not None:
            then()
        raise writer._dbapi.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(writer, "_send_commit", send_commit)
    return calls


def test_a_commit_whose_acknowledgement_is_lost_is_found_committed(
        store, monkeypatch, caplog):
    store.append([make_record(1)])
    calls = _commit_then_lose_the_answer(store, monkeypatch, commits=True)
    store.append([make_record(2, key="k2"), make_record(3)])  # no error: it is recorded
    assert calls == [1]
    assert "acknowledgement lost" in caplog.text and "records are committed" in caplog.text
    store.append([make_record(4)])
    assert store.count() == 4 and store.verify().ok
    assert store.find_by_idempotency_key("k2") is not None


def test_a_commit_that_failed_before_committing_is_unavailable(store, monkeypatch):
    store.append([make_record(1)])
    calls = _commit_then_lose_the_answer(store, monkeypatch, commits=False)
    with pytest.raises(StoreUnavailable, match="server closed the connection"):
        store.append([make_record(2)])
    assert calls == [1]
    store.append([make_record(3)])
    assert store.count() == 2 and store.verify().ok


def test_a_lost_acknowledgement_that_cannot_be_checked_is_unavailable(store, monkeypatch):
    # The conservative answer: 503, though the record may be (here: is) in the log;
    # a retry with the same Idempotency-Key then finds it.
    def database_gone():
        def refuse():
            raise store._writer._dbapi.OperationalError("connection refused")
        monkeypatch.setattr(store._writer._engine, "raw_connection", refuse)

    _commit_then_lose_the_answer(store, monkeypatch, commits=True, then=database_gone)
    with pytest.raises(StoreUnavailable):
        store.append([make_record(1, key="k1")])
    monkeypatch.undo()
    assert store.count() == 1 and store.find_by_idempotency_key("k1") is not None


def test_the_schema_is_at_head_and_reopening_does_not_migrate_again(store_url):
    for _ in range(2):
        with open_store(store_url) as store, store._engine.connect() as connection:
            version = connection.exec_driver_sql(
                "SELECT version_num FROM audit_schema_version").scalars().all()
            assert version == ["0002"]


def test_a_database_from_a_newer_release_is_refused_clearly(store_url, raw):
    open_store(store_url).close()
    with raw.begin() as connection:
        connection.exec_driver_sql("UPDATE audit_schema_version SET version_num = '9999'")
    with pytest.raises(StoreUnavailable, match="cannot be migrated"):
        open_store(store_url)


def test_an_unreachable_postgresql_is_store_unavailable():
    with pytest.raises(StoreUnavailable, match="unavailable"):
        open_store("postgresql://postgres@127.0.0.1:1/audit?connect_timeout=2")


def test_a_locked_sqlite_file_is_store_unavailable_then_recovers(tmp_path):
    path = tmp_path / "audit.db"
    with open_store(f"sqlite:///{path}", busy_timeout=0.2) as store:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailable, match="locked"):
                store.append([make_record(1)])
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        store.append([make_record(2)])
        assert store.count() == 1 and store.verify().ok


def test_postgresql_connections_killed_by_the_server_are_replaced(pg_url):
    with open_store(pg_url) as store:
        store.append([make_record(1)])
        assert store.count() == 1  # pooled connections now exist
        name = sa.engine.make_url(pg_url).database
        with admin_engine().connect() as admin:
            killed = admin.execute(
                sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = :name"), {"name": name}).scalar()
        assert killed >= 1
        store.append([make_record(2)])  # pre-ping noticed and reconnected
        assert store.count() == 2 and store.verify().ok


def test_a_vanished_postgresql_database_is_store_unavailable(own_pg_url):
    pg_url = own_pg_url
    store = open_store(pg_url)
    committer = GroupCommitter(store)
    try:
        store.append([make_record(1)])
        name = sa.engine.make_url(pg_url).database
        with admin_engine().connect() as admin:
            admin.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        assert store.ping() is False
        with pytest.raises(StoreUnavailable):
            store.append([make_record(2)])
        with pytest.raises(StoreUnavailable):
            committer.submit(make_record(3))
        for read in (lambda: store.get("x"), store.count, store.verify,
                     lambda: store.query(), lambda: list(store.iter_records())):
            with pytest.raises(StoreUnavailable):
                read()
    finally:
        committer.close()
        store.close()


def test_a_forked_worker_uses_its_own_connections(store):
    store.append([make_record(1)])  # the parent now holds pooled connections
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=append_one, args=(store, n), daemon=True)
                for n in (2, 3)]
    for child in children:
        child.start()
    assert join_or_kill(children, timeout=60) == [0, 0]
    store.append([make_record(4)])
    assert store.count() == 4 and store.verify().ok
