"""The α–β model of the allreduce, and the step time it predicts for a group of k ranks.

One allreduce of n bytes on k ranks takes T(n) = α + β·n; `fit` finds α and β from measured times (least
squares of the relative error, so that 4 B and 64 MiB count alike; α, β ≥ 0).

How α and β grow with k is the transport's algorithm (`shape`): L(k) message latencies and a byte factor B(k)
(bytes each rank sends per byte of the buffer):

    mpi    L = 2·ceil(log₂ k), B = 2(k−1)/k    (MPICH's large-message allreduce: recursive halving, doubling)
    ring   L = 2(k−1),         B = 2(k−1)/k    (distbp.comm.ring)
    hier   on one node: one flag exchange and B = 2(r−1)/r (each rank reads the others' slices, then copies);
           across h nodes, on top of that: L = 2·ceil(log₂ h), B = 2(h−1)/h per node (distbp.comm.bruck)

so a fit at one size gives a per-latency a = α/L and a per-byte b = β/B (`Link`), one for the node's shared
memory (fitted on a group of one whole node) and one for the network between nodes (fitted on the whole job),
and T(k, n) follows for any k (`allreduce_seconds`). The step (`predict_step`):

    compute(k) = scaled(1)·rows(k)/rows(1) + fixed(1)      (the 1-rank step's phases: the local gradient and the
                                                            rows' gathering scale with the rows a rank computes;
                                                            the update, the loss sum and Python do not)
    comm(k)    = Σ over the gradient's buckets of T(k, bucket bytes)
    step(k)    = max(compute(k), (1 − ω)·compute(k) + comm(k)),  ω = 2/3

ω is the share of the compute that communication can hide behind: buckets leave while the backward pass runs,
which is about 2/3 of a layer pass (two products per layer against the forward's one). Sizes beyond the job's
ranks are a projection of the same formulas, not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

OVERLAP_SHARE = 2 / 3  # ω: the backward pass's share of the compute


def fit(nbytes: list[float], seconds: list[float]) -> dict:
    """{alpha_s, beta_s_per_byte, max_rel_error} of T = α + β·n over the points, α, β ≥ 0, least squares of
    the relative error (each point weighed by 1/T²)."""
    n, t = np.asarray(nbytes, float), np.asarray(seconds, float)
    if n.size == 0:
        return {"alpha_s": 0.0, "beta_s_per_byte": 0.0, "max_rel_error": 0.0}
    design = np.column_stack([np.ones_like(n), n]) / t[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if alpha < 0:  # no latency is negative: the best line through the origin instead
        alpha, beta = 0.0, float(np.sum(n / t) / np.sum((n / t) ** 2))
    if beta < 0:  # nor a bandwidth: the best constant instead
        alpha, beta = float(np.sum(1 / t) / np.sum(1 / t ** 2)), 0.0
    model = alpha + beta * n
    return {"alpha_s": float(alpha), "beta_s_per_byte": float(beta),
            "max_rel_error": float(np.max(np.abs(model / t - 1)))}


def shape(transport: str, k: int, per_node: int) -> tuple[float, float, float, float]:
    """(node latencies, node byte factor, network latencies, network byte factor) of one allreduce on the first
    k ranks of a job with `per_node` ranks per node (whole nodes first)."""
    if k <= 1:
        return 0.0, 0.0, 0.0, 0.0
    if transport == "hier":
        r, h = min(k, per_node), math.ceil(k / per_node)
        node = (1.0, 2 * (r - 1) / r) if r > 1 else (0.0, 0.0)
        net = (2.0 * math.ceil(math.log2(h)), 2 * (h - 1) / h) if h > 1 else (0.0, 0.0)
        return (*node, *net)
    latencies = 2.0 * math.ceil(math.log2(k)) if transport == "mpi" else 2.0 * (k - 1)
    factor = 2 * (k - 1) / k
    # a flat algorithm runs at its slowest link's speed: the network's once the group spans two nodes
    return (latencies, factor, 0.0, 0.0) if k <= per_node else (0.0, 0.0, latencies, factor)


@dataclass
class Link:
    """Per message latency a (seconds) and per byte b (seconds per byte of byte factor) of one kind of link."""

    a: float = 0.0
    b: float = 0.0


@dataclass
class TransportModel:
    """A transport's links, from fits at known sizes: `node` (a group of one whole node) and `net` (the job)."""

    transport: str
    per_node: int
    node: Link
    net: Link

    @classmethod
    def from_fits(cls, transport: str, per_node: int, node_fit: dict | None, node_k: int,
                  net_fit: dict | None, net_k: int) -> TransportModel:
        """Per-latency and per-byte constants from α, β fitted on node_k ranks (one node) and net_k (the job)."""
        model = cls(transport, per_node, Link(), Link())
        if node_fit is not None:
            lat, fac, _, _ = shape(transport, node_k, per_node)
            model.node = Link(node_fit["alpha_s"] / lat if lat else 0.0,
                              node_fit["beta_s_per_byte"] / fac if fac else 0.0)
        if net_fit is not None:
            nl, nf, lat, fac = shape(transport, net_k, per_node)
            # what the node's part takes of the job's fit (hier), the rest is the network's
            alpha = net_fit["alpha_s"] - nl * model.node.a
            beta = net_fit["beta_s_per_byte"] - nf * model.node.b
            model.net = Link(max(0.0, alpha) / lat if lat else 0.0, max(0.0, beta) / fac if fac else 0.0)
        if node_fit is None:  # one rank per node: the network's constants stand in for the node's
            model.node = Link(model.net.a, model.net.b)
        if net_fit is None:  # one node: beyond it, more of the same link (a projection says so)
            model.net = Link(model.node.a, model.node.b)
        return model

    def allreduce_seconds(self, k: int, nbytes: float) -> float:
        """T(k, n) of one allreduce of nbytes on the first k ranks."""
        nl, nf, xl, xf = shape(self.transport, k, self.per_node)
        return nl * self.node.a + xl * self.net.a + nbytes * (nf * self.node.b + xf * self.net.b)

    def wire_bytes(self, k: int, nbytes: float) -> float:
        """Bytes one rank sends per allreduce of nbytes on the first k ranks (hier: across nodes only, a node's
        share split among its ranks)."""
        _, nf, _, xf = shape(self.transport, k, self.per_node)
        if self.transport == "hier":
            return xf * nbytes / min(k, self.per_node)
        return (nf + xf) * nbytes

    def to_dict(self) -> dict:
        return {"transport": self.transport, "per_node": self.per_node, "node": asdict(self.node),
                "net": asdict(self.net)}


def predict_step(model: TransportModel | None, k: int, buckets: list[int], scaled_s: float, fixed_s: float,
                 rows_k: int, rows_1: int) -> dict:
    """{compute_s, comm_s, step_s} predicted for k ranks. From the 1-rank step: scaled_s, the seconds that grow
    with a rank's rows (the local gradient and gathering the rows, on rows_1 rows), and fixed_s, those that do
    not (the update, the loss sum, Python); rows_k: the rows of k's slowest rank. buckets: the gradient's
    bucket sizes in bytes."""
    compute = scaled_s * rows_k / max(1, rows_1) + fixed_s
    if k <= 1 or model is None:
        return {"compute_s": compute, "comm_s": 0.0, "step_s": compute}
    comm = sum(model.allreduce_seconds(k, b) for b in buckets)
    return {"compute_s": compute, "comm_s": comm, "step_s": max(compute, (1 - OVERLAP_SHARE) * compute + comm)}
