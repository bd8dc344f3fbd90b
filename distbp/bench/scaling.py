"""`distbp bench scaling`: a strong and weak scaling study of data-parallel training, in one job.

    launch/local -n 4 distbp bench scaling --layers 784,1024,10 --steps 10
    srun --mpi=pmi2 --ntasks-per-node=8 --cpus-per-task=4 python -m mpi4py -m distbp bench scaling \\
        --layers 784,1024,1024,10 --mode both --json study.json --plot study.png
    mpirun -n 64 python -m mpi4py -m distbp bench scaling --ranks 1,8,16,32,64 --allreduce hier

The job's ranks are split into groups of each size (--ranks; default 1, 2, 4, … up to P, and P, plus one whole
node), whole nodes first (`distbp.bench.groups`), as a real job of that size would be placed. Each group trains
the model of `distbp train`'s flags on its own communicator: the same step (`distbp.train.loop.train_step`),
strategy, transport and optimizer. The groups take turns: one group runs --warmup untimed steps and --steps
timed ones while every other rank idles at a sleeping barrier, then the next; the sequence repeats --repeats
times, so that load and noise on the machine hit every size alike.

Per size and mode (strong: the global batch --global-batch is split over the ranks; weak: every rank computes
--per-rank-batch rows):
  step        per step the slowest rank's seconds, median over the timed steps
  samples/s   the global batch / step
  speed-up    strong: step(1) / step(k); weak: samples/s(k) / samples/s(1). efficiency = speed-up / k; the same
              against one whole node of r ranks (speed-up ÷ (k / r)), for k ≥ r
  phases      each rank's median, the largest over the ranks: compute (the local gradient, less the hooks and the
              rows' gathering, plus the update), hooks (bucket starts and progress calls during the backward pass),
              exposed (waiting for the sum after it), other (gathering rows, the loss and verdict sums, Python)
  bytes       the gradient bytes a rank hands to the allreduce per step (the reducer's count), and what the
              α–β model says it sends on the wire

Before the turns the allreduce alone is measured (`distbp.bench.allreduce`) on one whole node and on the whole job,
and fitted (`distbp.bench.model`): with the 1-rank step it predicts every size's step time and efficiency, beside
the measured ones with the error, and sizes beyond the job (2P, 4P, …): a projection, marked as such.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from distbp.bench import allreduce as bare
from distbp.bench import groups
from distbp.bench import model as ab
from distbp.bench.timing import idle_barrier, median
from distbp.comm.base import Comm
from distbp.data.batch import BatchBuffers
from distbp.data.shard import SharedRows, max_shard_rows
from distbp.errors import ConfigError, DistbpError
from distbp.sync.base import Layout
from distbp.sync.factory import allreduce_algorithm
from distbp.train.loop import train_step
from distbp.train.run import Run
from distbp.train.schedule import Schedule
from distbp.train.setup import build_agreed, layout_of, load_data
from distbp.train.watchdog import Watchdog

PHASES = ("step", "local_gradient", "hooks", "data", "exposed", "update", "bytes")


def batches(mode: str, k: int, global_batch: int, per_rank_batch: int) -> tuple[int, int]:
    """(global batch, rows of the slowest rank) of k ranks in `mode`."""
    B = global_batch if mode == "strong" else per_rank_batch * k
    return B, max_shard_rows(B, k)


class TimedSync:
    """The group's strategy with its three parts of a step timed (seconds of the last step): local_gradient,
    finish (the exposed wait) and apply (the update). Everything else is the strategy's own."""

    def __init__(self, inner):
        self.inner, self.last = inner, {"local_gradient": 0.0, "exposed": 0.0, "update": 0.0}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _timed(self, key: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.last[key] = time.perf_counter() - t0
        return out

    def local_gradient(self, gather, rows, batch_rows):
        return self._timed("local_gradient", self.inner.local_gradient, gather, rows, batch_rows)

    def finish(self):
        return self._timed("exposed", self.inner.finish)

    def apply(self, params, scale):
        return self._timed("update", self.inner.apply, params, scale)


class Group:
    """One group of k ranks training on its own communicator: its run, and the per-step records of this rank."""

    def __init__(self, cfg, sub: Comm, data, k: int):
        self.k, self.comm = k, sub
        model, sync = build_agreed(cfg, sub, layout_of(sub))
        sub.bcast(model.flat_params)  # [dist] one starting point
        sync.build(sub, model)
        weighted = data.train.w is not None
        batch = BatchBuffers(sync.rows_at_once, data.n_features, model.sizes[-1], model.dtype, model.loss.labels,
                             weighted)
        plan = SharedRows(data.train.n_rows, cfg.batch_size, cfg.seed, sync.my_rows, sub.rank, sub.size,
                          shuffle=False)
        self.timed = TimedSync(sync)
        self.run = Run(cfg, sub, data, model, self.timed, batch, Watchdog(sub, cfg.timeout if k > 1 else 0.0), plan,
                       Schedule.of(cfg, plan.n_batches))
        self.initial = model.flat_params.copy()
        self.transport = getattr(sync, "algorithm", "mpi") if k > 1 else "none"
        self.records: dict[str, dict[str, list[float]]] = {}
        self._offset = 0

    def steps(self, mode: str, B: int, count: int, record: bool) -> None:
        """count training steps of global batch B (this rank's share of rows taken in order, wrapping)."""
        run, sync = self.run, self.timed
        n = run.data.train.n_rows
        r0, r1 = sync.my_rows(B)
        keep = self.records.setdefault(mode, {p: [] for p in PHASES})
        for _ in range(count):
            rows = (self._offset + np.arange(r0, r1, dtype=np.int64)) % n
            self._offset = (self._offset + B) % n
            stats0 = sync.stats
            data0 = run.timers.data_s
            t0 = time.perf_counter()
            train_step(run, rows, B)
            step = time.perf_counter() - t0
            run.pos.step += 1
            if record:
                stats = sync.stats
                keep["step"].append(step)
                keep["hooks"].append(stats.get("overlap_s", 0.0) - stats0.get("overlap_s", 0.0))
                keep["bytes"].append(float(stats.get("bytes", 0) - stats0.get("bytes", 0)))
                keep["data"].append(run.timers.data_s - data0)
                for key, value in sync.last.items():
                    keep[key].append(value)

    def turn(self, mode: str, B: int, warmup: int, steps: int) -> None:
        """This group's turn: back to the starting parameters (a study's many steps must not drift), warm up,
        then the timed steps."""
        self.run.model.flat_params[...] = self.initial
        self.comm.barrier()
        self.steps(mode, B, warmup, record=False)
        self.steps(mode, B, steps, record=True)

    def close(self) -> None:
        self.run.watchdog.stop()
        self.run.sync.close()  # [dist] its communicators and shared window
        self.comm.free()


def summarize(records: list[dict[str, list[float]]]) -> dict:
    """One size's figures from every member rank's records (rank order): the slowest rank per step, then the
    median over steps; phases: each rank's median, the largest over the ranks."""
    step = median([max(ts) for ts in zip(*[r["step"] for r in records])])
    phase = {p: max(median(r[p]) for r in records) for p in PHASES if p != "step"}
    gradient = max(0.0, phase["local_gradient"] - phase["hooks"] - phase["data"])  # the layer passes alone
    compute = gradient + phase["update"]
    return {"step_s": step, "compute_s": compute, "gradient_s": gradient, "update_s": phase["update"],
            "hooks_s": phase["hooks"], "exposed_s": phase["exposed"], "data_s": phase["data"],
            "other_s": max(0.0, step - compute - phase["hooks"] - phase["exposed"]),
            "bytes_per_rank": phase["bytes"], "steps_timed": len(records[0]["step"])}


def group_nodes(node_sizes: list[int], k: int) -> tuple[int, ...]:
    """The ranks on each node of the first k ranks in placement order (whole nodes first)."""
    out, left = [], k
    for n in node_sizes:
        if left <= 0:
            break
        out.append(min(n, left))
        left -= n
    return tuple(out)


def check_transports(cfg, sizes: list[int], node_sizes: list[int]) -> None:
    """ConfigError naming the group whose placement the transport cannot take (hier needs even nodes), before
    any group is built; every rank finds the same."""
    for k in sizes:
        try:
            allreduce_algorithm(cfg, Layout(0, k, group_nodes(node_sizes, k)))
        except ConfigError as e:
            raise ConfigError(f"the group of {k} ranks: {e}; choose --ranks that fill whole nodes") from None


def fit_links(comm: Comm, order: list[int], per_node: int, transports: list[str], cfg, node_sizes: list[int],
              repeats: int) -> dict:
    """Collective: the allreduce alone on one whole node (if it has several ranks) and on the whole job (if it
    spans several nodes), every transport the study uses in turns, each fitted; the others idle meanwhile."""
    dtype = np.dtype(cfg.dtype)
    layouts, buckets = bare.model_layouts(cfg.layers, dtype, int(cfg.bucket_mb * (1 << 20)))
    small = [("size", s, [slice(0, s // dtype.itemsize)], s) for s in (4096, 65536, 1 << 20)
             if s < max(buckets)]
    out = {}
    for name, k in (("node", per_node), ("job", comm.size)):
        if k < 2 or (name == "job" and len(node_sizes) < 2):
            continue
        members = groups.members(order, k)
        sub = comm.subgroup(members)
        if sub is not None:
            pairs = bare.variants(transports, [cfg.comm_dtype], len(set(group_nodes(node_sizes, k))) == 1)
            rows = bare.measure(sub, pairs, small + layouts, dtype, repeats)
            out[name] = {"ranks": k, "rows": rows, "fits": bare.fits(rows)}
            sub.free()
        idle_barrier(comm)
        out[name] = comm.allgather_object(out.get(name))[order[0]]
    return out


def predictions(results: list[dict], models: dict, buckets: list[int], sizes: list[int], P: int, per_node: int,
                project: int, global_batch: int, per_rank_batch: int) -> list[dict]:
    """Predicted step, speed-up and efficiency for each measured size (into its row, with the error) and for
    sizes beyond P (returned: the projection), from the 1-rank step and the α–β models."""
    projection = []
    for mode in dict.fromkeys(r["mode"] for r in results):
        mine = {r["ranks"]: r for r in results if r["mode"] == mode}
        one = mine.get(1)
        if one is None:
            continue
        B_1, rows_1 = batches(mode, 1, global_batch, per_rank_batch)
        scaled = one["gradient_s"] + one["data_s"]
        fixed = max(0.0, one["step_s"] - scaled)  # the update, the loss sum, Python: the same for any k
        last = mine[max(mine)]["transport"]
        for k in sizes + [P * 2 ** j for j in range(1, project + 1)]:
            row = mine.get(k) or {"mode": mode, "ranks": k, "nodes": -(-k // per_node), "transport": last,
                                  "projection": True}
            model = models.get(row["transport"])
            B, rows_k = batches(mode, k, global_batch, per_rank_batch)
            got = ab.predict_step(model, k, buckets, scaled, fixed, rows_k, rows_1)
            speedup = (one["step_s"] / got["step_s"] if mode == "strong"
                       else (B / got["step_s"]) / (B_1 / one["step_s"]))
            row.update(predicted_step_s=got["step_s"], predicted_comm_s=got["comm_s"], predicted_speedup=speedup,
                       predicted_efficiency=speedup / k)
            if model is not None and k > 1:
                row["wire_bytes_per_rank"] = sum(model.wire_bytes(k, b) for b in buckets)
            if "step_s" in row:
                row["prediction_error"] = got["step_s"] / row["step_s"] - 1
            else:
                row.update(batch=B, rows_per_rank=rows_k)
                projection.append(row)
    return projection


def speedups(results: list[dict], per_node: int) -> None:
    """speed-up, efficiency and the ideal line against 1 rank, and against one whole node, into each row."""
    for mode in dict.fromkeys(r["mode"] for r in results):
        mine = {r["ranks"]: r for r in results if r["mode"] == mode}
        for k, row in mine.items():
            row["speedup_ideal"] = float(k)
            for base_k, key in ((1, ""), (per_node, "_vs_node")):
                base = mine.get(base_k)
                if base is None or k < base_k:
                    row["speedup" + key] = row["efficiency" + key] = None
                    continue
                s = base["step_s"] / row["step_s"] if mode == "strong" else row["samples_per_s"] / base["samples_per_s"]
                row["speedup" + key], row["efficiency" + key] = s, s / (k / base_k)


def build_groups(comm: Comm, cfg, data, sizes: list[int], order: list[int], batch_of) -> dict[int, Group]:
    """Collective: the groups this rank belongs to ({size: Group}), each made once with its own communicator,
    strategy and buffers for batch_of(size) rows; one group's error (agreed by its ranks) stops every rank."""
    built, err = {}, None
    for k in sizes:
        sub = comm.subgroup(groups.members(order, k))  # [dist] over all ranks, for every size
        if sub is not None and err is None:
            try:
                built[k] = Group(dataclasses.replace(cfg, batch_size=batch_of(k)), sub, data, k)
            except (ValueError, DistbpError) as e:
                err = e
    comm.agree_on_failure(err)  # [dist]
    return built


def check(args, P: int) -> None:
    """ValueError for group sizes or a global batch this job of P ranks cannot run (before anything is built)."""
    sizes = groups.group_sizes(P, args.ranks)
    if args.mode != "weak" and args.global_batch < max(sizes):
        raise ValueError(f"--global-batch {args.global_batch} is smaller than the largest group ({max(sizes)} ranks): "
                         "every rank needs rows (strong scaling splits the global batch)")


def run(comm: Comm, args, cfg, order: list[int], node_sizes: list[int]) -> dict:
    """Collective: the whole study; returns the JSON document (on every rank)."""
    P, per_node = comm.size, max(node_sizes)
    sizes = sorted(set(groups.group_sizes(P, args.ranks)) | {1, min(per_node, P)})
    modes = ["strong", "weak"] if args.mode == "both" else [args.mode]
    G, b = args.global_batch, args.per_rank_batch
    largest = max(batches(m, k, G, b)[0] for m in modes for k in sizes)
    cfg = dataclasses.replace(cfg, batch_size=largest)
    data, err = load_data(cfg, 1, None, comm.rank)  # every rank holds every row; the layers follow the data
    comm.agree_on_failure(err)  # [dist]
    check_transports(cfg, sizes, node_sizes)
    built = build_groups(comm, cfg, data, sizes, order, lambda k: max(batches(m, k, G, b)[0] for m in modes))
    transport_of = {k: t for d in comm.allgather_object({k: g.transport for k, g in built.items()})
                    for k, t in d.items()}
    for _ in range(args.repeats):  # the sequence of turns, repeated: noise hits every size alike
        for mode in modes:
            for k in sizes:
                if k in built:
                    built[k].turn(mode, batches(mode, k, G, b)[0], args.warmup, args.steps)
                idle_barrier(comm)  # [dist] the others wait, sleeping, while a group works
    records = comm.allgather_object({k: g.records for k, g in built.items()})  # [dist] every rank's steps
    for g in built.values():
        g.close()
    results = []
    for mode in modes:
        for k in sizes:
            B, rows = batches(mode, k, G, b)
            row = {"mode": mode, "ranks": k, "nodes": len(group_nodes(node_sizes, k)), "transport": transport_of[k],
                   "batch": B, "rows_per_rank": rows,
                   **summarize([records[r][k][mode] for r in groups.members(order, k)])}
            if k == 1:
                row["bytes_per_rank"] = 0.0  # the reducer counts what it hands on, but one rank sends nothing
            row["samples_per_s"], row["exposed_share"] = B / row["step_s"], row["exposed_s"] / row["step_s"]
            results.append(row)
    speedups(results, min(per_node, P))
    used = sorted({t for t in transport_of.values() if t != "none"})
    links = fit_links(comm, order, min(per_node, P), used, cfg, node_sizes, args.fit_repeats) if used else {}
    _, buckets = bare.model_layouts(cfg.layers, np.dtype(cfg.dtype), int(cfg.bucket_mb * (1 << 20)))
    models = {}
    for t in used:
        node = links.get("node", {}).get("fits", {}).get(bare.variant_name(t, cfg.comm_dtype))
        job = links.get("job", {}).get("fits", {}).get(bare.variant_name(t, cfg.comm_dtype))
        models[t] = ab.TransportModel.from_fits(t, min(per_node, P), node, min(per_node, P), job, P)
    projection = predictions(results, models, buckets, sizes, P, min(per_node, P), args.project, G, b)
    return {"command": "scaling", "ranks": P, "node_sizes": node_sizes, "per_node": min(per_node, P),
            "sizes": sizes, "modes": modes, "global_batch": G, "per_rank_batch": b, "steps": args.steps,
            "warmup": args.warmup, "repeats": args.repeats,
            "config": {"layers": cfg.layers, "activation": cfg.activation, "dtype": cfg.dtype,
                       "optimizer": cfg.optimizer, "allreduce": cfg.allreduce, "comm_dtype": cfg.comm_dtype,
                       "bucket_mb": cfg.bucket_mb, "threads": cfg.threads, "data": cfg.data, "overlap": cfg.overlap},
            "buckets": buckets, "results": results, "fits": links,
            "projection_network": "measured" if "job" in links else "assumed to be the node's (one node measured)",
            "models": {t: m.to_dict() for t, m in models.items()}, "projection": projection}


COLUMNS = [("mode", "mode", ""), ("ranks", "ranks", "d"), ("nodes", "nodes", "d"), ("transport", "transport", ""),
           ("batch", "batch", "d"), ("step ms", "step_ms", ".2f"), ("samples/s", "samples_per_s", ".0f"),
           ("speed-up", "speedup", ".2f"), ("eff %", "eff", ".1f"), ("eff/node %", "eff_node", ".1f"),
           ("compute", "compute_ms", ".2f"), ("hooks", "hooks_ms", ".2f"), ("exposed", "exposed_ms", ".2f"),
           ("other", "other_ms", ".2f"), ("MB/rank", "mb", ".2f"), ("pred ms", "pred_ms", ".2f"),
           ("pred eff %", "pred_eff", ".1f"), ("error %", "err", "+.0f")]


def report(doc: dict) -> str:
    """The root's text: one row per mode and size (ms; the phases the largest rank's median), then the projection."""
    from distbp.bench.timing import table  # the table: only on the root, which prints it

    def pct(x):
        return None if x is None else 100 * x

    def ms(x):
        return None if x is None else 1e3 * x

    rows = [{**r, "step_ms": ms(r["step_s"]), "eff": pct(r.get("efficiency")),
             "eff_node": pct(r.get("efficiency_vs_node")),
             "compute_ms": ms(r["compute_s"]), "hooks_ms": ms(r["hooks_s"]), "exposed_ms": ms(r["exposed_s"]),
             "other_ms": ms(r["other_s"]), "mb": r["bytes_per_rank"] / 1e6, "pred_ms": ms(r.get("predicted_step_s")),
             "pred_eff": pct(r.get("predicted_efficiency")), "err": pct(r.get("prediction_error"))}
            for r in doc["results"]]
    m = doc["machine"]
    c = doc["config"]
    title = (f"distbp bench scaling: {doc['ranks']} rank(s) on {m['nodes']} node(s) of {m['host']} ({m['cpu']}), "
             f"{m['mpi']}\nmodel {'-'.join(map(str, c['layers']))} {c['activation']} {c['dtype']}, {c['optimizer']}, "
             f"--allreduce {c['allreduce']}{', ' + c['comm_dtype'] if c['comm_dtype'] else ''}; global batch "
             f"{doc['global_batch']} (strong), {doc['per_rank_batch']} per rank (weak); {doc['repeats']} repeat(s) x "
             f"{doc['steps']} steps; times in ms: step = slowest rank, median of steps")
    text = [table(rows, COLUMNS, title)]
    if doc["projection"]:
        proj = [{**r, "pred_ms": ms(r["predicted_step_s"]), "pred_eff": pct(r["predicted_efficiency"]),
                 "speedup": r["predicted_speedup"]} for r in doc["projection"]]
        text.append(table(proj, [("mode", "mode", ""), ("ranks", "ranks", "d"), ("nodes", "nodes", "d"),
                                 ("transport", "transport", ""), ("batch", "batch", "d"),
                                 ("pred ms", "pred_ms", ".2f"), ("speed-up", "speedup", ".2f"),
                                 ("pred eff %", "pred_eff", ".1f")],
                          f"PROJECTION beyond this job (the α–β model and the 1-rank step; not measured; the network "
                          f"{doc['projection_network']})"))
    return "\n\n".join(text)
