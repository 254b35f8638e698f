"""Text corpora for the recipes, available offline.

The built-in corpus is the English prose shipped with every Python installation: the docstrings of the
standard library. They are extracted by *parsing* the source files with :mod:`ast` (never importing
them: some standard modules have side effects on import). Users with their own text can point a
``text-files`` dataset spec at local ``.txt`` files instead.

Dataset specs (JSON-serialisable mappings)::

    {"kind": "stdlib-docstrings", "max_bytes": 1000000}
    {"kind": "text-files", "paths": ["notes.txt", "books/"], "max_bytes": 1000000}
    {"kind": "jsonl", "paths": ["part-0.jsonl", "parts/"], "text_field": "text", "max_bytes": 1000000}
    {"kind": "hf-dataset", "path": "saved/", "split": "train", "text_field": "text", "max_bytes": 1000000}
    {"kind": "http-shards", "urls": ["https://host/shard-000.txt", ...], "max_bytes": 1000000}

``hf-dataset`` reads a directory written by ``datasets``' ``save_to_disk`` (optional dependency:
``pip install datasets``). ``http-shards`` streams text shards: see :mod:`crowdtrain.trainers.shards`.

Every text goes to the training or the held-out split by a hash of its content, so the split is the
same on every machine that sees the same texts, and a text never lands in both splits.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import logging
import json
import os
import random
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

logger = logging.getLogger(__name__)

STDLIB_DOCSTRINGS = "stdlib-docstrings"
TEXT_FILES = "text-files"
JSONL = "jsonl"
HF_DATASET = "hf-dataset"
HTTP_SHARDS = "http-shards"
DEFAULT_MAX_BYTES = 1_000_000
"""Default text budget. The whole standard library yields ~1.5 MB of docstrings in ~2.5 s of parsing;
1 MB keeps start-up near 1.5 s and is more text than a short collaborative run consumes."""
MIN_WORDS = 8
HELDOUT_MODULUS = 20  # sha1(text) % 20 == 0 -> held-out: about 5% of the texts

_SKIPPED_STDLIB_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__"}
)
_DOCUMENTED_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_SPEC_KEYS = {
    STDLIB_DOCSTRINGS: {"kind", "max_bytes"},
    TEXT_FILES: {"kind", "paths", "max_bytes"},
    JSONL: {"kind", "paths", "text_field", "max_bytes"},
    HF_DATASET: {"kind", "path", "split", "text_field", "max_bytes"},
    HTTP_SHARDS: {"kind", "urls", "max_bytes"},
}


@dataclass(frozen=True)
class Corpus:
    """Cleaned texts (one paragraph or docstring each), split into training and held-out texts."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]

    def stream(self, rng: random.Random) -> Iterator[str]:
        """Endless training texts, in a fresh ``rng``-shuffled order every pass (this peer's shard)."""
        order = list(range(len(self.train)))
        while True:
            rng.shuffle(order)
            for index in order:
                yield self.train[index]


def stdlib_docstrings_spec(max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """The dataset spec of the built-in corpus."""
    return {"kind": STDLIB_DOCSTRINGS, "max_bytes": max_bytes}


def load_corpus(spec: Mapping[str, Any]) -> Corpus:
    """Loads the corpus described by a dataset ``spec``; raises ValueError for a malformed spec.

    The standard-library corpus is extracted once per process and cached; files are re-read on
    every call, so that edits to them are seen. ``http-shards`` gives a
    :class:`~crowdtrain.trainers.shards.ShardedCorpus`, which has the same interface but reads lazily.
    """
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in _SPEC_KEYS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of: {', '.join(sorted(_SPEC_KEYS))}")
    unknown = set(spec) - _SPEC_KEYS[kind]
    if unknown:
        raise ValueError(f"dataset spec of kind {kind!r} has unknown keys: {', '.join(sorted(unknown))}")
    max_bytes = spec.get("max_bytes", DEFAULT_MAX_BYTES)
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
        raise ValueError(f"dataset max_bytes must be a positive integer, got {max_bytes!r}")
    if kind == STDLIB_DOCSTRINGS:
        return _stdlib_corpus(max_bytes)
    if kind == TEXT_FILES:
        return _files_corpus(_paragraphs(_files(_spec_paths(spec), ".txt")), spec, max_bytes)
    if kind == JSONL:
        texts = _jsonl_texts(_files(_spec_paths(spec), ".jsonl"), _text_field(spec))
        return _files_corpus(texts, spec, max_bytes)
    if kind == HF_DATASET:
        return _files_corpus(_hf_dataset_texts(spec), spec, max_bytes)
    from crowdtrain.trainers.shards import ShardedCorpus  # urllib only when needed
    return ShardedCorpus.from_spec(spec, max_bytes)


def split_texts(texts: Iterable[str]) -> Corpus:
    """Splits texts into training and held-out texts by a hash of their content (order preserved)."""
    train: list[str] = []
    heldout: list[str] = []
    for text in texts:
        (heldout if is_heldout(text) else train).append(text)
    return Corpus(train=tuple(train), heldout=tuple(heldout))


def is_heldout(text: str) -> bool:
    """Whether a text belongs to the held-out split (about one in ``HELDOUT_MODULUS``)."""
    digest = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
    return digest % HELDOUT_MODULUS == 0


def clean_text(text: str) -> str | None:
    """Dedents and collapses whitespace; None for texts shorter than ``MIN_WORDS`` words."""
    words = inspect.cleandoc(text).split()
    return " ".join(words) if len(words) >= MIN_WORDS else None


def cache_dir() -> Path:
    """Where extracted corpora are kept between runs (``CROWDTRAIN_CACHE_DIR`` or the user cache dir)."""
    base = os.environ.get("CROWDTRAIN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "crowdtrain")
    return Path(base)


def _disk_cached(name: str, extract) -> list[str]:
    """``extract()`` once per machine: later peers (a newcomer joining a run) read the JSON file."""
    path = cache_dir() / f"{name}.json"
    try:
        texts = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
            return texts
    except (OSError, ValueError):
        pass
    texts = list(extract())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(texts), encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        logger.debug("cannot cache the corpus in %s: %s", path, e)
    return texts


@functools.lru_cache(maxsize=4)
def _stdlib_corpus(max_bytes: int) -> Corpus:
    started = time.perf_counter()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha1(f"{stdlib}|{sys.version}|{max_bytes}".encode()).hexdigest()[:16]
    texts = _disk_cached(f"stdlib-docstrings-{key}",
                         lambda: _take_budget(_stdlib_docstrings(stdlib), max_bytes))
    corpus = split_texts(texts)
    logger.info(
        "extracted %d standard-library docstrings (%d bytes) in %.2f s: %d train, %d held-out",
        len(texts), sum(len(t.encode("utf-8")) for t in texts), time.perf_counter() - started,
        len(corpus.train), len(corpus.heldout),
    )
    return corpus


def _files_corpus(texts: Iterable[str], spec: Mapping[str, Any], max_bytes: int) -> Corpus:
    taken = _take_budget(texts, max_bytes)
    if not taken:
        raise ValueError(f"{spec['kind']} dataset: no text of at least {MIN_WORDS} words found")
    logger.info("read %d texts (%d bytes) of a %s dataset", len(taken), sum(len(t.encode()) for t in taken),
                spec["kind"])
    return split_texts(taken)


def _text_field(spec: Mapping[str, Any]) -> str:
    field = spec.get("text_field", "text")
    if not isinstance(field, str) or not field:
        raise ValueError(f"{spec['kind']} dataset: text_field must be a non-empty string, got {field!r}")
    return field


def _jsonl_texts(files: Iterable[Path], field: str) -> Iterator[str]:
    """The ``field`` of every JSON object of every line; ValueError naming the file and line."""
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)[field]
                except (ValueError, KeyError, TypeError, IndexError):
                    raise ValueError(f"jsonl dataset: {path}:{number} is not a JSON object with a "
                                     f"string field {field!r}") from None
                if not isinstance(value, str):
                    raise ValueError(f"jsonl dataset: {path}:{number}: field {field!r} is not a string")
                cleaned = clean_text(value)
                if cleaned:
                    yield cleaned


def _hf_dataset_texts(spec: Mapping[str, Any]) -> Iterator[str]:
    """Texts of a dataset saved with ``datasets.Dataset.save_to_disk`` (or a DatasetDict's split)."""
    path, split, field = spec.get("path"), spec.get("split", "train"), _text_field(spec)
    if not isinstance(path, str) or not os.path.isdir(path):
        raise ValueError(f"hf-dataset: 'path' must name a directory written by save_to_disk, got {path!r}")
    try:
        import datasets
    except ImportError:
        raise ValueError("hf-dataset needs the optional 'datasets' package: pip install datasets") from None
    try:
        data = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"hf-dataset: cannot load {path}: {e}") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"hf-dataset: no split {split!r} in {path}; it has {', '.join(data)}")
        data = data[split]
    if field not in data.column_names:
        raise ValueError(f"hf-dataset: no column {field!r} in {path}; it has {', '.join(data.column_names)}")
    for value in data[field]:
        cleaned = clean_text(value) if isinstance(value, str) else None
        if cleaned:
            yield cleaned


def _spec_paths(spec: Mapping[str, Any]) -> list[Path]:
    paths = spec.get("paths")
    if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"a {spec['kind']} dataset spec needs 'paths': a non-empty list of file or directory paths")
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise ValueError(f"{spec['kind']} dataset: no such file or directory: {', '.join(missing)}")
    return [Path(p) for p in paths]


def _take_budget(texts: Iterable[str], max_bytes: int) -> list[str]:
    """Distinct texts in order until their UTF-8 size reaches ``max_bytes``."""
    taken: list[str] = []
    seen: set[str] = set()
    size = 0
    for text in texts:
        if size >= max_bytes:
            break
        if text not in seen:
            seen.add(text)
            taken.append(text)
            size += len(text.encode("utf-8"))
    return taken


def _stdlib_docstrings(root: Path) -> Iterator[str]:
    for path in _walk_sorted(root, ".py", _SKIPPED_STDLIB_DIRS):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError) as exc:
            logger.debug("skipping %s: %s", path, exc)
            continue
        for node in ast.walk(tree):
            if isinstance(node, _DOCUMENTED_NODES):
                docstring = ast.get_docstring(node, clean=False)
                cleaned = clean_text(docstring) if docstring else None
                if cleaned:
                    yield cleaned


def _walk_sorted(root: Path, suffix: str, skipped_dirs: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Files under ``root`` ending in ``suffix``, in a deterministic order, outside ``skipped_dirs``."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in skipped_dirs)
        for name in sorted(files):
            if name.endswith(suffix):
                yield Path(directory, name)


def _files(paths: list[Path], suffix: str) -> Iterator[Path]:
    """The given files, and the files ending in ``suffix`` under the given directories."""
    for path in paths:
        if path.is_dir():
            yield from _walk_sorted(path, suffix)
        else:
            yield path


def _paragraphs(files: Iterable[Path]) -> Iterator[str]:
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as lines:
            yield from paragraphs(lines)


def paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Cleaned paragraphs (separated by blank lines) of a stream of text lines, read lazily."""
    paragraph: list[str] = []
    for line in lines:
        if line.strip():
            paragraph.append(line)
            continue
        cleaned = clean_text("".join(paragraph)) if paragraph else None
        if cleaned:
            yield cleaned
        paragraph = []
    cleaned = clean_text("".join(paragraph)) if paragraph else None
    if cleaned:
        yield cleaned
