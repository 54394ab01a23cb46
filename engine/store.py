"""The history store: one TinyDB record per run, safe under several processes and crashes.

TinyDB alone is not multi-process safe (it writes in place and caches queries), so every
transaction reads the file once under an inter-process lock (filelock), works in memory,
and writes back atomically (temp file, fsync, os.replace) with the previous good version
kept as a backup. Readers never lock: the atomic replace means they see a whole file.
Per-epoch curves live in runs/<id>/metrics.jsonl, not here. Must not import torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock
from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document, Table

from engine.errors import BudgetTuiError, NotFound

SCHEMA_VERSION = 1
RUNS_TABLE = "runs"
META_TABLE = "_meta"
RUNS_OPENING, RUNS_CLOSING = f'"{RUNS_TABLE}":{{', "}}"  # the lines around the runs, one per line
LOCK_TIMEOUT_S = 60.0


class StoreCorrupted(BudgetTuiError):
    """The history file does not parse; the message names it and its backup."""


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
    def _read_file(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text) if text.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except ValueError as error:
            backup = (
                f"the last good version is {self.backup_path}"
                if self.backup_path.exists()
                else "no backup exists"
            )
            raise StoreCorrupted(
                f"history file {self.path} is corrupted ({error}); {backup}. "
                f"Move the file aside (or copy the backup over it) to continue."
            ) from error
        return _migrate(data)

    def _write_file(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(serialise(data))
                file.flush()
                os.fsync(file.fileno())
            if self.path.exists():
                # Keep the last good version: a hard link costs nothing and is never partial.
                if self.backup_path.exists():
                    self.backup_path.unlink()
                os.link(self.path, self.backup_path)
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    # --- transactions
    @contextmanager
    def transaction(self) -> Iterator[Table]:
        """Read-modify-write of the runs table under the lock; written once, if changed."""
        with self.lock:
            storage = _MemoryStorage(self._read_file())
            database = TinyDB(storage=lambda: storage)
            table = database.table(RUNS_TABLE, cache_size=0)
            yield table
            if storage.dirty:
                data = storage.data
                data.setdefault(META_TABLE, {"1": {"schema": SCHEMA_VERSION}})
                self._write_file(data)

    def _snapshot(self) -> Table:
        """A lock-free, read-only view of the runs table as of now."""
        storage = _MemoryStorage(self._read_file())
        return TinyDB(storage=lambda: storage).table(RUNS_TABLE, cache_size=0)

    # --- operations
    def add_runs(self, records: list[dict[str, Any]]) -> list[int]:
        """Insert many runs in one write; returns their ids (also stored as record['id'])."""
        with self.transaction() as table:
            # Number the records first so each carries its id: one table rewrite, not one per run.
            first = max((document.doc_id for document in table.all()), default=0) + 1
            ids = list(range(first, first + len(records)))
            table.insert_multiple(Document({**record, "id": run_id}, doc_id=run_id)
                                  for run_id, record in zip(ids, records))
        return ids

    def update_run(self, run_id: int, **fields: Any) -> dict[str, Any]:
        with self.transaction() as table:
            if not table.contains(doc_id=run_id):
                raise NotFound(f"no run with id {run_id} in {self.path}")
            table.update(fields, doc_ids=[run_id])
            return _plain(table.get(doc_id=run_id))

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
        try:
            text = self.store.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
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
                table = _migrate(json.loads(text)).get(RUNS_TABLE, {})
                if len(table) != len(bodies):
                    return None
                self._parsed_lines = {body: {**record, "id": int(run_id)}
                                      for body, (run_id, record) in zip(bodies, table.items())}
                return list(self._parsed_lines.values())
            _migrate(json.loads(lines[0].rstrip(",") + "}"))  # the header line: {"_meta":{...},
            parsed: dict[str, dict[str, Any]] = {}
            for body in bodies:
                record = self._parsed_lines.get(body)
                if record is None:
                    run_id, _, document = body.partition(":")
                    record = {**json.loads(document), "id": int(json.loads(run_id))}
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


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older file up to SCHEMA_VERSION in memory (files without _meta are version 1)."""
    meta = data.get(META_TABLE, {}).get("1", {"schema": 1})
    if meta.get("schema", 1) > SCHEMA_VERSION:
        raise BudgetTuiError(
            f"the history file was written by a newer budget-tui (schema {meta['schema']}); upgrade"
        )
    return data
