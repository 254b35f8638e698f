"""The final model of a run, exported once in the recipe's native format and listed with checksums.

``RUN_DIR/final/`` holds what :meth:`Recipe.export` wrote plus ``MANIFEST.json`` (run id, epoch, and
the sha256 and size of every file). The export is built in a temporary sibling directory and renamed
into place, so ``final/`` is either absent or complete.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from crowdtrain.swarm.checkpoints import atomic_write, sha256_file
from crowdtrain.trainers.base import Recipe

logger = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class ExportedFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ExportManifest:
    run_id: str
    epoch: int
    recipe: str
    files: list[ExportedFile]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def read(cls, directory: Path) -> "ExportManifest":
        data = json.loads((Path(directory) / MANIFEST).read_text())
        return cls(run_id=data["run_id"], epoch=data["epoch"], recipe=data["recipe"],
                   files=[ExportedFile(**f) for f in data["files"]])


def export_final(recipe: Recipe, model: torch.nn.Module, directory: Path, *, run_id: str, epoch: int) -> ExportManifest:
    """Export ``model`` into ``directory`` (replacing an older export) and log one line per file."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    recipe.export(model, staging)
    files = [ExportedFile(name=p.name, size=p.stat().st_size, sha256=sha256_file(p))
             for p in sorted(staging.iterdir()) if p.is_file()]
    manifest = ExportManifest(run_id=run_id, epoch=epoch, recipe=recipe.name, files=files)
    atomic_write(staging / MANIFEST, manifest.to_json())
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    for f in files:
        logger.info(f"final model (epoch {epoch}): {directory / f.name} sha256 {f.sha256}")
    return manifest


def verify_export(directory: Path) -> ExportManifest:
    """The manifest of an export whose files all match their checksums; raises ValueError otherwise."""
    manifest = ExportManifest.read(directory)
    for f in manifest.files:
        if sha256_file(Path(directory) / f.name) != f.sha256:
            raise ValueError(f"{f.name} in {directory} does not match its sha256 in {MANIFEST}")
    return manifest
