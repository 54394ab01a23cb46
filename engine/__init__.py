"""budget-tui's headless core: config, presets, store and queue.

Nothing in this package outside `engine.train` imports torch, timm or textual (nor, at
start-up, numpy, scipy or matplotlib), so the CLI and the TUI start fast; nothing in it
imports or names the front ends.
"""

__version__ = "0.1.0"
