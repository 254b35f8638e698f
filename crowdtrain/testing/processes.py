"""Process-tree inspection for tests: which processes descend from a pid (Linux /proc)."""
from __future__ import annotations

import os
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
