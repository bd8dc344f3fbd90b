"""`python -m distbp.bench {allreduce,scaling} …`: the same as `distbp bench …`."""

import sys

from distbp.bench.main import bench_main

sys.exit(bench_main(sys.argv[1:]))
