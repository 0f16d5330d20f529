"""What `AuditStore.verify` checks beyond the hash chain: the Merkle tree recomputed
from the records, against the tree the store keeps, the checkpoints it keeps and
signed checkpoints and receipts kept elsewhere.

Fed the records in seq order (after `ChainWalk` passed them), it rebuilds the tree
leaf by leaf and, whenever the tree reaches the size of a checkpoint, compares the
roots. A database writer can recompute every hash the store keeps, so the chain and
the kept tree can be made consistent with altered records; a checkpoint signed
before the change (held by the operator, a witness or a receipt's holder) cannot.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from service.audit import merkle
from service.audit.chain import ChainBreak
from service.audit.notes import NoteError, Verifier
from service.audit.receipts import b64

#: Stored subtrees compared per query.
NODES_PER_CHECK = 2000


@dataclass(frozen=True)
class Expected:
    """A root the tree must have at `size` leaves, and where that claim comes from."""

    size: int
    root: bytes
    source: str  # e.g. "the log's checkpoint", "checkpoint file cp.txt"


class TreeCheck:
    """Rebuilds the tree from record hashes and checks it as it grows.

    `expected`: streams of roots, each sorted by size (several per size allowed);
    `leaves`: leaf hashes by index that receipts vouch for, with where each comes
    from; `stored(ids)`: the kept subtrees among `ids`, to compare with the
    recomputed ones.
    """

    def __init__(self, expected: Iterable[Iterable[Expected]],
                 leaves: Mapping[int, tuple[bytes, str]],
                 stored: Callable[[list[int]], dict[int, bytes]]) -> None:
        self._expected: Iterator[Expected] = heapq.merge(*expected, key=lambda e: e.size)
        self._next = next(self._expected, None)
        self._leaves = leaves
        self._stored = stored
        self._tree = merkle.TreeBuilder()
        self._created: dict[int, bytes] = {}
        self._first_seq_since_match = 1
        self.matched = 0  # checkpoints whose root was found

    @property
    def size(self) -> int:
        return self._tree.size

    def root(self) -> bytes:
        return self._tree.root()

    @property
    def frontier(self) -> list[bytes]:
        return self._tree.frontier

    def start(self) -> ChainBreak | None:
        """Compare the checkpoints of the empty tree (before any record)."""
        return self._compare()

    def add(self, seq: int, decision_id: str, record_hash: str) -> ChainBreak | None:
        leaf = merkle.record_leaf(record_hash)
        vouched = self._leaves.get(seq - 1)
        if vouched is not None and vouched[0] != leaf:
            return ChainBreak(seq, decision_id,
                              f"the record differs from the one {vouched[1]} was issued for "
                              "(content altered, and every later hash recomputed)")
        self._tree.add(leaf, self._created)
        if len(self._created) >= NODES_PER_CHECK:
            problem = self.flush()
            if problem is not None:
                return problem
        return self._compare()

    def flush(self) -> ChainBreak | None:
        """Compare the subtrees created since the last flush with the kept ones."""
        created, self._created = self._created, {}
        if not created:
            return None
        kept = self._stored(sorted(created))
        for node, value in sorted(created.items()):
            if kept.get(node) != value:
                what = "missing" if node not in kept else "does not match the records"
                return ChainBreak(None, None, f"the kept Merkle tree's node {node} {what}"
                                              " (tree altered)")
        return None

    def finish(self) -> ChainBreak | None:
        """After the last record: the checkpoints beyond it, and the last subtrees."""
        problem = self.flush()
        if problem is not None:
            return problem
        beyond = [e for e in self._remaining() if e.size > self.size]
        if beyond:
            claim = beyond[-1]
            return ChainBreak(self.size + 1, None,
                              f"{claim.source} covers {claim.size} records but the log holds "
                              f"{self.size} (records deleted from the end)")
        past = [index for index in self._leaves if index >= self.size]
        if past:
            return ChainBreak(min(past) + 1, None,
                              f"{self._leaves[min(past)][1]} is for leaf {min(past)} but the "
                              f"log holds {self.size} records (records deleted)")
        return None

    def _remaining(self) -> list[Expected]:
        rest = [] if self._next is None else [self._next]
        rest.extend(self._expected)
        self._next = None
        return rest

    def _compare(self) -> ChainBreak | None:
        size = self.size
        while self._next is not None and self._next.size <= size:
            claim = self._next
            self._next = next(self._expected, None)
            if claim.size < size:  # pragma: no cover - sorted, compared as the tree grows
                continue
            if claim.root != self.root():
                first = self._first_seq_since_match
                where = (f"record seq={first}" if first == size
                         else f"a record in seq {first}..{size}")
                return ChainBreak(first if first == size else None, None,
                                  f"{claim.source} (tree size {size}) does not match the "
                                  f"records: {where} was altered, added or removed after it "
                                  "was signed (hashes recomputed to hide it)")
            self.matched += 1
            self._first_seq_since_match = size + 1
        return None


class KeptCheckpoints:
    """The checkpoints the store keeps, as roots for `TreeCheck`, each checked on the way:
    its root column against its note, and its signature when a verifier is given.
    The first problem found is kept in `problem` (and ends the stream)."""

    def __init__(self, rows: Iterator[tuple[int, bytes, str]], verifier: Verifier | None,
                 head: int) -> None:
        self._rows = rows
        self._verifier = verifier
        self._head = head
        self.latest: int | None = None
        self.problem: ChainBreak | None = None

    def __iter__(self) -> Iterator[Expected]:
        for size, root, note in self._rows:
            if size > self._head:  # appended after the walk began
                return
            self.latest = size
            problem = self._check(size, root, note)
            if problem is not None:
                self.problem = ChainBreak(None, None, f"the log's checkpoint of tree size "
                                                      f"{size}: {problem}")
                return
            yield Expected(size, root, "the log's signed checkpoint")

    def _check(self, size: int, root: bytes, note: str) -> str | None:
        if self._verifier is None:
            lines = note.split("\n")
            if len(lines) < 3 or lines[1] != str(size) or lines[2] != b64(root):
                return "its note does not match its size and root (altered)"
            return None
        try:
            checkpoint = self._verifier.checkpoint(note)
        except NoteError as exc:
            return str(exc)
        if (checkpoint.size, checkpoint.root) != (size, root):
            return "its note does not match its size and root (altered)"
        return None
