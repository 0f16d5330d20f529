"""The audit log's Merkle tree (`service.audit.merkle`) against an independent
reference written from RFC 9162 (`tests.audit.rfc9162`).

Roots, inclusion proofs and consistency proofs must be exactly the RFC's MTH, PATH
and PROOF; every proof must verify with both the RFC's algorithms and the module's
own verifiers; and every broken proof must fail both.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable

import pytest

from service.audit import merkle
from tests.audit import rfc9162 as rfc

MAX_SIZE = 5000
ENTRIES = [hashlib.sha256(f"record {i}".encode()).digest() for i in range(MAX_SIZE)]
LEAVES = [merkle.leaf_hash(entry) for entry in ENTRIES]
REF = rfc.Tree(ENTRIES)


@functools.cache
def all_nodes() -> dict[int, bytes]:
    """Every complete subtree of the MAX_SIZE-leaf tree, as the store would hold them."""
    created, _ = merkle.append(0, [], LEAVES)
    return created


def stored(nodes: dict[int, bytes]) -> Callable[[int, int], bytes]:
    """`perfect` reading only `nodes`: a KeyError if the module asks for anything else."""
    return lambda level, index: nodes[merkle.node_id(level, index)]


def subtrees() -> merkle.Subtrees:
    return merkle.Subtrees(stored(all_nodes()))


def span(node: int) -> tuple[int, int]:
    """The leaf range [start, end) of a node id (inverting node_id by its own rule:
    the level is the number of trailing 1 bits)."""
    level = 0
    while node >> level & 1:
        level += 1
    index = node >> (level + 1)
    assert merkle.node_id(level, index) == node
    return index << level, (index + 1) << level


def flip(data: bytes, at: int = 7) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


# -- the reference itself, against the RFC's worked example (§2.1.5) ------------------


def test_reference_reproduces_the_rfc_example() -> None:
    """The 7-entry tree of RFC 9162 §2.1.5, its labels as in the RFC's figure."""
    d = [f"d{i}".encode() for i in range(7)]
    a, b, c, d3, e, f, d6 = (rfc.leaf(x) for x in d)
    g, h, i = rfc.interior(a, b), rfc.interior(c, d3), rfc.interior(e, f)
    k, l_ = rfc.interior(g, h), rfc.interior(i, d6)
    root = rfc.interior(k, l_)
    assert rfc.mth(d) == root
    assert rfc.mth(d[:3]) == rfc.interior(g, c)  # hash0
    assert rfc.mth(d[:4]) == k  # hash1
    assert rfc.mth(d[:6]) == rfc.interior(k, i)  # hash2
    # Inclusion proofs: "The audit path for d0 is [b, h, l]", d3 [c, g, l],
    # d4 [f, j, k] and d6 [i, k] (j being the leaf of d6 in the RFC's figure).
    assert rfc.path(0, d) == [b, h, l_]
    assert rfc.path(3, d) == [c, g, l_]
    assert rfc.path(4, d) == [f, d6, k]
    assert rfc.path(6, d) == [i, k]
    # Consistency proofs: PROOF(3, D[7]) = [c, d, g, l], PROOF(4, D[7]) = [l],
    # PROOF(6, D[7]) = [i, j, k].
    assert rfc.proof(3, d) == [c, d3, g, l_]
    assert rfc.proof(4, d) == [l_]
    assert rfc.proof(6, d) == [i, d6, k]
    for m, proof in ((3, [c, d3, g, l_]), (4, [l_]), (6, [i, d6, k])):
        assert rfc.verify_consistency(m, 7, rfc.mth(d[:m]), root, proof)
        assert not rfc.verify_consistency(m, 7, rfc.mth(d[:m]), root, proof[:-1])
    for index in range(7):
        assert rfc.verify_inclusion(index, 7, rfc.leaf(d[index]), rfc.path(index, d), root)
        assert not rfc.verify_inclusion(index, 7, rfc.leaf(d[index]), rfc.path(index, d),
                                        flip(root))

    # The module agrees on the same example.
    created, frontier = merkle.append(0, [], [merkle.leaf_hash(x) for x in d])
    assert merkle.root_from_frontier(frontier) == root
    s = merkle.Subtrees(stored(created))
    assert s.inclusion(4, 7) == [f, d6, k]
    assert s.consistency(3, 7) == [c, d3, g, l_]
    assert s.consistency(6, 7) == [i, d6, k]


# -- hashing, node ids, frontiers -----------------------------------------------------


def test_hashes_are_the_rfcs() -> None:
    for entry in (b"", b"\x00", ENTRIES[0], b"x" * 1000):
        assert merkle.leaf_hash(entry) == rfc.leaf(entry)
    assert merkle.node_hash(LEAVES[0], LEAVES[1]) == rfc.interior(LEAVES[0], LEAVES[1])
    assert merkle.node_hash(LEAVES[1], LEAVES[0]) != merkle.node_hash(LEAVES[0], LEAVES[1])
    assert merkle.EMPTY_ROOT == rfc.mth([]) == merkle.root_from_frontier([])
    assert merkle.record_leaf(ENTRIES[5].hex()) == rfc.leaf(ENTRIES[5])


def test_node_ids_are_distinct_and_ordered_in_order() -> None:
    seen: dict[int, tuple[int, int]] = {}
    for level in range(14):
        for index in range((MAX_SIZE >> level) + 2):
            node = merkle.node_id(level, index)
            assert node not in seen, (level, index, seen.get(node))
            seen[node] = (level, index)
            assert span(node) == (index << level, (index + 1) << level)
    # In-order numbering: a node lies between its left and right children.
    for level in range(1, 10):
        for index in range(20):
            left, right = merkle.node_id(level - 1, 2 * index), merkle.node_id(level - 1,
                                                                              2 * index + 1)
            assert left < merkle.node_id(level, index) < right


def test_frontier_covers_the_tree_with_complete_subtrees_largest_first() -> None:
    assert merkle.frontier_nodes(0) == []
    for size in range(1, 1100):
        nodes = merkle.frontier_nodes(size)
        assert len(nodes) == bin(size).count("1")
        start = 0
        for level, index in nodes:
            assert index << level == start
            start += 1 << level
        assert start == size
        assert [level for level, _ in nodes] == sorted((lv for lv, _ in nodes), reverse=True)


# -- appending ------------------------------------------------------------------------


def completed_between(old: int, new: int) -> set[tuple[int, int]]:
    """(level, index) of the complete subtrees whose last leaf is in [old, new)."""
    done = set()
    for level in range(new.bit_length()):
        width = 1 << level
        for index in range(old // width, new // width):
            if (index + 1) * width > old:
                done.add((level, index))
    return done


def test_append_in_uneven_chunks_gives_the_rfc_root_for_every_size_to_300() -> None:
    rng = random.Random(1)
    for size in range(1, 301):
        built, frontier = 0, []
        while built < size:
            step = min(size - built, rng.choice((1, 1, 2, 3, 5, 8, 13, 31, 64, 100)))
            created, frontier = merkle.append(built, frontier, LEAVES[built:built + step])
            expected = completed_between(built, built + step)
            assert set(created) == {merkle.node_id(lv, ix) for lv, ix in expected}
            for node, value in created.items():
                assert value == REF.mth(*span(node)), (built, step, span(node))
            built += step
            assert frontier == [REF.mth(ix << lv, (ix + 1) << lv)
                                for lv, ix in merkle.frontier_nodes(built)]
            assert merkle.root_from_frontier(frontier) == REF.mth(0, built)
        assert merkle.root_from_frontier(frontier) == REF.mth(0, size) == rfc.mth(
            ENTRIES[:size])


def test_append_of_nothing_changes_nothing() -> None:
    _, frontier = merkle.append(0, [], LEAVES[:11])
    created, again = merkle.append(11, frontier, [])
    assert created == {} and again == frontier


def test_append_refuses_a_frontier_of_the_wrong_length() -> None:
    _, frontier = merkle.append(0, [], LEAVES[:11])  # 11 = 8 + 2 + 1: three nodes
    with pytest.raises(ValueError):
        merkle.append(11, frontier[:-1], LEAVES[11:12])
    with pytest.raises(ValueError):
        merkle.append(12, frontier, LEAVES[12:13])


# -- proofs equal the RFC's and verify both ways ---------------------------------------


def check_inclusion(s: merkle.Subtrees, index: int, size: int) -> None:
    root = REF.mth(0, size)
    proof = s.inclusion(index, size)
    assert proof == REF.path(index, size), (index, size)
    assert rfc.verify_inclusion(index, size, LEAVES[index], proof, root)
    merkle.verify_inclusion(index, size, LEAVES[index], proof, root)
    assert merkle.root_from_inclusion(index, size, LEAVES[index], proof) == root


def check_consistency(s: merkle.Subtrees, old: int, new: int) -> None:
    old_root, new_root = REF.mth(0, old), REF.mth(0, new)
    proof = s.consistency(old, new)
    assert proof == REF.proof(old, new), (old, new)
    assert rfc.verify_consistency(old, new, old_root, new_root, proof)
    merkle.verify_consistency(old, new, old_root, new_root, proof)


def test_inclusion_proofs_of_every_leaf_of_every_tree_to_130() -> None:
    for size in range(1, 131):
        s = subtrees()
        assert s.hash(0, size) == REF.mth(0, size)
        for index in range(size):
            check_inclusion(s, index, size)


def test_consistency_proofs_between_every_pair_of_sizes_to_130() -> None:
    for new in range(1, 131):
        s = subtrees()
        for old in range(0, new + 1):
            check_consistency(s, old, new)


def test_proofs_at_random_in_trees_to_5000() -> None:
    rng = random.Random(9162)
    sizes = [rng.randint(1, MAX_SIZE) for _ in range(300)]
    sizes += [1023, 1024, 1025, 4095, 4096, 4097, MAX_SIZE]
    s = subtrees()
    for new in sizes:
        assert s.hash(0, new) == REF.mth(0, new)
        check_inclusion(s, rng.randrange(new), new)
        check_inclusion(s, new - 1, new)
        check_consistency(s, rng.randint(1, new), new)
        check_consistency(s, rng.randint(max(1, new - 40), new), new)


# -- receipts: proofs from the old frontier and the new leaves' nodes only -------------


def test_receipts_need_only_the_old_frontier_and_the_groups_nodes() -> None:
    rng = random.Random(7)
    size, frontier = 0, []
    while size < 700:
        group = rng.choice((1, 1, 2, 3, 7, 16, 17, 40, 64))
        created, new_frontier = merkle.append(size, frontier, LEAVES[size:size + group])
        new = size + group
        new_root = merkle.root_from_frontier(new_frontier)
        assert new_root == REF.mth(0, new)
        available = {merkle.node_id(*node): value for node, value
                     in zip(merkle.frontier_nodes(size), frontier, strict=True)}
        available |= created
        s = merkle.Subtrees(stored(available))  # a KeyError if it reads anything else
        for index in range(size, new):
            proof = s.inclusion(index, new)
            assert proof == REF.path(index, new)
            assert rfc.verify_inclusion(index, new, LEAVES[index], proof, new_root)
            merkle.verify_inclusion(index, new, LEAVES[index], proof, new_root)
        if size:  # the new tree's consistency with the old one, from the same nodes
            proof = s.consistency(size, new)
            assert proof == REF.proof(size, new)
            merkle.verify_consistency(size, new, REF.mth(0, size), new_root, proof)
        size, frontier = new, new_frontier


def test_the_proofs_of_one_tree_share_their_reads() -> None:
    """Subtrees memoises the ranges it combines: the proofs of many leaves of one
    tree read each of the tree's incomplete suffixes' parts once, not once a proof."""
    size, reads = 4095, []  # 4095: every suffix of the tree is incomplete
    nodes = all_nodes()

    def perfect(level: int, index: int) -> bytes:
        reads.append((level, index))
        return nodes[merkle.node_id(level, index)]

    s = merkle.Subtrees(perfect)
    proofs = [s.inclusion(index, size) for index in range(200)]
    assert proofs == [REF.path(index, size) for index in range(200)]
    assert len(reads) <= sum(map(len, proofs)) + 2 * size.bit_length()


# -- needed_nodes: O(log n) reads, and they suffice ------------------------------------


def check_needed(build: Callable[[merkle.Subtrees], object], size: int,
                 bound: int) -> None:
    wanted = merkle.needed_nodes(build)
    assert 0 < len(wanted) <= bound, (size, len(wanted), bound)
    for node in wanted:
        assert span(node)[1] <= size, (size, span(node))  # only within the tree
    only = {node: all_nodes()[node] for node in wanted}
    assert build(merkle.Subtrees(stored(only))) == build(subtrees())


def test_needed_nodes_are_few_and_suffice() -> None:
    rng = random.Random(42)
    for _ in range(200):
        size = rng.randint(2, MAX_SIZE)
        index, old = rng.randrange(size), rng.randint(1, size - 1)
        # O(log n): a proof has at most bit_length hashes, each a complete subtree
        # or a suffix of the tree made of the size's own frontier nodes.
        bound = 2 * size.bit_length()
        check_needed(lambda s, i=index, n=size: s.inclusion(i, n), size, bound)
        check_needed(lambda s, m=old, n=size: s.consistency(m, n), size, bound)
        assert merkle.Subtrees(stored({})).consistency(size, size) == []
    # The receipts of a whole group share their reads.
    size = 4000
    check_needed(lambda s: [s.inclusion(i, size) for i in range(size - 30, size)], size,
                 2 * 30 + 2 * size.bit_length())


def test_needed_nodes_of_single_proofs_to_130() -> None:
    for size in range(1, 131):
        bound = 2 * size.bit_length()
        for index in range(size):
            wanted = merkle.needed_nodes(lambda s, i=index, n=size: s.inclusion(i, n))
            assert len(wanted) <= bound
            assert all(span(node)[1] <= size for node in wanted)


# -- broken proofs fail, in both verifiers ----------------------------------------------


def inclusion_fails(index: int, size: int, leaf: bytes, proof: list[bytes],
                    root: bytes) -> None:
    assert not rfc.verify_inclusion(index, size, leaf, proof, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(index, size, leaf, proof, root)


def consistency_fails(old: int, new: int, old_root: bytes, new_root: bytes,
                      proof: list[bytes]) -> None:
    assert not rfc.verify_consistency(old, new, old_root, new_root, proof)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(old, new, old_root, new_root, proof)


INCLUSION_CASES = sorted({(i, n) for n in (1, 2, 3, 5, 6, 7, 8, 13, 64, 100, 127, 1000, 4097)
                          for i in (0, 1, 2, n // 2, n - 2, n - 1) if 0 <= i < n})


@pytest.mark.parametrize(("index", "size"), INCLUSION_CASES)
def test_broken_inclusion_proofs_fail(index: int, size: int) -> None:
    s = subtrees()
    proof, root, leaf = s.inclusion(index, size), REF.mth(0, size), LEAVES[index]
    merkle.verify_inclusion(index, size, leaf, proof, root)
    for at in range(len(proof)):  # one flipped byte, in each hash of the proof
        for byte in (0, 31):
            inclusion_fails(index, size, leaf, proof[:at] + [flip(proof[at], byte)]
                            + proof[at + 1:], root)
    inclusion_fails(index, size, flip(leaf), proof, root)
    inclusion_fails(index, size, LEAVES[size], proof, root)  # a leaf not in the tree
    inclusion_fails(index, size, leaf, proof, flip(root))
    for other in {0, index - 1, index + 1, size - 1} - {index}:  # a wrong index
        if 0 <= other < size:
            inclusion_fails(other, size, leaf, proof, root)
    inclusion_fails(size, size, leaf, proof, root)  # an index past the end
    inclusion_fails(-1, size, leaf, proof, root)
    inclusion_fails(index, size, leaf, proof + [LEAVES[0]], root)  # too long
    inclusion_fails(index, size, leaf, proof + [root], root)
    if proof:
        inclusion_fails(index, size, leaf, proof[:-1], root)  # too short
        inclusion_fails(index, size, leaf, proof[1:], root)
        inclusion_fails(index, size, leaf, proof[::-1] if len(proof) > 1 else [], root)
    # A wrong size. Against that size's root it never verifies. Against the right
    # root it fails when the wrong size's paths are of another length; otherwise
    # the RFC's algorithm takes the same steps (e.g. leaf 0 of 3 and of 4) and only
    # the root tells the sizes apart: the module must agree with the RFC either way.
    for wrong in {size - 1, size + 1, size + 2, 2 * size, size // 2} - {size}:
        if not index < wrong <= MAX_SIZE:
            continue
        inclusion_fails(index, wrong, leaf, proof, REF.mth(0, wrong))
        if len(REF.path(index, wrong)) != len(proof):
            inclusion_fails(index, wrong, leaf, proof, root)
        accepted = rfc.verify_inclusion(index, wrong, leaf, proof, root)
        try:
            merkle.verify_inclusion(index, wrong, leaf, proof, root)
        except merkle.ProofError:
            assert not accepted, (index, size, wrong)
        else:
            assert accepted, (index, size, wrong)


def test_the_wrong_size_that_only_the_root_catches() -> None:
    """Leaf 0's path in the tree of 3 also walks a tree of 4 (RFC 9162 §2.1.3.2 takes
    the same steps): it verifies against the 3-leaf root but not the 4-leaf one."""
    proof = subtrees().inclusion(0, 3)
    merkle.verify_inclusion(0, 4, LEAVES[0], proof, REF.mth(0, 3))
    assert rfc.verify_inclusion(0, 4, LEAVES[0], proof, REF.mth(0, 3))
    inclusion_fails(0, 4, LEAVES[0], proof, REF.mth(0, 4))


def test_inclusion_out_of_range_is_refused() -> None:
    s = subtrees()
    for index, size in ((0, 0), (3, 3), (-1, 5), (7, 3)):
        with pytest.raises(merkle.ProofError):
            s.inclusion(index, size)
        with pytest.raises(merkle.ProofError):
            merkle.root_from_inclusion(index, size, LEAVES[0], [])


CONSISTENCY_CASES = sorted({(m, n) for n in (2, 3, 4, 5, 7, 8, 9, 13, 64, 100, 1000, 4097)
                            for m in (1, 2, 3, 4, 8, n // 2, n - 2, n - 1) if 0 < m < n})


@pytest.mark.parametrize(("old", "new"), CONSISTENCY_CASES)
def test_broken_consistency_proofs_fail(old: int, new: int) -> None:
    s = subtrees()
    proof, old_root, new_root = s.consistency(old, new), REF.mth(0, old), REF.mth(0, new)
    merkle.verify_consistency(old, new, old_root, new_root, proof)
    for at in range(len(proof)):
        for byte in (0, 31):
            consistency_fails(old, new, old_root, new_root,
                              proof[:at] + [flip(proof[at], byte)] + proof[at + 1:])
    consistency_fails(old, new, flip(old_root), new_root, proof)
    consistency_fails(old, new, old_root, flip(new_root), proof)
    consistency_fails(old, new, REF.mth(0, new + 1), new_root, proof)  # another tree
    consistency_fails(old, new, old_root, new_root, proof + [new_root])  # too long
    consistency_fails(old, new, old_root, new_root, proof + [LEAVES[0]])
    consistency_fails(old, new, old_root, new_root, proof[:-1])  # too short
    consistency_fails(old, new, old_root, new_root, proof[1:])
    consistency_fails(old, new, old_root, new_root, [])
    for wrong_old in {old - 1, old + 1} - {0, new}:  # wrong sizes, with their roots
        consistency_fails(wrong_old, new, REF.mth(0, wrong_old), new_root, proof)
    for wrong_new in {new - 1, new + 1, 2 * new} - {old}:
        if wrong_new > MAX_SIZE:
            continue
        consistency_fails(old, wrong_new, old_root, REF.mth(0, wrong_new), proof)
        # Against the right roots, as for inclusion: a proof of another length fails,
        # and the module agrees with the RFC in every case.
        if len(REF.proof(old, wrong_new)) != len(proof):
            consistency_fails(old, wrong_new, old_root, new_root, proof)
        accepted = rfc.verify_consistency(old, wrong_new, old_root, new_root, proof)
        try:
            merkle.verify_consistency(old, wrong_new, old_root, new_root, proof)
        except merkle.ProofError:
            assert not accepted, (old, new, wrong_new)
        else:
            assert accepted, (old, new, wrong_new)
    # A tree that shrinks: the proof the other way round, or any proof at all.
    consistency_fails(new, old, new_root, old_root, proof)
    consistency_fails(new, old, new_root, old_root, [])
    consistency_fails(old, -1, old_root, merkle.EMPTY_ROOT, [])


def test_a_shrinking_tree_is_refused_even_when_the_hashes_fit() -> None:
    """Sizes 3 then 2: the RFC's steps, run regardless, would only check that the
    second root is HASH(0x01 || p[0] || p[1]) with p[0] the first root. Made-up
    roots can satisfy that, so the sizes themselves must be checked."""
    first, extra = REF.mth(0, 3), LEAVES[9]
    second = rfc.interior(first, extra)
    consistency_fails(3, 2, first, second, [first, extra])


def test_consistency_edge_cases() -> None:
    root5 = REF.mth(0, 5)
    # Equal sizes: an empty proof and the same root, nothing else.
    merkle.verify_consistency(5, 5, root5, root5, [])
    assert rfc.verify_consistency(5, 5, root5, root5, [])
    consistency_fails(5, 5, root5, REF.mth(0, 6), [])
    consistency_fails(5, 5, root5, root5, [root5])
    # From the empty tree: only the empty proof.
    merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, root5, [])
    merkle.verify_consistency(0, 0, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, [])
    consistency_fails(0, 5, merkle.EMPTY_ROOT, root5, [root5])
    # Proofs the module will not build.
    s = subtrees()
    assert s.consistency(0, 5) == [] and s.consistency(5, 5) == []
    for old, new in ((6, 5), (-1, 5)):
        with pytest.raises(merkle.ProofError):
            s.consistency(old, new)
