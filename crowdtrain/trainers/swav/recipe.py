"""SwAV recipes: ``swav-tiny`` (CPU-sized), ``swav-resnet18`` and ``swav-resnet50`` (the paper's setup).

Every micro-batch holds the multi-crop views of ``batch_size`` images (made on the CPU from this
peer's own shuffled stream); the loss embeds all views, computes Sinkhorn codes for the large views
(over the feature queue too once it is full) and predicts each code from every other view. The
prototypes get no gradient during this peer's first ``freeze_prototypes_steps`` micro-batches, as in
the paper's first iterations. Optimiser: LARS (:mod:`crowdtrain.trainers.lars`) with warm-up and
linear decay by global epoch. Metric: k-NN accuracy of the frozen backbone on the held-out set, with
the raw-pixel k-NN accuracy of the same set reported alongside as its control.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, ClassVar, Iterator, Mapping

import torch

from crowdtrain.trainers.base import Baseline, Batch, EvalResult, Recipe
from crowdtrain.trainers.lars import Lars
from crowdtrain.trainers.schedule import WarmupDecay
from crowdtrain.trainers.swav.batch_norm import with_fresh_batch_norm
from crowdtrain.trainers.swav.images import DIGITS, KnnSets, open_images, validate_spec
from crowdtrain.trainers.swav.knn import knn_accuracy
from crowdtrain.trainers.swav.model import FeatureQueue, SwavModel
from crowdtrain.trainers.swav.multicrop import CropSpec, MultiCrop
from crowdtrain.trainers.swav.objective import sinkhorn, swapped_prediction_loss
from crowdtrain.trainers.swav.resnet import RESNET18, RESNET50, ResNetSpec

EVAL_BATCH_SIZE = 256
BATCH_NORM_SHARD = 2**31 - 1  # the training views batch-norm statistics are estimated from: the same on every peer
BATCH_NORM_BATCHES, BATCH_NORM_BATCH_SIZE = 20, 64  # 20 x 64 images, 2 large views each

_COMMON_HPARAMS: dict[str, Any] = {
    "seed": 0,
    "temperature": 0.1,
    "sinkhorn_epsilon": 0.05,
    "sinkhorn_iterations": 3,
    "momentum": 0.9,
    "weight_decay": 1e-6,
    "final_lr_fraction": 0.0,
    "flip": True,
    "jitter": 0.4,
    "crop_rotation": 0.0,
    "knn_k": 10,
    "mixed_precision": True,
}


class SwavRecipe(Recipe):
    """SwAV on multi-crop views; network sizes and crop settings in subclasses."""

    size_hparams: ClassVar[dict[str, Any]]

    def __init__(self, hparams: Mapping[str, Any], dataset: Mapping[str, Any], assets: bytes):
        super().__init__(self.with_defaults(hparams), dataset, assets)
        h = self.hparams
        self.schedule = WarmupDecay.from_hparams(h)
        self.spec = ResNetSpec(h["block"], tuple(h["layers"]), tuple(h["widths"]))
        self.multicrop = MultiCrop(
            large=CropSpec(2, h["large_crop_size"], tuple(h["large_crop_scale"])),
            small=CropSpec(h["small_crops"], h["small_crop_size"], tuple(h["small_crop_scale"])),
            flip=h["flip"], jitter=h["jitter"], rotation=h["crop_rotation"])
        self.images = open_images(self.dataset, h["image_size"])
        self.queue = FeatureQueue(views=2, length=h["queue_length"])
        self._local_steps = 0
        self._knn_sets: KnnSets | None = None
        self._raw_pixel_accuracy: float | None = None

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {**_COMMON_HPARAMS, **cls.size_hparams}

    @classmethod
    def with_defaults(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The default hparams overridden by ``hparams``; ValueError for a key or value it cannot use."""
        defaults = cls.default_hparams()
        unknown = set(hparams) - set(defaults)
        if unknown:
            raise ValueError(f"unknown {cls.name} hparams: {', '.join(sorted(unknown))}")
        merged = {**defaults, **hparams}
        for key in ("image_size", "large_crop_size", "small_crop_size", "hidden_dim", "output_dim",
                    "prototypes", "sinkhorn_iterations", "knn_k"):
            if not isinstance(merged[key], int) or isinstance(merged[key], bool) or merged[key] <= 0:
                raise ValueError(f"{cls.name} hparam {key} must be a positive integer, got {merged[key]!r}")
        for key in ("lr", "temperature", "sinkhorn_epsilon"):
            if not isinstance(merged[key], (int, float)) or not merged[key] > 0:
                raise ValueError(f"{cls.name} hparam {key} must be a positive number, got {merged[key]!r}")
        if merged["small_crops"] < 0 or merged["queue_length"] < 0 or merged["freeze_prototypes_steps"] < 0:
            raise ValueError(f"{cls.name} hparams small_crops, queue_length and freeze_prototypes_steps "
                             "must be non-negative")
        return merged

    @classmethod
    def default_dataset(cls) -> dict[str, Any]:
        """scikit-learn's bundled digits, rendered hard (offline)."""
        return {"kind": DIGITS}

    @classmethod
    def build_assets(cls, hparams: Mapping[str, Any], dataset: Mapping[str, Any]) -> bytes:
        """No assets; checks hparams and the dataset spec so that the coordinator fails early."""
        cls.with_defaults(hparams)
        validate_spec(dataset)
        return b""

    def build_model(self) -> SwavModel:
        """A freshly initialised SwAV network, identical for identical ``seed`` hparams."""
        h = self.hparams
        torch.manual_seed(h["seed"])
        return SwavModel(self.spec, self.images.channels, h["small_input"], h["hidden_dim"], h["output_dim"],
                         h["prototypes"])

    def batches(self, shard_seed: int, batch_size: int) -> Iterator[Batch]:
        """Endless micro-batches ``{"large": (2B, C, L, L), "small": (nB, C, S, S)}`` of multi-crop views."""
        rng = random.Random(shard_seed)
        generator = torch.Generator().manual_seed(shard_seed % 2**63)
        stream = self.images.stream(rng, generator)
        while True:
            images = torch.stack([next(stream) for _ in range(batch_size)])
            views = self.multicrop.views(images, generator)
            large, small = views[:2], views[2:]
            batch = {"large": torch.cat(large)}
            if small:
                batch["small"] = torch.cat(small)
            yield batch

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """SwAV's swapped-prediction loss over all views of the micro-batch."""
        h = self.hparams
        freeze = self._local_steps < h["freeze_prototypes_steps"]
        self._local_steps += 1
        with self._autocast(batch["large"].device):
            embeddings = [model.embed(batch["large"])]
            if "small" in batch:
                embeddings.append(model.embed(batch["small"]))
            embeddings = torch.cat(embeddings).float()
        views = torch.chunk(embeddings, 2 + h["small_crops"])
        scores = [model.scores(view, freeze) for view in views]
        codes = [self._codes(model, view, index, scores[index]) for index, view in enumerate(views[:2])]
        return swapped_prediction_loss(codes, scores, h["temperature"])

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        """LARS over momentum SGD, as in SwAV."""
        h = self.hparams
        return Lars(params, lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"],
                    trust_coefficient=h["trust_coefficient"])

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up over ``warmup_epochs`` global epochs, then linear decay over ``decay_epochs``."""
        return self.schedule.scheduler(optimizer)

    def evaluate(self, model: torch.nn.Module) -> EvalResult:
        """k-NN accuracy of the backbone's features on the held-out queries against the labelled bank, with
        batch-norm statistics estimated at the model's current parameters (:meth:`inference_copy`); its baseline
        is the k-NN accuracy of the raw pixels on the same sets."""
        model = self.inference_copy(model)
        sets = self._knn()
        accuracy = knn_accuracy(self._features(model, sets.bank), sets.bank_labels,
                                self._features(model, sets.queries), sets.query_labels, self.hparams["knn_k"])
        return EvalResult(metric="knn_accuracy", value=accuracy,
                          baseline=Baseline("k-NN on raw pixels", self.raw_pixel_accuracy()))

    def export(self, model: torch.nn.Module, directory) -> None:
        """The model with batch-norm statistics of its final parameters (:meth:`inference_copy`)."""
        super().export(self.inference_copy(model), directory)

    def inference_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` with batch-norm statistics estimated at its current parameters, on fixed training
        views (``batch_norm.with_fresh_batch_norm``): a swarm shares parameters, not these statistics."""
        batches = self.batches(shard_seed=BATCH_NORM_SHARD, batch_size=BATCH_NORM_BATCH_SIZE)
        return with_fresh_batch_norm(model, (next(batches)["large"] for _ in range(BATCH_NORM_BATCHES)))

    def raw_pixel_accuracy(self) -> float:
        if self._raw_pixel_accuracy is None:
            sets = self._knn()
            self._raw_pixel_accuracy = knn_accuracy(sets.bank, sets.bank_labels, sets.queries, sets.query_labels,
                                                    self.hparams["knn_k"])
        return self._raw_pixel_accuracy

    def _codes(self, model: SwavModel, embeddings: torch.Tensor, view: int, scores: torch.Tensor) -> torch.Tensor:
        """Sinkhorn codes of one large view, computed together with the queued embeddings if any."""
        h = self.hparams
        with torch.no_grad():
            all_scores = scores.detach()
            queued = self.queue.full(view) if h["queue_length"] else None
            if queued is not None:
                all_scores = torch.cat([all_scores, model.scores(queued.to(scores.device))])
            codes = sinkhorn(all_scores, h["sinkhorn_epsilon"], h["sinkhorn_iterations"])[: len(scores)]
        if h["queue_length"]:
            self.queue.push(view, embeddings)
        return codes

    def _knn(self) -> KnnSets:
        if self._knn_sets is None:
            self._knn_sets = self.images.knn_sets()
        return self._knn_sets

    def _features(self, model: SwavModel, images: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self._autocast(device):
                return torch.cat([model.features(images[i:i + EVAL_BATCH_SIZE].to(device)).float().cpu()
                                  for i in range(0, len(images), EVAL_BATCH_SIZE)])
        finally:
            model.train(was_training)

    def _autocast(self, device: torch.device):
        if device.type == "cuda" and self.hparams["mixed_precision"]:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


class SwavTiny(SwavRecipe):
    """A 4-stage basic-block ResNet of widths 16..128 (0.35 M parameters) on 32-pixel images.

    More prototypes than embedding dimensions: with fewer (30 prototypes for 64 dimensions, or 10 for
    16) we measured the embeddings moving into the prototypes' orthogonal complement, where every
    score is 0 and the loss sits at log(prototypes).

    Tuned for learning within a CPU budget on the digits (benchmarks/README.md, SwAV, 2026-11-25):
    Sinkhorn epsilon 0.03 (0.05 leaves the codes near-uniform and the loss at log(prototypes)), no
    small crops by default (14-pixel crops pulled the codes towards uniform; ``small_crops`` turns
    multi-crop back on), large crops of 30-100% rotated up to 20 degrees, trained on clean canvases
    (the dataset's default ``"training": "clean"``) and evaluated on the hard held-out set.

    Codes and batch norm are computed per micro-batch: in a swarm, micro-batches of 4-16 images did
    not learn where 64 did, and few large global steps want lr 0.6 (the demo's settings,
    ``config.DEMO_DEFAULTS_BY_RECIPE``; benchmarks/README.md, "Why the demo swarm did not learn")."""

    name = "swav-tiny"
    size_hparams = {
        "block": "basic", "layers": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "small_input": True,
        "image_size": 32, "large_crop_size": 28, "large_crop_scale": [0.3, 1.0], "crop_rotation": 20.0,
        "small_crops": 0, "small_crop_size": 14, "small_crop_scale": [0.2, 0.5], "flip": False,
        "sinkhorn_epsilon": 0.03,
        "hidden_dim": 256, "output_dim": 32, "prototypes": 64, "queue_length": 0,
        "freeze_prototypes_steps": 20, "lr": 0.3, "trust_coefficient": 0.02,
        "warmup_epochs": 2, "decay_epochs": 2000,
    }


class SwavResNet18(SwavRecipe):
    """ResNet-18 with the paper's multi-crop (2x224 + 6x96), head (2048 -> 128) and 3000 prototypes."""

    name = "swav-resnet18"
    size_hparams = {
        "block": RESNET18.block, "layers": list(RESNET18.layers), "widths": list(RESNET18.widths),
        "small_input": False, "image_size": 224, "large_crop_size": 224, "large_crop_scale": [0.14, 1.0],
        "small_crops": 6, "small_crop_size": 96, "small_crop_scale": [0.05, 0.14],
        "hidden_dim": 2048, "output_dim": 128, "prototypes": 3000, "queue_length": 3840,
        "freeze_prototypes_steps": 313, "lr": 0.6, "trust_coefficient": 0.001,
        "warmup_epochs": 500, "decay_epochs": 50000,
    }


class SwavResNet50(SwavResNet18):
    """ResNet-50, otherwise as ``swav-resnet18`` (the paper's main setting)."""

    name = "swav-resnet50"
    size_hparams = {**SwavResNet18.size_hparams, "block": RESNET50.block, "layers": list(RESNET50.layers),
                    "widths": list(RESNET50.widths)}
