"""The default mode: every rank sums the whole gradient (bucketed allreduce) and applies the whole update.

Buckets of the flat gradient start their allreduce while the backward pass still runs (output layer
first); the transport is the MPI library's Iallreduce or distbp's own ring (`--allreduce`), and a
bucket may travel as 16-bit words (`--comm-dtype`, `distbp.codecs`). Every rank ends with the same
∇L and applies the same replicated update.
"""

from __future__ import annotations

import numpy as np

from distbp.reducer import GradientReducer, ring_scratch_elements
from distbp.sync.base import ReplicatedUpdate
from distbp.sync.bucketed import BucketedSync


class AllreduceSync(ReplicatedUpdate, BucketedSync):
    name = "allreduce"

    def memory(self) -> dict[str, int]:
        o, P, item = self.options, self.shape.n_params, np.dtype(self.shape.dtype).itemsize
        ring = o.algorithm == "ring" and self.layout.size > 1
        scratch = ring_scratch_elements(self.shape.layer_slices, item, self.layout.size, o.bucket_bytes) * item \
            if ring else 0
        wire = 2 * P if o.comm_dtype else 0  # every bucket's 16-bit copy
        return {"gradients": self.gradient_bytes(), "optimizer_state": o.optimizer_state_bytes(P, self.shape.dtype),
                "allreduce_scratch": scratch + wire}

    def describe(self) -> str:
        o = self.options
        how = "overlapped" if o.overlap else "blocking"
        text = f"allreduce {how}"
        if self.layout.size > 1:
            text += " (distbp ring)" if o.algorithm == "ring" else " (MPI)"
        if o.comm_dtype:
            text += f", {o.comm_dtype} on the wire"
        if o.accumulate > 1:
            text += f", accumulate {o.accumulate}"
        return text

    @property
    def algorithm(self) -> str:
        return self.options.algorithm

    def build(self, comm, model) -> None:
        super().build(comm, model)
        o = self.options
        self.reducer = GradientReducer(comm, self.grad, model.layer_slices, bucket_bytes=o.bucket_bytes,
                                       overlap=o.overlap, comm_dtype=o.comm_dtype, algorithm=o.algorithm)
        self.optimizer = self.build_optimizer(model)
