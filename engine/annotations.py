"""The user's own words on runs: tags (short labels to filter by) and a free-text note.

Both live in the run record ("tags": a sorted list, "note": text or absent), written in one
store transaction, so a worker finishing the run at the same moment keeps them. Must not
import torch.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from engine.errors import BadInput, NotFound
from engine.store import Store

# Letters, digits and a few joiners: no spaces, commas or `=`, so `--where tag=a,b` and the
# TUI's space-separated filter read a tag back unambiguously.
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+/-]{0,63}")
NOTE_MAX_CHARS = 10_000


def check_tag(tag: str) -> str:
    """The tag as stored, or BadInput saying what a tag may hold."""
    if not TAG_PATTERN.fullmatch(tag):
        raise BadInput(f"tag {tag!r} is not valid: up to 64 letters, digits or _ . : + / -, "
                       f"starting with a letter, digit or _")
    return tag


def change_tags(store: Store, run_id: int, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> list[str]:
    """Add and remove tags of a run (removing one it lacks is no error); returns its tags."""
    added, removed = [check_tag(tag) for tag in add], [check_tag(tag) for tag in remove]
    with store.transaction() as table:
        record = table.get(doc_id=run_id)
        if record is None:
            raise NotFound(f"no run with id {run_id} in {store.path}")
        tags = sorted((set(record.get("tags", [])) | set(added)) - set(removed))
        if tags != record.get("tags", []):
            table.update({"tags": tags}, doc_ids=[run_id])
    return tags


def set_note(store: Store, run_id: int, note: str) -> str | None:
    """Set a run's note; an empty (or blank) one removes it. Returns the note kept."""
    text = note.strip()
    if len(text) > NOTE_MAX_CHARS:
        raise BadInput(f"a note holds at most {NOTE_MAX_CHARS:,} characters, got {len(text):,}")
    store.update_run(run_id, note=text or None)
    return text or None


def annotations(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its tags and note always present, for machine output."""
    return {**record, "tags": record.get("tags", []), "note": record.get("note")}
