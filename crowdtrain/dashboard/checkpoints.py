"""Checkpoint files of a run directory (``RUN_DIR/checkpoints/``), as the dashboard lists them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CHECKPOINTS_DIR = "checkpoints"
EPOCH_RE = re.compile(r"(?:epoch|ep|step)[-_]?(\d+)", re.IGNORECASE)
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".lock")


@dataclass(frozen=True)
class Checkpoint:
    name: str
    epoch: Optional[int]
    "Parsed from the file name (``...epoch12...``); None if it names none."
    time: float
    size: int

    def to_dict(self) -> dict:
        return {"name": self.name, "epoch": self.epoch, "time": self.time, "size": self.size,
                "url": f"/checkpoints/{self.name}"}


def _epoch_of(name: str) -> Optional[int]:
    match = EPOCH_RE.search(name)
    if match:
        return int(match.group(1))
    digits = re.findall(r"\d+", name)
    return int(digits[-1]) if digits else None


def list_checkpoints(run_dir: Optional[Path]) -> list[Checkpoint]:
    """Complete checkpoint files, newest first; none if there is no run directory or no checkpoints yet."""
    folder = checkpoint_dir(run_dir)
    if folder is None or not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if not path.is_file() or path.name.startswith(".") or path.name.endswith(PARTIAL_SUFFIXES):
            continue
        stat = path.stat()
        found.append(Checkpoint(name=path.name, epoch=_epoch_of(path.name), time=stat.st_mtime, size=stat.st_size))
    return sorted(found, key=lambda c: (c.time, c.name), reverse=True)


def checkpoint_dir(run_dir: Optional[Path]) -> Optional[Path]:
    return None if run_dir is None else Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_file(run_dir: Optional[Path], name: str) -> Optional[Path]:
    """The listed checkpoint called ``name``; None for anything else (no path outside the folder)."""
    if not any(c.name == name for c in list_checkpoints(run_dir)):
        return None
    return checkpoint_dir(run_dir) / name
