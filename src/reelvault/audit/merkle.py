"""RFC 6962 / RFC 9162 Merkle tree hashing for the audit log, over stored complete subtrees.

Hashes are SHA-256, with a one-byte prefix so that no leaf can pass for an interior node
(the second-preimage defence of RFC 6962 section 2.1)::

    leaf hash    H(0x00 || entry)
    node hash    H(0x01 || left || right)
    empty tree   H("")

The log stores only complete, aligned subtrees, because they never change once they exist:
node (level, index) covers leaves [index * 2**level, (index + 1) * 2**level), and level 0
holds the leaf hashes. A tree of seven leaves, with its right frontier marked ``*``::

    level 2   (2,0)*
              /    \\
    level 1  (1,0)  (1,1)   (1,2)*
             / \\    / \\    / \\
    level 0  0   1  2   3  4   5   6*        root_nodes(7) = [(2,0), (1,2), (0,6)]

RFC 6962's tree is not complete when the size is not a power of two, but every subtree its
recursion splits off, MTH(D[a:b]) with ``a`` a multiple of the smallest power of two
>= b - a, is the right fold of the complete nodes that make up [a, b), largest first::

    MTH(D[0:7]) = H((2,0), H((1,2), (0,6)))        fold([h(2,0), h(1,2), h(0,6)])

So every root and every proof element is a fold of stored nodes. The planning functions
(:func:`inclusion_proof_nodes`, :func:`consistency_proof_nodes`) say which nodes; the
``fetch`` callback of :func:`inclusion_proof` and :func:`consistency_proof` gets all of
them in one batch, so a database-backed store answers a proof with one query.

Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 and returns False, never
raises, for a malformed proof: proofs come from the outside, and every way one can be
wrong means the same thing to the caller. The module is pure: hashlib and arithmetic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeAlias

__all__ = [
    "EMPTY_ROOT",
    "Fetch",
    "HASH_LEN",
    "Node",
    "append",
    "consistency_proof",
    "consistency_proof_nodes",
    "fold",
    "frontier_nodes",
    "inclusion_proof",
    "inclusion_proof_nodes",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "root",
    "root_from_inclusion",
    "root_nodes",
    "verify_consistency",
    "verify_inclusion",
]

Node: TypeAlias = tuple[int, int]
"""A complete, aligned subtree (level, index): leaves [index * 2**level, (index + 1) * 2**level)."""

Fetch: TypeAlias = Callable[[Sequence[Node]], Mapping[Node, bytes]]
"""Returns the stored hash of each node asked for; one call per proof."""

HASH_LEN: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """The RFC 6962 hash of one log entry."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 6962 hash of an interior node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over all the leaves, level by level: the reference for tests and offline checks.

    Pairing each level left to right and carrying an odd last node up unchanged builds
    exactly RFC 6962's tree; it needs no stored nodes, so it can check a store.
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def range_nodes(start: int, end: int) -> list[Node]:
    """The fewest complete, aligned subtrees that cover leaves [start, end), left to right.

    Any 0 <= start <= end has one such decomposition. Its :func:`fold` is MTH(D[start:end])
    when ``start`` is a multiple of the smallest power of two >= end - start (then the
    nodes come largest first): the shape of every subtree RFC 6962's recursion produces,
    and of [0, size). For other ranges the fold has no meaning in RFC 6962.

    Raises:
        ValueError: if not 0 <= start <= end.
    """
    if not 0 <= start <= end:
        raise ValueError(f"not a leaf range: [{start}, {end})")
    nodes: list[Node] = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start:
            level = min(level, (start & -start).bit_length() - 1)
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """H(h0, H(h1, ... H(hn-2, hn-1))): a right-edge subtree from its complete parts.

    The parts are the hashes of :func:`range_nodes` of the subtree, largest first. No parts
    fold to :data:`EMPTY_ROOT`, the root of the empty tree.
    """
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = node_hash(left, acc)
    return acc


def root_nodes(size: int) -> list[Node]:
    """The nodes whose fold is the root of the tree of ``size`` leaves, largest first."""
    return range_nodes(0, size)


def frontier_nodes(size: int) -> list[Node]:
    """The right frontier: all that :func:`append` needs to grow a tree of ``size`` leaves.

    The same nodes as :func:`root_nodes`, named for the sequencer's use: at most one per
    set bit of ``size``.
    """
    return root_nodes(size)


def _split(lo: int, hi: int) -> int:
    """Where RFC 6962 splits [lo, hi): lo plus the largest power of two < hi - lo."""
    return lo + (1 << ((hi - lo - 1).bit_length() - 1))


def inclusion_proof_nodes(index: int, size: int) -> list[list[Node]]:
    """For each element of PATH(index, D[size]), leaf to root, the nodes it folds.

    Raises:
        ValueError: if not 0 <= index < size.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    path: list[list[Node]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = _split(lo, hi)
        if index < mid:
            path.append(range_nodes(mid, hi))
            hi = mid
        else:
            path.append(range_nodes(lo, mid))
            lo = mid
    path.reverse()
    return path


def consistency_proof_nodes(old_size: int, new_size: int) -> list[list[Node]]:
    """For each element of PROOF(old_size, D[new_size]), in RFC order, the nodes it folds.

    RFC 6962 defines the proof for 0 < old_size < new_size; for old_size 0 or equal sizes
    it is empty, and :func:`verify_consistency` accepts the empty proof only for equal sizes.

    Raises:
        ValueError: if not 0 <= old_size <= new_size.
    """
    if not 0 <= old_size <= new_size:
        raise ValueError(f"tree size {old_size} cannot grow into {new_size}")
    proof: list[list[Node]] = []
    if old_size in (0, new_size):
        return proof
    lo, hi = 0, new_size
    whole = True  # SUBPROOF's b: the old tree is [0, hi), so its root is already known
    while old_size != hi:
        mid = _split(lo, hi)
        if old_size <= mid:
            proof.append(range_nodes(mid, hi))
            hi = mid
        else:
            proof.append(range_nodes(lo, mid))
            lo = mid
            whole = False
    if not whole:
        proof.append(range_nodes(lo, hi))
    proof.reverse()
    return proof


def _resolve(plan: list[list[Node]], fetch: Fetch) -> list[bytes]:
    wanted = list(dict.fromkeys(node for element in plan for node in element))
    if not wanted:
        return []
    stored = fetch(wanted)
    try:
        return [fold([stored[node] for node in element]) for element in plan]
    except KeyError as missing:
        raise LookupError(f"the store has no hash for node {missing.args[0]}") from None


def inclusion_proof(index: int, size: int, fetch: Fetch) -> list[bytes]:
    """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves.

    Raises:
        ValueError: if not 0 <= index < size.
        LookupError: if ``fetch`` lacks a node the proof needs (a store that is behind).
    """
    return _resolve(inclusion_proof_nodes(index, size), fetch)


def consistency_proof(old_size: int, new_size: int, fetch: Fetch) -> list[bytes]:
    """The RFC 9162 consistency proof from the tree of ``old_size`` to that of ``new_size``.

    Raises:
        ValueError: if not 0 <= old_size <= new_size.
        LookupError: if ``fetch`` lacks a node the proof needs (a store that is behind).
    """
    return _resolve(consistency_proof_nodes(old_size, new_size), fetch)


def _well_formed(hashes: Sequence[bytes]) -> bool:
    return all(len(h) == HASH_LEN for h in hashes)


def root_from_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes | None:
    """The root that ``proof`` implies for the leaf, or None if the proof is malformed.

    RFC 9162 section 2.1.3.2 up to its last comparison, for callers that look the root up
    rather than hold it (a checkpoint cache keyed by root).
    """
    if not 0 <= index < size or len(leaf_hash) != HASH_LEN or not _well_formed(proof):
        return None
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # On the right edge a node may have no sibling: climb until it does.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows the leaf at ``index`` in the tree of ``size`` with ``root``."""
    return root_from_inclusion(leaf_hash, index, size, proof) == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree (old_size, old_root) is a prefix of (new_size, new_root).

    RFC 9162 section 2.1.4.2. Equal sizes need an empty proof and equal roots. An old size
    of 0 is refused: every tree extends the empty one, so True would prove nothing, and a
    caller with no earlier checkpoint has nothing to check.
    """
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if not proof or len(old_root) != HASH_LEN or not _well_formed(proof):
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is one complete node, so the RFC leaves its root out of the proof.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def append(
    frontier: Mapping[Node, bytes], old_size: int, new_leaf_hashes: Sequence[bytes]
) -> tuple[dict[Node, bytes], bytes]:
    """Grow the tree by a batch of leaves: the nodes to store, and the new root.

    The sequencer holds only the right frontier (:func:`frontier_nodes` of ``old_size``, at
    most one node per bit of the size) rather than reading the tree back: each new leaf
    merges with the frontier nodes it completes, like a carry in binary addition.

    Args:
        frontier: the stored hashes of at least ``frontier_nodes(old_size)``.
        old_size: the number of leaves already in the tree.
        new_leaf_hashes: :func:`leaf_hash` of each new entry, in log order.

    Returns:
        Every node at level >= 1 that the batch completes (level 0 is the leaf hashes the
        caller already has), and the root of the tree of ``old_size + len(new_leaf_hashes)``.

    Raises:
        ValueError: if ``old_size`` is negative or a leaf hash is not 32 bytes.
        LookupError: if ``frontier`` lacks one of the frontier nodes.
    """
    stack: list[tuple[int, bytes]] = []  # (level, hash), strictly descending levels
    for node in root_nodes(old_size):
        try:
            stack.append((node[0], frontier[node]))
        except KeyError:
            raise LookupError(f"the frontier has no hash for node {node}") from None
    created: dict[Node, bytes] = {}
    size = old_size
    for leaf in new_leaf_hashes:
        if len(leaf) != HASH_LEN:
            raise ValueError(f"a leaf hash is {HASH_LEN} bytes, not {len(leaf)}")
        level, index, value = 0, size, leaf
        while stack and stack[-1][0] == level:
            value = node_hash(stack.pop()[1], value)
            level += 1
            index >>= 1
            created[(level, index)] = value
        stack.append((level, value))
        size += 1
    return created, fold([value for _, value in stack])
