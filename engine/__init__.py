"""budget-tui's headless core: config, presets, store and queue.

Nothing in this package outside `engine.train` imports torch, timm, sklearn or textual,
so the CLI and the TUI start fast.
"""

__version__ = "0.1.0"
