"""The default mode: every rank sums the whole gradient (bucketed allreduce) and applies the whole update.

Buckets of the flat gradient start their allreduce while the backward pass still runs (output layer
first); the transport is the MPI library's Iallreduce or distbp's own ring (`--allreduce`), and a
bucket may travel as 16-bit words (`--comm-dtype`, `distbp.comm.codecs`). Every rank ends with the same
∇L and applies the same replicated update.
"""

from __future__ import annotations

import numpy as np

from distbp.comm.codecs import codec_for
from distbp.comm.hier import FLAG_BYTES, HierarchicalAllreduce, slice_elements
from distbp.sync.reducer import GradientReducer, bucket_layout, ring_buffer_bytes
from distbp.comm.ring import ring_buffer_elements
from distbp.sync.base import ReplicatedUpdate
from distbp.sync.bucketed import BucketedSync


class AllreduceSync(ReplicatedUpdate, BucketedSync):
    name = "allreduce"

    def memory(self) -> dict[str, int]:
        o, P, item = self.options, self.shape.n_params, np.dtype(self.shape.dtype).itemsize
        # the ring's scratch (with a codec: uint16 words, and a uint16 wire of the largest bucket; 0 on one rank)
        scratch = ring_buffer_bytes(self.shape.layer_slices, item, self.layout.size, o.bucket_bytes,
                                    compressed=bool(o.comm_dtype)) if o.algorithm == "ring" else 0
        if o.algorithm == "hier":  # the flags beside the shared gradient, and the ring of slices across nodes
            r, h = self.layout.node_sizes[0], len(self.layout.node_sizes)
            wire, ring = ring_buffer_elements(slice_elements(self.largest_bucket(), r), h, bool(o.comm_dtype))
            scratch = FLAG_BYTES + (2 * (wire + ring) if o.comm_dtype else ring * item)
        wire = 2 * P if o.comm_dtype and o.algorithm == "mpi" else 0  # every bucket's 16-bit copy (MPI's user op)
        return {"gradients": self.gradient_bytes(), "optimizer_state": o.optimizer_state_bytes(P, self.shape.dtype),
                "allreduce_scratch": scratch + wire}

    def describe(self) -> str:
        o = self.options
        how = "overlapped" if o.overlap else "blocking"
        text = f"allreduce {how}"
        if self.layout.size > 1:
            text += {"ring": " (distbp ring)", "mpi": " (MPI)"}.get(o.algorithm, "")
            if o.algorithm == "hier":
                r, h = self.layout.node_sizes[0], len(self.layout.node_sizes)
                text += f" (hierarchical: nodes of {r} in shared memory" + \
                    (f", {h} nodes by distbp ring)" if h > 1 else ")")
        if o.comm_dtype and o.algorithm == "hier":
            # only the slices that cross nodes travel as 16-bit words; a node sums in full precision
            text += f", {o.comm_dtype} between nodes" + (" (one node here: none)" if self.layout.single_node else "")
        elif o.comm_dtype:
            text += f", {o.comm_dtype} on the wire"
            if self.layout.size > 1:
                text += " (added in float by the ring)" if o.algorithm == "ring" else " (added by an MPI user op)"
        if o.accumulate > 1:
            text += f", accumulate {o.accumulate}"
        return text

    def largest_bucket(self) -> int:
        """Elements of the gradient's largest bucket."""
        P, item = self.shape.n_params, np.dtype(self.shape.dtype).itemsize
        return max(b.stop - b.start for b in bucket_layout(self.shape.layer_slices, P, item, self.options.bucket_bytes))

    @property
    def algorithm(self) -> str:
        return self.options.algorithm

    def warm_up(self) -> None:
        super().warm_up()
        codec = codec_for(self.options.comm_dtype)
        if codec is not None:
            codec.warm_up(self.shape.dtype)  # what the ring (or the MPI user op) calls on the gradient's dtype

    def build(self, comm, model) -> None:
        super().build(comm, model)
        o = self.options
        self.transport = None
        if o.algorithm == "hier":
            # the gradient lives in memory the node's ranks share: the backward pass writes it there
            self.transport = HierarchicalAllreduce(comm, model.n_params, model.dtype, codec=codec_for(o.comm_dtype),
                                                   max_bucket=self.largest_bucket())
            self.grad = self.transport.grad
        self.reducer = GradientReducer(comm, self.grad, model.layer_slices, bucket_bytes=o.bucket_bytes,
                                       overlap=o.overlap, comm_dtype=o.comm_dtype, algorithm=o.algorithm,
                                       transport=self.transport)
        self.optimizer = self.build_optimizer(model)

    def close(self) -> None:
        if self.transport is not None:  # the hierarchical allreduce: its window, communicators and ring
            self.transport.close()
            self.transport = None
        elif self.reducer.ring is not None:
            self.reducer.ring.close()
