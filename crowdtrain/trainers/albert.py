"""``albert-tiny``: masked-language modelling with a small ALBERT on an offline English corpus.

Sized for volunteer CPUs and short demos: ~0.77 M parameters (ALBERT shares one transformer layer
across its depth, so depth costs time, not parameters), and a micro-batch of 8 sequences of 64 tokens
takes ~55-60 ms forward and backward on one CPU thread.

Learning rate (measured with global batches of 64 sequences): with AdamW at 1e-3 the masked-LM loss
falls from ~8.3 to ~6.8 in 16 optimizer steps and held-out masked-token accuracy rises from 0 to ~4%
(the most frequent tokens); after ~75-100 steps the model leaves that unigram plateau and uses
context (~7.5% at 150 steps). At 3e-3 the loss falls faster at first (~6.3 after 16 steps) but the
model then stays on the plateau for 300+ steps, so 1e-3 is the default.
"""
from __future__ import annotations

import functools
import itertools
import random
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from transformers import AlbertConfig, AlbertForMaskedLM

from crowdtrain.trainers.base import Batch, EvalResult, Recipe
from crowdtrain.trainers.corpus import load_corpus, stdlib_docstrings_spec
from crowdtrain.trainers.tokenizer import (
    CLS,
    MASK,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    tokenizer_from_bytes,
    tokenizer_to_bytes,
    train_tokenizer,
)

IGNORE_INDEX = -100
"""Label of positions that do not count in the loss (the convention of ``transformers``)."""
EVAL_SEED = 20240601
"""Seed of the held-out masking, fixed so that every peer and every evaluation scores the same task."""
EVAL_BATCH_SIZE = 32
NUM_SPECIAL = len(SPECIAL_TOKENS)  # special tokens have ids 0..NUM_SPECIAL-1


class AlbertTiny(Recipe):
    """A tiny ALBERT trained with BERT-style masked-language modelling."""

    name = "albert-tiny"

    def __init__(self, hparams: Mapping[str, Any], dataset: Mapping[str, Any], assets: bytes):
        super().__init__(_with_defaults(hparams), dataset, assets)
        self.tokenizer = tokenizer_from_bytes(assets)
        if self.tokenizer.get_vocab_size() != self.hparams["vocab_size"]:
            raise ValueError(
                f"tokenizer has {self.tokenizer.get_vocab_size()} tokens but hparams vocab_size is "
                f"{self.hparams['vocab_size']}"
            )
        self.corpus = load_corpus(self.dataset)
        self._cls_id, self._sep_id = self.tokenizer.token_to_id(CLS), self.tokenizer.token_to_id(SEP)
        self._pad_id, self._mask_id = self.tokenizer.token_to_id(PAD), self.tokenizer.token_to_id(MASK)
        self._eval_batches: list[dict[str, torch.Tensor]] | None = None

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        """Model, data and optimizer settings; see the module docstring for why these sizes."""
        return {
            "seed": 0,
            "vocab_size": 4096,
            "seq_len": 64,
            "embedding_size": 128,
            "hidden_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 512,
            "mask_prob": 0.15,
            "lr": 1e-3,
            "betas": [0.9, 0.98],
            "eps": 1e-6,
            "weight_decay": 0.01,
            "warmup_epochs": 1,
            "eval_sequences": 128,
        }

    @classmethod
    def default_dataset(cls) -> dict[str, Any]:
        """The built-in corpus: docstrings of Python's standard library."""
        return stdlib_docstrings_spec()

    @classmethod
    def build_assets(cls, hparams: Mapping[str, Any], dataset: Mapping[str, Any]) -> bytes:
        """Trains the WordPiece tokenizer on the training split; returns its serialisation."""
        vocab_size = _with_defaults(hparams)["vocab_size"]
        return tokenizer_to_bytes(train_tokenizer(load_corpus(dataset).train, vocab_size))

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised ALBERT for masked-LM, identical for identical ``seed`` hparams."""
        h = self.hparams
        config = AlbertConfig(
            vocab_size=h["vocab_size"],
            embedding_size=h["embedding_size"],
            hidden_size=h["hidden_size"],
            num_hidden_layers=h["num_hidden_layers"],
            num_attention_heads=h["num_attention_heads"],
            intermediate_size=h["intermediate_size"],
            max_position_embeddings=h["seq_len"],
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=self._pad_id,
            bos_token_id=self._cls_id,
            eos_token_id=self._sep_id,
        )
        torch.manual_seed(h["seed"])
        return AlbertForMaskedLM(config)

    def batches(self, shard_seed: int, batch_size: int) -> Iterator[Batch]:
        """Endless masked-LM micro-batches from this peer's own shuffled order of the training texts."""
        rng = random.Random(shard_seed)
        generator = torch.Generator().manual_seed(shard_seed % 2**63)
        sequences = self._pack(self._shuffled_token_lists(rng))
        while True:
            yield self._masked_batch(list(itertools.islice(sequences, batch_size)), generator)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Masked-LM cross-entropy over the masked positions."""
        return model(**batch).loss

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        """AdamW with the recipe's learning rate, betas, eps and weight decay."""
        h = self.hparams
        return torch.optim.AdamW(
            params, lr=h["lr"], betas=tuple(h["betas"]), eps=h["eps"], weight_decay=h["weight_decay"]
        )

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up over ``warmup_epochs`` global epochs, then the constant rate ``lr``."""
        factor = functools.partial(_warmup_factor, warmup_epochs=self.hparams["warmup_epochs"])
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def export(self, model: torch.nn.Module, directory: Path) -> None:
        """``save_pretrained`` (``transformers`` loads it with ``from_pretrained``) plus the run's tokenizer."""
        model.save_pretrained(directory)
        (Path(directory) / "tokenizer.json").write_bytes(self.assets)

    def evaluate(self, model: torch.nn.Module) -> EvalResult:
        """Accuracy of predicting the masked tokens of a fixed held-out set."""
        accuracy, _ = self._heldout_scores(model)
        return EvalResult(metric="masked_token_accuracy", value=accuracy)

    def evaluate_loss(self, model: torch.nn.Module) -> float:
        """Mean masked-LM cross-entropy on the same fixed held-out set as :meth:`evaluate`."""
        _, loss = self._heldout_scores(model)
        return loss

    def _shuffled_token_lists(self, rng: random.Random) -> Iterator[list[int]]:
        """Token ids of the training texts, tokenized lazily, in a fresh shuffled order every pass."""
        texts = self.corpus.train
        order = list(range(len(texts)))
        while True:
            rng.shuffle(order)
            for index in order:
                yield self._encode(texts[index])

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _pack(self, token_lists: Iterable[list[int]]) -> Iterator[list[int]]:
        """Packs the texts, each followed by [SEP], into one stream cut into ``[CLS] + seq_len - 1``
        token sequences (texts continue across sequences, so only the very last one is short)."""
        room = self.hparams["seq_len"] - 1
        stream: list[int] = []
        for tokens in token_lists:
            stream += tokens
            stream.append(self._sep_id)
            while len(stream) >= room:
                yield [self._cls_id, *stream[:room]]
                del stream[:room]
        if stream:
            yield [self._cls_id, *stream]

    def _masked_batch(self, sequences: list[list[int]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Pads sequences to seq_len and masks them as BERT does: ``mask_prob`` of the non-special
        tokens are selected; of those 80% become [MASK], 10% a random token and 10% stay."""
        seq_len = self.hparams["seq_len"]
        input_ids = torch.full((len(sequences), seq_len), self._pad_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask = (input_ids != self._pad_id).long()
        candidates = input_ids >= NUM_SPECIAL
        selected = (torch.rand(input_ids.shape, generator=generator) < self.hparams["mask_prob"]) & candidates
        if not selected.any():  # a tiny batch: mask one token so that the loss is defined
            selected.view(-1)[candidates.view(-1).nonzero()[0]] = True
        labels = torch.where(selected, input_ids, IGNORE_INDEX)
        draw = torch.rand(input_ids.shape, generator=generator)
        random_ids = torch.randint(NUM_SPECIAL, self.hparams["vocab_size"], input_ids.shape, generator=generator)
        inputs = torch.where(selected & (draw < 0.8), self._mask_id, input_ids)
        inputs = torch.where(selected & (draw >= 0.8) & (draw < 0.9), random_ids, inputs)
        return {"input_ids": inputs, "attention_mask": attention_mask, "labels": labels}

    def _heldout_batches(self) -> list[dict[str, torch.Tensor]]:
        """The fixed evaluation set: the first ``eval_sequences`` packed held-out sequences, masked
        with ``EVAL_SEED`` (built once). ValueError if the dataset has no held-out text."""
        if self._eval_batches is None:
            if not self.corpus.heldout:
                raise ValueError("the dataset has no held-out text to evaluate on: it needs more texts "
                                 "(about one in twenty is held out)")
            packed = self._pack(self._encode(text) for text in self.corpus.heldout)
            sequences = list(itertools.islice(packed, self.hparams["eval_sequences"]))
            generator = torch.Generator().manual_seed(EVAL_SEED)
            self._eval_batches = [
                self._masked_batch(sequences[i:i + EVAL_BATCH_SIZE], generator)
                for i in range(0, len(sequences), EVAL_BATCH_SIZE)
            ]
        return self._eval_batches

    def _heldout_scores(self, model: torch.nn.Module) -> tuple[float, float]:
        """(masked-token accuracy, mean masked-LM loss) on the held-out set, in eval mode."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        correct, loss_sum, count = 0, 0.0, 0
        try:
            with torch.no_grad():
                for batch in self._heldout_batches():
                    batch = {key: value.to(device) for key, value in batch.items()}
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    masked = batch["labels"] != IGNORE_INDEX
                    logits, labels = logits[masked], batch["labels"][masked]
                    correct += int((logits.argmax(dim=-1) == labels).sum())
                    loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                    count += int(masked.sum())
        finally:
            model.train(was_training)
        return correct / count, loss_sum / count


def _with_defaults(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The default hparams overridden by ``hparams``; ValueError for a key the recipe does not know."""
    defaults = AlbertTiny.default_hparams()
    unknown = set(hparams) - set(defaults)
    if unknown:
        raise ValueError(f"unknown albert-tiny hparams: {', '.join(sorted(unknown))}")
    return {**defaults, **hparams}


def _warmup_factor(epoch: int, warmup_epochs: int) -> float:
    return min(1.0, (epoch + 1) / (warmup_epochs + 1))
