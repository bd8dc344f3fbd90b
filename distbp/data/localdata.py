"""Rows that each rank holds on its own (`local_rows`): agree on their shape, labels and scaling.

With data too big for one node, each rank passes (or loads) only its own rows. The ranks must still
train one model on one dataset: the same features, the same kind of labels, one class count (the
largest label over all ranks), and one feature scaling computed from all ranks' training rows (merged
from per-rank moments or ranges, in rank order, so every rank gets the same bits). The batch plan is
`distbp.data.shard.LocalRows`.
"""

from __future__ import annotations

import hashlib

from distbp.comm.base import Comm
from distbp.data.datasets import Dataset, scaling_from_parts
from distbp.data.shard import LocalRows
from distbp.errors import ConfigMismatchError


def agree(data: Dataset, comm: Comm, *, scale: str, batch_size: int, seed: int,
          shuffle: bool = True) -> tuple[Dataset, LocalRows, str]:
    """[dist] This rank's dataset with the scaling and class count of all ranks' rows, the batch plan, and
    one fingerprint of all ranks' rows (what the ranks compare instead of their own).

    scale: the feature scaling rule (--scale); batch_size, seed, shuffle: the global batch, the shuffle's seed,
    and whether to shuffle (False: each rank's rows in stored order).

    Raises (on every rank alike) when the ranks' rows cannot be one dataset: other feature counts, class
    labels on some ranks and float targets on others (or other target widths), a held-out split on some
    ranks only.
    """
    mine = {"features": data.n_features, "labels": data.n_classes is not None,
            "targets": None if data.n_classes is not None else data.n_targets,
            "classes": data.n_classes, "train": data.train.n_rows,
            "test": None if data.test is None else data.test.n_rows,
            "part": data.scaling_part(scale), "fingerprint": data.fingerprint()}
    every = comm.allgather_object(mine)
    _check_alike(every, "features", "feature(s)")
    _check_alike(every, "labels", "class labels", lambda v: "class labels" if v else "float targets")
    _check_alike(every, "targets", "target width", lambda v: f"{v} target(s)")
    _check_alike(every, "test", "held-out split", lambda v: "held-out rows" if v is not None else "none")
    offset, factor, scaling = scaling_from_parts([e["part"] for e in every], scale)
    classes = max(e["classes"] for e in every) if mine["labels"] else None
    plan = LocalRows([e["train"] for e in every], [e["test"] or 0 for e in every], comm.rank, batch_size, seed,
                     shuffle)
    together = hashlib.sha256("".join(e["fingerprint"] for e in every).encode()).hexdigest()[:16]
    return data.rescaled(offset, factor, scaling, classes), plan, together


def _check_alike(every: list[dict], key: str, what: str, show=None) -> None:
    """Raise naming the ranks whose `key` differs from rank 0's."""
    show = show or (lambda v: f"{v} {what}")
    first = every[0][key]
    other = [r for r, e in enumerate(every) if _differs(e[key], first, key)]
    if other:
        lines = ", ".join(f"rank {r}: {show(every[r][key])}" for r in other)
        raise ConfigMismatchError(f"local rows: the ranks' rows cannot be one dataset: rank 0 has "
                                  f"{show(first)}; {lines}")


def _differs(value, first, key: str) -> bool:
    if key == "test":  # a held-out split on every rank or on none (its size may differ)
        return (value is None) != (first is None)
    return value != first
