"""Every audit test runs against SQLite and, for real, PostgreSQL.

Each test session gets a fresh database (`audit_test_<random>`), created through
the admin URL and dropped afterwards, so parallel runs never share state; its
tables are dropped after every test. Set AUDIT_TEST_PG_ADMIN_URL to point
elsewhere than postgres@127.0.0.1:5432/test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from service.audit import AuditStore, open_store

PG_ADMIN_URL = os.environ.get(
    "AUDIT_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
def admin_engine() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


def create_database() -> str:
    """A fresh, uniquely named database; returns its URL."""
    name = f"audit_test_{uuid.uuid4().hex[:16]}"
    engine = admin_engine()
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc.orig}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`",
            pytrace=False,
        )
    finally:
        engine.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    engine = admin_engine()
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(
                f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One database per test session (so per parallel run), dropped at the end."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """The session's database, emptied after each test: cheaper than a database
    per test, and every test still starts from nothing and runs the migrations."""
    yield pg_database
    engine = sa.create_engine(pg_database, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            connection.exec_driver_sql(
                "DROP TABLE IF EXISTS audit_records, audit_chain_head, audit_schema_version,"
                " audit_tree, audit_checkpoints, audit_rulesets")
    finally:
        engine.dispose()


@pytest.fixture
def own_pg_url() -> Iterator[str]:
    """A database of the test's own, for tests that drop it."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/log/audit.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url: str) -> Iterator[AuditStore]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def raw(store_url: str) -> Iterator[sa.Engine]:
    """Direct SQL access to the store's database, for tampering with it."""
    engine = sa.create_engine(make_url(store_url).set(
        drivername="sqlite" if store_url.startswith("sqlite") else "postgresql+psycopg"))
    try:
        yield engine
    finally:
        engine.dispose()
