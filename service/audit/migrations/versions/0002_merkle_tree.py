"""The Merkle tree, signed checkpoints and the ruleset archive.

Adds the tree's complete subtrees (`audit_tree`), its right edge in the chain head
(`audit_chain_head.frontier`), the checkpoints signed per commit group
(`audit_checkpoints`) and the archive of rulesets (`audit_rulesets`), and builds the
tree over the records already in the log, a batch at a time. No checkpoint is
signed here (the key is not the migration's): the store signs one for the whole
tree when it is next opened with a key.

The hashing is spelled out here (RFC 9162 §2.1), not imported: a migration must not
change when the code does.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BATCH = 5000


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _node_id(level: int, index: int) -> int:
    return (index << (level + 1)) + (1 << level) - 1


def upgrade() -> None:
    op.create_table(
        "audit_tree",
        sa.Column("node", SeqType, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", SeqType, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_table(
        "audit_rulesets",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("version", sa.String, nullable=False),
        sa.Column("files", sa.Text, nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("audit_chain_head") as batch:
        batch.add_column(sa.Column("frontier", sa.LargeBinary, nullable=True))

    bind = op.get_bind()
    records = sa.table("audit_records", sa.column("seq", SeqType),
                       sa.column("hash", sa.String))
    tree = sa.table("audit_tree", sa.column("node", SeqType),
                    sa.column("hash", sa.LargeBinary))
    head = sa.table("audit_chain_head", sa.column("id", sa.Integer),
                    sa.column("frontier", sa.LargeBinary))
    stack: list[tuple[int, bytes]] = []  # (level, hash): the right edge
    size = 0
    while True:
        rows = bind.execute(sa.select(records.c.seq, records.c.hash)
                            .where(records.c.seq > size).order_by(records.c.seq)
                            .limit(BATCH)).all()
        if not rows:
            break
        created = []
        for seq, record_hash in rows:
            if seq != size + 1:  # verify reports the gap; the tree covers what precedes it
                rows = []
                break
            level, index = 0, size
            node = hashlib.sha256(b"\x00" + bytes.fromhex(record_hash)).digest()
            created.append({"node": _node_id(0, index), "hash": node})
            while stack and stack[-1][0] == level:
                node = _node(stack.pop()[1], node)
                level, index = level + 1, index >> 1
                created.append({"node": _node_id(level, index), "hash": node})
            stack.append((level, node))
            size = seq
        if created:
            bind.execute(tree.insert(), created)
        if not rows:
            break
    bind.execute(head.update().where(head.c.id == 1)
                 .values(frontier=b"".join(node for _, node in stack)))


def downgrade() -> None:
    with op.batch_alter_table("audit_chain_head") as batch:
        batch.drop_column("frontier")
    op.drop_table("audit_rulesets")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_tree")
