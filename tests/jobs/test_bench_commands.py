"""`distbp bench allreduce` and `distbp bench scaling` (run as `python -m distbp.bench …`) under every launcher the
suite has: launch/local on 2 and 4 ranks, 2 namespace hosts x 2 ranks (tests/helpers/netns.py, as root), and a
one-node SLURM with `srun --mpi=pmi2` (tests/helpers/slurm.py). What is checked is the JSON (its schema, the group
sizes and their placement, the ideal line, the relations between its columns) and the PNG: never a timing.
The pure parts (group sizes, the α–β fit and model) run first, without MPI.
"""

import json
import math
import subprocess
import sys

import netns
import pytest
from jobs import run_job
from launchers import hydra_reason, need

from distbp.bench import groups
from distbp.bench import model as ab
from distbp.bench.allreduce import message_sizes
from tests.jobs.test_slurm import job_env, slurm  # noqa: F401  (fixture: a one-node SLURM)

BENCH = ["python", "-m", "distbp.bench"]
# a tiny model and data: the commands' plumbing, not their figures
MODEL = ["--data", "synthetic:rows=600,features=16,classes=4", "--layers", "16,24,4", "--bucket-mb", "0.001"]
ALLREDUCE = ["allreduce", *MODEL, "--max-bytes", "1024", "--repeats", "2"]
SCALING = ["scaling", *MODEL, "--steps", "2", "--warmup", "1", "--repeats", "1", "--fit-repeats", "2",
           "--per-rank-batch", "8", "--project", "2"]
VARIANTS = ["mpi", "mpi+bf16", "ring", "ring+bf16", "hier", "hier+bf16"]
RESULT_KEYS = {"mode", "ranks", "nodes", "transport", "batch", "rows_per_rank", "step_s", "samples_per_s",
               "speedup", "efficiency", "speedup_ideal", "speedup_vs_node", "efficiency_vs_node", "compute_s",
               "gradient_s", "update_s", "hooks_s", "exposed_s", "data_s", "other_s", "exposed_share",
               "bytes_per_rank", "steps_timed", "predicted_step_s", "predicted_speedup", "predicted_efficiency",
               "prediction_error"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- the pure parts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("P, sizes", [(1, [1]), (2, [1, 2]), (4, [1, 2, 4]), (6, [1, 2, 4, 6]), (16, [1, 2, 4, 8, 16])])
def test_default_group_sizes_are_powers_of_two_up_to_the_job_and_the_job(P, sizes):
    assert groups.group_sizes(P, None) == sizes


def test_asked_group_sizes_are_sorted_once_and_must_fit_the_job():
    assert groups.group_sizes(8, [8, 2, 2, 3]) == [2, 3, 8]
    with pytest.raises(ValueError, match=r"--ranks 2,9: every size must be 1 … 8 \(the ranks of this job\), got 9"):
        groups.group_sizes(8, [2, 9])


def test_a_group_takes_the_first_ranks_in_placement_order():
    order = [0, 2, 1, 3]  # round-robin placement: ranks 0 and 2 share a node
    assert groups.members(order, 2) == [0, 2]


def test_the_fit_recovers_alpha_and_beta_of_exact_points():
    n = [4, 64, 1024, 1 << 16, 1 << 20]
    got = ab.fit(n, [20e-6 + 1e-9 * x for x in n])
    assert math.isclose(got["alpha_s"], 20e-6, rel_tol=1e-9) and math.isclose(got["beta_s_per_byte"], 1e-9,
                                                                               rel_tol=1e-9)
    assert got["max_rel_error"] < 1e-9
    assert ab.fit(n, [1e-9 * x for x in n])["alpha_s"] >= 0  # never a negative latency


@pytest.mark.parametrize("transport, k, per_node, expected", [
    ("mpi", 8, 8, (6.0, 1.75, 0.0, 0.0)),
    ("ring", 16, 8, (0.0, 0.0, 30.0, 1.875)),  # a flat ring spanning two nodes runs at the network's speed
    ("hier", 8, 8, (1.0, 1.75, 0.0, 0.0)),
    ("hier", 24, 8, (1.0, 1.75, 4.0, 4 / 3)),  # 3 nodes: 2·ceil(log2 3) latencies, 2(h−1)/h
    ("hier", 1024 * 8, 8, (1.0, 1.75, 20.0, 2 * 1023 / 1024)),
])
def test_the_model_counts_latencies_and_bytes_as_each_algorithm_does(transport, k, per_node, expected):
    assert ab.shape(transport, k, per_node) == pytest.approx(expected)


def test_hier_across_nodes_pays_logarithmic_latency_where_a_ring_pays_linear():
    link = ab.Link(a=50e-6, b=1e-9)
    hier = ab.TransportModel("hier", 8, ab.Link(), link)
    ring = ab.TransportModel("ring", 8, link, link)
    assert hier.allreduce_seconds(8 * 1024, 0) == pytest.approx(20 * 50e-6)
    assert ring.allreduce_seconds(8 * 1024, 0) == pytest.approx(2 * (8 * 1024 - 1) * 50e-6)


def test_a_prediction_is_the_one_rank_step_on_one_rank_and_never_below_the_compute():
    model = ab.TransportModel("mpi", 2, ab.Link(1e-5, 1e-9), ab.Link(1e-5, 1e-9))
    one = ab.predict_step(model, 1, [4096], scaled_s=0.01, fixed_s=0.002, rows_k=64, rows_1=64)
    assert one == {"compute_s": 0.012, "comm_s": 0.0, "step_s": 0.012}
    four = ab.predict_step(model, 4, [1 << 20] * 8, scaled_s=0.01, fixed_s=0.002, rows_k=16, rows_1=64)
    assert four["compute_s"] == pytest.approx(0.0045)
    assert four["step_s"] >= four["compute_s"] and four["comm_s"] > 0


def test_message_sizes_are_powers_of_four_up_to_the_largest_in_whole_elements():
    assert message_sizes(1024, 4) == [4, 16, 64, 256, 1024]
    assert message_sizes(1000, 8) == [8, 16, 64, 256, 1000]


# ---- the documents ----------------------------------------------------------------------------------

def check_allreduce(doc: dict, ranks: int, node_sizes: list[int]) -> None:
    assert doc["command"] == "allreduce" and doc["ranks"] == ranks and doc["node_sizes"] == node_sizes
    assert doc["transports"] == VARIANTS
    assert doc["machine"]["ranks"] == ranks and doc["machine"]["mpi"].startswith("MPICH")
    sizes = message_sizes(1024, 4)
    buckets = sorted(set(doc["model"]["buckets"]))
    assert sum(doc["model"]["buckets"]) == 4 * (16 * 24 + 24 + 24 * 4 + 4)  # the float32 gradient, in buckets
    for v in VARIANTS:
        rows = [r for r in doc["rows"] if r["variant"] == v]
        assert [r["bytes"] for r in rows if r["kind"] == "size"] == sizes
        assert [r["bytes"] for r in rows if r["kind"] == "bucket"] == buckets
        assert [r["kind"] for r in rows].count("gradient") == 1
        for r in rows:
            assert r["latency_s"] > 0 and r["algbw_GBps"] == pytest.approx(r["bytes"] / r["latency_s"] / 1e9)
            assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * 2 * (ranks - 1) / ranks)
        fit = doc["fits"][v]
        assert fit["alpha_s"] >= 0 and fit["beta_s_per_byte"] >= 0 and fit["max_rel_error"] >= 0
    link = doc["link"]
    assert link["ranks"] == [0, ranks - 1] and link["bandwidth_GBps"] > 0


def check_scaling(doc: dict, ranks: int, node_sizes: list[int], sizes: list[int], per_rank_batch: int = 8) -> None:
    assert doc["command"] == "scaling" and doc["ranks"] == ranks and doc["node_sizes"] == node_sizes
    assert doc["sizes"] == sizes and doc["modes"] == ["strong", "weak"]
    assert doc["per_node"] == max(node_sizes) and doc["global_batch"] == per_rank_batch * ranks
    for mode in doc["modes"]:
        rows = [r for r in doc["results"] if r["mode"] == mode]
        assert [r["ranks"] for r in rows] == sizes
        ideal = [r["speedup_ideal"] for r in rows]
        assert ideal == sorted(ideal) and ideal == [float(k) for k in sizes]  # monotone: the ranks themselves
        for r in rows:
            assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
            k = r["ranks"]
            assert r["nodes"] == len(groups_of(node_sizes, k))
            assert r["batch"] == (doc["global_batch"] if mode == "strong" else per_rank_batch * k)
            assert r["rows_per_rank"] == -(-r["batch"] // k)
            assert r["efficiency"] == pytest.approx(r["speedup"] / k)
            assert r["samples_per_s"] == pytest.approx(r["batch"] / r["step_s"])
            assert r["steps_timed"] == 2
            assert all(r[key] >= 0 for key in ("step_s", "compute_s", "hooks_s", "exposed_s", "other_s"))
            assert r["transport"] == ("none" if k == 1 else r["transport"]) and r["transport"] in ("none", "mpi",
                                                                                                    "ring", "hier")
        assert rows[0]["speedup"] == pytest.approx(1.0) and rows[0]["prediction_error"] == pytest.approx(0.0)
        proj = [r for r in doc["projection"] if r["mode"] == mode]
        assert [r["ranks"] for r in proj] == [2 * ranks, 4 * ranks] and all(r["projection"] for r in proj)
        assert all(r["predicted_step_s"] > 0 and 0 < r["predicted_efficiency"] <= 1 + 1e-9 for r in proj)


def groups_of(node_sizes: list[int], k: int) -> list[int]:
    """The first k ranks, whole nodes first: ranks on each node they use."""
    out = []
    for n in node_sizes:
        if k > 0:
            out.append(min(n, k))
            k -= n
    return out


def assert_png(path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is no PNG"


# ---- launch/local ---------------------------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("ranks", [2, 4])
def test_bench_allreduce_on_one_machine_measures_every_transport_and_fits_each(ranks, tmp_path):
    out = tmp_path / "a.json"
    done = run_job(ranks, [*BENCH, *ALLREDUCE, "--json", str(out)], timeout=100)
    assert done.returncode == 0, done.output
    assert "α–β fit" in done.stdout and done.stdout.count("distbp bench allreduce:") == 1, done.output  # rank 0 only
    check_allreduce(json.loads(out.read_text()), ranks, [ranks])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ranks, sizes", [(2, [1, 2]), (4, [1, 2, 4])])
def test_bench_scaling_on_one_machine_times_every_group_and_draws_the_study(ranks, sizes, tmp_path):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    done = run_job(ranks, [*BENCH, *SCALING, "--json", str(out), "--plot", str(png)], timeout=100)
    assert done.returncode == 0, done.output
    assert done.stdout.count("PROJECTION beyond this job") == 1, done.output
    doc = json.loads(out.read_text())
    check_scaling(doc, ranks, [ranks], sizes)
    assert doc["fits"]["node"]["ranks"] == ranks and "job" not in doc["fits"]  # one node: no network to fit
    assert_png(png)


def test_a_group_size_beyond_the_job_is_one_clear_error(tmp_path):
    done = run_job(2, [*BENCH, *SCALING, "--ranks", "1,3"], timeout=60)
    assert done.returncode == 2, done.output
    errors = [line for line in done.stderr.splitlines() if line.startswith("distbp:")]
    expected = "distbp: error: --ranks 1,3: every size must be 1 … 2 (the ranks of this job), got 3"
    assert errors == [expected], done.output


# ---- namespace hosts: 2 hosts x 2 ranks --------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    need(netns.unavailable_reason() or hydra_reason(netns.venv_bin()), "namespace hosts")
    made = netns.Cluster(2)
    try:
        made.create()
    except netns.Unavailable as e:
        need(str(e), "namespace hosts")
    yield made
    made.destroy()


@pytest.mark.timeout(180)
def test_bench_scaling_across_hosts_places_whole_nodes_first_and_fits_the_network(cluster, tmp_path):
    out = tmp_path / "s.json"
    done = cluster.run([*BENCH, *SCALING, "--allreduce", "hier", "--json", str(out)], ranks_per_host=2, timeout=150)
    assert done.returncode == 0, done.output
    doc = json.loads(out.read_text())
    check_scaling(doc, 4, [2, 2], [1, 2, 4])
    by_size = {r["ranks"]: r for r in doc["results"] if r["mode"] == "weak"}
    assert by_size[2]["nodes"] == 1 and by_size[4]["nodes"] == 2  # two ranks fill one host before the next
    assert by_size[4]["transport"] == "hier" and by_size[4]["efficiency_vs_node"] is not None
    assert by_size[4]["wire_bytes_per_rank"] > 0 == by_size[2]["wire_bytes_per_rank"]  # only hosts talk TCP
    assert doc["fits"]["node"]["ranks"] == 2 and doc["fits"]["job"]["ranks"] == 4


@pytest.mark.timeout(180)
def test_bench_allreduce_across_hosts_measures_the_link_to_another_host(cluster, tmp_path):
    out = tmp_path / "a.json"
    done = cluster.run([*BENCH, *ALLREDUCE, "--json", str(out)], ranks_per_host=2, timeout=150)
    assert done.returncode == 0, done.output
    doc = json.loads(out.read_text())
    check_allreduce(doc, 4, [2, 2])
    assert doc["link"]["ranks"] == [0, 3]  # the last rank in placement: on the other host


# ---- SLURM ---------------------------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_both_commands_run_under_srun_with_pmi2(slurm, tmp_path):  # noqa: F811
    srun = ["srun", "--mpi=pmi2", "--kill-on-bad-exit=1", "--ntasks-per-node=2", "--cpus-per-task=1", "-n", "2",
            sys.executable, "-m", "mpi4py", "-m", "distbp.bench"]
    a, s = tmp_path / "a.json", tmp_path / "s.json"
    for args, out in ((ALLREDUCE, a), (SCALING, s)):
        done = subprocess.run([*srun, *args, "--json", str(out)], env=job_env(slurm), cwd=netns.REPO,
                              capture_output=True, text=True, timeout=150, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("distbp bench") == 1, done.stdout  # one job of 2 ranks, one table
    check_allreduce(json.loads(a.read_text()), 2, [2])
    check_scaling(json.loads(s.read_text()), 2, [2], [1, 2])
