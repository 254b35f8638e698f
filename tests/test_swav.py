"""The SwAV recipes: data, loss, prototype freezing, queue, evaluation, and learning with controls."""
from __future__ import annotations

import pytest
import torch

from crowdtrain.trainers import get_recipe
from crowdtrain.trainers.swav.recipe import SwavResNet18, SwavResNet50, SwavTiny

SMALL = {"widths": [8, 16, 32, 32], "hidden_dim": 32, "output_dim": 8, "prototypes": 16}


@pytest.fixture(scope="module")
def recipe() -> SwavTiny:
    return SwavTiny({}, SwavTiny.default_dataset(), b"")


def test_registry_defaults_and_bad_hparams():
    assert get_recipe("swav-tiny") is SwavTiny
    assert get_recipe("swav-resnet18") is SwavResNet18 and get_recipe("swav-resnet50") is SwavResNet50
    paper = SwavResNet50.default_hparams()
    assert (paper["large_crop_size"], paper["small_crops"], paper["small_crop_size"]) == (224, 6, 96)
    assert (paper["prototypes"], paper["output_dim"], paper["queue_length"]) == (3000, 128, 3840)
    assert SwavTiny.build_assets({}, SwavTiny.default_dataset()) == b""
    for hparams, message in (({"prototypes": 0}, "prototypes must be a positive integer"),
                             ({"lr": "fast"}, "lr must be a positive number"),
                             ({"colour": 1}, "unknown swav-tiny hparams"),
                             ({"block": "dense"}, "unknown ResNet block")):
        with pytest.raises(ValueError, match=message):
            SwavTiny(hparams, SwavTiny.default_dataset(), b"")
    with pytest.raises(ValueError, match="unknown image dataset kind"):
        SwavTiny.build_assets({}, {"kind": "cifar"})


def test_batches_hold_the_multicrop_views_and_follow_the_shard_seed():
    recipe = SwavTiny({"small_crops": 3}, SwavTiny.default_dataset(), b"")  # swav-tiny has none by default
    h = recipe.hparams
    batch = next(recipe.batches(shard_seed=1, batch_size=4))
    assert batch["large"].shape == (2 * 4, 1, h["large_crop_size"], h["large_crop_size"])
    assert batch["small"].shape == (h["small_crops"] * 4, 1, h["small_crop_size"], h["small_crop_size"])
    again = next(recipe.batches(shard_seed=1, batch_size=4))
    other = next(recipe.batches(shard_seed=2, batch_size=4))
    assert torch.equal(batch["large"], again["large"]) and not torch.equal(batch["large"], other["large"])


def test_prototypes_are_frozen_for_the_first_steps_then_learn():
    recipe = SwavTiny({**SMALL, "freeze_prototypes_steps": 2}, SwavTiny.default_dataset(), b"")
    model = recipe.build_model()
    batches = recipe.batches(shard_seed=0, batch_size=8)
    grads = []
    for _ in range(3):
        model.zero_grad()
        loss = recipe.loss(model, next(batches))
        assert torch.isfinite(loss)
        loss.backward()
        grads.append(model.prototypes.weight.grad)
        assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    assert grads[0] is None and grads[1] is None and grads[2].abs().sum() > 0


def test_queue_fills_and_joins_the_codes():
    recipe = SwavTiny({**SMALL, "queue_length": 12}, SwavTiny.default_dataset(), b"")
    model = recipe.build_model()
    batches = recipe.batches(shard_seed=0, batch_size=4)
    for step in range(4):
        recipe.loss(model, next(batches))
        full = recipe.queue.full(0)
        assert (full is None) == (step < 2)  # 4 embeddings a step: full after the third
    assert recipe.queue.full(0).shape == (12, SMALL["output_dim"])


def test_evaluation_is_fixed_restores_train_mode_and_reports_the_pixel_control(recipe: SwavTiny):
    model = recipe.build_model()
    model.train()
    result = recipe.evaluate(model)
    assert result.metric == "knn_accuracy" and 0.0 <= result.value <= 1.0
    assert 0.1 < result.baseline.value < 0.7
    assert recipe.evaluate(model) == result and model.training


@pytest.mark.gpu
def test_mixed_precision_step_on_gpu(recipe: SwavTiny):
    model = recipe.build_model().cuda()
    batch = {k: v.cuda() for k, v in next(recipe.batches(shard_seed=0, batch_size=8)).items()}
    loss = recipe.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and recipe.evaluate(model).value >= 0


def train_swav(recipe: SwavTiny, steps: int, batch_size: int, shard_seed: int = 3) -> torch.nn.Module:
    model = recipe.build_model()
    optimizer = recipe.make_optimizer(model.parameters())
    scheduler = recipe.make_scheduler(optimizer)
    batches = recipe.batches(shard_seed=shard_seed, batch_size=batch_size)
    for _ in range(steps):
        recipe.loss(model, next(batches)).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return model


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_swav_tiny_knn_beats_random_init_by_ten_points(recipe: SwavTiny):
    """The issue's target: k-NN accuracy of the frozen backbone on the hard held-out digits at least 10
    points above the same backbone at random init, raw pixels below 70%. swav-tiny's defaults (clean
    training canvases, Sinkhorn epsilon 0.03, rotated large crops, no small crops) after 400 steps of 64
    images (25 600): 0.437 against 0.2145 (benchmarks/README.md, SwAV, 2026-11-25). Slow-marked: 183 s
    on a loaded 2-core machine, twice the CI budget; 300 steps (~90 s) give only +11 points, too thin a
    margin for CI."""
    control = recipe.evaluate(recipe.build_model())
    trained = recipe.evaluate(train_swav(recipe, steps=400, batch_size=64))
    print(f"swav-tiny k-NN: random init {control.value:.4f}, trained {trained.value:.4f}, "
          f"raw pixels {control.baseline.value:.4f}")
    assert control.baseline.value < 0.70
    assert trained.value >= control.value + 0.10
