"""distbp.fit on p ranks ends at the float64 parameters recorded from one process (tests/golden/values.json).

Every rank holds every row, so p ranks compute one rank's sums in another order: float64 results agree to
about 1e-14 on 2, 3 and 4 ranks, uneven shards included (the summed loss makes them exact), far inside the
recorded tolerance (cases.FIT_RTOL, relative 1e-9). Lossy communication (comm_dtype bfloat16 or float16) is not
a case: its rounding depends on the rank count, so no one recorded value holds for every p.
Run by launch/test under MPI on 2, 3 and 4 ranks:
    launch/local -n 3 python -m pytest --with-mpi -m mpi tests/mpi/test_golden_mpi.py
"""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.golden import cases

VALUES = json.loads((Path(cases.__file__).with_name("values.json")).read_text())


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", list(cases.FIT_CASES))
def test_p_ranks_fit_ends_at_the_recorded_one_process_float64_parameters(name):
    params = cases.fit_case(name)  # [dist] every rank trains, over MPI's world (distbp.fit's default comm)
    np.testing.assert_allclose(params, VALUES["fit_float64"][name]["params"], rtol=cases.FIT_RTOL,
                               atol=cases.FIT_ATOL)
