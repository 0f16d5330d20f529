"""Alembic environment for the audit log.

Migrations only ever run through `service.audit.migrate.upgrade`, which hands
over a connection that already holds the migration lock and its transaction.
"""

from alembic import context

from service.audit.migrate import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run audit migrations through service.audit.migrate.upgrade")

context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
