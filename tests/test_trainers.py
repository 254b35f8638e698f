"""Unit tests of the ALBERT recipes: corpus, tokenizer, data, model, and real training runs with controls."""
from __future__ import annotations

import itertools
import statistics
import zlib
from pathlib import Path

import pytest
import torch

from crowdtrain.trainers import get_recipe
from crowdtrain.trainers.albert import NUM_SPECIAL, AlbertBase, AlbertLarge, AlbertTiny
from crowdtrain.trainers.masking import IGNORE_INDEX
from crowdtrain.trainers.sop import SWAPPED
from crowdtrain.trainers.corpus import MIN_WORDS, _stdlib_corpus, load_corpus, stdlib_docstrings_spec
from crowdtrain.trainers.tokenizer import (
    MASK,
    SPECIAL_TOKENS,
    tokenizer_from_bytes,
    tokenizer_sha256,
    tokenizer_to_bytes,
    train_tokenizer,
)

SMALL_SPEC = stdlib_docstrings_spec(max_bytes=60_000)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(AlbertTiny.default_dataset())


@pytest.fixture(scope="module")
def assets() -> bytes:
    return AlbertTiny.build_assets(AlbertTiny.default_hparams(), AlbertTiny.default_dataset())


@pytest.fixture(scope="module")
def recipe(assets: bytes) -> AlbertTiny:
    return AlbertTiny(AlbertTiny.default_hparams(), AlbertTiny.default_dataset(), assets)


@pytest.fixture
def torch_threads():
    """Runs the test on (at most) two threads, as on a small volunteer machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    yield
    torch.set_num_threads(previous)


# --- corpus -------------------------------------------------------------------------------------


def test_stdlib_corpus_is_english_prose_split_by_hash(corpus):
    assert len(corpus.train) > 1000
    assert 0.02 < len(corpus.heldout) / (len(corpus.train) + len(corpus.heldout)) < 0.10
    assert not set(corpus.train) & set(corpus.heldout)
    assert all(len(text.split()) >= MIN_WORDS and "\n" not in text for text in corpus.train[:500])
    assert sum(" the " in text for text in corpus.train) > len(corpus.train) / 3


def test_stdlib_corpus_extraction_is_deterministic_and_respects_the_budget():
    first = load_corpus(SMALL_SPEC)
    assert _stdlib_corpus.__wrapped__(SMALL_SPEC["max_bytes"]) == first  # extracted afresh
    assert load_corpus(SMALL_SPEC) is first  # cached
    size = sum(len(t.encode()) for t in first.train + first.heldout)
    assert 60_000 <= size < 100_000


def test_text_files_corpus(tmp_path: Path):
    words = "one two three four five six seven eight nine".split()
    paragraphs = [" ".join(words[i:] + words[:i]) for i in range(9)]
    (tmp_path / "a.txt").write_text("\n\n".join(paragraphs[:5]) + "\n\ntoo short\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("\n  \n".join(paragraphs[5:]))
    (tmp_path / "sub" / "ignored.md").write_text(paragraphs[0] + " extra")
    corpus = load_corpus({"kind": "text-files", "paths": [str(tmp_path)]})
    assert sorted(corpus.train + corpus.heldout) == sorted(paragraphs)
    single = load_corpus({"kind": "text-files", "paths": [str(tmp_path / "a.txt")]})
    assert sorted(single.train + single.heldout) == sorted(paragraphs[:5])


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "wikipedia"}, "unknown dataset kind"),
        ({}, "unknown dataset kind"),
        ({"kind": "stdlib-docstrings", "max_byte": 10}, "unknown keys"),
        ({"kind": "stdlib-docstrings", "max_bytes": 0}, "positive integer"),
        ({"kind": "text-files"}, "needs 'paths'"),
        ({"kind": "text-files", "paths": ["/nonexistent/corpus.txt"]}, "no such file"),
    ],
)
def test_bad_dataset_specs_raise_value_error(spec, message):
    with pytest.raises(ValueError, match=message):
        load_corpus(spec)


# --- tokenizer ----------------------------------------------------------------------------------


def test_tokenizer_training_is_deterministic_and_round_trips(corpus, assets: bytes):
    again = tokenizer_to_bytes(train_tokenizer(corpus.train, AlbertTiny.default_hparams()["vocab_size"]))
    assert again == assets
    assert tokenizer_sha256(again) == tokenizer_sha256(assets) and len(tokenizer_sha256(assets)) == 64
    loaded = tokenizer_from_bytes(assets)
    assert tokenizer_to_bytes(loaded) == assets
    assert [loaded.token_to_id(token) for token in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    encoding = loaded.encode("Return the Value of the attribute, or raise AttributeError.")
    assert encoding.tokens[:3] == ["return", "the", "value"] and "[UNK]" not in encoding.tokens
    assert len(zlib.compress(assets, 9)) < 60_000


def test_tokenizer_of_small_corpus_is_deterministic():
    texts = load_corpus(SMALL_SPEC).train
    trained = {tokenizer_to_bytes(train_tokenizer(texts, 1000)) for _ in range(3)}
    assert len(trained) == 1


def test_tokenizer_errors():
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["a tiny corpus with very few distinct words"], 1000)
    with pytest.raises(ValueError, match="malformed"):
        tokenizer_from_bytes(b"{not json")


# --- albert-tiny: configuration, data, model ----------------------------------------------------


def test_evaluation_needs_held_out_texts(tmp_path: Path, assets: bytes):
    (tmp_path / "one.txt").write_text("a single paragraph of text is far too little to evaluate on")
    dataset = {"kind": "text-files", "paths": [str(tmp_path)]}
    recipe = AlbertTiny({}, dataset, assets)
    assert not recipe.corpus.heldout
    with pytest.raises(ValueError, match="no held-out text"):
        recipe.evaluate(recipe.build_model())


def test_registry_and_recipe_configuration(assets: bytes):
    assert get_recipe("albert-tiny") is AlbertTiny
    assert get_recipe("albert-base") is AlbertBase and get_recipe("albert-large") is AlbertLarge
    dataset = AlbertTiny.default_dataset()
    with pytest.raises(ValueError, match="vocab_size"):
        AlbertTiny({"vocab_size": 2048}, dataset, assets)
    with pytest.raises(ValueError, match="unknown albert-tiny hparams"):
        AlbertTiny({"learning_rate": 1.0}, dataset, assets)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        AlbertTiny({"lr": -1}, dataset, assets)
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        AlbertTiny({"seq_len": "long"}, dataset, assets)
    with pytest.raises(ValueError, match="mask_prob"):
        AlbertTiny({"mask_prob": 2.0}, dataset, assets)
    with pytest.raises(ValueError, match="malformed tokenizer"):
        AlbertTiny({}, dataset, b"garbage")


def test_paper_sizes_of_base_and_large():
    """ALBERT paper, table 1: base 12 M and large 18 M parameters (vocabulary 30 000, embedding 128)."""
    from transformers import AlbertForPreTraining

    for recipe, millions in ((AlbertBase, 12), (AlbertLarge, 18)):
        model = AlbertForPreTraining(recipe.model_config({}))
        embeddings = model.albert.embeddings.word_embeddings.weight.numel()
        assert embeddings == 30000 * 128
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.8)


def test_batches_hold_sop_pairs_with_ngram_masking(recipe: AlbertTiny):
    seq_len = recipe.hparams["seq_len"]
    batches = list(itertools.islice(recipe.batches(shard_seed=1, batch_size=8), 25))
    first = batches[0]
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "labels", "sentence_order_label"}
    assert first["input_ids"].shape[0] == 8 and first["input_ids"].shape[1] <= seq_len
    cls_id, sep_id = recipe.tokenizer.token_to_id("[CLS]"), recipe.tokenizer.token_to_id("[SEP]")
    assert bool((first["input_ids"][:, 0] == cls_id).all())
    for batch in batches:  # [CLS] A [SEP] B [SEP]: segment B (and its [SEP]) has token type 1
        originals = torch.where(batch["labels"] == IGNORE_INDEX, batch["input_ids"], batch["labels"])
        for row, types, attention in zip(originals, batch["token_type_ids"], batch["attention_mask"]):
            length = int(attention.sum())
            seps = (row[:length] == sep_id).nonzero().view(-1).tolist()
            assert len(seps) == 2 and seps[1] == length - 1
            assert types[:seps[0] + 1].eq(0).all() and types[seps[0] + 1:length].eq(1).all()

    labels = torch.cat([b["labels"].flatten() for b in batches])
    inputs = torch.cat([b["input_ids"].flatten() for b in batches])
    selected = labels != IGNORE_INDEX
    text_tokens = (labels >= NUM_SPECIAL) | ((inputs >= NUM_SPECIAL) & ~selected)
    assert bool((labels[selected] >= NUM_SPECIAL).all())
    assert 0.13 < selected.sum().item() / text_tokens.sum().item() < 0.17
    mask_id = recipe.tokenizer.token_to_id(MASK)
    assert 0.75 < (inputs[selected] == mask_id).float().mean().item() < 0.85
    order = torch.cat([b["sentence_order_label"] for b in batches]).float()
    assert 0.35 < (order == SWAPPED).float().mean().item() < 0.65


def test_every_batch_has_a_masked_token(recipe: AlbertTiny, assets: bytes):
    never_masks = AlbertTiny({"mask_prob": 0.0}, recipe.dataset, assets)
    for batch in itertools.islice(never_masks.batches(shard_seed=3, batch_size=1), 5):
        assert int((batch["labels"] != IGNORE_INDEX).sum()) == 1


def test_shard_seeds_decide_the_batches(recipe: AlbertTiny):
    def first_batches(seed: int) -> list[dict[str, torch.Tensor]]:
        return list(itertools.islice(recipe.batches(shard_seed=seed, batch_size=4), 3))

    same, again, other = first_batches(2**64 - 1), first_batches(2**64 - 1), first_batches(5)
    for a, b in zip(same, again):
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(same[0]["input_ids"], other[0]["input_ids"])


def test_model_init_is_identical_for_the_same_seed(recipe: AlbertTiny, assets: bytes):
    first, second = recipe.build_model(), recipe.build_model()
    other = AlbertTiny({"seed": 1}, recipe.dataset, assets).build_model()
    assert 500_000 < sum(p.numel() for p in first.parameters()) < 2_000_000
    state, other_state = first.state_dict(), other.state_dict()
    assert all(torch.equal(value, second.state_dict()[key]) for key, value in state.items())
    assert not all(torch.equal(value, other_state[key]) for key, value in state.items())


def test_lamb_with_warmup_and_decay_by_global_epoch(recipe: AlbertTiny):
    model = torch.nn.Linear(2, 2)
    optimizer = recipe.make_optimizer(model.parameters())
    assert type(optimizer).__name__ == "Lamb"
    scheduler = recipe.make_scheduler(optimizer)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    h = recipe.hparams
    lr, warmup, decay = h["lr"], h["warmup_epochs"], h["decay_epochs"]
    expected = [lr * (e + 1) / (warmup + 1) if e < warmup else lr * (1 - (e - warmup) / decay) for e in range(4)]
    assert rates == pytest.approx(expected) and decay > 0
    warm = AlbertTiny({"warmup_epochs": 2}, recipe.dataset, recipe.assets)
    optimizer = warm.make_optimizer(model.parameters())
    scheduler = warm.make_scheduler(optimizer)
    first = [optimizer.param_groups[0]["lr"]]
    optimizer.step()
    scheduler.step()
    first.append(optimizer.param_groups[0]["lr"])
    assert first == pytest.approx([lr / 3, 2 * lr / 3])


def test_evaluation_is_fixed_and_restores_train_mode(recipe: AlbertTiny):
    model = recipe.build_model()
    model.train()
    result = recipe.evaluate(model)
    assert result.metric == "masked_token_accuracy" and 0.0 <= result.value <= 1.0
    assert set(result.extra) == {"sop_accuracy", "mlm_loss"} and 0.0 <= result.extra["sop_accuracy"] <= 1.0
    assert recipe.evaluate(model) == result
    assert model.training
    assert recipe.evaluate_loss(model) == pytest.approx(float(torch.log(torch.tensor(4096.0))), abs=0.3)


# --- albert-tiny: it learns ---------------------------------------------------------------------

LEARNING_STEPS, MICRO_BATCHES, MICRO_BATCH = 100, 4, 16
LEARNING_HPARAMS = {"lr": 5e-3, "warmup_epochs": 2}


def train_albert(recipe: AlbertTiny, steps: int, shard_seed: int = 7) -> tuple[torch.nn.Module, list[float]]:
    """``steps`` optimizer steps of ``MICRO_BATCHES`` accumulated micro-batches (64 pairs a step), as
    a swarm of a few peers would take them, with the scheduler stepped once per step (global epoch)."""
    model = recipe.build_model()
    optimizer = recipe.make_optimizer(model.parameters())
    scheduler = recipe.make_scheduler(optimizer)
    batches = recipe.batches(shard_seed=shard_seed, batch_size=MICRO_BATCH)
    losses = []
    for _ in range(steps):
        step_loss = 0.0
        for _ in range(MICRO_BATCHES):
            loss = recipe.loss(model, next(batches)) / MICRO_BATCHES
            loss.backward()
            step_loss += loss.item()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        losses.append(step_loss)
    return model, losses


@pytest.mark.timeout(900)
def test_albert_tiny_learns_beyond_unigram_frequencies(recipe: AlbertTiny, assets: bytes, torch_threads):
    """Controls measured in the same run: the same model at random initialisation, and the accuracy of
    always predicting the most frequent training token (what a model that ignores context reaches).
    The learning rate for runs of this length (see the albert module docstring): 5e-3, 2 warm-up epochs."""
    recipe = AlbertTiny(LEARNING_HPARAMS, recipe.dataset, assets)
    control = recipe.evaluate(recipe.build_model())
    baseline = recipe.unigram_baseline()
    model, losses = train_albert(recipe, LEARNING_STEPS)
    trained = recipe.evaluate(model)
    print(f"albert-tiny after {LEARNING_STEPS * MICRO_BATCHES * MICRO_BATCH} pairs: masked-token accuracy "
          f"{control.value:.4f} -> {trained.value:.4f} (unigram baseline {baseline:.4f}); SOP accuracy "
          f"{control.extra['sop_accuracy']:.3f} -> {trained.extra['sop_accuracy']:.3f}; loss {losses[0]:.3f} -> "
          f"{statistics.mean(losses[-5:]):.3f}")
    assert statistics.mean(losses[-5:]) < losses[0] - 0.8, losses
    assert trained.extra["mlm_loss"] < control.extra["mlm_loss"] - 1.5
    assert control.value < baseline
    assert trained.value > baseline + 0.02, (trained.value, baseline)
