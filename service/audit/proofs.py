"""Reading what the log vouches for: the Merkle tree's head and its kept subtrees, the
signed checkpoints, inclusion and consistency proofs, receipts, and the archived
rulesets.

`LogReads` is mixed into `AuditStore`, which provides `_read()` (a connection for one
short read, StoreUnavailable when the database does not answer). A proof reads the
O(log n) kept subtrees it needs in one query (`merkle.needed_nodes`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from service.audit import merkle, schema
from service.audit.chain import format_timestamp
from service.audit.receipts import b64
from service.audit.records import StoreUnavailable

_records = schema.records
_head = schema.chain_head
_tree = schema.tree_nodes
_checkpoints = schema.checkpoints
_rulesets = schema.rulesets


class LogReads:
    """The tree, checkpoint, proof and archive reads of `AuditStore`."""

    _read: Callable[[], AbstractContextManager[sa.Connection]]

    def tree_head(self) -> tuple[int, bytes]:
        """The tree's size and root as the chain head has them now."""
        with self._read() as connection:
            size, blob = connection.execute(
                sa.select(_head.c.seq, _head.c.frontier).where(_head.c.id == schema.HEAD_ID)
            ).one()
        return size, merkle.root_from_frontier(merkle.split_frontier(blob, size))

    def latest_checkpoint(self) -> str | None:
        """The newest signed checkpoint kept in the log (its signed note), or None."""
        with self._read() as connection:
            return connection.execute(
                sa.select(_checkpoints.c.note).order_by(_checkpoints.c.tree_size.desc())
                .limit(1)).scalar()

    def checkpoints(self, *, after: int = 0) -> Iterator[tuple[int, bytes, str]]:
        """(tree size, root, note) of every kept checkpoint beyond size `after`, by size."""
        last = after
        while True:
            with self._read() as connection:
                rows = connection.execute(
                    sa.select(_checkpoints.c.tree_size, _checkpoints.c.root, _checkpoints.c.note)
                    .where(_checkpoints.c.tree_size > last)
                    .order_by(_checkpoints.c.tree_size).limit(1000)).all()
            if not rows:
                return
            for size, root, note in rows:
                yield size, bytes(root), note
            last = rows[-1][0]

    def inclusion_proof(self, decision_id: str, tree_size: int | None = None,
                        ) -> dict[str, Any] | None:
        """`{"leaf_index", "tree_size", "leaf_hash", "inclusion_proof"}` (hashes base64)
        of a recorded decision in the tree of `tree_size` leaves (default: the latest
        checkpoint's size, else the whole tree); None when no such decision is
        recorded. LookupError when there is no such tree, or the decision is not in it."""
        with self._read() as connection:
            seq = connection.execute(sa.select(_records.c.seq)
                                     .where(_records.c.decision_id == decision_id)).scalar()
            if seq is None:
                return None
            size = self._proof_size(connection, tree_size)
            if seq > size:
                raise LookupError(f"decision {decision_id} is leaf {seq - 1}, not in the tree "
                                  f"of {size} leaves")
            index = seq - 1
            nodes = self._nodes(connection, lambda t: (t.inclusion(index, size),
                                                       t.hash(index, index + 1)))
        tree = merkle.Subtrees(nodes)
        return {"leaf_index": index, "tree_size": size,
                "leaf_hash": b64(tree.hash(index, index + 1)),
                "inclusion_proof": [b64(h) for h in tree.inclusion(index, size)]}

    def receipt(self, decision_id: str) -> dict[str, Any] | None:
        """The receipt a recorded decision's 201 answer carried: its inclusion proof in
        the first kept checkpoint that covers it (its commit group's), so that an
        idempotent replay answers exactly as the first time. None when the decision,
        or a checkpoint covering it, is not there."""
        with self._read() as connection:
            seq = connection.execute(sa.select(_records.c.seq)
                                     .where(_records.c.decision_id == decision_id)).scalar()
            row = None if seq is None else connection.execute(
                sa.select(_checkpoints.c.tree_size, _checkpoints.c.note)
                .where(_checkpoints.c.tree_size >= seq)
                .order_by(_checkpoints.c.tree_size).limit(1)).first()
        if row is None:
            return None
        try:
            proof = self.inclusion_proof(decision_id, row[0])
        except LookupError:
            return None
        return None if proof is None else {**proof, "checkpoint": row[1]}

    def consistency_proof(self, old: int, new: int) -> list[str]:
        """The proof (base64 hashes) that the tree of `new` leaves extends the one of
        `old`; ValueError when old > new, LookupError when new is beyond the tree."""
        with self._read() as connection:
            size = self._proof_size(connection, None, whole=True)
            if not 0 <= old <= new:
                raise ValueError(f"from must not be above to (got from={old}, to={new})")
            if new > size:
                raise LookupError(f"the log has no tree of {new} leaves (it holds {size})")
            nodes = self._nodes(connection, lambda t: t.consistency(old, new))
        return [b64(h) for h in merkle.Subtrees(nodes).consistency(old, new)]

    def _proof_size(self, connection: sa.Connection, tree_size: int | None, *,
                    whole: bool = False) -> int:
        head = connection.execute(sa.select(_head.c.seq)
                                  .where(_head.c.id == schema.HEAD_ID)).scalar() or 0
        if tree_size is not None:
            if not 1 <= tree_size <= head:
                raise LookupError(f"the log has no tree of {tree_size} leaves (it holds {head})")
            return tree_size
        if whole:
            return head
        latest = connection.execute(sa.select(sa.func.max(_checkpoints.c.tree_size))).scalar()
        return latest or head

    @staticmethod
    def _nodes(connection: sa.Connection,
               build: Any) -> Any:
        """`perfect(level, index)` over the stored subtrees `build` reads (one query)."""
        wanted = sorted(merkle.needed_nodes(build))
        found: dict[int, bytes] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            found.update((node, bytes(h)) for node, h in connection.execute(
                sa.select(_tree.c.node, _tree.c.hash).where(_tree.c.node.in_(chunk))))
        missing = [n for n in wanted if n not in found]
        if missing:
            raise StoreUnavailable(f"audit tree incomplete: node {missing[0]} is missing "
                                   "(run `deficiency audit verify`)")
        return lambda level, index: found[merkle.node_id(level, index)]

    # -- the ruleset archive ----------------------------------------------------------

    def ruleset(self, sha256: str) -> dict[str, Any] | None:
        """`{"sha256", "name", "version", "files": {name: text}, "archived_at"}`, or None."""
        with self._read() as connection:
            row = connection.execute(sa.select(_rulesets)
                                     .where(_rulesets.c.sha256 == sha256)).mappings().first()
        if row is None:
            return None
        return {"sha256": row["sha256"], "name": row["name"], "version": row["version"],
                "files": json.loads(row["files"]),
                "archived_at": format_timestamp(row["archived_at"])}

    def archived_rulesets(self) -> list[dict[str, Any]]:
        """`{"sha256", "name", "version", "archived_at"}` of every archived ruleset,
        newest first (without the files)."""
        with self._read() as connection:
            rows = connection.execute(
                sa.select(_rulesets.c.sha256, _rulesets.c.name, _rulesets.c.version,
                          _rulesets.c.archived_at)
                .order_by(_rulesets.c.archived_at.desc(), _rulesets.c.sha256)).mappings().all()
        return [{"sha256": r["sha256"], "name": r["name"], "version": r["version"],
                 "archived_at": format_timestamp(r["archived_at"])} for r in rows]

    def stored_nodes(self, ids: list[int]) -> dict[int, bytes]:
        """The kept subtrees among node ids `ids`."""
        found: dict[int, bytes] = {}
        with self._read() as connection:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                found.update((node, bytes(h)) for node, h in connection.execute(
                    sa.select(_tree.c.node, _tree.c.hash).where(_tree.c.node.in_(chunk))))
        return found
