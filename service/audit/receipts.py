"""Receipts: what a committed record's submitter is given to prove, later and offline,
that the record was logged at its place.

A commit group extends the tree from `first` to `size` leaves. Its new complete
subtrees and the old frontier are all any new leaf's inclusion proof in the tree of
`size` needs (the subtrees left of a leaf m are the decomposition of m, which the old
frontier and the new leaves make up), so receipts cost no read. Each receipt's proof
is computed when it is asked for, in the submitter's thread, not the writer's.
"""

from __future__ import annotations

import base64
from typing import Any

from service.audit import merkle


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class TreeGroup:
    """The tree after one commit group: its size, the subtrees a new leaf's proof reads,
    and the group's signed checkpoint (None when the store signs none)."""

    __slots__ = ("_subtrees", "checkpoint", "first", "leaves", "size")

    def __init__(self, first: int, size: int, nodes: dict[int, bytes],
                 leaves: dict[str, int], checkpoint: str | None) -> None:
        self.first = first
        self.size = size
        self.leaves = leaves  # decision id -> leaf index
        self.checkpoint = checkpoint
        self._subtrees = merkle.Subtrees(lambda level, index: nodes[merkle.node_id(level, index)])

    def receipt(self, decision_id: str) -> Receipt:
        return Receipt(self, self.leaves[decision_id])

    def proof(self, index: int) -> list[bytes]:
        return self._subtrees.inclusion(index, self.size)

    def leaf(self, index: int) -> bytes:
        return self._subtrees.hash(index, index + 1)


class Receipt:
    """One record's receipt: `to_json()` is the `receipt` of a 201 answer."""

    __slots__ = ("_group", "leaf_index")

    def __init__(self, group: TreeGroup, leaf_index: int) -> None:
        self._group = group
        self.leaf_index = leaf_index

    @property
    def tree_size(self) -> int:
        return self._group.size

    def to_json(self) -> dict[str, Any]:
        group, index = self._group, self.leaf_index
        return {
            "leaf_index": index,
            "tree_size": group.size,
            "leaf_hash": b64(group.leaf(index)),
            "inclusion_proof": [b64(node) for node in group.proof(index)],
            "checkpoint": group.checkpoint,
        }
