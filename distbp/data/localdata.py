"""Rows that each rank holds on its own (`local_rows`): agree on their shape, labels and scaling.

With data too big for one node, each rank passes (or loads) only its own rows. The ranks must still
train one model on one dataset: the same features, the same kind of targets, one set of classes (the
sorted union of every rank's labels, which every rank renumbers its rows for), one feature scaling and one
target scaling computed from all ranks' training rows (merged from per-rank moments or ranges, in rank
order, so every rank gets the same bits). p ranks decide what one rank holding all rows decides. The batch
plan is `distbp.data.shard.LocalRows`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from distbp.comm.base import Comm
from distbp.data import targets
from distbp.data.datasets import Dataset, scaling_from_parts, target_scaling
from distbp.data.shard import LocalRows
from distbp.errors import ConfigError, ConfigMismatchError

KINDS_SHOWN = {"classes": "class labels", "values": "float targets", "multilabel": "0/1 multilabel targets"}


def agree(data: Dataset, comm: Comm, *, scale: str, batch_size: int, seed: int,
          shuffle: bool = True) -> tuple[Dataset, LocalRows, str]:
    """[dist] This rank's dataset with the scaling, classes and target scaling of all ranks' rows, the batch
    plan, and one fingerprint of all ranks' rows (what the ranks compare instead of their own).

    scale: the feature scaling rule (--scale); batch_size, seed, shuffle: the global batch, the shuffle's seed,
    and whether to shuffle (False: each rank's rows in stored order). The targets are standardized over all
    ranks' training rows when this rank's are (--scale-targets standardize).

    Raises (on every rank alike) when the ranks' rows cannot be one dataset: other feature counts, class
    labels on some ranks and float targets on others (or other target widths, other multilabel outputs,
    string labels beside numbers), a held-out split or a target scaling on some ranks only.
    """
    kind = data.kind
    mine = {"features": data.n_features, "kind": kind,
            "targets": None if kind == "classes" else data.n_targets,
            "classes": data.n_classes, "train": data.train.n_rows,
            "test": None if data.test is None else data.test.n_rows,
            "labels": _labels_seen(data) if kind == "classes" else None, "mapped": data.classes is not None,
            "names": None if data.classes is None or kind != "multilabel" else data.classes.tolist(),
            "target_scaling": data.target_offset is not None,
            "target_part": data.target_part() if data.target_offset is not None else None,
            "part": data.scaling_part(scale), "fingerprint": data.fingerprint()}
    mine["label_type"] = None if mine["labels"] is None else _type(mine["labels"])
    every = comm.allgather_object(mine)  # [dist]
    _check_alike(every, "features", "feature(s)")
    _check_alike(every, "kind", "targets", KINDS_SHOWN.get)
    _check_alike(every, "targets", "target width", lambda v: f"{v} target(s)")
    _check_alike(every, "label_type", "labels", lambda v: f"{v} as labels")
    _check_alike(every, "names", "outputs", lambda v: f"outputs {v}" if v is not None else "unnamed outputs")
    _check_alike(every, "target_scaling", "target scaling",
                 lambda v: "standardized targets" if v else "targets as they are")
    _check_alike(every, "test", "held-out split", lambda v: "held-out rows" if v is not None else "none")
    offset, factor, scaling = scaling_from_parts([e["part"] for e in every], scale)
    n_classes, agreed = data.n_classes, {}
    if kind == "classes":
        classes, n_classes = _merged_classes(data, every)
        agreed = {"classes": classes, "labels": _renumbered(data, classes)}
    if data.target_offset is not None:
        t_offset, t_factor = target_scaling([e["target_part"] for e in every])
        agreed |= {"target_offset": t_offset, "target_factor": t_factor}
    plan = LocalRows([e["train"] for e in every], [e["test"] or 0 for e in every], comm.rank, batch_size, seed,
                     shuffle)
    together = hashlib.sha256("".join(e["fingerprint"] for e in every).encode()).hexdigest()[:16]
    return data.rescaled(offset, factor, scaling, n_classes, **agreed), plan, together


def _labels_seen(data: Dataset) -> np.ndarray:
    """The sorted distinct labels of this rank's rows (train and test)."""
    if data.classes is not None:
        return data.classes  # the labels it numbered are exactly those it holds
    ys = [s.y for s in (data.train, data.test) if s is not None]
    return np.unique(np.concatenate(ys))


def _merged_classes(data: Dataset, every: list[dict]) -> tuple[np.ndarray | None, int]:
    """The classes and class count of every rank's labels together, as one rank holding all rows decides
    (`targets.class_set` on the sorted union). Where every rank's labels are class numbers already, so are
    all of them (a union of sets 0…Kᵣ−1, or of auto's plausible numbers, is one too, and a built-in set's
    labels are class numbers whatever it holds): the count is the largest."""
    if not any(e["mapped"] for e in every):
        return None, max(e["classes"] for e in every)
    union = np.unique(np.concatenate([e["labels"] for e in every]))
    rows = sum(e["train"] + (e["test"] or 0) for e in every)
    try:
        classes = targets.class_set(union, data.kind_asked, rows, f"local rows of {data.name}",
                                    outputs=data.outputs_asked)
    except ValueError as e:
        raise ConfigError(str(e)) from None  # every rank alike: they decide on the same union
    return classes, len(classes) if classes is not None else max(int(union[-1]) + 1,
                                                                   max(e["classes"] for e in every))


def _renumbered(data: Dataset, classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None] | None:
    """This rank's (train y, test y) as class numbers for the agreed classes; None when they are already."""
    mine = data.classes
    if (mine is None and classes is None) or (mine is not None and classes is not None
                                               and np.array_equal(mine, classes)):
        return None
    return (targets.renumber(data.train.y, mine, classes),
            None if data.test is None else targets.renumber(data.test.y, mine, classes))


def _type(labels: np.ndarray) -> str:
    return "strings" if labels.dtype.kind in "US" else "numbers"


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
