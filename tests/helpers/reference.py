"""A plain-numpy twin of distbp's MLP, written from the math and nothing else.

It shares no code with distbp: the tests compare the Numba kernels against it.
"""

import numpy as np

ACT = {
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda z: (1 / (1 + np.exp(-z))) * (1 - 1 / (1 + np.exp(-z)))),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(z.dtype)),
    "linear": (lambda z: z, lambda z: np.ones_like(z)),
}


OUTPUT_DEFAULT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid", "mse": "linear"}


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def output_layer(z, y, loss, output_activation):
    """(L = Σₙ lⁿ, δ = ∂L/∂z) at the output, by the seed's chain rule δ = Jᵀ·∂l/∂ŷ, ŷ = σ(z): ∂l/∂ŷ from the
    loss alone, J the output activation's Jacobian (diagonal σ'(z) for element-wise ones). Never fused, so it
    checks the fused kernels' simplified δ (p − onehot, σ(z) − y)."""
    if output_activation == "softmax":
        y_hat = softmax(z)

        def back(g):  # Jᵀg for J = diag(p) − p·pᵀ, row by row
            return y_hat * (g - (y_hat * g).sum(axis=1, keepdims=True))
    else:
        fn, prime = ACT[output_activation]
        y_hat = fn(z)

        def back(g):
            return prime(z) * g
    if loss == "cross_entropy":  # l = −log ŷ[label]
        rows = np.arange(len(y))
        L = -np.log(y_hat[rows, y]).sum()
        g = np.zeros_like(y_hat)
        g[rows, y] = -1 / y_hat[rows, y]
    elif loss == "binary_cross_entropy":  # l = Σⱼ −y log ŷ − (1 − y) log(1 − ŷ)
        L = -(y * np.log(y_hat) + (1 - y) * np.log(1 - y_hat)).sum()
        g = -y / y_hat + (1 - y) / (1 - y_hat)
    else:  # mse: l = ½Σ(ŷ − y)²
        L = 0.5 * ((y_hat - y) ** 2).sum()
        g = y_hat - y
    return L, back(g)


def loss_and_grad(params, activations, loss, X, y, output_activation=None):
    """params [(W, b)], activations one name per hidden layer; returns L = Σₙ lⁿ and [(dW, db)].
    output_activation: the output layer's σ (None: the loss's own, OUTPUT_DEFAULT)."""
    a, zs, acts = X, [], [X]
    for l, (W, b) in enumerate(params):
        z = a @ W + b
        zs.append(z)
        a = ACT[activations[l]][0](z) if l < len(params) - 1 else z
        acts.append(a)
    L, delta = output_layer(zs[-1], y, loss, output_activation or OUTPUT_DEFAULT[loss])
    grads = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        grads[l] = (acts[l].T @ delta, delta.sum(axis=0))
        if l:
            delta = (delta @ params[l][0].T) * ACT[activations[l - 1]][1](zs[l - 1])
    return L, grads


# ---- one dense layer's pass (distbp.nn.layers), a_in (n, fan_in), W (fan_in, fan_out), b (fan_out,) ----

def dense_forward(a_in, W, b, activation):
    """(z, a_out) of a hidden layer: z = a_in·W (without b), a_out = σ(z + b)."""
    z = a_in @ W
    return z, ACT[activation][0](z + b)


def weight_gradient(a, delta):
    """dW = aᵀ·δ."""
    return a.T @ delta


def bias_gradient(delta):
    """db = Σₙ δ."""
    return delta.sum(axis=0)


def dense_backward(delta, W, z_in, activation):
    """(δ_in, db_in) of the layer below, whose pre-activation is z_in: δ_in = σ'(z_in) ⊙ (δ·Wᵀ), db_in = Σₙ δ_in."""
    delta_in = (delta @ W.T) * ACT[activation][1](z_in)
    return delta_in, delta_in.sum(axis=0)


# ---- the layer norms of lars and lamb (distbp.nn.optim), in float64 ----

def layer_sums_of_squares(theta, u, layer_of, n_layers):
    """(n_layers, 2): Σ θ² and Σ u² over the elements of each layer (layer_of: each element's layer)."""
    sums = np.zeros((n_layers, 2))
    np.add.at(sums[:, 0], layer_of, theta.astype(np.float64) ** 2)
    np.add.at(sums[:, 1], layer_of, u.astype(np.float64) ** 2)
    return sums


def lamb_direction(m, v, g, theta, beta1, beta2, corr, eps_t, lam):
    """(m', v', r): Adam's moments m' = β₁m + (1−β₁)g, v' = β₂v + (1−β₂)g², and r = corr·m'/(√v' + eps_t) + λθ."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    return m, v, corr * m / (np.sqrt(v) + eps_t) + lam * theta
