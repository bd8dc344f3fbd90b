"""In CI (CI=true) a test that cannot run fails the run: only the reasons tests/helpers/skip_policy.py allows may
skip there, and every other skip is named with its reason. Outside CI a skip stays a skip."""

import os
import subprocess
import sys
from pathlib import Path

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
TESTS = '''
import pytest

def test_runs():
    pass

def test_without_its_tool():
    pytest.skip("the frobnicator is not installed")

def test_without_netem():
    pytest.skip("shaped links: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), which a link delay needs")

@pytest.mark.xfail(reason="a known difference")
def test_expected_to_fail():
    assert False
'''


def pytest_run(tmp_path, ci: bool, *select: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_some.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(HELPERS)}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider", "-q",
                           "-rsx", "test_some.py", *select], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def test_in_ci_a_skip_that_is_not_allowed_fails_the_run_and_is_named(tmp_path):
    done = pytest_run(tmp_path, ci=True)
    assert done.returncode == 1, done.stdout
    assert "SKIPPED IN CI test_some.py::test_without_its_tool: the frobnicator is not installed" in done.stdout
    assert "SKIPPED IN CI test_some.py::test_without_netem" not in done.stdout  # on the list
    assert "1 passed, 2 skipped, 1 xfailed" in done.stdout


def test_in_ci_allowed_skips_and_xfails_pass(tmp_path):
    done = pytest_run(tmp_path, True, "-k", "not without_its_tool")
    assert done.returncode == 0, done.stdout
    assert "SKIPPED IN CI" not in done.stdout


def test_outside_ci_a_skip_stays_a_skip_and_its_reason_is_printed(tmp_path):
    done = pytest_run(tmp_path, ci=False)
    assert done.returncode == 0, done.stdout
    assert "SKIPPED [1] test_some.py:8: the frobnicator is not installed" in done.stdout
    assert "XFAIL test_some.py::test_expected_to_fail - a known difference" in done.stdout
