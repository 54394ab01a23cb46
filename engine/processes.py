"""Processes recorded in the history: who they are, whether they still run, how to stop them.

A recorded process is {pid, pgid, start_time, host}. A pid alone is not an identity (the
OS reuses pids), so liveness also compares the start time; and a process recorded on
another host (a home on a shared filesystem) is never signalled from here -- its pid
means nothing on this machine. Built on psutil, so no /proc parsing. Must not import torch.
"""

from __future__ import annotations

import os
import platform
import signal
import time
from typing import Any

import psutil

STOP_GRACE_S = 10.0


def this_host() -> str:
    return platform.node()


def process_identity(pid: int) -> dict[str, Any]:
    """What identifies a live process beyond its pid (which the OS reuses)."""
    return {"pid": pid, "pgid": os.getpgid(pid), "start_time": _start_time(pid), "host": this_host()}


def is_remote(process: dict[str, Any] | None) -> bool:
    """Recorded on another host. Records without a host (older files) were made here."""
    return bool(process) and process.get("host") not in (None, this_host())


def is_alive(process: dict[str, Any] | None) -> bool:
    """True if the recorded process still runs (same pid AND same start time). Another
    host's process cannot be checked from here, so it is trusted to be alive."""
    if not process:
        return False
    if is_remote(process):
        return True
    pid = process.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        candidate = psutil.Process(pid)
        recorded = process.get("start_time")
        if recorded is not None and not _same_start(recorded, candidate.create_time()):
            return False  # the pid was reused by another process
        return candidate.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; we may just not inspect it


def terminate_group(process: dict[str, Any], grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM the recorded process group, wait up to grace_s, then SIGKILL what is left.
    Returns False, signalling nothing, for another host's process."""
    if is_remote(process):
        return False
    if not is_alive(process):
        return True
    group = process["pgid"]
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(group):
            return True
        time.sleep(0.05)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def terminate(process: dict[str, Any]) -> bool:
    """SIGTERM one recorded process (a worker, which stops its runs itself); False for
    another host's process or one that is gone."""
    if is_remote(process) or not is_alive(process):
        return False
    try:
        os.kill(process["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def group_alive(group: int) -> bool:
    """A live (not zombie) process is still in the group: zombies keep killpg succeeding."""
    for candidate in psutil.process_iter(["status"]):
        try:
            if os.getpgid(candidate.pid) == group and candidate.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _same_start(recorded: Any, current: float) -> bool:
    # psutil derives the time from boot time + ticks: the same process may read a few
    # milliseconds apart in two calls, never a whole second.
    return isinstance(recorded, (int, float)) and abs(recorded - current) < 1.0
