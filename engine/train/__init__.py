"""The training engine: the only package of budget-tui that imports torch and timm.

`engine.train.loop.train(config, run_dir, ...)` runs one budgeted run; `python -m
engine.train RUN_DIR` runs (or resumes) the run whose config sits in RUN_DIR.
"""
