"""Table definitions the store queries through.

The migrations under `migrations/versions/` create these tables; they spell the
DDL out themselves (a migration must not change when this module does), so a
change here needs a new migration too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

HEAD_ID = 1


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every back end.

    PostgreSQL keeps a timestamptz; SQLite has no time zones, so the value is
    stored as naive UTC text, whose fixed-width format also sorts correctly.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# seq is the chain position; on SQLite INTEGER PRIMARY KEY makes it the rowid.
SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

records = sa.Table(
    "audit_records",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=False),
    sa.Column("decision_id", sa.String, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("loan_id", sa.String, nullable=False),
    sa.Column("ruleset_name", sa.String, nullable=False),
    sa.Column("ruleset_version", sa.String, nullable=False),
    sa.Column("ruleset_sha256", sa.String, nullable=False),
    # Plain JSON (text), not JSONB: JSONB rewrites numbers (1e+20 comes back as
    # an integer), which would make an untouched record fail verification.
    sa.Column("facts", sa.JSON, nullable=False),
    sa.Column("decision", sa.JSON, nullable=False),
    sa.Column("trace", sa.JSON, nullable=False),
    sa.Column("duration_ms", sa.Double, nullable=False),
    sa.Column("idempotency_key", sa.String, nullable=True),
    sa.Column("request_hash", sa.String, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_audit_records_decision_id", "decision_id", unique=True),
    sa.Index(
        "ix_audit_records_idempotency_key",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    sa.Index("ix_audit_records_loan_id_seq", "loan_id", "seq"),
    sa.Index("ix_audit_records_recorded_at", "recorded_at"),
)

# One row (id = HEAD_ID): the last seq and hash. Appenders lock it to take turns,
# and verify compares it with the end of the log to catch deleted tail records.
chain_head = sa.Table(
    "audit_chain_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", SeqType, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # The Merkle tree's right edge for seq leaves (`merkle.frontier_nodes`): 32 bytes
    # per complete subtree, largest first. All an append needs to extend the tree.
    sa.Column("frontier", sa.LargeBinary, nullable=True),
)

# The hash of every complete subtree of the Merkle tree, by `merkle.node_id`
# (leaves included), written in the transaction that appends the records.
tree_nodes = sa.Table(
    "audit_tree",
    metadata,
    sa.Column("node", SeqType, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
)

# A signed checkpoint per commit group: the C2SP signed note of the tree at that size.
checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("tree_size", SeqType, primary_key=True, autoincrement=False),
    sa.Column("root", sa.LargeBinary, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
)

# Every ruleset that decided: its rule files' exact text (a JSON object, file name
# to text), from which its sha256 recomputes.
rulesets = sa.Table(
    "audit_rulesets",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("version", sa.String, nullable=False),
    sa.Column("files", sa.Text, nullable=False),
    sa.Column("archived_at", UTCDateTime, nullable=False),
)
