"""BERT-style WordPiece tokenizer, trained with the ``tokenizers`` library and shipped as bytes."""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
"""Special tokens, with ids 0..4 in this order."""
CONTINUATION_PREFIX = "##"
LIMIT_ALPHABET = 150
"""Most frequent characters kept as single-character tokens; rarer characters become [UNK]."""


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Trains a lowercasing WordPiece tokenizer of exactly ``vocab_size`` tokens (specials included).

    The result is a deterministic function of the texts (see :func:`_alphabet`). Raises ValueError when
    the texts are too few to learn that many tokens.
    """
    texts = list(texts)
    scratch = _empty_tokenizer(models.WordPiece(unk_token=UNK))
    alphabet, continuations = _alphabet(scratch, texts)
    # The library's trainer creates the "##c" tokens in hash-map order, which changes token ids and
    # how merge ties are broken from one run to the next (huggingface/tokenizers#1794). Declaring
    # them up front, as extra special tokens in sorted order, fixes their ids; the alphabet is given
    # explicitly for the same reason (ties in character counts at the `limit_alphabet` cut).
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *(CONTINUATION_PREFIX + c for c in continuations)],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    scratch.train_from_iterator(texts, trainer)
    learnt = scratch.get_vocab_size()
    if learnt != vocab_size:
        raise ValueError(f"the corpus is too small for a vocabulary of {vocab_size} tokens: learnt {learnt}")
    # Rebuild from the vocabulary alone, so that only the five real special tokens are "special".
    tokenizer = _empty_tokenizer(models.WordPiece(scratch.get_vocab(), unk_token=UNK))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def tokenizer_to_bytes(tokenizer: Tokenizer) -> bytes:
    """The tokenizer's compact JSON serialisation."""
    return tokenizer.to_str().encode("utf-8")


def tokenizer_from_bytes(data: bytes) -> Tokenizer:
    """Loads a tokenizer serialised by :func:`tokenizer_to_bytes`; raises ValueError if malformed."""
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        raise ValueError(f"malformed tokenizer: {exc}") from exc
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != token_id:
            raise ValueError(f"tokenizer lacks special token {token} at id {token_id}")
    return tokenizer


def _empty_tokenizer(model: models.WordPiece) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return tokenizer


def _alphabet(tokenizer: Tokenizer, texts: list[str]) -> tuple[list[str], list[str]]:
    """The ``LIMIT_ALPHABET`` most frequent characters of the normalised, pre-tokenized texts (ties
    broken by code point), sorted, and those of them that occur after a word's first character."""
    words: Counter[str] = Counter()
    for text in texts:
        normalized = tokenizer.normalizer.normalize_str(text)
        words.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized))
    chars: Counter[str] = Counter()
    inner: set[str] = set()
    for word, count in words.items():
        for char in word:
            chars[char] += count
        inner.update(word[1:])
    kept = sorted(chars, key=lambda c: (-chars[c], c))[:LIMIT_ALPHABET]
    return sorted(kept), sorted(inner.intersection(kept))


def tokenizer_sha256(data: bytes) -> str:
    """Hex SHA-256 of serialised tokenizer bytes, to check that every peer uses the same tokenizer."""
    return hashlib.sha256(data).hexdigest()
