"""Gradient-sync strategies (floor 4): how shard gradients become one update on every rank.

`factory` reads the mode flags and builds a strategy (`base.GradientSync`: allreduce, sharded, exact);
`reducer` sends the gradient's buckets while the backward pass runs; `transports` are the ways a bucket is
summed (MPI's Iallreduce, distbp's ring, the hierarchical allreduce).
May import: distbp.errors, distbp.units, distbp.comm, distbp.observe, distbp.nn, distbp.data and its own modules.
"""
