"""`distbp bench allreduce …` and `distbp bench scaling …` (also `python -m distbp.bench …`): parse, run under
the job's ranks, print the table on rank 0, write JSON (and the study's PNG).

Threads are pinned before numpy loads, as for `distbp train` (`distbp.host.startup.prepare_environment`): this module
imports only the standard library and distbp's standard-library-only modules until then.
"""

from __future__ import annotations

import argparse
import sys

from distbp.errors import ConfigError, DistbpError

USAGE = """usage: distbp bench {allreduce,scaling} [options]

  allreduce  every transport (mpi, ring, hier, each ± bfloat16) on 4 B … --max-bytes and the model's buckets:
             latency, algorithm and bus bandwidth, an α–β fit per transport (distbp bench allreduce --help)
  scaling    a strong and weak scaling study in this one job: groups of 1, 2, 4, … ranks take turns training;
             step time, speed-up, efficiency, phases, the α–β prediction (distbp bench scaling --help)
"""


def parser(command: str) -> argparse.ArgumentParser:
    """The flags of `distbp bench COMMAND`: `distbp train`'s model, data, dtype, optimizer and transport flags
    (distbp.config) and the command's own."""
    from distbp.bench import allreduce, scaling  # numpy and Numba: only after the thread pools are pinned
    from distbp.config import add_arguments  # the flags of distbp train (config): loaded with the parser

    module = allreduce if command == "allreduce" else scaling
    p = argparse.ArgumentParser(prog=f"distbp bench {command}", exit_on_error=False, allow_abbrev=False,
                                description=module.__doc__.split("\n\n")[0],
                                epilog=module.__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    own = p.add_argument_group(f"distbp bench {command}")
    own.add_argument("--json", metavar="PATH", help="write the results as JSON (rank 0)")
    if command == "allreduce":
        own.add_argument("--max-bytes", type=int, default=64 << 20, help="the largest message (default 64 MiB)")
        own.add_argument("--repeats", type=int, default=20, help="timed turns per size up to 1 MiB, a quarter above")
        own.add_argument("--transports", help="comma-separated, of mpi, ring, hier (default: all)")
        own.add_argument("--no-bf16", action="store_true", help="leave out the bfloat16 variants")
    else:
        own.add_argument("--ranks", type=_sizes, help="group sizes, e.g. 1,2,4,8 (default: 1, 2, 4, … up to the "
                         "job's ranks, and all of them; 1 and one whole node are always in)")
        own.add_argument("--mode", choices=("weak", "strong", "both"), default="both")
        own.add_argument("--per-rank-batch", type=int, default=128, help="weak scaling: rows per rank (default 128)")
        own.add_argument("--global-batch", type=int, default=None,
                         help="strong scaling: the global batch split over the ranks (default: --per-rank-batch x "
                              "the largest group)")
        own.add_argument("--steps", type=int, default=10, help="timed steps per turn (default 10)")
        own.add_argument("--warmup", type=int, default=2, help="untimed steps before them, every turn (default 2)")
        own.add_argument("--repeats", type=int, default=3, help="times the sequence of turns runs (default 3)")
        own.add_argument("--fit-repeats", type=int, default=10, help="turns of the allreduce measured for the fit")
        own.add_argument("--project", type=int, default=3, help="doublings of the job's ranks to project (default 3)")
        own.add_argument("--plot", metavar="PATH", help="write the study's figure (PNG; needs matplotlib)")
    add_arguments(p.add_argument_group("distbp train's flags: model, data, dtype, optimizer, transport (those of a "
                                       "run's outputs and length, --save, --epochs, …, have no effect)"))
    return p


def _sizes(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated rank counts like 1,2,4,8, got {text!r}") from None


def configure(command: str, argv: list[str]) -> tuple[argparse.Namespace, object]:
    """(the command's own flags, the resolved distbp.config.Config); ConfigError for a bad flag."""
    from distbp.config import from_sources  # the flags of distbp train, checked as they are

    try:
        args, extra = parser(command).parse_known_args(argv)
        if extra:
            raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")
        if args.lr_scale is None:
            args.lr_scale = "mean"  # a study's many steps must not diverge: η·∇L/B unless asked otherwise
        cfg = from_sources(args)
    except (argparse.ArgumentError, ValueError) as e:
        raise ConfigError(str(e)) from None
    for name in ("repeats", "steps", "per_rank_batch", "max_bytes", "fit_repeats"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("warmup", "project"):
        if getattr(args, name, 0) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    return args, cfg


def bench_main(argv: list[str]) -> int:
    """`distbp bench COMMAND [options]` on every rank of the job; the exit code (2: bad flags, agreed)."""
    from distbp.host.startup import prepare_environment, split_job_exit  # before numpy, SciPy, Numba or MPI load
    from distbp.host.launcher import launcher_rank  # the launcher's rank: which process prints

    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("allreduce", "scaling"):
        if launcher_rank() == 0:
            print(USAGE if not argv or argv[0] in ("-h", "--help") else
                  f"distbp: unknown bench command {argv[0]!r}\n{USAGE}", end="",
                  file=sys.stdout if not argv or argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    n_threads, _ = prepare_environment(rest)
    from distbp.comm.mpi import world  # after the thread pools are pinned

    comm = world()
    split = split_job_exit(comm)
    if split is not None:
        return comm.exit_quietly(split)
    if "-h" in rest or "--help" in rest:
        if comm.is_root:
            parser(command).print_help()
        return 0
    try:
        args, cfg = configure(command, rest)
        cfg.threads = n_threads
        return run(command, comm, args, cfg)
    except DistbpError as e:  # raised on every rank alike (the flags, or an agreed check): the root says it once
        if comm.is_root:
            print(f"distbp: error: {e}", file=sys.stderr, flush=True)
        return comm.exit_quietly(2)


def run(command: str, comm, args, cfg) -> int:
    """The measurement on every rank; the root prints the table and writes the files."""
    from distbp.bench import allreduce, groups, scaling  # numpy, Numba and MPI: after the thread pools are pinned
    from distbp.bench.timing import machine, write_json  # (as above)
    from distbp.train.setup import load_data  # (as above)

    order, node_sizes = groups.placement(comm)  # [dist]
    if command == "allreduce" and cfg.layers is None and not cfg.data.startswith("synthetic"):
        _, err = load_data(cfg, comm.size, None, comm.rank)  # resolves cfg.layers: they follow the data
        comm.agree_on_failure(err)  # [dist]
    module = allreduce if command == "allreduce" else scaling
    if command == "scaling":
        if args.global_batch is None:
            args.global_batch = args.per_rank_batch * comm.size
        try:
            scaling.check(args, comm.size)  # every rank finds the same: no need to agree
        except ValueError as e:
            raise ConfigError(str(e)) from None
    doc = module.run(comm, args, cfg, order, node_sizes)
    doc["machine"] = machine(comm, node_sizes)
    if comm.is_root:
        print(module.report(doc), flush=True)
        if args.json:
            write_json(args.json, doc)
            print(f"distbp: wrote {args.json}", flush=True)
        if getattr(args, "plot", None):
            from distbp.bench.plot import plot_study  # matplotlib: only when a plot is asked for

            plot_study(doc, args.plot)
            print(f"distbp: wrote {args.plot}", flush=True)
    comm.barrier()
    return 0
