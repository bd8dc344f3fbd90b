#!/usr/bin/env bash
# Template: distbp on several nodes with the site's mpirun and a hostfile (no batch system).
# Copy it, edit the four settings, run it from the repo on the first node:
#
#   launch/mpirun-hostfile.sh                    # uses the settings below
#   HOSTFILE=hosts NODES=4 RANKS_PER_NODE=2 launch/mpirun-hostfile.sh --epochs 20
#
# Every node must see the same repo path and venv (shared file system), with distbp installed
# against the site MPI (see launch/README.md). Extra arguments go to `distbp train`.
set -euo pipefail

HOSTFILE="${HOSTFILE:-hosts}"                  # one line per node, e.g. "node01 slots=2" (Open MPI) or "node01:2" (MPICH)
NODES="${NODES:-2}"
RANKS_PER_NODE="${RANKS_PER_NODE:-2}"          # usually one per socket or per NUMA domain
# assumes every node looks like this one; without the env -u, nproc would answer OMP_NUM_THREADS where a
# login shell sets it (OMP_NUM_THREADS=1 made every rank 1 thread), not the cores
CORES_PER_NODE="${CORES_PER_NODE:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ranks=$((NODES * RANKS_PER_NODE))
threads=$((CORES_PER_NODE / RANKS_PER_NODE)); (( threads >= 1 )) || threads=1

# thread counts must be in the environment before numpy, scipy and numba load
export DISTBP_THREADS="$threads" NUMBA_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" \
       OPENBLAS_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$repo/.numba_cache}"
# measured with MPICH on one node: the default intra-node allreduce flips between a fast and a 4x slower mode
export MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM="${MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM:-reduce_scatter_allgather}"
vars=(DISTBP_THREADS NUMBA_NUM_THREADS OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS NUMBA_CACHE_DIR
      MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM)

if mpirun --version 2>&1 | grep -q "Open MPI"; then
    # open mpi: -x exports a variable to remote ranks; PE=threads gives each rank its own cores
    launch=(mpirun -np "$ranks" --hostfile "$HOSTFILE" --map-by "ppr:${RANKS_PER_NODE}:node:PE=${threads}"
            --bind-to core)
    for v in "${vars[@]}"; do launch+=(-x "$v"); done
else
    # mpich / intel mpi (hydra): -genv exports a variable, -ppn sets ranks per node
    launch=(mpirun -n "$ranks" -f "$HOSTFILE" -ppn "$RANKS_PER_NODE" -bind-to "core:${threads}")
    for v in "${vars[@]}"; do launch+=(-genv "$v" "${!v}"); done
fi

set -x
exec "${launch[@]}" python -m mpi4py -m distbp train "$@"
