"""Unit tests: one process, no MPI launcher needed (a few start a small job to check a command end to end)."""
