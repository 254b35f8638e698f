"""Both recipes in a real 2-peer swarm, against one peer training locally on the same number of samples.

Slow: each runs a coordinator and two volunteers for several minutes on a small CPU machine. The swarm
must reach at least what one peer reaches alone with the same samples and the same global-epoch
schedule, up to the evaluation's noise (``NOISE``: one standard error of the held-out estimate)."""
from __future__ import annotations

import math

import pytest
import torch

from crowdtrain.swarm.summary import load_reports
from crowdtrain.trainers import get_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
TARGET_BATCH, MICRO_BATCH = 64, 16


def local_run(name: str, epochs: int) -> tuple[float, float]:
    """(metric at random init, metric after ``epochs`` steps of TARGET_BATCH samples) for one peer."""
    recipe_cls = get_recipe(name)
    assets = recipe_cls.build_assets(recipe_cls.default_hparams(), recipe_cls.default_dataset())
    recipe = recipe_cls(recipe_cls.default_hparams(), recipe_cls.default_dataset(), assets)
    model = recipe.build_model()
    start = recipe.evaluate(model).value
    optimizer = recipe.make_optimizer(model.parameters())
    scheduler = recipe.make_scheduler(optimizer)
    batches = recipe.batches(shard_seed=1, batch_size=MICRO_BATCH)
    accumulation = TARGET_BATCH // MICRO_BATCH
    for _ in range(epochs):
        for _ in range(accumulation):
            (recipe.loss(model, next(batches)) / accumulation).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return start, recipe.evaluate(model).value


@pytest.mark.parametrize("recipe, epochs", [("albert-tiny", 60), ("swav-tiny", 40)])
def test_two_peer_swarm_reaches_what_one_peer_reaches(local_swarm, tmp_path, recipe, epochs):
    torch.set_num_threads(1)
    coordinator, address = local_swarm.start_coordinator([
        "--recipe", recipe, "--target-batch-size", str(TARGET_BATCH), "--max-epochs", str(epochs),
        "--matchmaking-time", "2", "--request-timeout", "0.5", "--averaging-timeout", "30",
        "--run-dir", str(tmp_path / "run")], timeout=300)
    volunteers = [local_swarm.start_volunteer(name, [address], ["--batch-size", str(MICRO_BATCH), "--evaluate"])
                  for name in ("a", "b")]
    for volunteer in volunteers:
        assert volunteer.popen.wait(timeout=1300) == 0, volunteer.log()[-3000:]
    reports = load_reports([v.report_path for v in volunteers])
    swarm_start = sum(r["eval_start"] for r in reports) / len(reports)
    swarm_end = sum(r["eval_end"] for r in reports) / len(reports)
    local_start, local_end = local_run(recipe, epochs)
    noise = math.sqrt(max(local_end * (1 - local_end), 0.01) / 360)  # >= 360 scored items in both evaluations
    print(f"{recipe}: swarm {swarm_start:.4f} -> {swarm_end:.4f}; one peer {local_start:.4f} -> {local_end:.4f} "
          f"({epochs} epochs of {TARGET_BATCH} samples)")
    assert swarm_end >= local_end - noise
    assert swarm_end > swarm_start
