"""``http-shards`` datasets: text shards streamed over HTTP(S), never downloaded whole.

Spec: ``{"kind": "http-shards", "urls": [...], "max_bytes": N}``. Each URL is a UTF-8 text file
(gzip-compressed when it ends in ``.gz``) of paragraphs separated by blank lines.

- The *sample* is the first ``max_bytes`` of text, reading the shards in the listed order: the
  coordinator trains the tokenizer on its training texts and every peer evaluates on its held-out
  texts, so both are the same everywhere.
- Training streams the shards in an order shuffled per pass by the peer's seed, paragraph by
  paragraph, skipping held-out texts: each peer reads its own shards and holds one paragraph at a time.

A shard that fails mid-way (network error) is logged and skipped for this pass; a pass in which no
shard gives any text raises, so that a dead server stops training instead of spinning.
"""
from __future__ import annotations

import codecs
import functools
import gzip
import logging
import random
import urllib.error
import urllib.request
from typing import Any, Iterator, Mapping

from crowdtrain.trainers.corpus import Corpus, _take_budget, is_heldout, paragraphs, split_texts

logger = logging.getLogger(__name__)
READ_TIMEOUT_S = 30.0
USER_AGENT = "crowdtrain (volunteer training data reader)"


class ShardedCorpus:
    """The interface of :class:`~crowdtrain.trainers.corpus.Corpus` over streamed shards."""

    def __init__(self, urls: tuple[str, ...], max_bytes: int, timeout: float = READ_TIMEOUT_S):
        self.urls, self.max_bytes, self.timeout = urls, max_bytes, timeout

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], max_bytes: int) -> "ShardedCorpus":
        urls = spec.get("urls")
        if not isinstance(urls, (list, tuple)) or not urls or not all(isinstance(u, str) for u in urls):
            raise ValueError("an http-shards dataset spec needs 'urls': a non-empty list of http(s) URLs")
        bad = [u for u in urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"http-shards dataset: not an http(s) URL: {bad[0]}")
        return cls(tuple(urls), max_bytes)

    @property
    def train(self) -> tuple[str, ...]:
        """Training texts of the sample (what the tokenizer is trained on)."""
        return self._sample.train

    @property
    def heldout(self) -> tuple[str, ...]:
        return self._sample.heldout

    def stream(self, rng: random.Random) -> Iterator[str]:
        """Endless training texts: all shards in a fresh ``rng``-shuffled order every pass."""
        order = list(self.urls)
        while True:
            rng.shuffle(order)
            produced = False
            for url in order:
                for text in self._texts_or_warn(url):
                    if not is_heldout(text):
                        produced = True
                        yield text
            if not produced:
                raise ValueError(f"http-shards dataset: no training text could be read from {len(order)} shards")

    @functools.cached_property
    def _sample(self) -> Corpus:
        texts = _take_budget((text for url in self.urls for text in self.texts(url)), self.max_bytes)
        if not texts:
            raise ValueError(f"http-shards dataset: no text found in {self.urls[0]} and the other shards")
        return split_texts(texts)

    def texts(self, url: str) -> Iterator[str]:
        """Paragraphs of one shard, read as they arrive; ValueError if it cannot be opened."""
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": USER_AGENT}),
                                              timeout=self.timeout)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ValueError(f"http-shards dataset: cannot read {url}: {getattr(e, 'reason', e)}") from None
        with response:
            raw = gzip.GzipFile(fileobj=response) if url.endswith(".gz") else response
            yield from paragraphs(codecs.iterdecode(raw, "utf-8", errors="replace"))

    def _texts_or_warn(self, url: str) -> Iterator[str]:
        try:
            yield from self.texts(url)
        except (ValueError, OSError, EOFError) as e:
            logger.warning("skipping shard %s for this pass: %s", url, e)
