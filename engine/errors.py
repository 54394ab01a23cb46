"""Domain errors: one exception family, caught once at the CLI boundary.

Each error carries the process exit code the CLI maps it to (DESIGN.md): 1 runtime
failure, 2 bad input, 3 not found, 4 refused by a run's state; `explain` gives any other
error its line and code.
Must not import torch.
"""

from __future__ import annotations

TRACEBACK_ENV = "BUDGET_TUI_TRACEBACK"  # set to 1 to see where an unexpected error came from


class BudgetTuiError(Exception):
    """Base of every error a user may see as one clear line."""

    exit_code = 1


class BadInput(BudgetTuiError):
    """The user asked for something invalid: unknown preset, key, value, missing files."""

    exit_code = 2


class NotFound(BudgetTuiError):
    """A run, preset or file the user named does not exist."""

    exit_code = 3


class WrongState(BudgetTuiError):
    """A request the run's state does not allow: retry a done run, cancel a finished one,
    remove a queued or running one. Distinct from bad input, so scripts can tell the two apart."""

    exit_code = 4


class DatasetFilesMissing(BadInput):
    """A dataset's files are not in the data root; the message names the directory and files."""


class PathUnusable(BadInput):
    """A home or file the user pointed at cannot be used: not a directory, no permission,
    read-only. The message names the path."""


class StorageFailed(BudgetTuiError):
    """The file system refused a write it should have taken (full disk, I/O error)."""


# An OS error about the file given (its kind, its permissions) is bad input, as the store's
# PathUnusable is; a missing one is not found; the rest (a full disk, I/O) are failures of
# the environment at run time.
_OS_ERROR_EXIT_CODES: tuple[tuple[type[OSError], int], ...] = (
    (FileNotFoundError, NotFound.exit_code),
    (IsADirectoryError, BadInput.exit_code),
    (NotADirectoryError, BadInput.exit_code),
    (FileExistsError, BadInput.exit_code),
    (PermissionError, BadInput.exit_code),
)


def explain(error: Exception) -> tuple[str, int]:
    """One line for a user and the exit code, for any error a command lets escape."""
    if isinstance(error, BudgetTuiError):
        message, exit_code = str(error), error.exit_code
    elif isinstance(error, UnicodeDecodeError):
        message, exit_code = f"a file is not UTF-8 text ({error.reason} at byte {error.start})", BadInput.exit_code
    elif isinstance(error, OSError):
        paths = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
        reason = error.strerror or str(error) or type(error).__name__
        message = f"{reason}: {paths}" if paths else reason
        exit_code = next((code for kind, code in _OS_ERROR_EXIT_CODES if isinstance(error, kind)), 1)
    else:
        message, exit_code = f"unexpected {type(error).__name__}: {error}", BudgetTuiError.exit_code
    return one_line(message) or type(error).__name__, exit_code


def one_line(message: str) -> str:
    """A message of several lines (a TOML error, a usage error) joined into one."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())
