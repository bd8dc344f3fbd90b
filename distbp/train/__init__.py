"""A training run (floor 6): assembling it (setup), the step and the epochs (loop), what watches and times
them (instruments), reporting (report), its state and checkpoints with their lock (runstate, checkpoint,
lock), the learning-rate schedule, early stopping, the kernels' warm-up, the watchdog, memory estimates and
the job that ties them.
May import: every floor below it (distbp.config, distbp.sync, distbp.nn, distbp.data, distbp.observe,
distbp.comm, distbp.errors, distbp.units, distbp.testing) and its own modules.
"""
