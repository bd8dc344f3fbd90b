"""The run's configuration: one typed dataclass, filled from a TOML file and the command line.

Every flag of `distbp train` is a field here (`--batch-size` ↔ `batch_size`); a
`--config FILE` (TOML) may set any of them with the same names (dashes or
underscores), and flags given on the command line win over the file. The
resolved configuration is checked once (`validate`), compared across ranks,
logged by the root and stored in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Callable

from distbp.errors import ConfigError
from distbp.nn.outputs import LOSS_NAMES, OUTPUT_ACTIVATIONS, output_activation_for
from distbp.observe.trace import parse_steps
from distbp.sync.rules import check_modes
from distbp.units import parse_bytes

if TYPE_CHECKING:
    from distbp.comm.base import Comm


def opt(default, help: str):
    """A Config field whose help text is shown by `distbp train --help`."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # data and model
    data: str = opt("synthetic", "built-in name (synthetic, synthetic:rows=…, digits) or a path; see docs/data.md")
    layers: list[int] | None = opt(None, "inputs,hidden…,outputs; if omitted: features,256,classes")
    activation: str = opt("sigmoid", "one name, or comma-separated per hidden layer")
    loss: str = opt("cross_entropy", "cross_entropy (one class per row), binary_cross_entropy (0/1 per output: "
                                     "multilabel, or binary with one output) or mse (float targets, or one-hot "
                                     "classes of a built-in set)")
    output_activation: str | None = opt(None, "the output layer's σ: softmax (cross_entropy's), sigmoid "
                                              "(binary_cross_entropy's), linear (mse's default), tanh, relu; mse "
                                              "takes any of them")
    targets: list[str] | None = opt(None, "the CSV or Parquet column(s), .npz member(s) or HDF5 dataset(s) "
                                          "holding the labels or targets, e.g. price or y1,y2,y3 (default: a "
                                          "table's 'label' column, else its last; an .npz's or HDF5 file's y)")
    features: list[str] | None = opt(None, "the Parquet columns or HDF5 datasets holding the features, e.g. x1,x2 or "
                                           "X (default: a Parquet file's columns but the targets and weights; an "
                                           "HDF5 file's dataset X)")
    scale_targets: str = opt("none", "regression targets (mse): standardize (train mean/std, undone by predict "
                                     "and stored in --save's model file) or none")
    dtype: str = opt("float32", "float32 or float64")
    scale: str = opt("auto", "feature scaling: auto, standardize, minmax, none")
    test_fraction: float = opt(0.1, "held out when the data has no test split (0: none)")
    init_from: str | None = opt(None, "start from the parameters of this model file (--save, model.save; its layers, "
                                      "activations and loss must match); a checkpoint found by --resume wins over it")
    weights: str | None = opt(None, "the CSV or Parquet column (HDF5 dataset) holding each row's weight wₙ in "
                                    "L = Σ wₙ lⁿ (an .npz's member w and a folder's w.npy need no flag)")
    local_rows: bool = opt(False, "each rank loads only its own rows: {rank} in --data names its part (e.g. "
                                  "part{rank}.npz); a global batch is the ranks' pieces (docs/api.md)")
    # optimisation
    optimizer: str = opt("gd", "gd, momentum, adam, lars (layer-wise rates on momentum), lamb (layer-wise rates on "
                               "adam)")
    lr: float = opt(0.001, "η in θ ← θ − η·scale·∇L")
    lr_scale: str = opt("sum", "sum: the seed's η·∇L of the summed loss; mean: η·∇L/B (B = rows in the global batch)")
    momentum: float = opt(0.9, "μ for --optimizer momentum (and lars)")
    lr_schedule: str = opt("constant", "η over the global steps: constant, step (×lr_decay at each of "
                                      "lr_milestones), cosine or linear (to lr_final at the last step)")
    lr_milestones: list[int] | None = opt(None, "epochs at which --lr-schedule step multiplies η by lr_decay")
    lr_decay: float = opt(0.1, "factor of --lr-schedule step at each milestone")
    lr_final: float = opt(0.0, "η at the last step of --lr-schedule cosine or linear")
    warmup_steps: int = opt(0, "linear warm-up over the first N global steps, from warmup_start·η to the schedule's η")
    warmup_epochs: int = opt(0, "the same in epochs (give warmup_steps or warmup_epochs, not both)")
    warmup_start: float = opt(0.0, "the warm-up's first η, as a fraction of the schedule's")
    weight_decay: float = opt(0.0, "λ: decoupled for adam/lamb (AdamW), λ·θ added to ∇L for gd, momentum and lars")
    l2: float = opt(0.0, "α: the penalty (α/2)·‖W‖² on each global batch's summed loss, so the update takes "
                         "s·(∇L + α·W) (coupled: through momentum and adam's moments; scikit-learn's alpha); gd, "
                         "momentum, adam; the reported loss is the data's alone")
    decay_biases: bool = opt(False, "apply --weight-decay and --l2 to biases too (default: weights only)")
    clip_grad_norm: float = opt(0.0, "scale ∇L (after the allreduce) to this global L2 norm when it is larger (0: off)")
    trust: float = opt(0.001, "lars: the trust coefficient of the layer-wise rate")
    batch_size: int = opt(128, "global mini-batch, split over the ranks")
    accumulate: int = opt(1, "split each rank's share into K micro-batches, one allreduce per global batch")
    shard_optimizer: bool = opt(False, "optimizer state split over ranks (reduce-scatter, update a part, allgather)")
    epochs: int = opt(10, "passes over the training rows")
    seed: int = opt(0, "weights, data permutation and synthetic data")
    dropout: list[float] | None = opt(None, "drop probability of the hidden layers' units in training: one value, or "
                                            "one per hidden layer (masks: a function of seed, step, row, layer, unit)")
    shuffle: bool = opt(True, "a new seeded order of the training rows every epoch; --no-shuffle: stored order")
    # performance
    threads: int | None = opt(None, "Numba and BLAS threads per rank; default cores / ranks on the node")
    bucket_mb: float = opt(4.0, "gradient allreduce bucket size (MiB)")
    overlap: bool = opt(True, "overlap the allreduce with the backward pass; False: one blocking allreduce")
    comm_dtype: str | None = opt(None, "bfloat16 or float16: compress gradients for the allreduce")
    allreduce: str = opt("auto", "hier (node-aware: sums through shared memory on a node, slices across nodes), "
                                 "ring (distbp's ring of messages), mpi (the MPI library's Iallreduce); auto: hier "
                                 "on one node and on nodes of the same number of ranks (several each), else mpi")
    # output
    save: str | None = opt(None, "the final model as a model file (.npz: W0, b0, W1, b1, … and its description; "
                                 "docs/modelfile.md)")
    metrics: str | None = opt(None, "one JSON object per epoch (JSONL)")
    progress: str = opt("auto", "auto (bar on a terminal, lines otherwise), bar, lines, none")
    tensorboard: str | None = opt(None, "write the epoch and evaluation records as TensorBoard scalars into this "
                                        "folder (root only; pip install distbp[tensorboard])")
    trace: str | None = opt(None, "a Chrome trace-event JSON of every rank's steps (open in Perfetto or chrome://tracing)")
    trace_steps: str | None = opt(None, "START:STOP: with --trace, record only global steps START…STOP-1")
    eval_every: int = opt(0, "also evaluate on the held-out rows every N global steps (0: at epoch ends only)")
    early_stop_patience: int = opt(0, "stop after K evaluations without an improvement of early_stop_metric (0: off)")
    early_stop_metric: str = opt("test_loss", "test_loss or test_rmse (lower is better), test_accuracy, "
                                                    "test_subset_accuracy (multilabel) or test_r2 (higher is better)")
    save_best: str | None = opt(None, "keep the model with the best early_stop_metric so far in this model file")
    dry_run: bool = opt(False, "print the per-rank memory estimate and exit without training")
    memory_budget: str | None = opt(None, "e.g. 8GiB: with --dry-run, the largest per-rank batch that fits")
    # safety
    check_every: int = opt(100, "compare a checksum of the parameters across ranks every N steps (0: never)")
    timeout: float = opt(300.0, "seconds a collective may wait for a peer before the job is ended (0: never)")
    skip_nonfinite: bool = opt(False, "skip (and count) updates with NaN/Inf instead of stopping")
    checkpoint_dir: str | None = opt(None, "where checkpoints go; --resume reads the latest valid one")
    checkpoint_every: int = opt(1, "epochs between checkpoints (with checkpoint_dir)")
    checkpoint_steps: int = opt(0, "additionally every N steps (0: off)")
    keep_checkpoints: int = opt(3, "how many of the newest checkpoints to keep")
    resume: bool = opt(False, "continue from the latest valid checkpoint in checkpoint_dir")
    reproducible: bool = opt(False, "bit-identical results for any rank count (exact integer allreduce)")
    micro_batch: int = opt(32, "rows per fixed micro-block in --reproducible mode")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "loss": LOSS_NAMES,
    "output_activation": (None, *OUTPUT_ACTIVATIONS),
    "scale_targets": ("none", "standardize"),
    "dtype": ("float32", "float64"),
    "scale": ("auto", "standardize", "minmax", "none"),
    "optimizer": ("gd", "momentum", "adam", "lars", "lamb"),
    "lr_schedule": ("constant", "step", "cosine", "linear"),
    "early_stop_metric": ("test_loss", "test_accuracy", "test_subset_accuracy", "test_rmse", "test_r2"),
    "lr_scale": ("sum", "mean"),
    "comm_dtype": (None, "bfloat16", "float16"),
    "allreduce": ("auto", "hier", "ring", "mpi"),
    "progress": ("auto", "bar", "lines", "none"),
}


def validate(cfg: Config) -> Config:
    """Raise ConfigError for values that cannot work or flags that conflict."""
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"--{_flag(name)} must be one of {', '.join(str(a) for a in allowed)}; "
                              f"got {getattr(cfg, name)!r}")
    if cfg.dropout is not None:
        if not cfg.dropout or not all(isinstance(p, numbers.Real) and 0 <= p < 1 for p in cfg.dropout):
            raise ConfigError(f"--dropout must be probabilities in [0, 1), one or one per hidden layer, got "
                              f"{cfg.dropout}")
    positive = {"lr": cfg.lr, "batch_size": cfg.batch_size, "epochs": cfg.epochs, "bucket_mb": cfg.bucket_mb,
                "keep_checkpoints": cfg.keep_checkpoints, "micro_batch": cfg.micro_batch,
                "checkpoint_every": cfg.checkpoint_every, "accumulate": cfg.accumulate}
    for name, value in positive.items():
        if not value > 0 or value != value:
            raise ConfigError(f"--{_flag(name)} must be positive, got {value}")
        if not math.isfinite(value):
            raise ConfigError(f"--{_flag(name)} must be a finite number, got {value}")
    if cfg.bucket_mb * (1 << 20) < 16:
        raise ConfigError(f"--bucket-mb {cfg.bucket_mb} is below 16 bytes: a bucket must hold a gradient element")
    if not (cfg.timeout == 0 or 1 <= cfg.timeout < math.inf):
        raise ConfigError(f"--timeout must be 0 (no watchdog) or at least 1 second, got {cfg.timeout}: a shorter "
                          "one would blame healthy ranks for an ordinary step")
    _check_activations(cfg)
    if cfg.memory_budget is not None:
        try:
            parse_bytes(cfg.memory_budget)
        except ValueError as e:
            raise ConfigError(f"--memory-budget: {e}") from None
    for name in ("check_every", "checkpoint_steps", "timeout", "seed", "warmup_steps", "warmup_epochs", "lr_final",
                 "weight_decay", "l2", "clip_grad_norm", "trust", "eval_every", "early_stop_patience"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{_flag(name)} must not be negative, got {getattr(cfg, name)}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {cfg.threads}")
    if not 0 <= cfg.test_fraction < 1:
        raise ConfigError(f"--test-fraction must be at least 0 (0: no held-out rows) and below 1, got "
                          f"{cfg.test_fraction}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"--momentum must be in [0, 1), got {cfg.momentum}")
    if cfg.layers is not None and (len(cfg.layers) < 2 or any(s <= 0 for s in cfg.layers)):
        raise ConfigError(f"--layers needs at least two positive sizes (inputs,…,outputs), got {cfg.layers}")
    if cfg.trace_steps is not None:
        if not cfg.trace:
            raise ConfigError("--trace-steps needs --trace (where the trace goes)")
        try:
            parse_steps(cfg.trace_steps)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    _check_schedule(cfg)
    if cfg.local_rows and cfg.reproducible:
        raise ConfigError("--local-rows conflicts with --reproducible: its exact sums follow one global order of "
                          "micro-blocks over rows that every rank can read")
    if cfg.resume and not cfg.checkpoint_dir:
        raise ConfigError("--resume needs --checkpoint-dir (where to find the checkpoint)")
    check_modes(cfg)  # which mode flags go together is the strategies' business
    return cfg


def _check_schedule(cfg: Config) -> None:
    """The learning-rate schedule's and the regularisers' values (their rules, in one place)."""
    for name in ("lr_decay", "lr_final", "warmup_start", "weight_decay", "l2", "clip_grad_norm", "trust"):
        if not math.isfinite(getattr(cfg, name)):
            raise ConfigError(f"--{_flag(name)} must be a finite number, got {getattr(cfg, name)}")
    if cfg.l2 and cfg.optimizer in ("lars", "lamb"):
        raise ConfigError(f"--l2 goes with gd, momentum and adam; {cfg.optimizer} takes --weight-decay")
    if cfg.warmup_steps and cfg.warmup_epochs:
        raise ConfigError("give --warmup-steps or --warmup-epochs, not both")
    if not 0 <= cfg.warmup_start <= 1:
        raise ConfigError(f"--warmup-start is a fraction of the learning rate in [0, 1], got {cfg.warmup_start}")
    if not 0 < cfg.lr_decay <= 1:
        raise ConfigError(f"--lr-decay must be in (0, 1], got {cfg.lr_decay}")
    if cfg.lr_final > cfg.lr:
        raise ConfigError(f"--lr-final {cfg.lr_final} is above --lr {cfg.lr}: the schedules decay")
    if cfg.lr_schedule == "step" and not cfg.lr_milestones:
        raise ConfigError("--lr-schedule step needs --lr-milestones (epochs, e.g. 30,60)")
    if cfg.lr_milestones is not None:
        if cfg.lr_schedule != "step":
            raise ConfigError("--lr-milestones go with --lr-schedule step")
        if any(m <= 0 for m in cfg.lr_milestones) or list(cfg.lr_milestones) != sorted(set(cfg.lr_milestones)):
            raise ConfigError(f"--lr-milestones must be increasing positive epochs, got {cfg.lr_milestones}")


# distbp.nn.activations.ACTIVATIONS' names, here so that checking a flag needs no Numba (0.6 s of imports per rank)
ACTIVATION_NAMES = ("linear", "relu", "sigmoid", "tanh")


def _check_activations(cfg: Config) -> None:
    names = cfg.activation.split(",")
    for name in names:
        if name not in ACTIVATION_NAMES:
            raise ConfigError(f"--activation {name!r} is not one of {', '.join(ACTIVATION_NAMES)}")
    hidden = None if cfg.layers is None else len(cfg.layers) - 2
    if len(names) > 1 and hidden is not None and len(names) != hidden:
        extra = (f" (the output layer's is --output-activation {names[-1]})" if len(names) == hidden + 1 else "")
        raise ConfigError(f"--activation gives {len(names)} activations for {hidden} hidden layer(s) of --layers "
                          f"{','.join(map(str, cfg.layers))}: give one, or one per hidden layer{extra}")
    try:
        output_activation_for(cfg.loss, cfg.output_activation)
    except ValueError as e:
        raise ConfigError(f"--output-activation {cfg.output_activation}: {e}") from None
    if cfg.scale_targets != "none" and cfg.loss != "mse":
        raise ConfigError(f"--scale-targets {cfg.scale_targets} scales regression targets: it needs --loss mse, "
                          f"not {cfg.loss}")


def check_types(values: dict, source: str) -> None:
    """Raise ConfigError for a value whose type does not fit its field (TOML can hold anything).

    Any integral number is an int, any real number a float; bool is neither: True is no batch size. (The
    Python API passes its values through `plain_values` first, so NumPy's scalars are numbers here too.)"""
    kinds = {f.name: str(f.type) for f in fields(Config)}
    for name, value in values.items():
        kind = kinds[name]
        optional = "None" in kind
        if value is None and optional:
            continue
        ok = {"int": _is_int,
              "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
              "str": lambda v: isinstance(v, str),
              "bool": lambda v: isinstance(v, bool),
              "list[int]": lambda v: isinstance(v, list) and all(map(_is_int, v)),
              "list[str]": lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v),
              "list[float]": lambda v: (isinstance(v, list) and all(isinstance(x, numbers.Real) and not isinstance(x, bool)
                                                                 for x in v))}[kind.split(" |")[0]](value)
        if not ok:
            raise ConfigError(f"{source}: {name} = {value!r} is not {_kind_words(kind)}")


def plain_values(values: dict) -> dict:
    """values with NumPy's scalars (np.int64(3), np.float32(0.01), np.bool_, np.str_) as the Python values they
    hold, and sequences (tuples, 1-D arrays) as lists of them: the grids of scikit-learn's tools are built with
    np.arange and np.logspace, and the configuration is compared across ranks and stored as JSON."""
    return {name: _plain(value) for name, value in values.items()}


def _plain(value):
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # a NumPy scalar or array; numpy not imported
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)  # int subclasses (IntEnum) too
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int)):
        return float(value)
    return value


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _kind_words(kind: str) -> str:
    words = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
             "list[int]": "a list of integers", "list[float]": "a list of numbers",
             "list[str]": "a list of names"}[kind.split(" |")[0]]
    return words + (" (or absent)" if "None" in kind else "")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.2,0.1, got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 784,256,10, got {text!r}")


def _name_list(text: str) -> list[str]:
    names = [s.strip() for s in str(text).split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names like y1,y2, got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field, help text from the field comments' intent."""
    parser.add_argument("--config", metavar="FILE", help="TOML file whose keys mirror these flags")
    for f in fields(Config):
        flag = "--" + _flag(f.name)
        default = f.default
        help = f"{f.metadata.get('help', '')} (default: {default})"
        if f.type in ("bool",) or isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif f.name in ("layers", "lr_milestones"):
            parser.add_argument(flag, dest=f.name, type=_int_list, default=None, metavar="N,N,…", help=help)
        elif f.name == "dropout":
            parser.add_argument(flag, dest=f.name, type=_float_list, default=None, metavar="P,P,…", help=help)
        elif f.name in ("targets", "features"):
            parser.add_argument(flag, dest=f.name, type=_name_list, default=None, metavar="NAME,NAME,…", help=help)
        else:
            kind = {"int": int, "float": float}.get(type(default).__name__, str)
            if f.name in ("threads",):
                kind = int
            parser.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(), help=help)


def from_sources(args: argparse.Namespace) -> Config:
    """Config from defaults, then the TOML file (if --config), then the flags given on the command line."""
    values: dict = {}
    if getattr(args, "config", None):
        values.update(load_toml(args.config))
    for f in fields(Config):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return validate(Config(**values))


def from_values(values: dict, source: str) -> Config:
    """Config from keyword values (the Python API's), names and types checked like a TOML file's."""
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; the options are the fields of "
                          "distbp.Config (the flags of distbp train with underscores)")
    values = plain_values(values)
    check_types(values, source)
    try:
        return validate(Config(**values))
    except ConfigError as e:  # the Python caller wrote keywords, not flags: name those
        raise ConfigError(keyword_names(str(e))) from None


def keyword_names(message: str) -> str:
    """A message with every flag of a Config field (--test-fraction) written as its keyword (test_fraction)."""
    known = {f.name for f in fields(Config)}

    def keyword(m: re.Match) -> str:
        name = m.group(1).replace("-", "_")
        return name if name in known else m.group(0)
    return re.sub(r"--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)", keyword, message)


MAX_CONFIG_BYTES = 1 << 20  # a configuration is a few hundred bytes; anything past 1 MiB is not one


def load_toml(path: str) -> dict:
    """The [train] table (or the top level) of a TOML file, keys and value types checked against Config."""
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    if not os.path.isfile(path):  # a FIFO or a device would block or never end
        raise ConfigError(f"config file {path} is not a regular file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than 1 MiB: not a distbp configuration")
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    if "train" in doc:
        if not isinstance(doc["train"], dict):
            raise ConfigError(f"config file {path}: train must be a table ([train]), got {doc['train']!r}")
        beside = sorted(k for k in doc if k != "train")
        if beside:  # never read silently: the top level counts only where there is no [train] table
            raise ConfigError(f"config file {path}: key(s) {', '.join(beside)} at the top level beside a [train] "
                              "table; put them under [train] (or drop the [train] line)")
    table = doc.get("train", doc)
    known = {f.name: f for f in fields(Config)}
    out = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        if name == "dropout" and isinstance(value, str):
            try:
                value = _float_list(value)
            except argparse.ArgumentTypeError as e:
                raise ConfigError(f"config file {path}: dropout: {e}") from None
        if name in ("layers", "lr_milestones") and isinstance(value, str):
            try:
                value = _int_list(value)
            except argparse.ArgumentTypeError as e:
                raise ConfigError(f"config file {path}: layers: {e}") from None
        if name == "activation" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        out[name] = value
    check_types(out, f"config file {path}")
    return out


# ---- the commands on a saved model (distbp predict, evaluate, export) --------------------------------

def model_command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a command on a saved model (distbp predict, evaluate, export): --model and --threads."""
    parser = argparse.ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--model", metavar="FILE", help="a model file (distbp train --save, model.save)")
    parser.add_argument("--threads", type=int, metavar="N", help="Numba and BLAS threads per rank "
                                                                  "(default: cores / ranks on the node)")
    return parser


def parse_command(parser: argparse.ArgumentParser, argv: list[str], comm: Comm,
           required: tuple[str, ...]) -> argparse.Namespace | None:
    """The arguments (the same on every rank), None after --help; ConfigError for a bad or missing one."""
    if "-h" in argv or "--help" in argv:
        if comm.is_root:
            parser.print_help()
        return None
    try:
        args, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise ConfigError(str(e)) from None
    if extra:
        raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")
    missing = [f"--{name}" for name in required if not getattr(args, name)]
    if missing:
        raise ConfigError(f"{parser.prog} needs {', '.join(missing)}")
    return args


def run_on_root(comm: Comm, work: Callable[[], str], errors: tuple[type[BaseException], ...]) -> str:
    """[dist] `work()` on the root alone while the others wait (sleeping between polls); an error of `errors`
    there ends every rank alike (reported once). Returns what work() said on the root, "" elsewhere."""
    import math  # noqa: PLC0415 (only the commands on a saved model wait this way)

    err, said = None, ""
    if comm.is_root:
        try:
            said = work()
        except errors as e:
            err = e
    comm.barrier_within(math.inf)  # [dist]
    comm.agree_on_failure(err)  # [dist]
    return said
