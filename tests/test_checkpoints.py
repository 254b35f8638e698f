"""Checkpoints on disk (round-trip, corruption, pruning) and the final export with its manifest."""
import functools
import json
import logging
from types import SimpleNamespace

import pytest
import torch

from crowdtrain.swarm.checkpoints import Checkpoint, CheckpointStore, CorruptCheckpoint
from crowdtrain.swarm.export import export_final, verify_export
from crowdtrain.trainers import get_recipe
from crowdtrain.trainers.base import Recipe
from crowdtrain.trainers.corpus import stdlib_docstrings_spec

RUN = "run-0123456789abcdef"


def make_checkpoint(epoch: int) -> Checkpoint:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    state["state"]["local_epoch"] = epoch
    return Checkpoint(run_id=RUN, epoch=epoch, model=model.state_dict(), optimizer=state)


def assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert (a.run_id, a.epoch) == (b.run_id, b.epoch)
    for key, tensor in a.model.items():
        torch.testing.assert_close(b.model[key], tensor, rtol=0, atol=0)
    assert b.optimizer["state"]["local_epoch"] == a.epoch
    torch.testing.assert_close(b.optimizer["state"][0]["exp_avg"], a.optimizer["state"][0]["exp_avg"], rtol=0, atol=0)
    assert b.optimizer["param_groups"] == a.optimizer["param_groups"]


def test_round_trip_and_only_the_newest_k_are_kept(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    saved = {epoch: make_checkpoint(epoch) for epoch in (3, 6, 9)}
    for checkpoint in saved.values():
        store.save(checkpoint)
    assert store.epochs() == [9, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch-000006.json", "epoch-000006.pt", "epoch-000009.json", "epoch-000009.pt"]
    assert_same(saved[9], store.newest_valid(RUN))
    assert json.loads((tmp_path / "epoch-000009.json").read_text())["epoch"] == 9


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_sidecar", "bad_sidecar", "other_run"])
def test_a_corrupt_checkpoint_is_skipped_with_one_line_and_the_older_one_used(tmp_path, caplog, damage):
    store = CheckpointStore(tmp_path, keep=3)
    older = make_checkpoint(4)
    store.save(older)
    store.save(make_checkpoint(8) if damage != "other_run" else Checkpoint(
        run_id="run-ffffffffffffffff", epoch=8, model=older.model, optimizer=older.optimizer))
    newest = store.data_path(8)
    sidecar = newest.with_suffix(".json")
    data = newest.read_bytes()
    if damage == "flip":
        newest.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncate":
        newest.write_bytes(data[:len(data) // 2])
    elif damage == "no_sidecar":
        sidecar.unlink()
    elif damage == "bad_sidecar":
        sidecar.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="crowdtrain.swarm.checkpoints"):
        loaded = store.newest_valid(RUN)
    assert_same(older, loaded)
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 1 and skipped[0].startswith("skipping checkpoint epoch-000008.pt: ")
    assert "\n" not in skipped[0]
    assert newest.exists(), "a corrupt checkpoint is reported, never deleted"


def test_no_valid_checkpoint_gives_none_and_damage_is_named(tmp_path):
    store = CheckpointStore(tmp_path, keep=1)
    assert store.newest_valid(RUN) is None
    store.save(make_checkpoint(2))
    store.data_path(2).write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpoint, match="sha256 does not match"):
        store.load(2, RUN)
    assert store.newest_valid(RUN) is None


def test_an_interrupted_write_leaves_the_previous_checkpoint_intact(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    store.save(make_checkpoint(5))
    (tmp_path / "epoch-000010.pt.tmp").write_bytes(b"half a checkpoint")  # killed before the rename
    assert store.epochs() == [5]
    assert store.newest_valid(RUN).epoch == 5


def test_default_export_is_a_state_dict_listed_with_its_sha256(tmp_path):
    plain = SimpleNamespace(name="plain", export=functools.partial(Recipe.export, None))  # the default hook
    model = torch.nn.Linear(3, 2)
    manifest = export_final(plain, model, tmp_path / "final", run_id=RUN, epoch=7)
    assert [f.name for f in manifest.files] == ["model.pt"]
    assert verify_export(tmp_path / "final") == manifest
    state = torch.load(tmp_path / "final" / "model.pt")
    torch.testing.assert_close(state["weight"], model.weight.detach(), rtol=0, atol=0)
    (tmp_path / "final" / "model.pt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match its sha256"):
        verify_export(tmp_path / "final")


def test_albert_export_loads_with_from_pretrained(tmp_path):
    from transformers import AutoModelForPreTraining

    recipe_cls = get_recipe("albert-tiny")
    hparams = {**recipe_cls.default_hparams(), "vocab_size": 512, "num_hidden_layers": 1, "hidden_size": 32,
               "embedding_size": 16, "intermediate_size": 64, "num_attention_heads": 2}
    dataset = stdlib_docstrings_spec(max_bytes=60_000)
    recipe = recipe_cls(hparams, dataset, recipe_cls.build_assets(hparams, dataset))
    model = recipe.build_model()
    manifest = export_final(recipe, model, tmp_path / "final", run_id=RUN, epoch=3)
    assert {"config.json", "tokenizer.json"} <= {f.name for f in manifest.files}
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path / "final").state_dict()
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("fields, message", [
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"checkpoint_every": -1}, "checkpoint_every"),
    ({"follow_interval": 0}, "follow_interval"),
    ({"enabled": False, "resume": True}, "resume: needs the state keeper"),
])
def test_keeper_config_names_the_bad_field(fields, message):
    from crowdtrain.config import KeeperConfig
    from crowdtrain.errors import UsageError

    with pytest.raises(UsageError, match=message):
        KeeperConfig(**fields)
