"""Shared helpers of the tests: launching jobs, network namespaces, a local SLURM, reference twins, memory counts."""
