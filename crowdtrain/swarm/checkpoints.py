"""Checkpoints of a run's training state on disk: atomic, checksummed, the last K kept.

Layout of ``RUN_DIR/checkpoints/``: ``epoch-000012.pt`` (``torch.save`` of a :class:`Checkpoint`'s
content) and its sidecar ``epoch-000012.json`` (epoch, size, sha256 of the ``.pt`` file). Both are
written to a temporary file, fsynced and renamed, the data file first: a sidecar only ever describes a
complete data file. Loading walks from the newest epoch down and skips, with one warning line each,
checkpoints whose sidecar is missing or malformed, whose bytes do not match the checksum, or that
torch cannot read.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)
NAME_RE = re.compile(r"^epoch-(\d{6,})\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    """The training state of a run at one global epoch."""

    run_id: str
    epoch: int
    model: dict[str, torch.Tensor]
    "The model's state dict."
    optimizer: dict[str, Any]
    "The wrapped torch optimizer's state dict."


class CorruptCheckpoint(ValueError):
    """A checkpoint file that does not match its sidecar or cannot be read."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either the old content or all of ``data``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class CheckpointStore:
    """The checkpoints of one run in one directory."""

    def __init__(self, directory: Path, keep: int):
        if keep < 1:
            raise ValueError(f"keep: must be at least 1, got {keep}")
        self.directory, self.keep = Path(directory), keep

    def data_path(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch:06d}.pt"

    def epochs(self) -> list[int]:
        """Epochs with a data file on disk, newest first (valid or not)."""
        if not self.directory.is_dir():
            return []
        found = (NAME_RE.match(p.name) for p in self.directory.iterdir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write the checkpoint and its sidecar atomically, then drop all but the newest ``keep``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({"run_id": checkpoint.run_id, "epoch": checkpoint.epoch, "model": checkpoint.model,
                    "optimizer": checkpoint.optimizer}, buffer)
        data = buffer.getvalue()
        path = self.data_path(checkpoint.epoch)
        atomic_write(path, data)
        sidecar = {"run_id": checkpoint.run_id, "epoch": checkpoint.epoch, "size": len(data),
                   "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())
        self._prune()
        return path

    def load(self, epoch: int, run_id: str) -> Checkpoint:
        """The checkpoint of ``epoch``; raises :class:`CorruptCheckpoint` with a one-line reason."""
        path = self.data_path(epoch)
        try:
            sidecar = json.loads(path.with_suffix(".json").read_text())
            expected = sidecar["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            reason = f"missing or malformed checksum sidecar ({type(e).__name__})"
            raise CorruptCheckpoint(f"{path.name}: {reason}") from None
        if sha256_file(path) != expected:
            raise CorruptCheckpoint(f"{path.name}: sha256 does not match its sidecar (corrupt or truncated)")
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CorruptCheckpoint(f"{path.name}: unreadable ({type(e).__name__})") from None
        if content.get("run_id") != run_id or content.get("epoch") != epoch:
            raise CorruptCheckpoint(f"{path.name}: belongs to run {content.get('run_id')} epoch {content.get('epoch')}")
        return Checkpoint(run_id=run_id, epoch=epoch, model=content["model"], optimizer=content["optimizer"])

    def newest_valid(self, run_id: str) -> Optional[Checkpoint]:
        """The newest checkpoint that passes every check; each one skipped is logged in one line."""
        for epoch in self.epochs():
            try:
                return self.load(epoch, run_id)
            except CorruptCheckpoint as e:
                logger.warning(f"skipping checkpoint {e}")
        return None

    def _prune(self) -> None:
        for epoch in self.epochs()[self.keep:]:
            path = self.data_path(epoch)
            path.with_suffix(".json").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
