"""The default mode: every rank sums the whole gradient (bucketed allreduce) and applies the whole update.

Buckets of the flat gradient start their allreduce while the backward pass still runs (output layer
first); the transport (`distbp.sync.transports`: the MPI library's Iallreduce, distbp's own ring or the
hierarchical allreduce, `--allreduce`) is picked by name, and a bucket may travel as 16-bit words
(`--comm-dtype`, `distbp.comm.codecs`). Every rank ends with the same ∇L and applies the same replicated
update.
"""

from __future__ import annotations

import numpy as np

from distbp.comm.codecs import codec_for
from distbp.sync.base import ReplicatedUpdate
from distbp.sync.bucketed import BucketedSync
from distbp.sync.reducer import GradientReducer, bucket_layout
from distbp.sync.transports import Transport, make_transport, transport_class


class AllreduceSync(ReplicatedUpdate, BucketedSync):
    name = "allreduce"
    transport: Transport | None = None

    @property
    def transport_class(self) -> type[Transport]:
        """The transport the options name (`distbp.sync.transports.TRANSPORTS`)."""
        return transport_class(self.options.transport)

    def memory(self) -> dict[str, int]:
        o, P, item = self.options, self.shape.n_params, np.dtype(self.shape.dtype).itemsize
        scratch = self.transport_class.memory(self.layout, P, item, self.largest_bucket(), bool(o.comm_dtype))
        return {"gradients": self.gradient_bytes(), "optimizer_state": o.optimizer_state_bytes(P, self.shape.dtype),
                "allreduce_scratch": scratch}

    def describe(self) -> str:
        o = self.options
        text = f"allreduce {'overlapped' if o.overlap else 'blocking'}"
        text += self.transport_class.describe(self.layout, o.comm_dtype)
        if o.accumulate > 1:
            text += f", accumulate {o.accumulate}"
        return text

    def largest_bucket(self) -> int:
        """Elements of the gradient's largest bucket."""
        P, item = self.shape.n_params, np.dtype(self.shape.dtype).itemsize
        return max(b.stop - b.start for b in bucket_layout(self.shape.layer_slices, P, item, self.options.bucket_bytes))

    @property
    def algorithm(self) -> str:
        """The transport's registry name."""
        return self.options.transport

    def warm_up(self) -> None:
        super().warm_up()
        codec = codec_for(self.options.comm_dtype)
        if codec is not None:
            codec.warm_up(self.shape.dtype)  # what the ring (or the MPI user op) calls on the gradient's dtype

    def build(self, comm, model) -> None:
        super().build(comm, model)
        o = self.options
        self.transport = make_transport(o.transport, comm, model.n_params, model.dtype, self.largest_bucket(),
                                        o.comm_dtype)
        if self.transport.grad is not None:
            # the gradient lives in memory the transport shares (the node's ranks): the backward pass writes it there
            self.grad = self.transport.grad
        self.reducer = GradientReducer(comm, self.grad, model.layer_slices, bucket_bytes=o.bucket_bytes,
                                       overlap=o.overlap, transport=self.transport, alone=self.sums_alone(comm))
        self.optimizer = self.build_optimizer(model)

    def sums_alone(self, comm) -> bool:
        """True when the sum over ranks is the gradient itself: one rank, summed by one of distbp's transports
        without a codec (a codec rounds even on one rank). A transport from elsewhere is called as always."""
        return comm.size == 1 and self.options.comm_dtype is None and self.transport.identity_alone

    def close(self) -> None:
        if self.transport is not None:  # its communicators, shared window and buffers, once
            self.transport.close()
            self.transport = None
