"""Domain errors: one exception family, caught once at the CLI boundary.

Each error carries the process exit code the CLI maps it to (DESIGN.md): 1 runtime
failure, 2 bad input, 3 not found. Must not import torch.
"""


class BudgetTuiError(Exception):
    """Base of every error a user may see as one clear line."""

    exit_code = 1


class BadInput(BudgetTuiError):
    """The user asked for something invalid: unknown preset, key, value, missing files."""

    exit_code = 2


class NotFound(BudgetTuiError):
    """A run, preset or file the user named does not exist."""

    exit_code = 3


class DatasetFilesMissing(BadInput):
    """A dataset's files are not in the data root; the message names the directory and files."""


class PathUnusable(BadInput):
    """A home or file the user pointed at cannot be used: not a directory, no permission,
    read-only. The message names the path."""


class StorageFailed(BudgetTuiError):
    """The file system refused a write it should have taken (full disk, I/O error)."""
