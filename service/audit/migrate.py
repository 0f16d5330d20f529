"""Bring an audit database's schema up to date, safely from many processes at once."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Engine

from service.audit.database import write_options

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Our own version table, so the audit schema can share a database with others.
VERSION_TABLE = "audit_schema_version"
# Arbitrary constant key for pg_advisory_xact_lock ("audit" in ASCII).
_PG_MIGRATION_LOCK = 0x6175646974


def upgrade(engine: Engine) -> None:
    """Run pending migrations in one transaction, one process at a time.

    The lock is held by the transaction the migrations run in: an advisory lock
    on PostgreSQL, the write lock of BEGIN IMMEDIATE on SQLite. Whoever comes
    second waits, then finds the schema at head and does nothing.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as connection:
        connection.execution_options(**write_options(engine))
        with connection.begin():
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": _PG_MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
