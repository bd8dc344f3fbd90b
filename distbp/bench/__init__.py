"""Benchmarks a user runs in their own allocation: `distbp bench allreduce` (the collective alone, every
transport) and `distbp bench scaling` (a strong and weak scaling study in one job, with an α–β prediction).

    groups.py     ranks placed whole nodes first, and a communicator per group
    timing.py     the slowest rank's time, the idle wait, the machine, the table, the JSON
    allreduce.py  `distbp bench allreduce`
    scaling.py    `distbp bench scaling`
    model.py      the α–β fit and the step time it predicts
    plot.py       the study's figure
    main.py       the command line (`bench_main`)

Floor 7 (beside distbp.predict): it runs the training step of distbp.train.
May import: distbp.train, distbp.config, distbp.sync, distbp.nn, distbp.data, distbp.observe, distbp.comm,
distbp.host, distbp.errors, distbp.units and its own modules.
"""
