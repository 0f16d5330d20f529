"""The Merkle tree over the audit log (RFC 9162 §2.1): hashing, appending, proofs.

Pure functions over bytes. The entry of the record with seq s is leaf s − 1, and the
entry's bytes are the 32 raw bytes of that record's hash, so anyone who can recompute
a record's hash from its exported content can compute its leaf.

The store keeps the hash of every complete (perfect, aligned) subtree, addressed by
`node_id(level, index)`: the subtree of 2**level leaves starting at leaf
index * 2**level. Every hash a proof needs for a tree of size n is such a subtree
within the first n leaves, or a combination of O(log n) of them, so a proof costs
O(log n) reads. The tree's right edge for size n (`frontier`, one complete subtree
per 1 bit of n, largest first) is all an append needs.

Proofs are built by functions that take `perfect(level, index) -> hash`; their
control flow does not depend on the hashes, so `needed_nodes` runs one with a
recorder to learn which subtrees to read, all in one query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Perfect = Callable[[int, int], bytes]


class ProofError(ValueError):
    """A proof does not verify, or its arguments are out of range."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def record_leaf(record_hash_hex: str) -> bytes:
    """The leaf hash of a record, from its `hash` (64 hex digits)."""
    return leaf_hash(bytes.fromhex(record_hash_hex))


def node_id(level: int, index: int) -> int:
    """The subtree's number in in-order position: distinct for every (level, index)."""
    return (index << (level + 1)) + (1 << level) - 1


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def frontier_nodes(size: int) -> list[tuple[int, int]]:
    """(level, index) of the complete subtrees on the right edge of a tree of `size`
    leaves, largest first: one per 1 bit of size."""
    nodes, start = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            nodes.append((level, start >> level))
            start += 1 << level
    return nodes


def root_from_frontier(frontier: Sequence[bytes]) -> bytes:
    """The tree's root from its frontier's hashes (largest first)."""
    if not frontier:
        return EMPTY_ROOT
    root = frontier[-1]
    for left in reversed(frontier[:-1]):
        root = node_hash(left, root)
    return root


class TreeBuilder:
    """Appends leaves to a tree given by its size and frontier, one at a time."""

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        levels = [level for level, _ in frontier_nodes(size)]
        if len(levels) != len(frontier):
            raise ValueError(f"a tree of {size} leaves has {len(levels)} frontier nodes, "
                             f"not {len(frontier)}")
        self.size = size
        self._stack = list(zip(levels, frontier, strict=True))

    def add(self, leaf: bytes, created: dict[int, bytes]) -> None:
        """Append one leaf hash; the complete subtrees it creates go into `created`."""
        stack = self._stack
        level, index, node = 0, self.size, leaf
        created[node_id(0, index)] = node
        while stack and stack[-1][0] == level:
            node = node_hash(stack.pop()[1], node)
            level, index = level + 1, index >> 1
            created[node_id(level, index)] = node
        stack.append((level, node))
        self.size += 1

    @property
    def frontier(self) -> list[bytes]:
        return [node for _, node in self._stack]

    def root(self) -> bytes:
        return root_from_frontier(self.frontier)


def append(size: int, frontier: Sequence[bytes],
           leaves: Iterable[bytes]) -> tuple[dict[int, bytes], list[bytes]]:
    """Append leaf hashes to a tree of `size` leaves whose frontier is `frontier`.

    Returns the complete subtrees the new leaves create (node id -> hash, leaves
    included) and the new frontier."""
    builder = TreeBuilder(size, frontier)
    created: dict[int, bytes] = {}
    for leaf in leaves:
        builder.add(leaf, created)
    return created, builder.frontier


def split_frontier(blob: bytes | None, size: int) -> list[bytes]:
    """The frontier as the chain head keeps it (hashes concatenated), checked against
    the tree's size; ValueError when they disagree."""
    blob = b"" if blob is None else bytes(blob)
    hashes = [blob[i:i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]
    if len(blob) % HASH_SIZE or len(hashes) != size.bit_count():
        raise ValueError(f"the tree's frontier ({len(blob)} bytes) does not fit a tree of "
                         f"{size} leaves (run `deficiency audit verify`)")
    return hashes


class Subtrees:
    """Hashes of arbitrary ranges [start, end) of a tree, from its complete subtrees
    (`perfect`), memoised: the proofs of many leaves of one tree share them."""

    def __init__(self, perfect: Perfect) -> None:
        self._perfect = perfect
        self._memo: dict[tuple[int, int], bytes] = {}

    def hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range that RFC 9162's recursion reaches (start is a
        multiple of a power of two at least end - start)."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            return self._perfect(n.bit_length() - 1, start // n)
        key = (start, end)
        found = self._memo.get(key)
        if found is None:
            k = _split(n)
            found = node_hash(self.hash(start, start + k), self.hash(start + k, end))
            self._memo[key] = found
        return found

    def inclusion(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]) (RFC 9162 §2.1.3.1)."""
        if not 0 <= index < size:
            raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self.hash(start + k, end))
                end = start + k
            else:
                path.append(self.hash(start, start + k))
                start += k
        path.reverse()
        return path

    def consistency(self, old: int, new: int) -> list[bytes]:
        """PROOF(old, D[0:new]) (RFC 9162 §2.1.4.1); empty when old is 0 or new."""
        if not 0 <= old <= new:
            raise ProofError(f"no consistency proof from {old} to {new}")
        if old in (0, new):
            return []
        proof: list[bytes] = []
        start, end, whole = 0, new, True
        while True:
            if old - start == end - start:
                if not whole:
                    proof.append(self.hash(start, end))
                break
            k = _split(end - start)
            if old - start <= k:
                proof.append(self.hash(start + k, end))
                end = start + k
            else:
                proof.append(self.hash(start, start + k))
                start, whole = start + k, False
        proof.reverse()
        return proof


def needed_nodes(build: Callable[[Subtrees], object]) -> set[int]:
    """The node ids of the complete subtrees `build` reads."""
    wanted: set[int] = set()

    def record(level: int, index: int) -> bytes:
        wanted.add(node_id(level, index))
        return b"\0" * HASH_SIZE

    build(Subtrees(record))
    return wanted


# -- verifying (RFC 9162 §2.1.3.2 and §2.1.4.2) -------------------------------------


def root_from_inclusion(index: int, size: int, leaf: bytes,
                        proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to; ProofError when it cannot lead anywhere."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                     root: bytes) -> None:
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError(f"leaf {index} is not in the tree of size {size} with that root")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Raise ProofError unless the tree of `new` leaves extends the one of `old`."""
    if not 0 <= old <= new:
        raise ProofError(f"tree size went from {old} down to {new}")
    if old == new:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for tree size {new}")
        return
    if old == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root or sr != new_root:
        raise ProofError(f"the tree of size {new} does not extend the one of size {old}")
