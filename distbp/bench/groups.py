"""Groups of ranks inside one job, placed as real jobs of those sizes would be: whole nodes first.

`placement(comm)` orders the job's ranks node by node (nodes in the order of their lowest rank, a node's ranks
by rank), so the first k ranks of that order fill whole nodes before they start another, as a scheduler places
a job of k ranks. `group_sizes(P, asked)` picks the sizes of a study, and `Comm.subgroup(members)` makes the
communicator of one group.
"""

from __future__ import annotations

from distbp.comm.base import Comm


def placement(comm: Comm) -> tuple[list[int], list[int]]:
    """Collective: (the world ranks in placement order, the ranks on each node in that order).

    A node is the ranks that share memory (`Comm.split_by_node`); it is named by its lowest world rank, which
    needs no host name (namespace test hosts share one)."""
    node, cross = comm.split_by_node()
    try:
        first = min(node.allgather_object(comm.rank))  # this node's lowest rank: its name
        local = node.rank
    finally:
        cross.free()
        node.free()
    where = comm.allgather_object((first, local))
    order = sorted(range(comm.size), key=lambda r: where[r])
    firsts = sorted({f for f, _ in where})
    return order, [sum(1 for f, _ in where if f == n) for n in firsts]


def default_sizes(P: int) -> list[int]:
    """Powers of two up to P, and P: 1, 2, 4, …, P."""
    sizes, k = [], 1
    while k < P:
        sizes.append(k)
        k *= 2
    return sizes + [P]


def group_sizes(P: int, asked: list[int] | None) -> list[int]:
    """The group sizes of a study on P ranks: `asked` (sorted, without repeats), or `default_sizes(P)`.

    ValueError names a size that is not 1 … P."""
    if not asked:
        return default_sizes(P)
    bad = [k for k in asked if not 1 <= k <= P]
    if bad:
        raise ValueError(f"--ranks {','.join(map(str, asked))}: every size must be 1 … {P} (the ranks of this job), "
                         f"got {', '.join(map(str, bad))}")
    return sorted(set(asked))


def members(order: list[int], size: int) -> list[int]:
    """The world ranks of the group of `size`: the first `size` of the placement order."""
    return order[:size]
