"""An independent reference for the Merkle tree of RFC 9162 §2.1, for tests only.

The audit log's tree (`service.audit.merkle`) is built for production: it appends
leaves to a stored frontier, reads complete subtrees by node id and builds proofs
from O(log n) of them. That is easy to get subtly wrong in ways its own code cannot
reveal, so the tests check it against this module, which is written the simplest way
there is, straight from the RFC's text, and shares no code with it (it imports
nothing from `service`):

- `mth` is the Merkle Tree Hash, the recursive definition of §2.1.1;
- `path` is PATH(m, D[n]) of §2.1.3.1 and `proof` is PROOF(m, D[n]) /
  SUBPROOF(m, D[n], b) of §2.1.4.1, both computed from the full list of entries by
  their recursive definitions;
- `verify_inclusion` and `verify_consistency` are the verification algorithms of
  §2.1.3.2 and §2.1.4.2, step by numbered step.

The recursion is over ranges [lo, hi) of one list of entries, with MTH memoised per
range (`Tree`), only so that the tests can afford every proof of every tree up to a
few hundred leaves; the module-level functions take a plain list of entries.

Notation (§2.1): D[n] = {d(0), ..., d(n-1)} is a list of entries, D[k1:k2] its
entries k1 to k2 - 1, `||` concatenation, and k the largest power of two smaller
than n (k < n <= 2k).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def HASH(data: bytes) -> bytes:
    """The hash algorithm: SHA-256."""
    return hashlib.sha256(data).digest()


def leaf(entry: bytes) -> bytes:
    """MTH({d(0)}) = HASH(0x00 || d(0))."""
    return HASH(b"\x00" + entry)


def interior(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right)."""
    return HASH(b"\x01" + left + right)


def largest_power_of_two_below(n: int) -> int:
    """k: the largest power of two smaller than n (n > 1), found by counting up."""
    if n <= 1:
        raise ValueError(f"no power of two is needed below {n}")
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Tree:
    """The tree over a fixed list of entries: MTH, PATH and PROOF of its prefixes."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.entries = list(entries)
        self._mth: dict[tuple[int, int], bytes] = {}

    def __len__(self) -> int:
        return len(self.entries)

    # §2.1.1 -------------------------------------------------------------------------

    def mth(self, lo: int = 0, hi: int | None = None) -> bytes:
        """MTH(D[lo:hi]).

        MTH({}) = HASH(); MTH({d(0)}) = HASH(0x00 || d(0));
        MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n])) for n > 1."""
        hi = len(self.entries) if hi is None else hi
        if not 0 <= lo <= hi <= len(self.entries):
            raise ValueError(f"no range [{lo}, {hi}) in {len(self.entries)} entries")
        found = self._mth.get((lo, hi))
        if found is not None:
            return found
        n = hi - lo
        if n == 0:
            found = HASH(b"")
        elif n == 1:
            found = leaf(self.entries[lo])
        else:
            k = largest_power_of_two_below(n)
            found = interior(self.mth(lo, lo + k), self.mth(lo + k, hi))
        self._mth[(lo, hi)] = found
        return found

    # §2.1.3.1 -----------------------------------------------------------------------

    def path(self, m: int, n: int | None = None) -> list[bytes]:
        """PATH(m, D[n]): the inclusion proof of entry m in the tree of the first n.

        PATH(0, {d(0)}) = {};
        PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])   for m < k;
        PATH(m, D[n]) = PATH(m - k, D[k:n]) : MTH(D[0:k])   for m >= k."""
        n = len(self.entries) if n is None else n
        if not 0 <= m < n <= len(self.entries):
            raise ValueError(f"no entry {m} in a tree of {n}")
        return self._path(m, 0, n)

    def _path(self, m: int, lo: int, hi: int) -> list[bytes]:
        """PATH(m, D[lo:hi]), m counted from lo."""
        n = hi - lo
        if n == 1:
            return []
        k = largest_power_of_two_below(n)
        if m < k:
            return self._path(m, lo, lo + k) + [self.mth(lo + k, hi)]
        return self._path(m - k, lo + k, hi) + [self.mth(lo, lo + k)]

    # §2.1.4.1 -----------------------------------------------------------------------

    def proof(self, m: int, n: int | None = None) -> list[bytes]:
        """PROOF(m, D[n]) = SUBPROOF(m, D[n], true): the consistency proof from the
        tree of the first m entries to the tree of the first n (0 < m <= n; the
        RFC defines no proof from the empty tree, which needs none: it is {})."""
        n = len(self.entries) if n is None else n
        if not 0 <= m <= n <= len(self.entries):
            raise ValueError(f"no consistency proof from {m} to {n}")
        if m == 0:
            return []
        return self._subproof(m, 0, n, True)

    def _subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        """SUBPROOF(m, D[lo:hi], b), m counted from lo.

        SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])};
        for m < n: SUBPROOF(m, D[n], b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n]) if
        m <= k, and SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]) if m > k."""
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = largest_power_of_two_below(n)
        if m <= k:
            return self._subproof(m, lo, lo + k, b) + [self.mth(lo + k, hi)]
        return self._subproof(m - k, lo + k, hi, False) + [self.mth(lo, lo + k)]


def mth(entries: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of a list of entries (§2.1.1)."""
    return Tree(entries).mth()


def path(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of a list of entries (§2.1.3.1)."""
    return Tree(entries).path(m)


def proof(m: int, entries: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of a list of entries (§2.1.4.1)."""
    return Tree(entries).proof(m)


# §2.1.3.2 ---------------------------------------------------------------------------


def _lsb(x: int) -> bool:
    return x & 1 == 1


def verify_inclusion(leaf_index: int, tree_size: int, hash: bytes,
                     inclusion_path: Sequence[bytes], root_hash: bytes) -> bool:
    """§2.1.3.2, verifying an inclusion proof: True iff `hash` (a leaf hash) is proven
    to be leaf `leaf_index` of the tree of `tree_size` whose root is `root_hash`."""
    if leaf_index < 0 or tree_size < 0:  # the RFC's numbers are unsigned
        return False
    # 1. Compare leaf_index against tree_size. If leaf_index is greater than or equal
    #    to tree_size, then fail the proof verification.
    if leaf_index >= tree_size:
        return False
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = leaf_index, tree_size - 1
    # 3. Set r to hash.
    r = hash
    # 4. For each value p in the inclusion_path array:
    for p in inclusion_path:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if _lsb(fn) or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = HASH(b"\x01" + p + r)
            # ii. If LSB(fn) is not set, then right-shift both fn and sn equally
            #     until either LSB(fn) is set or fn is 0.
            if not _lsb(fn):
                while not (_lsb(fn) or fn == 0):
                    fn >>= 1
                    sn >>= 1
        # Otherwise:
        else:
            # i. Set r to HASH(0x01 || r || p).
            r = HASH(b"\x01" + r + p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0. Compare r against the root_hash. If sn is equal to 0 and r
    #    and the root_hash are equal, then the log has proven the inclusion of hash.
    #    Otherwise, fail the proof verification.
    return sn == 0 and r == root_hash


# §2.1.4.2 ---------------------------------------------------------------------------


def verify_consistency(first: int, second: int, first_hash: bytes, second_hash: bytes,
                       consistency_path: Sequence[bytes]) -> bool:
    """§2.1.4.2, verifying consistency between two tree heads: True iff the tree of
    `second` leaves with root `second_hash` extends the one of `first` leaves with
    root `first_hash`.

    The RFC's algorithm is for 0 < first < second. The other cases are not
    proofs: equal sizes need an empty path and equal roots, the empty tree is
    extended by every tree with an empty path, and a tree never shrinks."""
    if first < 0 or first > second:
        return False
    if first == second:
        return not consistency_path and first_hash == second_hash
    if first == 0:
        return not consistency_path
    path_ = list(consistency_path)
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not path_:
        return False
    # 2. If first is an exact power of 2, then prepend first_hash to the
    #    consistency_path array.
    if first in {2**i for i in range(first.bit_length())}:
        path_.insert(0, first_hash)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is
    #    not set.
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path_[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path_[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if _lsb(fn) or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr).
            fr = HASH(b"\x01" + c + fr)
            # ii. Set sr to HASH(0x01 || c || sr).
            sr = HASH(b"\x01" + c + sr)
            # iii. If LSB(fn) is not set, then right-shift both fn and sn equally
            #      until either LSB(fn) is set or fn is 0.
            if not _lsb(fn):
                while not (_lsb(fn) or fn == 0):
                    fn >>= 1
                    sn >>= 1
        # Otherwise:
        else:
            # i. Set sr to HASH(0x01 || sr || c).
            sr = HASH(b"\x01" + sr + c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. After completing iterating through the consistency_path array as described
    #    above, verify that the fr calculated is equal to the first_hash supplied,
    #    that the sr calculated is equal to the second_hash supplied, and that sn
    #    is 0.
    return fr == first_hash and sr == second_hash and sn == 0
