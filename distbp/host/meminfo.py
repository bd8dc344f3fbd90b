"""How much memory this machine can still give, and whether the ranks sharing it fit (standard library only).

Every refusal of something too large (a dataset, a gzipped IDX, a model, a model file) asks `node_shortfall`
before allocating: each rank of this node holds its own copy, so what is compared with MemAvailable is the
per-rank need times the node's ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from distbp.host.threads import local_rank_count


def available_memory() -> int:
    """Bytes this machine can still give (MemAvailable; the physical memory where /proc has none)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class Shortfall:
    """Ranks of one node that would need more than the node has: per_rank bytes each, `available` in all."""

    per_rank: int
    ranks: int
    available: int

    @property
    def each(self) -> str:
        """' for each of the N ranks on this node' when there are several, else ''."""
        return f" for each of the {self.ranks} ranks on this node" if self.ranks > 1 else ""


def node_shortfall(per_rank: int, ranks: int | None = None) -> Shortfall | None:
    """None when `ranks` copies of per_rank bytes fit in what this machine has available now; else what did
    not fit. ranks: the ranks sharing this node (default: the launcher's count for this node)."""
    ranks = local_rank_count() if ranks is None else ranks
    available = available_memory()
    return Shortfall(per_rank, ranks, available) if per_rank * ranks > available else None
