"""Comparing runs of the history, one job per module:

    metrics   what can be compared and how to read it from a run record
    grouping  which runs are seeds of one experiment (config minus seed), and how fields sort
    stats     mean, sample std and Welch's t-test
    pivot     the compare table: one cell per experiment, deltas against a baseline
    export    the pivot as text table, csv, markdown, LaTeX or json
    charts    the series behind the compare charts, as plots.Chart descriptions
    plots     a Chart drawn as terminal text or written as PNG/SVG

Nothing here imports torch, scipy or (at module level) numpy or matplotlib: the CLI and
the TUI import these modules.
"""
