"""The seed's math on one rank (floor 3): activations and losses (each a value/derivative pair), the fused
kernels, the dense layer's forward/backward pair, the `MLP` with its flat buffers, the optimizers and the
model file. Nothing here knows about ranks.
May import: distbp.errors, distbp.units, distbp.observe (the tracer) and its own modules.
"""
