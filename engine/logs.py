"""A run's log, <run dir>/log.txt (what its process printed: a start line, then its events
as JSON lines): read whole, or followed while the run runs. Must not import torch.
"""

from __future__ import annotations

import codecs
import os
import time
from pathlib import Path
from typing import Any, Iterator

from engine.errors import NotFound
from engine.paths import LOG_NAME, run_dir
from engine.queue import FINISHED, is_stale
from engine.store import Store, storage_error

FOLLOW_POLL_S = 0.5  # how often a followed log and its run's state are read again


def log_path(home: Path, record: dict[str, Any]) -> Path:
    return Path(record.get("run_dir") or run_dir(home, record["id"])) / LOG_NAME


def no_log(record: dict[str, Any], path: Path) -> NotFound:
    return NotFound(f"run {record['id']} has no log yet ({record.get('state')}): {path}")


def read_log(home: Path, record: dict[str, Any]) -> str:
    """The whole log of a run; NotFound if its process never started."""
    path = log_path(home, record)
    chunk, _ = _read_from(path, 0)
    if chunk is None:
        raise no_log(record, path)
    return chunk.decode("utf-8", errors="replace")


def follow_log(store: Store, home: Path, run_id: int, poll_s: float = FOLLOW_POLL_S) -> Iterator[str]:
    """The log's text from its start, then as it grows, until the run has ended (a final
    state, or running in a process that is gone) and all it wrote was read. A run still
    queued is waited for; one that ended without a log is NotFound."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character cut by a read
    offset, seen = 0, False
    while True:
        record = store.get_run(run_id)
        ended = record.get("state") in FINISHED or is_stale(record)  # read before the log: nothing after it is lost
        path = log_path(home, record)
        chunk, offset = _read_from(path, offset)
        seen = seen or chunk is not None
        text = decoder.decode(chunk or b"", final=ended)
        if text:
            yield text
        if ended:
            if not seen:
                raise no_log(record, path)
            return
        time.sleep(poll_s)


def _read_from(path: Path, offset: int) -> tuple[bytes | None, int]:
    """The bytes after `offset` and the new offset; None if there is no file. A file shorter
    than `offset` was started again (a fresh retry): it is read from its start."""
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size < offset:
                offset = 0
            file.seek(offset)
            chunk = file.read()
    except FileNotFoundError:
        return None, 0
    except OSError as error:
        raise storage_error(error, "read the run log", path) from None
    return chunk, offset + len(chunk)
