"""RFC 6962 Merkle hashing and proofs, checked three ways.

Known answers (tests/vectors/merkle-rfc6962.json) and the verification probes of
transparency-dev/merkle (tests/vectors/merkle-probes-transparency-dev.json) pin the bytes to
an external implementation. For every tree up to MAX leaves, proofs served from a store that
``append`` filled in random batches must equal those of an independent reference written
here straight from RFC 6962 section 2.1 (recursive MTH, PATH and PROOF over slices), must
verify, and must stop verifying once tampered with.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import pytest

from reelvault.audit import merkle
from reelvault.audit.merkle import EMPTY_ROOT, Node

VECTOR_DIR = Path(__file__).parents[2] / "vectors"
KAT = json.loads((VECTOR_DIR / "merkle-rfc6962.json").read_text())
PROBES = json.loads((VECTOR_DIR / "merkle-probes-transparency-dev.json").read_text())

MAX = 70
KAT_LEAVES = [bytes.fromhex(x) for x in KAT["leaves"]]
# The known-answer leaves first, so that the reference roots of sizes 1..8 are known answers;
# enough entries for the roots of the larger trees that wrong-size tampering claims.
DATA = (*KAT_LEAVES, *(f"entry {i}".encode() * (1 + i % 4) for i in range(8, 2 * MAX + 1)))
LEAF_HASHES = [merkle.leaf_hash(d) for d in DATA]


# -- The reference: RFC 6962 section 2.1, transcribed -------------------------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(d: tuple[bytes, ...]) -> bytes:
    n = len(d)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + d[0])
    k = _k(n)
    return _sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: tuple[bytes, ...], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    return ref_subproof(m, d, True)


def ref_root(size: int) -> bytes:
    return ref_mth(DATA[:size])


# -- A store filled by append --------------------------------------------------------------


class RecordingStore:
    """Node hashes by (level, index), with a fetch that records each batch it is asked for."""

    def __init__(self, nodes: Mapping[Node, bytes]) -> None:
        self.nodes = dict(nodes)
        self.calls: list[list[Node]] = []

    def fetch(self, wanted: Sequence[Node]) -> dict[Node, bytes]:
        self.calls.append(list(wanted))
        return {node: self.nodes[node] for node in wanted if node in self.nodes}


def build(size: int, rng: random.Random, max_batch: int) -> tuple[dict[Node, bytes], list[int]]:
    """Append DATA[:size] in random batches, handing append only the frontier each time.

    Checks every batch's root against the reference and that no node is produced twice.
    Returns the store (leaves at level 0 plus every node append produced) and the sizes
    at the batch boundaries.
    """
    store: dict[Node, bytes] = {}
    sizes = [0]
    done = 0
    while done < size:
        batch = LEAF_HASHES[done : min(size, done + rng.randint(1, max_batch))]
        frontier = {node: store[node] for node in merkle.frontier_nodes(done)}
        created, new_root = merkle.append(frontier, done, batch)
        assert all(level >= 1 for level, _ in created)
        assert not created.keys() & store.keys()
        store.update(created)
        store.update({(0, done + i): h for i, h in enumerate(batch)})
        done += len(batch)
        sizes.append(done)
        assert new_root == ref_root(done)
    return store, sizes


def complete_nodes(size: int) -> set[Node]:
    return {(level, index) for level in range(size.bit_length()) for index in range(size >> level)}


def node_range(node: Node) -> tuple[int, int]:
    level, index = node
    return index << level, (index + 1) << level


@pytest.fixture(scope="module")
def store() -> dict[Node, bytes]:
    nodes, _ = build(MAX, random.Random(6962), max_batch=9)
    return nodes


# -- Known answers -------------------------------------------------------------------------


def test_reference_and_root_reproduce_the_known_roots():
    roots = [bytes.fromhex(r) for r in KAT["roots"]]
    assert roots[0] == EMPTY_ROOT == merkle.root([]) == merkle.fold([])
    for size, want in enumerate(roots):
        assert ref_mth(tuple(KAT_LEAVES[:size])) == want
        assert merkle.root([merkle.leaf_hash(d) for d in KAT_LEAVES[:size]]) == want


def test_append_reproduces_every_known_node():
    want = {
        (level, index): bytes.fromhex(h)
        for level, hashes in enumerate(KAT["nodes"])
        for index, h in enumerate(hashes)
    }
    leaf_hashes = [merkle.leaf_hash(d) for d in KAT_LEAVES]
    assert leaf_hashes == [want[(0, i)] for i in range(8)]
    created, new_root = merkle.append({}, 0, leaf_hashes)
    assert created == {node: h for node, h in want.items() if node[0] >= 1}
    assert new_root == bytes.fromhex(KAT["roots"][8])


def _kat_store() -> RecordingStore:
    return RecordingStore(
        {
            (level, index): bytes.fromhex(h)
            for level, hashes in enumerate(KAT["nodes"])
            for index, h in enumerate(hashes)
        }
    )


@pytest.mark.parametrize(
    "vector", KAT["inclusion"], ids=lambda v: f"{v['leaf_index']}:{v['tree_size']}"
)
def test_known_inclusion_proofs(vector):
    index, size = vector["leaf_index"], vector["tree_size"]
    want = [bytes.fromhex(h) for h in vector["proof"]]
    assert merkle.inclusion_proof(index, size, _kat_store().fetch) == want
    leaf = merkle.leaf_hash(KAT_LEAVES[index])
    assert merkle.verify_inclusion(leaf, index, size, want, bytes.fromhex(KAT["roots"][size]))


@pytest.mark.parametrize(
    "vector", KAT["consistency"], ids=lambda v: f"{v['old_size']}:{v['new_size']}"
)
def test_known_consistency_proofs(vector):
    old, new = vector["old_size"], vector["new_size"]
    want = [bytes.fromhex(h) for h in vector["proof"]]
    assert merkle.consistency_proof(old, new, _kat_store().fetch) == want
    old_root, new_root = (bytes.fromhex(KAT["roots"][s]) for s in (old, new))
    assert merkle.verify_consistency(old, new, old_root, new_root, want)


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def _b64_list(values: list[str] | None) -> list[bytes]:
    return [_b64(v) for v in values or []]


@pytest.mark.parametrize("probe", PROBES["inclusion"], ids=lambda p: p["file"])
def test_transparency_dev_inclusion_probes(probe):
    verified = merkle.verify_inclusion(
        _b64(probe["leafHash"]),
        probe["leafIdx"],
        probe["treeSize"],
        _b64_list(probe["proof"]),
        _b64(probe["root"]),
    )
    assert verified is not probe["wantErr"]


@pytest.mark.parametrize("probe", PROBES["consistency"], ids=lambda p: p["file"])
def test_transparency_dev_consistency_probes(probe):
    verified = merkle.verify_consistency(
        probe["size1"],
        probe["size2"],
        _b64(probe["root1"]),
        _b64(probe["root2"]),
        _b64_list(probe["proof"]),
    )
    assert verified is not probe["wantErr"]


# -- Decomposition -------------------------------------------------------------------------


def test_range_nodes_cover_each_range_with_the_fewest_aligned_subtrees():
    for start in range(MAX + 1):
        for end in range(start, MAX + 1):
            nodes = merkle.range_nodes(start, end)
            at = start
            for node in nodes:
                lo, hi = node_range(node)
                assert lo == at
                at = hi
            assert at == end
            # Fewest: no two neighbours are siblings that one parent node would replace.
            for (left_level, left_index), (right_level, _) in itertools.pairwise(nodes):
                assert not (left_level == right_level and left_index % 2 == 0)
            levels = [level for level, _ in nodes]
            peak = levels.index(max(levels)) if levels else 0
            assert levels[: peak + 1] == sorted(levels[: peak + 1])
            assert levels[peak:] == sorted(levels[peak:], reverse=True)


def test_fold_of_an_aligned_range_is_its_rfc_hash(store):
    for start in range(MAX):
        for end in range(start + 1, MAX + 1):
            width = end - start
            if start % (1 << (width - 1).bit_length()):
                continue  # not a subtree RFC 6962's recursion can produce
            hashes = [store[node] for node in merkle.range_nodes(start, end)]
            assert merkle.fold(hashes) == ref_mth(DATA[start:end])


def test_root_nodes_fold_to_the_root(store):
    for size in range(MAX + 1):
        nodes = merkle.root_nodes(size)
        assert nodes == merkle.frontier_nodes(size)
        assert len(nodes) == size.bit_count()
        assert merkle.fold([store[n] for n in nodes]) == ref_root(size)
        assert merkle.root(LEAF_HASHES[:size]) == ref_root(size)


def test_range_nodes_rejects_a_reversed_range():
    with pytest.raises(ValueError):
        merkle.range_nodes(3, 2)
    with pytest.raises(ValueError):
        merkle.range_nodes(-1, 2)


# -- append --------------------------------------------------------------------------------


def test_append_stores_every_complete_node_with_its_rfc_hash(store):
    assert store.keys() == complete_nodes(MAX)
    for node, value in store.items():
        lo, hi = node_range(node)
        assert value == ref_mth(DATA[lo:hi])


@pytest.mark.parametrize("seed", range(20))
def test_any_batch_split_gives_the_same_nodes_and_roots(seed):
    rng = random.Random(seed)
    size = rng.randint(0, MAX)
    whole, _ = build(size, rng, max_batch=size or 1)
    split, _ = build(size, rng, max_batch=rng.randint(1, 5))
    assert split == whole
    one_by_one, sizes = build(size, rng, max_batch=1)
    assert one_by_one == whole
    assert sizes == list(range(size + 1))


def test_an_empty_batch_changes_nothing(store):
    for size in (0, 1, 7, 64):
        frontier = {n: store[n] for n in merkle.frontier_nodes(size)}
        assert merkle.append(frontier, size, []) == ({}, ref_root(size))


def test_append_needs_the_whole_frontier(store):
    frontier = {n: store[n] for n in merkle.frontier_nodes(7)}
    del frontier[(1, 2)]
    with pytest.raises(LookupError):
        merkle.append(frontier, 7, [LEAF_HASHES[7]])


def test_append_rejects_a_leaf_hash_of_the_wrong_length():
    with pytest.raises(ValueError):
        merkle.append({}, 0, [b"\x00" * 31])


# -- Inclusion proofs ----------------------------------------------------------------------


def tamperings(proof: list[bytes]) -> list[list[bytes]]:
    """Every way the tests spoil a proof: flip a bit in each element, drop, add, reorder."""
    bad: list[list[bytes]] = []
    for i, element in enumerate(proof):
        for at in (0, len(element) - 1):
            flipped = bytearray(element)
            flipped[at] ^= 0x01
            bad.append([*proof[:i], bytes(flipped), *proof[i + 1 :]])
        bad.append(proof[:i] + proof[i + 1 :])
    bad += [[*proof, EMPTY_ROOT], [EMPTY_ROOT, *proof], [*proof, proof[-1]] if proof else []]
    if len(proof) > 1:
        bad.append(proof[::-1])
    return [p for p in bad if p != proof]


@pytest.mark.parametrize("size", range(1, MAX + 1))
def test_inclusion_proofs_match_the_rfc_verify_and_reject_tampering(store, size):
    tree_root = ref_root(size)
    for index in range(size):
        backend = RecordingStore(store)
        proof = merkle.inclusion_proof(index, size, backend.fetch)
        assert proof == ref_path(index, DATA[:size])
        # One batch per proof, nothing asked twice (none at all for a one-leaf tree).
        assert len(backend.calls) == (1 if size > 1 else 0)
        assert all(len(set(call)) == len(call) for call in backend.calls)

        leaf = LEAF_HASHES[index]
        assert merkle.verify_inclusion(leaf, index, size, proof, tree_root)
        assert merkle.root_from_inclusion(leaf, index, size, proof) == tree_root

        for bad in tamperings(proof):
            assert not merkle.verify_inclusion(leaf, index, size, bad, tree_root)
        for other in {index - 1, index + 1, index ^ 1, size} - {index}:
            assert not merkle.verify_inclusion(leaf, other, size, proof, tree_root)
        for other in {size - 1, size + 1, size * 2} - {size}:
            assert not merkle.verify_inclusion(leaf, index, other, proof, ref_root(other))
        assert not merkle.verify_inclusion(leaf, index, size, proof, ref_root(size - 1))
        assert not merkle.verify_inclusion(LEAF_HASHES[index - 1], index, size, proof, tree_root)
        assert not merkle.verify_inclusion(leaf[:-1], index, size, proof, tree_root)


def test_inclusion_proof_rejects_leaves_outside_the_tree():
    for index, size in ((0, 0), (3, 3), (-1, 3), (8, 7)):
        with pytest.raises(ValueError):
            merkle.inclusion_proof_nodes(index, size)
        assert not merkle.verify_inclusion(LEAF_HASHES[0], index, size, [], EMPTY_ROOT)
        assert merkle.root_from_inclusion(LEAF_HASHES[0], index, size, []) is None


def test_inclusion_proof_plan_names_what_each_element_folds():
    # Tree of seven (module docstring): leaf 0's proof is leaf 1, node (1,1), then the
    # partial right subtree [4, 7) folded from (1,2) and (0,6).
    assert merkle.inclusion_proof_nodes(0, 7) == [[(0, 1)], [(1, 1)], [(1, 2), (0, 6)]]
    assert merkle.inclusion_proof_nodes(6, 7) == [[(1, 2)], [(2, 0)]]
    assert merkle.inclusion_proof_nodes(0, 1) == []


def test_a_store_that_is_behind_is_an_error_not_a_wrong_proof(store):
    behind = RecordingStore({n: h for n, h in store.items() if n != (1, 2)})
    with pytest.raises(LookupError):
        merkle.inclusion_proof(0, 7, behind.fetch)
    with pytest.raises(LookupError):
        merkle.consistency_proof(3, 7, behind.fetch)


# -- Consistency proofs --------------------------------------------------------------------


@pytest.mark.parametrize("new", range(1, MAX + 1))
def test_consistency_proofs_match_the_rfc_verify_and_reject_tampering(store, new):
    new_root = ref_root(new)
    for old in range(1, new + 1):
        backend = RecordingStore(store)
        proof = merkle.consistency_proof(old, new, backend.fetch)
        assert proof == ref_proof(old, DATA[:new])
        assert len(backend.calls) == (1 if old < new else 0)
        assert all(len(set(call)) == len(call) for call in backend.calls)

        old_root = ref_root(old)
        assert merkle.verify_consistency(old, new, old_root, new_root, proof)

        for bad in tamperings(proof):
            assert not merkle.verify_consistency(old, new, old_root, new_root, bad)
        if old < new:
            assert not merkle.verify_consistency(old, new, old_root, new_root, [old_root, *proof])
            assert not merkle.verify_consistency(new, old, new_root, old_root, proof)
            assert not merkle.verify_consistency(old, new, new_root, old_root, proof)
        for other in {old - 1, old + 1} - {0, old, new}:
            assert not merkle.verify_consistency(other, new, ref_root(other), new_root, proof)
        for other in {new - 1, new + 1} - {old, new}:
            if other > old:
                assert not merkle.verify_consistency(old, other, old_root, ref_root(other), proof)
        assert not merkle.verify_consistency(old, new, ref_root(old - 1), new_root, proof)
        assert not merkle.verify_consistency(old, new, old_root, ref_root(new + 1), proof)


def test_consistency_with_the_empty_tree_proves_nothing():
    assert merkle.consistency_proof_nodes(0, 5) == []
    assert merkle.consistency_proof_nodes(0, 0) == []
    assert not merkle.verify_consistency(0, 5, EMPTY_ROOT, ref_root(5), [])
    assert not merkle.verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])


def test_consistency_proof_rejects_a_shrinking_tree():
    for old, new in ((5, 4), (-1, 3), (1, 0)):
        with pytest.raises(ValueError):
            merkle.consistency_proof_nodes(old, new)


def test_consistency_proof_plan_names_what_each_element_folds():
    # 6 -> 8 (proofgen's vector): node (1,2), leaf-pair (1,3), the old tree's left half (2,0).
    assert merkle.consistency_proof_nodes(6, 8) == [[(1, 2)], [(1, 3)], [(2, 0)]]
    # 3 -> 7: leaf 2, leaf 3, node (1,0), then [4, 7) folded.
    assert merkle.consistency_proof_nodes(3, 7) == [[(0, 2)], [(0, 3)], [(1, 0)], [(1, 2), (0, 6)]]
    assert merkle.consistency_proof_nodes(4, 4) == []
