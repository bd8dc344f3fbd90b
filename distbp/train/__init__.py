"""A training run (floor 6): assembling it, the loop, reporting, its state and checkpoints, the learning-rate
schedule, early stopping, the kernels' warm-up, the watchdog, memory estimates and the job that ties them.
May import: every floor below it (distbp.config, distbp.sync, distbp.nn, distbp.data, distbp.observe,
distbp.comm, distbp.errors, distbp.units, distbp.testing) and its own modules.
"""
