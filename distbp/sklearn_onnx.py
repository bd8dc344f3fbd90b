"""skl2onnx converters for distbp's scikit-learn estimators (`distbp.sklearn.MLPClassifier`, `MLPRegressor`), so
that a pipeline holding one exports to ONNX as scikit-learn's own models do:

    from distbp.sklearn_onnx import register
    register()                                   # once, before converting
    onx = skl2onnx.to_onnx(make_pipeline(StandardScaler(), MLPClassifier(...)).fit(X, y), X[:1])

The converters emit the graph of `distbp export` (distbp.export.emit_network, emit_label) from the fitted
estimator's `model_`, with skl2onnx's conventions for what goes in and out:
- the input is cast to the model's dtype when the pipeline's is another (float64 rows into a float32 model, as
  the estimators' predict does), and the outputs back to the input's float type;
- a classifier has skl2onnx's two outputs, label then probabilities: the label is classes_[argmax] as an int64
  tensor (integer, boolean or integral float classes) or a string tensor (string classes), the probabilities
  are (N, n_classes). The options of scikit-learn's own classifiers hold: zipmap (True, False, "columns") and
  nocl (labels 0…K−1). A multilabel classifier (fitted on a 0/1 indicator matrix) gives the int64 0/1 matrix
  (N, n_labels) of p > ½ and the probabilities (N, n_labels), with zipmap=False only;
- a regressor has one output, the values (N, n_outputs), also for one output (predict returns (N,) for a 1-D y).

Needs skl2onnx (`pip install "distbp[skl2onnx]"`) and scikit-learn.
"""

from __future__ import annotations

import numpy as np

from distbp.export import emit_label, emit_network, plain_classes

CLASSIFIER_ALIAS, REGRESSOR_ALIAS = "DistbpMLPClassifier", "DistbpMLPRegressor"
CLASSIFIER_OPTIONS = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
INSTALL = 'the skl2onnx converters need skl2onnx: pip install "distbp[skl2onnx]"'


def import_skl2onnx():
    """The skl2onnx module; ImportError naming the pip install line when it is missing."""
    try:
        import skl2onnx
    except ImportError as e:
        raise ImportError(f"{INSTALL} ({e})") from None
    return skl2onnx


def register() -> None:
    """Register the converters and shape calculators of distbp.sklearn.MLPClassifier and MLPRegressor with
    skl2onnx (`update_registered_converter`); calling it again changes nothing."""
    skl2onnx = import_skl2onnx()
    from distbp.sklearn import MLPClassifier, MLPRegressor  # scikit-learn: only when the converters are registered

    skl2onnx.update_registered_converter(MLPClassifier, CLASSIFIER_ALIAS, classifier_shapes, convert_classifier,
                                         options=CLASSIFIER_OPTIONS)
    skl2onnx.update_registered_converter(MLPRegressor, REGRESSOR_ALIAS, regressor_shapes, convert_regressor)


# ---- the graph through skl2onnx's container ------------------------------------------------------------

class ContainerGraph:
    """distbp.export's GraphSink over skl2onnx's scope (unique names) and container (nodes, initializers)."""

    def __init__(self, scope, container):
        self.scope, self.container = scope, container

    def constant(self, hint: str, value: np.ndarray) -> str:
        from distbp.export import import_onnx, tensor_type  # onnx: only when a graph is built

        name = self.scope.get_unique_variable_name(hint)
        value = np.asarray(value)
        if value.dtype.kind in "US":
            content = [str(v).encode("utf-8") for v in value.ravel().tolist()]
        else:
            content = value.ravel()
        self.container.add_initializer(name, tensor_type(import_onnx(), value.dtype), list(value.shape), content)
        return name

    def node(self, op: str, inputs: list[str], hint: str, output: str | None = None, **attrs) -> str:
        out = self.scope.get_unique_variable_name(hint) if output is None else output
        self.container.add_node(op, inputs, [out], name=self.scope.get_unique_operator_name(op), **attrs)
        return out


def _proto_type(model) -> int:
    from distbp.export import import_onnx, tensor_type  # onnx: only when a graph is built

    return tensor_type(import_onnx(), model.dtype)


def _output_type(input_type):
    """skl2onnx's float tensor type for outputs that follow an input of `input_type` (double stays double)."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    return DoubleTensorType if isinstance(input_type, DoubleTensorType) else FloatTensorType


def _rows_in(graph: ContainerGraph, operator, model) -> str:
    """The operator's input in the model's dtype (a Cast when the pipeline's rows are of another type)."""
    from skl2onnx.common.data_types import guess_proto_type

    x = operator.inputs[0].full_name
    if guess_proto_type(operator.inputs[0].type) == _proto_type(model):
        return x
    return graph.node("Cast", [x], "rows", to=_proto_type(model))


def _network(graph: ContainerGraph, operator, model, output) -> str:
    """emit_network on the operator's input; its result written to the variable `output` in that variable's
    float type (a Cast when it is not the model's dtype). Returns the result's name in the model's dtype."""
    from skl2onnx.common.data_types import guess_proto_type

    to = guess_proto_type(output.type)
    if to == _proto_type(model):
        return emit_network(graph, model, _rows_in(graph, operator, model), output=output.full_name)
    out = emit_network(graph, model, _rows_in(graph, operator, model))
    graph.node("Cast", [out], "cast_out", output=output.full_name, to=to)
    return out


def label_classes(scope, estimator) -> np.ndarray:
    """The classifier's labels as skl2onnx's classifiers give them: classes_ (0…K−1 with the option nocl) as int64
    (integers, booleans, and floats, which scikit-learn's classifiers take only when they are integers) or str."""
    from skl2onnx.common.utils_classifier import get_label_classes

    classes = plain_classes(get_label_classes(scope, estimator))  # strings held as objects: a str array
    if classes.dtype.kind in "US":
        return classes.astype(str)
    if classes.dtype.kind not in "iufb":
        raise ValueError(f"{type(estimator).__name__}: classes of dtype {classes.dtype} have no ONNX label type")
    return classes.astype(np.int64)


# ---- classifier -----------------------------------------------------------------------------------------

def classifier_shapes(operator) -> None:
    """skl2onnx's shape calculator: label (N,) int64 or string, (N, n_labels) int64 for multilabel; probabilities
    (N, n_outputs) of the input's float type."""
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
    from skl2onnx.common.utils import check_input_and_output_numbers

    check_input_and_output_numbers(operator, input_count_range=1, output_count_range=2)
    estimator = operator.raw_operator
    model = estimator.model_
    n, k = operator.inputs[0].get_first_dimension(), model.sizes[-1]
    zipmap = operator.scope_inst.get_options(estimator, {"zipmap": True})["zipmap"]
    if model.loss.multilabel:
        if zipmap is not False:
            raise ValueError(f"{type(estimator).__name__} fitted on a multilabel y converts with the option "
                             "zipmap=False only (options={MLPClassifier: {'zipmap': False}}): its label is a 0/1 "
                             "matrix, which ZipMap cannot take")
        operator.outputs[0].type = Int64TensorType([n, k])
    else:
        strings = label_classes(operator.scope_inst, estimator).dtype.kind == "U"
        operator.outputs[0].type = (StringTensorType if strings else Int64TensorType)([n])
    # ZipMap takes float probabilities only: under zipmap=True, float64 rows give float probabilities (scikit-learn's
    # own classifiers give float64 ones there, which ONNX Runtime refuses); otherwise the rows' float type
    float_type = FloatTensorType if zipmap is True else _output_type(operator.inputs[0].type)
    operator.outputs[1].type = float_type([n, k])


def convert_classifier(scope, operator, container) -> None:
    """skl2onnx's converter of distbp.sklearn.MLPClassifier: outputs label, probabilities."""
    estimator = operator.raw_operator
    model = estimator.model_
    graph = ContainerGraph(scope, container)
    p = _network(graph, operator, model, operator.outputs[1])
    classes = None if model.loss.multilabel else label_classes(scope, estimator)
    emit_label(graph, model, p, classes, output=operator.outputs[0].full_name)


# ---- regressor ------------------------------------------------------------------------------------------

def regressor_shapes(operator) -> None:
    """skl2onnx's shape calculator: values (N, n_outputs) of the input's float type."""
    from skl2onnx.common.utils import check_input_and_output_numbers

    check_input_and_output_numbers(operator, input_count_range=1, output_count_range=1)
    n, k = operator.inputs[0].get_first_dimension(), operator.raw_operator.model_.sizes[-1]
    operator.outputs[0].type = _output_type(operator.inputs[0].type)([n, k])


def convert_regressor(scope, operator, container) -> None:
    """skl2onnx's converter of distbp.sklearn.MLPRegressor: the values (N, n_outputs)."""
    _network(ContainerGraph(scope, container), operator, operator.raw_operator.model_, operator.outputs[0])
