"""The training engine: the only package of budget-tui that imports torch and timm.

`engine.train.loop.train(config, run_dir, ...)` runs one budgeted run; a worker's runs
execute in `python -m engine.child`.

One job per module: data (datasets), prepare (the device and the data on it), models,
budget (steps and learning rates), samplers/ and augment/ (one module per family, each
behind a registry.Registry), step (the training step and scoring forward), accounting
(cost, epoch records, the summary), checkpoint (resume and the run's files) and loop,
which wires them together.
"""
