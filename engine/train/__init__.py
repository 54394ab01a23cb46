"""The training engine: the only package of budget-tui that imports torch and timm.

`engine.train.loop.train(config, run_dir, ...)` runs one budgeted run; a worker's runs
execute in `python -m engine.child`.
"""
