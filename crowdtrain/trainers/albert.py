"""ALBERT pretraining recipes (Lan et al., 2020): ``albert-tiny``, ``albert-base``, ``albert-large``.

``transformers``' ``AlbertForPreTraining`` trained on both of the paper's objectives: masked-language
modelling with n-gram masking (:mod:`crowdtrain.trainers.masking`) and sentence-order prediction
(:mod:`crowdtrain.trainers.sop`), optimised with LAMB (:mod:`crowdtrain.trainers.lamb`) under a
warm-up and linear decay driven by the global epoch (:mod:`crowdtrain.trainers.schedule`).

``albert-base`` and ``albert-large`` have the paper's sizes (12 M and 18 M parameters at a vocabulary
of 30 000); ``albert-tiny`` (~0.8 M parameters; ALBERT shares one transformer layer across its depth,
so depth costs time, not parameters) is sized for volunteer CPUs and short demos: a micro-batch of 16
pairs of at most 64 tokens takes well under a second forward and backward on one CPU thread.

Learning rate of ``albert-tiny`` (LAMB, measured with 64 pairs per optimizer step): 2e-2 without
warm-up makes the loss fall fastest at first (-0.6 in 8 steps, what short swarm runs and demos see)
but keeps the model on the unigram plateau (predicting frequent tokens) for 100+ steps; 5e-3 with
two warm-up epochs starts slower and beats the unigram baseline by ~3.5 points after 100 steps
(``tests/test_trainers.py`` trains with it). Long runs should pass ``--hparam lr=0.005``.

Evaluation: masked-token accuracy (the metric) and SOP accuracy on a fixed held-out set of pairs,
masked and ordered with a fixed seed, so every peer and every evaluation scores the same task.
"""
from __future__ import annotations

import contextlib
import itertools
import random
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from transformers import AlbertConfig, AlbertForPreTraining

from crowdtrain.trainers.base import Baseline, Batch, EvalResult, Recipe
from crowdtrain.trainers.corpus import DEFAULT_MAX_BYTES, load_corpus, stdlib_docstrings_spec
from crowdtrain.trainers.lamb import Lamb
from crowdtrain.trainers.masking import IGNORE_INDEX, NgramMasking
from crowdtrain.trainers.schedule import WarmupDecay
from crowdtrain.trainers.sop import SegmentPair, segment_pairs, split_sentences
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

EVAL_SEED = 20240601
"""Seed of the held-out pairs and their masking."""
EVAL_BATCH_SIZE = 32
NUM_SPECIAL = len(SPECIAL_TOKENS)  # special tokens have ids 0..NUM_SPECIAL-1
BASELINE_SAMPLE_TEXTS = 4000
"""Training texts counted for the unigram-frequency baseline."""

_COMMON_HPARAMS: dict[str, Any] = {
    "seed": 0,
    "mask_prob": 0.15,
    "max_ngram": 3,
    "betas": [0.9, 0.999],
    "eps": 1e-6,
    "weight_decay": 0.01,
    "final_lr_fraction": 0.0,
    "eval_sequences": 128,
    "mixed_precision": True,
}


class AlbertRecipe(Recipe):
    """ALBERT with masked-LM (n-gram masking) and sentence-order prediction; sizes in subclasses."""

    size_hparams: ClassVar[dict[str, Any]]

    def __init__(self, hparams: Mapping[str, Any], dataset: Mapping[str, Any], assets: bytes):
        super().__init__(self.with_defaults(hparams), dataset, assets)
        self.tokenizer = tokenizer_from_bytes(assets)
        if self.tokenizer.get_vocab_size() != self.hparams["vocab_size"]:
            raise ValueError(
                f"tokenizer has {self.tokenizer.get_vocab_size()} tokens but hparams vocab_size is "
                f"{self.hparams['vocab_size']}"
            )
        self.schedule = WarmupDecay.from_hparams(self.hparams)
        self.corpus = load_corpus(self.dataset)
        self._cls_id, self._sep_id = self.tokenizer.token_to_id(CLS), self.tokenizer.token_to_id(SEP)
        self._pad_id = self.tokenizer.token_to_id(PAD)
        self.masking = NgramMasking(mask_prob=self.hparams["mask_prob"], max_ngram=self.hparams["max_ngram"],
                                    mask_id=self.tokenizer.token_to_id(MASK), first_random_id=NUM_SPECIAL,
                                    vocab_size=self.hparams["vocab_size"])
        self._eval_batches: list[dict[str, torch.Tensor]] | None = None
        self._unigram_baseline: float | None = None

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {**_COMMON_HPARAMS, **cls.size_hparams}

    @classmethod
    def with_defaults(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The default hparams overridden by ``hparams``; ValueError for a key or value the recipe
        cannot use."""
        defaults = cls.default_hparams()
        unknown = set(hparams) - set(defaults)
        if unknown:
            raise ValueError(f"unknown {cls.name} hparams: {', '.join(sorted(unknown))}")
        merged = {**defaults, **hparams}
        for key in ("vocab_size", "seq_len", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "embedding_size", "intermediate_size", "eval_sequences"):
            if not isinstance(merged[key], int) or merged[key] <= 0:
                raise ValueError(f"{cls.name} hparam {key} must be a positive integer, got {merged[key]!r}")
        if merged["seq_len"] < 8:
            raise ValueError(f"{cls.name} hparam seq_len must be at least 8, got {merged['seq_len']}")
        if not isinstance(merged["lr"], (int, float)) or not merged["lr"] > 0:
            raise ValueError(f"{cls.name} hparam lr must be a positive number, got {merged['lr']!r}")
        return merged

    @classmethod
    def default_dataset(cls) -> dict[str, Any]:
        """The built-in corpus: docstrings of Python's standard library."""
        return stdlib_docstrings_spec()

    @classmethod
    def build_assets(cls, hparams: Mapping[str, Any], dataset: Mapping[str, Any]) -> bytes:
        """Trains the WordPiece tokenizer on the training texts; returns its serialisation."""
        vocab_size = cls.with_defaults(hparams)["vocab_size"]
        return tokenizer_to_bytes(train_tokenizer(load_corpus(dataset).train, vocab_size))

    @classmethod
    def model_config(cls, hparams: Mapping[str, Any]) -> AlbertConfig:
        """The ``transformers`` configuration of the model (dropout off: small data, short runs)."""
        h = cls.with_defaults(hparams)
        return AlbertConfig(
            vocab_size=h["vocab_size"], embedding_size=h["embedding_size"], hidden_size=h["hidden_size"],
            num_hidden_layers=h["num_hidden_layers"], num_attention_heads=h["num_attention_heads"],
            intermediate_size=h["intermediate_size"], max_position_embeddings=h["seq_len"],
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0,
            pad_token_id=SPECIAL_TOKENS.index(PAD), bos_token_id=SPECIAL_TOKENS.index(CLS),
            eos_token_id=SPECIAL_TOKENS.index(SEP),
        )

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised ``AlbertForPreTraining``, identical for identical ``seed`` hparams."""
        torch.manual_seed(self.hparams["seed"])
        return AlbertForPreTraining(self.model_config(self.hparams))

    def batches(self, shard_seed: int, batch_size: int) -> Iterator[Batch]:
        """Endless micro-batches of masked SOP pairs from this peer's own shuffled order of the texts."""
        rng = random.Random(shard_seed)
        generator = torch.Generator().manual_seed(shard_seed % 2**63)
        pairs = self._pairs(self.corpus.stream(rng), rng)
        while True:
            yield self._batch(list(itertools.islice(pairs, batch_size)), generator)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Masked-LM cross-entropy plus sentence-order cross-entropy (bfloat16 autocast on a GPU)."""
        with self._autocast(batch["input_ids"].device):
            return model(**batch).loss.float()

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        """LAMB with the recipe's learning rate, betas, eps and weight decay."""
        h = self.hparams
        return Lamb(params, lr=h["lr"], betas=tuple(h["betas"]), eps=h["eps"], weight_decay=h["weight_decay"])

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up over ``warmup_epochs`` global epochs, then linear decay over ``decay_epochs``."""
        return self.schedule.scheduler(optimizer)

    def export(self, model: torch.nn.Module, directory: Path) -> None:
        """``save_pretrained`` (``transformers`` loads it with ``from_pretrained``) plus the run's tokenizer."""
        model.save_pretrained(directory)
        (Path(directory) / "tokenizer.json").write_bytes(self.assets)

    def evaluate(self, model: torch.nn.Module) -> EvalResult:
        """Masked-token accuracy, plus SOP accuracy and masked-LM loss, on the fixed held-out pairs."""
        scores = self._heldout_scores(model)
        return EvalResult(metric="masked_token_accuracy", value=scores["masked_token_accuracy"],
                          extra={"sop_accuracy": scores["sop_accuracy"], "mlm_loss": scores["mlm_loss"]},
                          baseline=Baseline("always the most frequent token", self.unigram_baseline()))

    def evaluate_loss(self, model: torch.nn.Module) -> float:
        """Mean masked-LM cross-entropy on the same fixed held-out set as :meth:`evaluate`."""
        return self._heldout_scores(model)["mlm_loss"]

    def unigram_baseline(self) -> float:
        """Held-out masked-token accuracy of always predicting the most frequent training token:
        what a model that ignores context can reach (computed once)."""
        if self._unigram_baseline is None:
            self._unigram_baseline = self._most_frequent_token_accuracy()
        return self._unigram_baseline

    def _most_frequent_token_accuracy(self) -> float:
        counts: Counter[int] = Counter()
        for encoding in self.tokenizer.encode_batch(list(self.corpus.train[:BASELINE_SAMPLE_TEXTS]),
                                                    add_special_tokens=False):
            counts.update(encoding.ids)
        most_frequent = counts.most_common(1)[0][0]
        labels = torch.cat([batch["labels"][batch["labels"] != IGNORE_INDEX] for batch in self._heldout_batches()])
        return float((labels == most_frequent).float().mean())

    def _autocast(self, device: torch.device):
        if device.type == "cuda" and self.hparams["mixed_precision"]:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _pairs(self, texts: Iterable[str], rng: random.Random) -> Iterator[SegmentPair]:
        """SOP pairs of every text, each text a document of sentences."""
        room = self.hparams["seq_len"] - 3  # [CLS] A [SEP] B [SEP]
        for text in texts:
            sentences = [e.ids for e in self.tokenizer.encode_batch(split_sentences(text), add_special_tokens=False)]
            yield from segment_pairs(sentences, room, rng)

    def _batch(self, pairs: list[SegmentPair], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``[CLS] A [SEP] B [SEP]`` rows padded to the longest, n-gram masked, with SOP labels."""
        rows = [[self._cls_id, *p.first, self._sep_id, *p.second, self._sep_id] for p in pairs]
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        token_type_ids = torch.zeros_like(input_ids)
        for index, (row, pair) in enumerate(zip(rows, pairs)):
            input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            token_type_ids[index, len(pair.first) + 2: len(row)] = 1
        inputs, labels = self.masking.apply(input_ids, input_ids >= NUM_SPECIAL, generator)
        return {"input_ids": inputs, "attention_mask": (input_ids != self._pad_id).long(),
                "token_type_ids": token_type_ids, "labels": labels,
                "sentence_order_label": torch.tensor([p.label for p in pairs], dtype=torch.long)}

    def _heldout_batches(self) -> list[dict[str, torch.Tensor]]:
        """The fixed evaluation set: the first ``eval_sequences`` pairs of the held-out texts, built
        with ``EVAL_SEED`` (once). ValueError if the dataset has no held-out text."""
        if self._eval_batches is None:
            if not self.corpus.heldout:
                raise ValueError("the dataset has no held-out text to evaluate on: it needs more texts "
                                 "(about one in twenty is held out)")
            rng = random.Random(EVAL_SEED)
            pairs = list(itertools.islice(self._pairs(self.corpus.heldout, rng), self.hparams["eval_sequences"]))
            generator = torch.Generator().manual_seed(EVAL_SEED)
            self._eval_batches = [self._batch(pairs[i:i + EVAL_BATCH_SIZE], generator)
                                  for i in range(0, len(pairs), EVAL_BATCH_SIZE)]
        return self._eval_batches

    def _heldout_scores(self, model: torch.nn.Module) -> dict[str, float]:
        """Masked-token accuracy, SOP accuracy and mean masked-LM loss on the held-out set, in eval mode."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        correct = sop_correct = pairs = count = 0
        loss_sum = 0.0
        try:
            with torch.no_grad():
                for batch in self._heldout_batches():
                    batch = {key: value.to(device) for key, value in batch.items()}
                    with self._autocast(device):
                        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       token_type_ids=batch["token_type_ids"])
                    masked = batch["labels"] != IGNORE_INDEX
                    logits, labels = output.prediction_logits[masked].float(), batch["labels"][masked]
                    correct += int((logits.argmax(dim=-1) == labels).sum())
                    loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                    count += int(masked.sum())
                    sop = output.sop_logits.argmax(dim=-1)
                    sop_correct += int((sop == batch["sentence_order_label"]).sum())
                    pairs += len(sop)
        finally:
            model.train(was_training)
        return {"masked_token_accuracy": correct / count, "sop_accuracy": sop_correct / pairs,
                "mlm_loss": loss_sum / count}


class AlbertTiny(AlbertRecipe):
    """~0.8 M parameters, 64-token pairs: for volunteer CPUs, demos and tests."""

    name = "albert-tiny"
    size_hparams = {
        "vocab_size": 4096, "seq_len": 64, "embedding_size": 128, "hidden_size": 128,
        "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 512,
        "lr": 2e-2, "warmup_epochs": 0, "decay_epochs": 2000,
    }


class AlbertBase(AlbertRecipe):
    """The paper's ALBERT-base: 12 M parameters (vocabulary 30 000), 512-token pairs."""

    name = "albert-base"
    size_hparams = {
        "vocab_size": 30000, "seq_len": 512, "embedding_size": 128, "hidden_size": 768,
        "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
        "lr": 0.00176, "warmup_epochs": 3125, "decay_epochs": 125000,
    }

    @classmethod
    def default_dataset(cls) -> dict[str, Any]:
        """The whole built-in corpus: a 30 000-token vocabulary needs more text than the tiny default."""
        return stdlib_docstrings_spec(max_bytes=4 * DEFAULT_MAX_BYTES)


class AlbertLarge(AlbertBase):
    """The paper's ALBERT-large: 18 M parameters (vocabulary 30 000), 512-token pairs."""

    name = "albert-large"
    size_hparams = {**AlbertBase.size_hparams, "hidden_size": 1024, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "intermediate_size": 4096}
