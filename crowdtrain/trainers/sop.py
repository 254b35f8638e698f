"""Sentence-order prediction (SOP) examples, as in ALBERT (Lan et al., 2020, section 3.1).

A document's consecutive sentences are gathered into chunks of about ``max_tokens`` tokens; each
chunk is cut at a random sentence boundary into two segments A and B (a chunk of one sentence is cut
at a random token). The pair is shown in its original order (label 0) or swapped (label 1) with
probability one half, so the model must learn discourse coherence rather than topic.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

IN_ORDER, SWAPPED = 0, 1
"""``sentence_order_label`` values of ``transformers``' ALBERT."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


@dataclass(frozen=True)
class SegmentPair:
    """Two segments of token ids and whether they were swapped."""

    first: list[int]
    second: list[int]
    label: int


def split_sentences(text: str) -> list[str]:
    """The text cut after every ``.``, ``!`` or ``?`` followed by white space."""
    return [sentence for sentence in _SENTENCE_END.split(text) if sentence]


def segment_pairs(sentences: Sequence[list[int]], max_tokens: int, rng: random.Random,
                  swap_prob: float = 0.5) -> Iterator[SegmentPair]:
    """SOP pairs of at most ``max_tokens`` tokens in all from one document's tokenized sentences."""
    chunk: list[list[int]] = []
    size = 0
    for index, sentence in enumerate(sentences):
        if sentence:
            chunk.append(sentence)
            size += len(sentence)
        if chunk and (size >= max_tokens or index == len(sentences) - 1):
            pair = _cut(chunk, rng)
            if pair is not None:
                yield _ordered(*_truncate(*pair, max_tokens), rng, swap_prob)
            chunk, size = [], 0


def _cut(chunk: list[list[int]], rng: random.Random) -> tuple[list[int], list[int]] | None:
    """A and B from a chunk: at a random sentence boundary, or at a random token of one sentence."""
    if len(chunk) >= 2:
        boundary = rng.randint(1, len(chunk) - 1)
        return [t for s in chunk[:boundary] for t in s], [t for s in chunk[boundary:] for t in s]
    tokens = chunk[0]
    if len(tokens) < 2:
        return None
    boundary = rng.randint(1, len(tokens) - 1)
    return tokens[:boundary], tokens[boundary:]


def _truncate(first: list[int], second: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """Trims the longer segment until both fit, keeping the tokens next to the A|B boundary: A loses
    its beginning, B its end."""
    keep_first, keep_second = len(first), len(second)
    while keep_first + keep_second > max_tokens:
        if keep_first > keep_second:
            keep_first -= 1
        else:
            keep_second -= 1
    return first[len(first) - keep_first:], second[:keep_second]


def _ordered(first: list[int], second: list[int], rng: random.Random, swap_prob: float) -> SegmentPair:
    if rng.random() < swap_prob:
        return SegmentPair(first=second, second=first, label=SWAPPED)
    return SegmentPair(first=first, second=second, label=IN_ORDER)
