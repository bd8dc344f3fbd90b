"""ONNX export: a trained model as an ONNX graph, for ONNX Runtime (C++, C#, Java, Python, the browser).

    distbp export --model m.npz --onnx m.onnx                  # opset 17
    distbp export --model m.npz --onnx m.onnx --opset 21
    python -c "import distbp, distbp.export as e; e.export_onnx(distbp.load('m.npz'), 'm.onnx')"

The graph computes `MLP.predict` on a batch of N raw rows (one dynamic dimension, named "N"), with the same
operations in the same dtype (the model's: tensor(float) for float32 models, tensor(double) for float64):

    X (N, inputs)
    → (X − offset)·factor                   Sub, Mul: the training's feature scaling (MLP.scale_features), if any
    → a = σ(a·W + b), per hidden layer       MatMul, Add, Sigmoid | Tanh | Relu (linear: no node)
    → y = σ_out(a·W + b)                     MatMul, Add, Softmax (axis −1) | Sigmoid | Tanh | Relu | none
    → y/factor + offset                      Div, Add: the target scaling undone (MLP.unscale_targets), if any

Its outputs, by the model's loss:

    cross_entropy          probabilities (N, K), label (N,): classes[argmax p] (int64, string or double
                           tensor for integer, string or float classes), the int64 argmax without classes
    binary_cross_entropy   probabilities (N, k), label: one output: classes[p > ½] (N,) (the int64 0/1 without
                           classes); k > 1 outputs: the int64 0/1 matrix (N, k) of p > ½
    mse                    values (N, k), in the targets' own units

The nodes are written through a small sink (`ProtoGraph` here; the skl2onnx converter of
distbp.sklearn_onnx has its own over skl2onnx's container), so that both emit the same graph from
`emit_network` and `emit_label`. The `onnx` package is optional (`pip install "distbp[onnx]"`) and imported
inside the functions that need it: distbp's start-up does not load it.
"""

from __future__ import annotations

import json
import os
from typing import Protocol

import numpy as np

from distbp.comm.base import Comm
from distbp.config import model_command_parser, parse_command, run_on_root
from distbp.errors import DistbpError
from distbp.nn.model import MLP, load_model
from distbp.nn.modelfile import class_count, write_atomically
from distbp.version import __version__

INPUT = "X"
DYNAMIC_ROWS = "N"  # the name of the batch dimension
MIN_OPSET = 13  # Softmax over the last axis alone (opset 13's definition), Gather and ArgMax as used here
# the default: the installed onnx's highest, capped here. The graph's operators have not changed meaning since
# opset 13; 17 runs on ONNX Runtime 1.12 and later (its IR version 8 loads in every runtime since), where a
# newer opset would shut out older runtimes for nothing
DEFAULT_OPSET = 17
MAX_BYTES = 2_000_000_000  # a protobuf message (the one .onnx file) holds at most 2 GiB
INSTALL = 'ONNX export needs the onnx package: pip install "distbp[onnx]"'

# distbp's activations as ONNX operators (None: the identity, no node); adding an activation to distbp needs
# one line here before its models can be exported
ONNX_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "linear": None, "softmax": "Softmax"}
ACTIVATION_ATTRIBUTES = {"Softmax": {"axis": -1}}


def import_onnx():
    """The onnx module; ImportError naming the pip install line when it is missing."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"{INSTALL} ({e})") from None
    return onnx


# ---- where the nodes go -----------------------------------------------------------------------------

class GraphSink(Protocol):
    """What emit_network and emit_label write through: constants (initializers) and nodes, with unique names
    made from a hint unless an output name is given."""

    def constant(self, hint: str, value: np.ndarray) -> str:
        """Add `value` (a float, int64, bool or string array) as an initializer; returns its name."""

    def node(self, op: str, inputs: list[str], hint: str, output: str | None = None, **attrs) -> str:
        """Add the operator `op` on `inputs` with attributes `attrs`; returns its one output's name."""


class ProtoGraph:
    """A GraphSink that keeps the nodes and initializers for onnx.helper.make_graph."""

    def __init__(self, onnx, reserved: list[str]):
        self.onnx = onnx
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set(reserved)  # the graph's input and output names: never made from a hint

    def _unique(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._names:
            name, k = f"{hint}_{k}", k + 1
        self._names.add(name)
        return name

    def constant(self, hint: str, value: np.ndarray) -> str:
        name = self._unique(hint)
        value = np.asarray(value)
        if value.dtype.kind in "US":
            data = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value.ravel().tolist()]
            tensor = self.onnx.helper.make_tensor(name, self.onnx.TensorProto.STRING, list(value.shape), data)
        else:
            tensor = self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.initializers.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], hint: str, output: str | None = None, **attrs) -> str:
        out = self._unique(hint) if output is None else output
        self._names.add(out)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=self._unique(f"{op}_{hint}"), **attrs))
        return out


# ---- the graph ----------------------------------------------------------------------------------------

def check_exportable(model: MLP) -> None:
    """ValueError naming what in `model` has no ONNX counterpart (an activation, the class labels' type, NaN or
    Inf parameters) or would not fit one ONNX file; TypeError for something that is not an MLP."""
    if not isinstance(model, MLP):
        raise TypeError(f"ONNX export takes a distbp.MLP, got {type(model).__name__}")
    for name in [*model.activation_names, model.output_activation]:
        if name not in ONNX_ACTIVATIONS:
            raise ValueError(f"activation {name!r} has no ONNX export (distbp.export.ONNX_ACTIVATIONS has "
                             f"{', '.join(ONNX_ACTIVATIONS)})")
    if model.classes is not None:
        classes = plain_classes(model.classes)
        expected = class_count(model.sizes[-1], model.loss.name)
        if classes.shape != (expected,):
            raise ValueError(f"model.classes has shape {classes.shape}; a {model.loss.name} model with "
                             f"{model.sizes[-1]} outputs names {expected} classes")
        label_type(classes.dtype)  # raises for classes ONNX cannot hold
    if model.n_params * model.dtype.itemsize > MAX_BYTES:
        raise ValueError(f"the model's {model.n_params} parameters ({model.n_params * model.dtype.itemsize} bytes) "
                         "do not fit one ONNX file (a protobuf message holds at most 2 GiB)")
    if not np.all(np.isfinite(model.flat_params)):
        raise ValueError("the model's parameters hold NaN or Inf: there is nothing sensible to export")


def label_type(dtype: np.dtype) -> np.dtype:
    """The dtype of a label tensor for classes of `dtype`: int64 for integers, float64 for floats, bool, str;
    ValueError for anything else (objects that are not all strings)."""
    kinds = {"i": np.dtype(np.int64), "u": np.dtype(np.int64), "f": np.dtype(np.float64), "b": np.dtype(bool),
             "U": np.dtype(str), "S": np.dtype(str)}
    if dtype.kind not in kinds:
        raise ValueError(f"class labels of dtype {dtype} have no ONNX tensor type; give integers, floats or strings")
    return kinds[dtype.kind]


def plain_classes(classes) -> np.ndarray:
    """classes as an array of strings or numbers: labels held as Python objects (as pandas and scikit-learn hold
    strings) become a str (or number) array when all are strings (or all numbers); anything else is returned as
    it is."""
    classes = np.asarray(classes)
    values = classes.tolist() if classes.dtype == object else None
    if values and (all(isinstance(v, str) for v in values) or
                   all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                       for v in values)):
        return np.array(values)
    return classes


def classes_constant(classes: np.ndarray) -> np.ndarray:
    """classes as the array a label tensor's Gather takes them from (label_type's dtype)."""
    classes = plain_classes(classes)
    if classes.dtype.kind == "S":
        return np.array([c.decode("utf-8") for c in classes.tolist()])
    if classes.dtype.kind == "u" and classes.size and int(classes.max()) > np.iinfo(np.int64).max:
        raise ValueError("class labels above 2⁶³ − 1 do not fit an int64 label tensor")
    return classes.astype(label_type(classes.dtype))


def emit_network(graph: GraphSink, model: MLP, x: str, output: str | None = None) -> str:
    """The nodes of model.predict on the rows `x` ((N, inputs), in the model's dtype): the feature scaling,
    MatMul + Add + σ per layer, the output activation, the target scaling undone. Returns the name of the
    (N, outputs) result (`output`, when given), in the model's dtype."""
    check_exportable(model)
    dt = model.dtype
    steps: list[tuple[str, str | None, str, dict]] = []  # (operator, constant input, hint, attributes)
    if model.feature_offset is not None:  # as MLP.scale_features: the statistics cast to the model's dtype
        steps.append(("Sub", graph.constant("feature_offset", model.feature_offset.astype(dt)), "centred", {}))
        steps.append(("Mul", graph.constant("feature_factor", model.feature_factor.astype(dt)), "scaled", {}))
    last = model.n_layers - 1
    for l, (W, b) in enumerate(model.params):
        steps.append(("MatMul", graph.constant(f"W{l}", W), f"aW{l}", {}))
        steps.append(("Add", graph.constant(f"b{l}", b), f"z{l}", {}))
        op = ONNX_ACTIVATIONS[model.activation_names[l] if l < last else model.output_activation]
        if op is not None:
            steps.append((op, None, f"a{l}", ACTIVATION_ATTRIBUTES.get(op, {})))
    if model.target_offset is not None:  # as MLP.unscale_targets: y/factor + offset in the model's dtype
        steps.append(("Div", graph.constant("target_factor", model.target_factor.astype(dt)), "unscaled", {}))
        steps.append(("Add", graph.constant("target_offset", model.target_offset.astype(dt)), "values", {}))
    a = x
    for i, (op, const, hint, attrs) in enumerate(steps):
        a = graph.node(op, [a] if const is None else [a, const], hint,
                       output if i == len(steps) - 1 else None, **attrs)
    return a


def emit_label(graph: GraphSink, model: MLP, p: str, classes: np.ndarray | None, output: str | None = None) -> str:
    """The nodes of the label of each row of the outputs `p` (N, outputs), as `distbp predict --labels` gives it:
    cross_entropy: (N,) classes[argmax] (the int64 argmax without classes); binary_cross_entropy with one output:
    (N,) classes[p > ½] (the int64 0/1 without classes); with k > 1 outputs: the int64 0/1 matrix (N, k) of p > ½.
    Returns its name."""
    loss = model.loss.name
    if loss == "mse":
        raise ValueError("a regression (loss mse) has no labels")
    if loss == "cross_entropy":
        index = graph.node("ArgMax", [p], "class_index", output if classes is None else None, axis=1, keepdims=0)
        if classes is None:
            return index
        return graph.node("Gather", [graph.constant("classes", classes_constant(classes)), index], "label",
                          output, axis=0)
    half = graph.constant("half", np.array(0.5, model.dtype))
    int64 = int(import_onnx().TensorProto.INT64)
    if model.sizes[-1] > 1:
        above = graph.node("Greater", [p, half], "above_half")
        return graph.node("Cast", [above], "label", output, to=int64)
    flat = graph.node("Reshape", [p, graph.constant("rows", np.array([-1], np.int64))], "p_positive")
    above = graph.node("Greater", [flat, half], "above_half")
    index = graph.node("Cast", [above], "class_index", output if classes is None else None, to=int64)
    if classes is None:
        return index
    return graph.node("Gather", [graph.constant("classes", classes_constant(classes)), index], "label", output, axis=0)


def output_names(model: MLP) -> list[str]:
    """The graph's outputs: ["probabilities", "label"] for classifiers, ["values"] for regressions."""
    return ["values"] if model.loss.name == "mse" else ["probabilities", "label"]


def tensor_type(onnx, dtype: np.dtype) -> int:
    """The ONNX element type of a tensor of numpy `dtype` (float32, float64, int64, bool, str)."""
    types = {"float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE,
             "int64": onnx.TensorProto.INT64, "bool": onnx.TensorProto.BOOL}
    dtype = np.dtype(dtype)
    return onnx.TensorProto.STRING if dtype.kind in "US" else types[dtype.name]


def choose_opset(opset: int | None, onnx) -> int:
    """The opset to write: `opset`, checked, or DEFAULT_OPSET (capped at the installed onnx's highest)."""
    highest = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(DEFAULT_OPSET, highest)
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an integer, got {opset!r}")
    if not MIN_OPSET <= opset <= highest:
        raise ValueError(f"opset {opset} cannot be written: distbp exports opsets {MIN_OPSET} to {highest} (the "
                         f"highest the installed onnx {onnx.__version__} knows); the default is "
                         f"{min(DEFAULT_OPSET, highest)}")
    return int(opset)


def metadata(model: MLP) -> dict[str, str]:
    """The model's description, kept in the ONNX file's metadata_props."""
    props = {"distbp_version": __version__, "sizes": "-".join(map(str, model.sizes)),
             "activations": ",".join(model.activation_names), "output_activation": model.output_activation,
             "loss": model.loss.name, "dtype": model.dtype.name,
             "feature_scaling": "no" if model.feature_offset is None else "yes",
             "target_scaling": "no" if model.target_offset is None else "yes",
             "outputs": ",".join(output_names(model))}
    if model.classes is not None:
        props["classes"] = json.dumps(classes_constant(model.classes).tolist())
    return props


def model_to_onnx(model: MLP, opset: int | None = None):
    """The ONNX model (onnx.ModelProto) of `model` (see the module docstring for the graph and its outputs),
    for opset `opset` (default: DEFAULT_OPSET). Raises ValueError for a model or opset that cannot be
    exported, ImportError naming the pip install line without the onnx package."""
    onnx = import_onnx()
    helper = onnx.helper
    opset = choose_opset(opset, onnx)
    check_exportable(model)
    names = output_names(model)
    graph = ProtoGraph(onnx, [INPUT, *names])
    p = emit_network(graph, model, INPUT, output=names[0])
    k = model.sizes[-1]
    outputs = [helper.make_tensor_value_info(names[0], tensor_type(onnx, model.dtype), [DYNAMIC_ROWS, k])]
    if model.loss.name != "mse":
        emit_label(graph, model, p, model.classes, output="label")
        matrix = model.loss.name == "binary_cross_entropy" and k > 1
        dtype = np.int64 if matrix or model.classes is None else label_type(plain_classes(model.classes).dtype)
        outputs.append(helper.make_tensor_value_info("label", tensor_type(onnx, dtype),
                                                     [DYNAMIC_ROWS, k] if matrix else [DYNAMIC_ROWS]))
    inputs = [helper.make_tensor_value_info(INPUT, tensor_type(onnx, model.dtype), [DYNAMIC_ROWS, model.sizes[0]])]
    description = f"distbp MLP {model.architecture()}, {model.dtype.name}"
    g = helper.make_graph(graph.nodes, "distbp_mlp", inputs, outputs, initializer=graph.initializers,
                          doc_string=description)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(g, opset_imports=opsets, producer_name="distbp", producer_version=__version__,
                              doc_string=description)
    # the oldest IR version that holds this opset: newer ONNX Runtimes load it, older ones are not shut out
    proto.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    helper.set_model_props(proto, metadata(model))
    return proto


def export_onnx(model: MLP, path: str | os.PathLike, *, opset: int | None = None) -> None:
    """Write `model` as an ONNX file `path` (atomically: a failure leaves no file, or the old one); see
    model_to_onnx. Raises ValueError for a path that is a folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; give the ONNX file's name (e.g. model.onnx)")
    proto = model_to_onnx(model, opset)
    write_atomically(path, lambda fh: fh.write(proto.SerializeToString()))


# ---- the command ------------------------------------------------------------------------------------------

def export_file(model_path: str, onnx_path: str, opset: int | None = None) -> str:
    """Read the model file, write the ONNX file; returns what was written, for the log line."""
    if os.path.isdir(onnx_path):
        raise ValueError(f"--onnx {onnx_path} is a directory; give the ONNX file's name (e.g. model.onnx)")
    if os.path.exists(model_path) and os.path.exists(onnx_path) and os.path.samefile(model_path, onnx_path):
        raise ValueError(f"--onnx {onnx_path} is the --model file: writing it would destroy the model")
    onnx = import_onnx()  # before reading the model: a missing package is said first
    chosen = choose_opset(opset, onnx)
    model = load_model(model_path)
    export_onnx(model, onnx_path, opset=chosen)
    outputs = ", ".join(output_names(model))
    return (f"{onnx_path} (opset {chosen}): input {INPUT} (N, {model.sizes[0]}) {model.dtype.name}, "
            f"outputs {outputs}")


def export_main(argv: list[str], comm: Comm) -> int:
    """`distbp export`: the root writes the model file's ONNX graph; an error is one DistbpError on every rank."""
    parser = model_command_parser("distbp export", "Write a saved model as an ONNX graph (for ONNX Runtime): its "
                                  "feature scaling, layers and output activation; probabilities and labels for "
                                  "classifiers, values for regressions (docs/deploy.md).")
    parser.add_argument("--onnx", metavar="FILE", help="the ONNX file to write (e.g. model.onnx)")
    parser.add_argument("--opset", type=int, metavar="N",
                        help=f"the ONNX opset ({MIN_OPSET} up to the installed onnx's highest; default "
                             f"{DEFAULT_OPSET})")
    args = parse_command(parser, argv, comm, required=("model", "onnx"))
    if args is None:
        return 0
    what = run_on_root(comm, lambda: export_file(args.model, args.onnx, args.opset),
                       (DistbpError, ValueError, OSError, ImportError))
    if comm.is_root:
        print(f"distbp: wrote {what}", flush=True)
    return 0
