"""--tensorboard DIR: the root's epoch and evaluation records as TensorBoard scalars (an optional extra).

    distbp train ... --tensorboard runs/a        tensorboard --logdir runs     (pip install "distbp[tensorboard]")

Written through tensorboardX's SummaryWriter, the root's only, flushed after every record. The step axis is
the global step (an epoch record at its last update, `steps`; a mid-epoch evaluation at `eval_step`), so the
curves of runs with other batch sizes line up by updates, and a resumed run continues its axis: the writer
opens with purge_step just after the step the run starts from, so that what a run wrote after its last checkpoint
(and a new run's predecessor in the same folder wrote at all) is dropped by TensorBoard's reader, never shown
twice. tensorboardX is imported only when --tensorboard is given.
"""

from __future__ import annotations

import time

# record key → TensorBoard tag (grouped by the prefix before '/')
TAGS = {
    "train_loss": "loss/train", "test_loss": "loss/test",
    "train_accuracy": "accuracy/train", "test_accuracy": "accuracy/test",
    "test_subset_accuracy": "accuracy/test_subset",
    "test_rmse": "regression/test_rmse", "test_r2": "regression/test_r2",
    "lr": "optimizer/lr", "grad_norm": "optimizer/grad_norm",
    "samples_per_s": "speed/samples_per_s",
    "compute_s": "time/compute_s", "comm_s": "time/comm_s", "data_s": "time/data_s", "time_s": "time/epoch_s",
}
INSTALL = 'pip install "distbp[tensorboard]"'


def summary_writer_class():
    """tensorboardX's SummaryWriter, or one ImportError naming the pip install line."""
    try:
        from tensorboardX import (
            SummaryWriter,  # an optional extra: only when --tensorboard is given
        )
    except ImportError as e:
        raise ImportError(f"--tensorboard needs tensorboardX ({e}): {INSTALL}") from None
    return SummaryWriter


class TensorBoardLog:
    """The scalars of the records written so far into `folder` (the root's only: make it on the root)."""

    def __init__(self, folder: str, start_step: int):
        """folder: the event files' folder; start_step: the global step the run starts from (0, or a resumed
        checkpoint's): earlier event files' scalars after it are purged (those at it came with the checkpoint's
        last record; no record is ever at step 0, so a new run purges all of a predecessor's)."""
        # a suffix of its own, in nanoseconds: tensorboardX names a file by the second and the host, so a resumed
        # run that starts within the second would write over its predecessor's file; the reader takes the files
        # in name order, and this keeps it the order they were written in
        self._writer = summary_writer_class()(logdir=folder, purge_step=start_step + 1,
                                              filename_suffix=f".{time.time_ns():020d}")
        self._last: dict[str, int] = {}  # tag → the last step written (one value per tag and step)

    def write(self, record: dict) -> None:
        """A --metrics record's numbers as scalars at its global step; None values (no held-out rows, a
        regression's accuracy) are left out. Flushed at once, so TensorBoard shows the run as it goes."""
        step = int(record["eval_step"] if "eval_step" in record else record["steps"])
        for key, tag in TAGS.items():
            value = record.get(key)
            if value is None or isinstance(value, bool) or self._last.get(tag, -1) >= step:
                continue
            self._writer.add_scalar(tag, float(value), step)
            self._last[tag] = step
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
