"""Create the audit log: records and the chain head.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "0" * 64
SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("seq", SeqType, primary_key=True, autoincrement=False),
        sa.Column("decision_id", sa.String, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("loan_id", sa.String, nullable=False),
        sa.Column("ruleset_name", sa.String, nullable=False),
        sa.Column("ruleset_version", sa.String, nullable=False),
        sa.Column("ruleset_sha256", sa.String, nullable=False),
        sa.Column("facts", sa.JSON, nullable=False),
        sa.Column("decision", sa.JSON, nullable=False),
        sa.Column("trace", sa.JSON, nullable=False),
        sa.Column("duration_ms", sa.Double, nullable=False),
        sa.Column("idempotency_key", sa.String, nullable=True),
        sa.Column("request_hash", sa.String, nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_records_decision_id", "audit_records", ["decision_id"],
                    unique=True)
    op.create_index(
        "ix_audit_records_idempotency_key",
        "audit_records",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("ix_audit_records_loan_id_seq", "audit_records", ["loan_id", "seq"])
    op.create_index("ix_audit_records_recorded_at", "audit_records", ["recorded_at"])

    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", SeqType, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS_HASH}])


def downgrade() -> None:
    op.drop_table("audit_chain_head")
    op.drop_index("ix_audit_records_recorded_at", table_name="audit_records")
    op.drop_index("ix_audit_records_loan_id_seq", table_name="audit_records")
    op.drop_index("ix_audit_records_idempotency_key", table_name="audit_records")
    op.drop_index("ix_audit_records_decision_id", table_name="audit_records")
    op.drop_table("audit_records")
