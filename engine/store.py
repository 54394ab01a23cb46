"""The history store: one TinyDB record per run, safe under several processes and crashes.

TinyDB alone is not multi-process safe (it writes in place and caches queries), so every
transaction reads the file once under an inter-process lock (filelock), works in memory,
and writes back atomically (temp file, fsync, os.replace) with the previous good version
kept as a backup. Readers never lock: the atomic replace means they see a whole file.
Per-epoch curves live in runs/<id>/metrics.jsonl, not here. Must not import torch.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock, Timeout
from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document, Table

from engine.atomic import write_atomic
from engine.errors import BadInput, BudgetTuiError, NotFound, PathUnusable, StorageFailed
from engine.records import check_history, check_record

SCHEMA_VERSION = 1
RUNS_TABLE = "runs"
META_TABLE = "_meta"
RUNS_OPENING, RUNS_CLOSING = f'"{RUNS_TABLE}":{{', "}}"  # the lines around the runs, one per line
LOCK_TIMEOUT_S = 60.0


class StoreCorrupted(BadInput):
    """The history file does not parse or is not the shape of a history; the message names
    it and its backup. A bad file is bad input (exit 2): the user's file, not a crash."""


def storage_error(error: OSError, doing: str, path: Path) -> BudgetTuiError:
    """An OS error as one line naming the path: a path the user cannot use (not a directory,
    no permission, read-only) is bad input; anything else (full disk, I/O) a runtime failure."""
    unusable = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT)
    kind = PathUnusable if error.errno in unusable else StorageFailed
    where = Path(error.filename) if error.filename else path
    if error.errno in (errno.ENOTDIR, errno.EEXIST):  # a file where a folder should be
        blocker = next((parent for parent in path.parents if parent.is_file()), where)
        return kind(f"cannot {doing} {path}: {blocker} is not a directory")
    detail = f" ({where})" if where != path else ""
    return kind(f"cannot {doing} {path}: {error.strerror or error}{detail}")


class _MemoryStorage(Storage):
    """Hands TinyDB the dict read once per transaction; records whether it was changed."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.dirty = False

    def read(self) -> dict[str, Any]:
        return self.data

    def write(self, data: dict[str, Any]) -> None:
        self.data = data
        self.dirty = True


class Store:
    """Runs in the history file at `path` (created on the first write)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.backup_path = self.path.with_name(self.path.name + ".bak")
        self.lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)

    # --- raw file access
    def read_text(self) -> str | None:
        """The file's text, None if there is none yet; OS errors become one-line domain errors."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise storage_error(error, "read the history file", self.path) from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.corrupted(f"not UTF-8 text at byte {error.start}") from None

    def parse(self, text: str | None) -> dict[str, Any]:
        """The validated contents of the file's `text`; StoreCorrupted if it is not a history.
        An empty file is damage (a crash, a full disk), never an empty history."""
        if text is None:
            return {}
        try:
            data = json.loads(text)
            check_history(data)
        except ValueError as error:
            reason = "the file is empty" if not text.strip() else str(error)
            raise self.corrupted(reason) from None
        return _migrate(data)

    def corrupted(self, reason: str) -> StoreCorrupted:
        backup = (f"the last good version is {self.backup_path}" if self.backup_path.exists()
                  else f"no backup exists ({self.backup_path})")
        return StoreCorrupted(
            f"history file {self.path} is corrupted ({reason}); {backup}. "
            f"Move the file aside (or copy the backup over it) to continue."
        )

    def _read_file(self) -> dict[str, Any]:
        return self.parse(self.read_text())

    def _write_file(self, data: dict[str, Any]) -> None:
        """Write atomically; the file being replaced (which parsed: it was read in this
        transaction) becomes the backup, so the backup always parses too."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                # Keep the last good version: a hard link costs nothing and is never partial.
                if self.backup_path.exists():
                    self.backup_path.unlink()
                os.link(self.path, self.backup_path)
            write_atomic(self.path, serialise(data))
        except OSError as error:
            raise storage_error(error, "write the history file", self.path) from None

    # --- transactions
    @contextmanager
    def transaction(self) -> Iterator[Table]:
        """Read-modify-write of the runs table under the lock; written once, if changed."""
        with self._locked():
            storage = _MemoryStorage(self._read_file())
            database = TinyDB(storage=lambda: storage)
            table = database.table(RUNS_TABLE, cache_size=0)
            yield table
            if storage.dirty:
                data = storage.data
                data.setdefault(META_TABLE, {"1": {"schema": SCHEMA_VERSION}})
                self._write_file(data)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.lock.acquire()
        except OSError as error:
            raise storage_error(error, "lock the history file", self.path) from None
        except Timeout:
            raise StorageFailed(f"the history file {self.path} stayed locked for {LOCK_TIMEOUT_S:.0f} s "
                                f"(lock file {self.lock.lock_file})") from None
        try:
            yield
        finally:
            self.lock.release()

    def _snapshot(self) -> Table:
        """A lock-free, read-only view of the runs table as of now."""
        storage = _MemoryStorage(self._read_file())
        return TinyDB(storage=lambda: storage).table(RUNS_TABLE, cache_size=0)

    # --- operations
    def add_runs(self, records: list[dict[str, Any]]) -> list[int]:
        """Insert many runs in one write; returns their ids (also stored as record['id'])."""
        with self.transaction() as table:
            # Number the records first so each carries its id: one table rewrite, not one per run.
            # An id never names an existing run folder: after the history was moved aside, a
            # new run would otherwise resume the old run's checkpoint as its own.
            # Nor an id a removed run had (`remove_runs` keeps the highest in _meta).
            first = max(max((document.doc_id for document in table.all()), default=0),
                        self._highest_run_folder(), _last_id(table.storage.read())) + 1
            ids = list(range(first, first + len(records)))
            table.insert_multiple(Document({**record, "id": run_id}, doc_id=run_id)
                                  for run_id, record in zip(ids, records))
        return ids

    def _highest_run_folder(self) -> int:
        """The largest number naming a folder next to the history file (a run folder), or 0."""
        try:
            names = [entry.name for entry in os.scandir(self.path.parent) if entry.is_dir()]
        except FileNotFoundError:
            return 0
        except OSError as error:
            raise storage_error(error, "list the run folders of", self.path.parent) from None
        return max((int(name) for name in names if name.isascii() and name.isdigit()), default=0)

    def update_run(self, run_id: int, **fields: Any) -> dict[str, Any]:
        """Set fields of a run as they are. State changes go through engine.queue, which
        checks them against the transition table; this is for everything else."""
        with self.transaction() as table:
            if not table.contains(doc_id=run_id):
                raise NotFound(f"no run with id {run_id} in {self.path}")
            table.update(fields, doc_ids=[run_id])
            return _plain(table.get(doc_id=run_id))

    def remove_runs(self, run_ids: list[int],
                    check: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Remove runs from the history in one write and return their records. `check(record)`
        sees each first, under the lock, and raises to refuse the whole request (nothing is
        removed). Their ids are never given again: the highest id given so far stays in _meta."""
        with self._locked():
            data = self._read_file()
            runs = data.get(RUNS_TABLE, {})
            wanted = list(dict.fromkeys(run_ids))
            for run_id in wanted:
                if str(run_id) not in runs:
                    raise NotFound(f"no run with id {run_id} in {self.path}")
                if check is not None:
                    check({**runs[str(run_id)], "id": run_id})
            if not wanted:
                return []
            highest = max(_last_id(data), *(int(run_id) for run_id in runs))
            removed = [{**runs.pop(str(run_id)), "id": run_id} for run_id in wanted]
            meta = data.setdefault(META_TABLE, {}).setdefault("1", {"schema": SCHEMA_VERSION})
            meta["last_id"] = highest
            self._write_file(data)
        return removed

    def get_run(self, run_id: int) -> dict[str, Any]:
        record = self._snapshot().get(doc_id=run_id)
        if record is None:
            raise NotFound(f"no run with id {run_id} in {self.path}")
        return _plain(record)

    def list_runs(self) -> list[dict[str, Any]]:
        # Straight from the parsed file: wrapping 10,000 records in TinyDB documents first
        # doubled the time of every refresh. The records are the same plain dicts either way.
        table = self._read_file().get(RUNS_TABLE, {})
        return [{**record, "id": int(run_id)} for run_id, record in table.items()]

    def file_signature(self) -> tuple[int, int, int] | None:
        """Changes whenever the file is rewritten (every write is a new inode via os.replace)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class HistoryCache:
    """The run list for screens that refresh every second. Parsed again only when the
    history file was rewritten (an idle refresh of 10,000 runs costs one stat call), and
    then only the lines of runs that changed: the file holds one run per line."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._signature: tuple[int, int, int] | None = None
        self._runs: list[dict[str, Any]] = []
        self._read_once = False
        self._parsed_lines: dict[str, dict[str, Any]] = {}  # a run's line -> the run it says

    def runs(self) -> tuple[list[dict[str, Any]], bool]:
        """(the runs, whether they changed since the last call). Treat them as read-only."""
        signature = self.store.file_signature()
        if self._read_once and signature == self._signature:
            return self._runs, False  # a missing file stays empty until it is written
        # stat before the read: a write between the two makes the next call read again
        text = self.store.read_text() or ""
        runs = self._parse_changed_lines(text)
        if runs is None:  # another layout (an older file), or damage: the full parse decides
            self._parsed_lines = {}
            runs = self.store.list_runs()
        self._signature, self._runs, self._read_once = signature, runs, True
        return runs, True

    def _parse_changed_lines(self, text: str) -> list[dict[str, Any]] | None:
        lines = text.split("\n")
        try:
            if len(lines) < 4 or lines[1] != RUNS_OPENING or lines[-2:] != [RUNS_CLOSING, ""]:
                return None
            bodies = [line[:-1] if line.endswith(",") else line for line in lines[2:-2]]
            if not self._parsed_lines:  # nothing to reuse: one parse of the whole file is faster
                table = self.store.parse(text).get(RUNS_TABLE, {})
                if len(table) != len(bodies):
                    return None
                self._parsed_lines = {body: {**record, "id": int(run_id)}
                                      for body, (run_id, record) in zip(bodies, table.items())}
                return list(self._parsed_lines.values())
            header = json.loads(lines[0].rstrip(",") + "}")  # {"_meta":{...},
            check_history(header)
            _migrate(header)
            parsed: dict[str, dict[str, Any]] = {}
            for body in bodies:
                record = self._parsed_lines.get(body)
                if record is None:
                    run_id, _, document = body.partition(":")
                    run_id, record = json.loads(run_id), json.loads(document)
                    check_record(run_id, record)
                    record = {**record, "id": int(run_id)}
                parsed[body] = record
        except (ValueError, TypeError):
            return None
        self._parsed_lines = parsed
        return list(parsed.values())


def serialise(data: dict[str, Any]) -> str:
    """The history as JSON with the runs table last and one run per line, so a reader can
    re-parse only the runs that changed (HistoryCache). Any JSON parser reads it whole."""
    compact = {"separators": (",", ":")}
    tables = [f"{json.dumps(name)}:{json.dumps(table, **compact)}" for name, table in data.items()
              if name != RUNS_TABLE]
    runs = ",\n".join(f"{json.dumps(str(run_id))}:{json.dumps(record, **compact)}"
                      for run_id, record in data.get(RUNS_TABLE, {}).items())
    header = "{" + ",".join(tables) + (",\n" if tables else "\n")
    return f"{header}{RUNS_OPENING}\n{runs + chr(10) if runs else ''}{RUNS_CLOSING}\n"


def _plain(document: Document | None) -> dict[str, Any]:
    record = dict(document or {})
    if document is not None:
        record["id"] = document.doc_id
    return record


def _last_id(data: dict[str, Any]) -> int:
    """The highest run id given before runs were removed (0 if none ever was)."""
    return data.get(META_TABLE, {}).get("1", {}).get("last_id", 0)


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older file up to SCHEMA_VERSION in memory (files without _meta are version 1)."""
    meta = data.get(META_TABLE, {}).get("1", {"schema": 1})
    if meta.get("schema", 1) > SCHEMA_VERSION:
        raise BudgetTuiError(
            f"the history file was written by a newer budget-tui (schema {meta['schema']}); upgrade"
        )
    return data
