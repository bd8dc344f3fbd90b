"""Which output activation each loss takes (no Numba here: the configuration checks it before any pool starts).

    cross_entropy          softmax                      one class per row
    binary_cross_entropy   sigmoid                      a yes/no per output (multilabel; binary with one output)
    mse                    linear (default), sigmoid, tanh, relu, softmax

The kernels of each pair are `distbp.nn.losses`.
"""

from __future__ import annotations

LOSS_NAMES = ("cross_entropy", "binary_cross_entropy", "mse")
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid", "tanh", "relu", "linear")
# the output activation each loss takes when none is named: today's pairs
DEFAULT_OUTPUT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid", "mse": "linear"}
# what each loss accepts: cross-entropy's δ = p − onehot and BCE's σ(z) − y hold for their own output alone
ALLOWED_OUTPUT = {"cross_entropy": ("softmax",), "binary_cross_entropy": ("sigmoid",), "mse": OUTPUT_ACTIVATIONS}
WHY_NOT = {"cross_entropy": "cross-entropy takes probabilities of one class per row: softmax",
           "binary_cross_entropy": "binary cross-entropy takes a probability per output: sigmoid"}


def output_activation_for(name: str, output_activation: str | None = None) -> str:
    """The output activation of loss `name`: `output_activation` if it pairs with the loss, its default when None.
    Raises ValueError naming the loss, the activation and what would work."""
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")
    if output_activation is None:
        return DEFAULT_OUTPUT[name]
    if output_activation not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"unknown output activation {output_activation!r}; choose from {', '.join(OUTPUT_ACTIVATIONS)}")
    if output_activation not in ALLOWED_OUTPUT[name]:
        other = [loss for loss in LOSS_NAMES if output_activation in ALLOWED_OUTPUT[loss]]
        raise ValueError(f"loss {name} cannot follow a {output_activation} output ({WHY_NOT[name]}); a "
                         f"{output_activation} output goes with {' or '.join(other)}")
    return output_activation
