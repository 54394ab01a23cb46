"""budget-tui's front ends: the Typer CLI (cli.py) and the terminal UI.

Nothing here imports torch at start-up; runs import the engine only when they start.
"""
