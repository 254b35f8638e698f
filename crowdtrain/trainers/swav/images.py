"""Image data for SwAV: scikit-learn's bundled digits (offline) and image folders (ImageNet layout).

Dataset specs::

    {"kind": "digits"}                                   # 1797 real 8x8 scans, shipped with scikit-learn
    {"kind": "digits", "training": "hard"}               # train on hard renderings too
    {"kind": "image-folder", "path": "train/", "max_images": 100000}

**Digits.** One image in five (a fixed random fifth) is held out. Every image is *rendered* on a canvas of
``image_size`` pixels: the digit scaled (0.7-1.4 x half the canvas), rotated (up to 30 degrees),
shifted anywhere it fits, over a cluttered background (fragments of other digits, noise). Training
streams fresh renderings of the training digits; evaluation renders the held-out digits (queries)
and the training digits (the labelled k-NN bank) once, with fixed seeds. Raw pixels fail on this
set (k-NN on pixels stays far below the clean digits' ~98%), so k-NN accuracy measures features
that are invariant to position, scale, rotation and clutter.

``"training"`` picks what the training stream renders; evaluation is always the hard rendering
above, on held-out digits. ``"clean"`` (the default): the training digits moderately scaled (0.45-0.75
of the canvas side), rotated (up to 15 degrees) and shifted near the centre on an empty canvas with
mild noise (:func:`render_clean`), the invariances to position, scale and rotation being left to the
view augmentations. ``"hard"``: the hard renderings, as evaluated. Views of one hard canvas share its
clutter, noise and placement, a shortcut SwAV learns instead of the digit (k-NN fell below random
init); trained on clean canvases swav-tiny beats its random-init control on the hard set by > 10
points (benchmarks/README.md, SwAV, 2026-11-25).

**Image folders.** ``path/<class>/<image>`` as ImageNet is laid out; one image in twenty (by a hash
of its relative path) is held out. Images are read lazily with Pillow, resized on the shorter side
and centre-cropped to ``image_size``; the k-NN bank is the first ``KNN_BANK_IMAGES`` training images.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F

DIGITS = "digits"
IMAGE_FOLDER = "image-folder"
_SPEC_KEYS = {DIGITS: {"kind", "training"}, IMAGE_FOLDER: {"kind", "path", "max_images"}}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HELDOUT_EVERY = 5
SPLIT_SEED, BANK_SEED, QUERY_SEED = 10, 11, 12
KNN_BANK_IMAGES, KNN_QUERY_IMAGES = 5000, 1000
CLUTTER_FRAGMENTS = 2
NOISE_STD = 0.08
TRAINING_RENDERINGS = ("clean", "hard")
CLEAN_NOISE_STD = 0.03


@dataclass(frozen=True)
class KnnSets:
    """Labelled reference images (the bank) and labelled queries, as (n, channels, size, size)."""

    bank: torch.Tensor
    bank_labels: torch.Tensor
    queries: torch.Tensor
    query_labels: torch.Tensor


def validate_spec(spec: Mapping[str, Any]) -> None:
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in _SPEC_KEYS:
        raise ValueError(f"unknown image dataset kind {kind!r}; expected one of: {', '.join(sorted(_SPEC_KEYS))}")
    unknown = set(spec) - _SPEC_KEYS[kind]
    if unknown:
        raise ValueError(f"dataset spec of kind {kind!r} has unknown keys: {', '.join(sorted(unknown))}")
    if kind == DIGITS and spec.get("training", "clean") not in TRAINING_RENDERINGS:
        raise ValueError(f"digits dataset: 'training' must be one of {', '.join(TRAINING_RENDERINGS)}, "
                         f"got {spec.get('training')!r}")
    if kind == IMAGE_FOLDER and not (isinstance(spec.get("path"), str) and os.path.isdir(spec["path"])):
        raise ValueError(f"image-folder dataset: 'path' must be an existing directory, got {spec.get('path')!r}")


def open_images(spec: Mapping[str, Any], image_size: int) -> "DigitImages | FolderImages":
    """The image source of a dataset spec; ValueError for a malformed spec or a missing folder."""
    validate_spec(spec)
    if spec["kind"] == DIGITS:
        return DigitImages(image_size, spec.get("training", "clean"))
    return FolderImages.from_spec(spec, image_size)


class DigitImages:
    """scikit-learn's digits rendered hard (see the module docstring)."""

    channels = 1

    def __init__(self, image_size: int, training: str = "clean"):
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ValueError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        heldout = torch.zeros(len(images), dtype=torch.bool)  # the scans come in class order: split at random
        heldout[torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))[
            : len(images) // HELDOUT_EVERY]] = True
        self.train, self.train_labels = images[~heldout], labels[~heldout]
        self.heldout, self.heldout_labels = images[heldout], labels[heldout]
        self.image_size = image_size
        self.training = training

    def stream(self, rng: random.Random, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Endless fresh renderings of the training digits, in an ``rng``-shuffled order per pass."""
        order = list(range(len(self.train)))
        while True:
            rng.shuffle(order)
            for start in range(0, len(order), 64):
                chunk = torch.tensor(order[start:start + 64])
                if self.training == "clean":
                    yield from render_clean(self.train[chunk], self.image_size, generator)
                else:
                    yield from render(self.train[chunk], self.train, self.image_size, generator)

    def knn_sets(self) -> KnnSets:
        bank = render(self.train, self.train, self.image_size, torch.Generator().manual_seed(BANK_SEED))
        queries = render(self.heldout, self.train, self.image_size, torch.Generator().manual_seed(QUERY_SEED))
        return KnnSets(bank, self.train_labels, queries, self.heldout_labels)


def render(digits: torch.Tensor, clutter_from: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) canvases: each digit of ``digits`` (n, 8, 8) scaled, rotated and shifted
    over fragments of random digits of ``clutter_from`` and noise, all drawn from ``generator``."""
    count = digits.shape[0]
    scale = 0.5 * (0.7 + 0.7 * torch.rand(count, generator=generator))  # digit side / canvas side
    angle = math.radians(30) * (2 * torch.rand(count, generator=generator) - 1)
    room = (1 - scale).clamp(min=0)  # the digit's centre may move this far from the canvas centre
    shift = room.unsqueeze(1) * (2 * torch.rand(count, 2, generator=generator) - 1)
    canvas = _place(digits.unsqueeze(1), scale, angle, shift, size)
    for _ in range(CLUTTER_FRAGMENTS):
        sources = clutter_from[torch.randint(len(clutter_from), (count,), generator=generator)]
        fragment = _fragment(sources, generator)
        scale_f = 0.25 + 0.25 * torch.rand(count, generator=generator)
        angle_f = math.pi * (2 * torch.rand(count, generator=generator) - 1)
        shift_f = 2 * torch.rand(count, 2, generator=generator) - 1
        strength = (0.3 + 0.5 * torch.rand(count, generator=generator)).view(count, 1, 1, 1)
        canvas = torch.maximum(canvas, strength * _place(fragment.unsqueeze(1), scale_f, angle_f, shift_f, size))
    noise = NOISE_STD * torch.randn(canvas.shape, generator=generator)
    return (canvas + noise).clamp(0, 1)


def render_clean(digits: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) canvases for training: each digit of ``digits`` (n, 8, 8) moderately scaled
    (0.45-0.75 of the canvas side), rotated (up to 15 degrees) and shifted near the centre, on an
    empty background with mild noise."""
    count = digits.shape[0]
    scale = 0.45 + 0.3 * torch.rand(count, generator=generator)
    angle = math.radians(15) * (2 * torch.rand(count, generator=generator) - 1)
    room = (1 - scale).clamp(min=0)
    shift = 0.5 * room.unsqueeze(1) * (2 * torch.rand(count, 2, generator=generator) - 1)
    canvas = _place(digits.unsqueeze(1), scale, angle, shift, size)
    return (canvas + CLEAN_NOISE_STD * torch.randn(canvas.shape, generator=generator)).clamp(0, 1)


def _fragment(digits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random 4x4 to 6x6 corner-anchored piece of each digit, zero elsewhere."""
    count = digits.shape[0]
    rows = torch.arange(8).view(1, 8, 1)
    cols = torch.arange(8).view(1, 1, 8)
    top = torch.randint(0, 4, (count, 1, 1), generator=generator)
    left = torch.randint(0, 4, (count, 1, 1), generator=generator)
    keep = (rows >= top) & (rows < top + 4 + top % 3) & (cols >= left) & (cols < left + 4 + left % 3)
    return digits * keep


def _place(images: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor,
           size: int) -> torch.Tensor:
    """Draws (n, 1, h, w) images on (n, 1, size, size) canvases: each covers ``scale`` of the canvas
    side, rotated by ``angle``, centred at ``shift`` (canvas coordinates in [-1, 1])."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(images.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, :, 2] = -(theta[:, :, :2] @ shift.unsqueeze(2)).squeeze(2)
    grid = F.affine_grid(theta, [images.shape[0], 1, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class FolderImages:
    """An ImageNet-style folder: one sub-directory of images per class."""

    channels = 3

    def __init__(self, files: list[Path], labels: list[int], heldout: list[bool], image_size: int):
        self.files, self.labels, self.is_heldout, self.image_size = files, labels, heldout, image_size

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], image_size: int) -> "FolderImages":
        root = spec["path"]  # checked by validate_spec
        max_images = spec.get("max_images", 1_000_000)
        if not isinstance(max_images, int) or isinstance(max_images, bool) or max_images <= 0:
            raise ValueError(f"image-folder dataset: max_images must be a positive integer, got {max_images!r}")
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        files, labels = [], []
        for label, name in enumerate(classes):
            for directory, subdirs, names in os.walk(os.path.join(root, name)):
                subdirs.sort()
                for file in sorted(names):
                    if file.lower().endswith(IMAGE_SUFFIXES) and len(files) < max_images:
                        files.append(Path(directory, file))
                        labels.append(label)
        if len(classes) < 2 or not files:
            raise ValueError(f"image-folder dataset: {root} needs at least two class sub-directories of images")
        heldout = [_hashed(str(f.relative_to(root))) % 20 == 0 for f in files]
        return cls(files, labels, heldout, image_size)

    def stream(self, rng: random.Random, generator: torch.Generator) -> Iterator[torch.Tensor]:
        order = [i for i, held in enumerate(self.is_heldout) if not held]
        while True:
            rng.shuffle(order)
            for index in order:
                yield self.load(index)

    def knn_sets(self) -> KnnSets:
        train = [i for i, held in enumerate(self.is_heldout) if not held][:KNN_BANK_IMAGES]
        queries = [i for i, held in enumerate(self.is_heldout) if held][:KNN_QUERY_IMAGES]
        if not queries:
            raise ValueError("image-folder dataset: no held-out image to evaluate on (one in twenty is held out)")
        return KnnSets(torch.stack([self.load(i) for i in train]), torch.tensor([self.labels[i] for i in train]),
                       torch.stack([self.load(i) for i in queries]), torch.tensor([self.labels[i] for i in queries]))

    def load(self, index: int) -> torch.Tensor:
        """(3, image_size, image_size) in [0, 1]: resized on the shorter side, centre-cropped."""
        from PIL import Image

        with Image.open(self.files[index]) as image:
            image = image.convert("RGB")
            ratio = self.image_size / min(image.size)
            image = image.resize((max(self.image_size, round(image.width * ratio)),
                                  max(self.image_size, round(image.height * ratio))), Image.BILINEAR)
            left, top = (image.width - self.image_size) // 2, (image.height - self.image_size) // 2
            image = image.crop((left, top, left + self.image_size, top + self.image_size))
            data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return data.view(self.image_size, self.image_size, 3).permute(2, 0, 1).float() / 255.0


def _hashed(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
