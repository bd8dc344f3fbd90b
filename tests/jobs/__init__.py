"""Launched jobs: each test starts distbp under a launcher (launch/local, mpiexec, srun, namespaces) and checks the job."""
