"""Process-tree inspection for tests: which processes descend from a pid (Linux /proc)."""
from __future__ import annotations

import os
import signal
import time
from collections import defaultdict


def _parent_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children[int(fields[1])].append(int(entry))
    return children


def descendants(pid: int) -> set[int]:
    """All living descendants of ``pid`` (children, grandchildren, ...)."""
    children, found, stack = _parent_map(), set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait up to ``timeout`` for every pid to end; returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = {pid for pid in pids if is_alive(pid)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {pid for pid in alive if is_alive(pid)}
    return alive


def reap(pids: set[int], grace: float = 5.0) -> int:
    """Kill (by pid, SIGKILL) whichever of ``pids`` outlived ``grace`` seconds; returns how many had to be."""
    leftovers = wait_gone(pids, grace)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(leftovers)
