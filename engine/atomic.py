"""Atomic file writes: a reader sees the old file or the new one, never half of either.

One helper for every writer (history, checkpoints, summaries, usage counts, caches):
a temporary file with a unique name beside the target, written, fsynced, given the
target's permissions, and renamed over it. Must not import torch.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

TEMPORARY_SUFFIX = ".tmp"  # a crash can leave one of these; run clean-up removes them


def write_atomic(path: Path, content: bytes | str | Callable[[BinaryIO], None], *, sync: bool = True) -> None:
    """Replace `path` with `content` (bytes, UTF-8 text, or a function that writes to a binary handle).

    The temporary file is created with mode 0666 so the kernel applies the umask, as it
    does for any new file (mkstemp's 0600 would make a shared history private after one
    write); an existing target keeps its own mode. sync=False skips the fsync for files
    that are cheap to lose (a progress note), not for results.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        try:
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            pass  # a new file: the umask already decided
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
