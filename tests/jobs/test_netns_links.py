"""Links of a chosen speed in the namespace harness (tests/helpers/netns.py): rate and delay strings, the qdiscs
on both ends of every link, an MPI job across them, and launch/netns --rate.

Plain pytest tests (no MPI marker) that need root and iproute2 and skip with the reason otherwise; the
ones with a delay also need netem in the kernel. Nothing here is timed: benchmarks/links.py measures
what the links carry.
"""

import math
import subprocess
import sys

import netns
import pytest

from tests.jobs.test_multinode import harness_possible  # noqa: F401  (fixture: root, iproute2, hydra or skip)

DELAY_TOLERANCE = 1e-9  # seconds: netem keeps the delay in nanoseconds, tc prints seconds


@pytest.fixture
def make_cluster(request, harness_possible):  # noqa: F811
    """make_cluster(hosts, rate=…, delay=…) → a created Cluster, destroyed after the test; skips if impossible."""

    def make(hosts: int, **links) -> netns.Cluster:
        cluster = netns.Cluster(hosts, **links)
        request.addfinalizer(cluster.destroy)
        try:
            return cluster.create()
        except netns.Unavailable as e:
            pytest.skip(f"shaped links: {e}")
    return make


@pytest.mark.parametrize("text, bits_per_s", [("1gbit", 10**9), ("10gbit", 10**10), ("25Gbit", 25 * 10**9),
                                              ("500mbit", 5 * 10**8), ("1.5gbit", 15 * 10**8), ("64kbit", 64000)])
def test_rate_strings_are_bits_per_second_in_tc_units(text, bits_per_s):
    assert netns.parse_rate(text) == bits_per_s
    assert netns.parse_rate(netns.format_rate(bits_per_s)) == bits_per_s


@pytest.mark.parametrize("text, seconds", [("5us", 5e-6), ("20us", 20e-6), ("50us", 50e-6), ("1.5ms", 1.5e-3),
                                           ("0us", 0.0), ("1s", 1.0)])
def test_delay_strings_are_seconds(text, seconds):
    assert math.isclose(netns.parse_delay(text), seconds, rel_tol=1e-12)


@pytest.mark.parametrize("text", ["", "fast", "10", "10gb", "-1gbit", "gbit", "1e9bit", "10 gbit/s"])
def test_bad_rate_strings_are_refused_naming_the_units(text):
    with pytest.raises(ValueError, match=r"bad rate .*units: bit, kbit, mbit, gbit, tbit"):
        netns.parse_rate(text)


def test_bytes_per_second_and_zero_rates_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="bps' means bytes/s"):
        netns.parse_rate("10gbps")
    with pytest.raises(ValueError, match="more than 0"):
        netns.parse_rate("0gbit")


@pytest.mark.parametrize("text", ["", "5", "-5us", "us", "5 minutes", "5usec"])
def test_bad_delay_strings_are_refused_naming_the_units(text):
    with pytest.raises(ValueError, match=r"bad delay .*units: s, ms, us, ns"):
        netns.parse_delay(text)


def test_readback_understands_tc_json_for_netem_over_tbf():
    # `tc -j qdisc show` in iproute2's format (q_netem.c, q_tbf.c): tbf's rate in bytes/s, netem's delay in
    # seconds; checked without a kernel, since netem is optional (CONFIG_NET_SCH_NETEM)
    qdiscs = [{"kind": "netem", "handle": "1:", "root": True, "refcnt": 3,
               "options": {"limit": 80000, "delay": {"delay": 2e-05, "jitter": 0}, "ecn": False, "gap": 0}},
              {"kind": "tbf", "handle": "10:", "parent": "1:1",
               "options": {"rate": 1250000000, "burst": 690000, "lat": 2000}}]
    assert netns.Shaping.from_tc(qdiscs) == netns.Shaping(("netem", "tbf"), rate=10**10, delay=2e-05, burst=690000)
    assert str(netns.Shaping.from_tc(qdiscs)) == "10gbit (tbf), 20us each way (netem)"
    noqueue = [{"kind": "noqueue", "handle": "0:", "root": True, "refcnt": 2, "options": {}}]
    assert netns.Shaping.from_tc(noqueue) == netns.Shaping((), rate=None, delay=None, burst=None)


@pytest.mark.timeout(60)
def test_rate_is_on_both_ends_of_every_link_and_destroy_removes_everything(make_cluster):
    cluster = make_cluster(3, rate="10gbit")
    ends = cluster.shaping()
    assert sorted(ends) == sorted([f"h{i}/eth0" for i in range(3)] + [f"sw/p{i}" for i in range(3)])
    for end, shaping in ends.items():
        assert shaping.kinds == ("tbf",), f"{end}: {shaping}"
        assert shaping.rate == 10**10, f"{end}: {shaping}"
        assert shaping.delay is None, f"{end}: {shaping}"
        assert shaping.burst >= netns.GSO_BYTES, f"{end}: a GSO packet must pass whole, {shaping}"
    names = {cluster.switch, *cluster.hosts}
    cluster.destroy()
    assert not names & set(netns.namespaces())


@pytest.mark.timeout(60)
def test_rate_and_delay_are_on_both_ends_of_every_link(make_cluster):
    cluster = make_cluster(2, rate="1gbit", delay="20us")  # skips where the kernel has no netem
    for end, shaping in cluster.shaping().items():
        assert shaping.kinds == ("netem", "tbf"), f"{end}: {shaping}"
        assert shaping.rate == 10**9, f"{end}: {shaping}"
        assert abs(shaping.delay - 20e-6) <= DELAY_TOLERANCE, f"{end}: {shaping}"


JOB = """
from mpi4py import MPI
import numpy as np
comm = MPI.COMM_WORLD
buf = np.full(1 << 20, comm.rank + 1.0)
comm.Allreduce(MPI.IN_PLACE, buf)
assert buf[0] == comm.size * (comm.size + 1) / 2
sizes = comm.gather(comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size())
if comm.rank == 0:
    print("ranks sharing memory, per rank:", sizes, flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("links", [{"rate": "1gbit"}, {"rate": "1gbit", "delay": "20us"}],
                         ids=["rate", "rate+delay"])
def test_two_hosts_by_two_ranks_share_memory_per_host_and_allreduce_across_the_shaped_link(make_cluster, links):
    cluster = make_cluster(2, **links)
    before = cluster.counters(1)
    result = cluster.run(["python", "-c", JOB], ranks_per_host=2, timeout=90)
    assert result.returncode == 0, result.output
    # ranks of one host are one node to MPI (shared memory), as on a real cluster
    assert "ranks sharing memory, per rank: [2, 2, 2, 2]" in result.stdout, result.output
    received = cluster.counters(1)["rx"] - before["rx"]
    assert received >= 8 << 20, f"host h1 received only {received} B over its link, less than the 8 MiB summed"


@pytest.mark.timeout(60)
def test_launcher_passes_the_rate_on_and_prints_the_links(harness_possible):  # noqa: F811
    proc = subprocess.run([sys.executable, str(netns.REPO / "launch" / "netns"), "--hosts", "1", "--rate", "500mbit",
                           "python", "-c", "pass"], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 host(s), links 500mbit (tbf) on both ends (host eth0, switch p<i>)" in proc.stderr, proc.stderr


def test_launcher_refuses_a_bad_rate_before_making_anything():
    proc = subprocess.run([sys.executable, str(netns.REPO / "launch" / "netns"), "--rate", "10gb", "true"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "argument --rate: bad rate '10gb'" in proc.stderr, proc.stderr
