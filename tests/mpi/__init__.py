"""In-process MPI tests: run by launch/test under MPI on 2, 3 and 4 ranks (pytest --with-mpi -m mpi)."""
