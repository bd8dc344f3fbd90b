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


def loss_and_grad(params, activations, loss, X, y):
    """params [(W, b)], activations one name per hidden layer; returns L = Σₙ lⁿ and [(dW, db)]."""
    a, zs, acts = X, [], [X]
    for l, (W, b) in enumerate(params):
        z = a @ W + b
        zs.append(z)
        a = ACT[activations[l]][0](z) if l < len(params) - 1 else z
        acts.append(a)
    z = zs[-1]
    if loss == "cross_entropy":
        m = z.max(axis=1, keepdims=True)
        logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
        L = -logp[np.arange(len(y)), y].sum()
        delta = np.exp(logp)
        delta[np.arange(len(y)), y] -= 1
    else:
        L = 0.5 * ((z - y) ** 2).sum()
        delta = z - y
    grads = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        grads[l] = (acts[l].T @ delta, delta.sum(axis=0))
        if l:
            delta = (delta @ params[l][0].T) * ACT[activations[l - 1]][1](zs[l - 1])
    return L, grads
