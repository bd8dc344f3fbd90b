"""Which skips a CI run may have: a test that cannot run in CI fails there instead of hiding behind a skip.

Under `CI=true` the pytest session fails when any test skipped (itself, or by pytest-mpi) for a reason that does
not match ALLOWED below, and each such test is printed with its reason. Outside CI a skip stays a skip, and
`launch/test` prints every skip and xfail reason (-rsx) either way. tests/conftest.py installs the policy
(`install`); `pytest -p skip_policy` does too (tests/unit/test_skip_policy.py runs it so).

Add a reason here only for what no project file can provide on a CI machine, and say why.
"""

from __future__ import annotations

import os
import re

import pytest

# (pattern of the skip reason, why a CI machine may lack it)
ALLOWED: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"need --with-mpi option to run"),
     "pytest-mpi: the MPI-marked tests of the serial part run in launch/test's MPI parts (2, 3 and 4 ranks)"),
    (re.compile(r"test does not use mpi"),
     "pytest-mpi: under --with-mpi the tests without the mpi mark ran in the serial part"),
    (re.compile(r"this kernel has no netem qdisc"),
     "a delay on a link needs the kernel's netem module (CONFIG_NET_SCH_NETEM), which some VMs' kernels lack; "
     "no package adds it, and rate-only links (tbf) are tested on every kernel"),
    (re.compile(r"SCIPY_ARRAY_API is not set"),
     "scikit-learn's array-API checks run only with SCIPY_ARRAY_API=1 set before SciPy loads, which changes "
     "SciPy for the whole session; distbp's estimators take NumPy arrays and claim no array-API support"),
)


def allowed(reason: str) -> bool:
    return any(pattern.search(reason) for pattern, _ in ALLOWED)


def skip_reason(report) -> str:
    """The reason of a skipped test report (pytest keeps it as (file, line, 'Skipped: reason'))."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipPolicy:
    """The pytest plugin: notes every skip not allowed, prints them, and fails the session for them."""

    def __init__(self):
        self.unallowed: list[tuple[str, str]] = []  # (test id, reason)

    def pytest_runtest_logreport(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = skip_reason(report)
            if not allowed(reason):
                self.unallowed.append((report.nodeid, reason))

    def pytest_terminal_summary(self, terminalreporter):
        if self.unallowed:
            terminalreporter.section("skips not allowed in CI (tests/helpers/skip_policy.py)", red=True, bold=True)
            for nodeid, reason in self.unallowed:
                terminalreporter.line(f"SKIPPED IN CI {nodeid}: {reason}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session):
        if self.unallowed and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def install(config) -> None:
    """Register the policy with this pytest run when CI=true (once)."""
    if os.environ.get("CI") == "true" and not config.pluginmanager.has_plugin("distbp-skip-policy"):
        config.pluginmanager.register(SkipPolicy(), "distbp-skip-policy")


def pytest_configure(config):  # `pytest -p skip_policy`
    install(config)
