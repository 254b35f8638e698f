"""ALBERT's pieces against their definitions: n-gram masking, SOP pairs, LAMB, the global-epoch schedule."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from crowdtrain.trainers.lamb import Lamb
from crowdtrain.trainers.masking import IGNORE_INDEX, NgramMasking
from crowdtrain.trainers.schedule import WarmupDecay
from crowdtrain.trainers.sop import IN_ORDER, SWAPPED, segment_pairs, split_sentences

MASK_ID, VOCAB = 4, 1000


def _masking(mask_prob: float = 0.15, max_ngram: int = 3) -> NgramMasking:
    return NgramMasking(mask_prob=mask_prob, max_ngram=max_ngram, mask_id=MASK_ID, first_random_id=5,
                        vocab_size=VOCAB)


# --- n-gram masking ------------------------------------------------------------------------------


def test_span_lengths_follow_one_over_n():
    masking = _masking()
    assert masking.span_length_probs().tolist() == pytest.approx([6 / 11, 3 / 11, 2 / 11])
    generator = torch.Generator().manual_seed(0)
    maskable = torch.ones(512, dtype=torch.bool)
    lengths = Counter(span for _ in range(200) for _, span in masking.spans(maskable, generator))
    total = sum(lengths.values())
    assert set(lengths) == {1, 2, 3}
    # ALBERT skips a span that would overshoot the budget, so the longest spans are slightly rarer
    for n, expected in zip((1, 2, 3), (6 / 11, 3 / 11, 2 / 11)):
        assert lengths[n] / total == pytest.approx(expected, abs=0.03)


def test_spans_are_disjoint_inside_maskable_tokens_and_meet_the_budget():
    masking = _masking()
    generator = torch.Generator().manual_seed(1)
    maskable = torch.rand(300, generator=generator) > 0.2
    for _ in range(50):
        spans = masking.spans(maskable, generator)
        covered = [i for start, span in spans for i in range(start, start + span)]
        assert len(covered) == len(set(covered)) == round(0.15 * int(maskable.sum()))
        assert all(maskable[i] for i in covered)


def test_masking_rate_and_80_10_10_replacement():
    masking = _masking()
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(5, VOCAB, (64, 128), generator=generator)
    input_ids[:, 0], input_ids[:, 100:] = 2, 0  # [CLS] and padding are never masked
    maskable = input_ids >= 5
    inputs, labels = masking.apply(input_ids, maskable, generator)
    selected = labels != IGNORE_INDEX
    assert not selected[~maskable].any()
    assert selected.sum() / maskable.sum() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(labels[selected], input_ids[selected])
    assert torch.equal(inputs[~selected], input_ids[~selected])
    as_mask = (inputs[selected] == MASK_ID).float().mean().item()
    kept = (inputs[selected] == input_ids[selected]).float().mean().item()
    assert as_mask == pytest.approx(0.8, abs=0.03)
    assert kept == pytest.approx(0.1 + 0.1 / VOCAB, abs=0.02)  # 10% kept (+ random draws of the same id)


def test_a_short_sequence_still_gets_one_masked_token():
    inputs, labels = _masking().apply(torch.tensor([[2, 7, 8, 3]]), torch.tensor([[False, True, True, False]]),
                                      torch.Generator().manual_seed(0))
    assert int((labels != IGNORE_INDEX).sum()) == 1


@pytest.mark.parametrize("kwargs", [{"mask_prob": 1.0}, {"mask_prob": -0.1}, {"max_ngram": 0}])
def test_bad_masking_settings(kwargs):
    with pytest.raises(ValueError):
        _masking(**kwargs)


# --- sentence-order prediction --------------------------------------------------------------------


def test_split_sentences():
    assert split_sentences("One two. Three? Four!  Five 1.5 six") == ["One two.", "Three?", "Four!", "Five 1.5 six"]


def test_sop_pairs_are_consecutive_segments_swapped_half_of_the_time():
    sentences = [[100 * s + t for t in range(5)] for s in range(40)]  # token ids encode their position
    rng = random.Random(0)
    pairs = [pair for _ in range(200) for pair in segment_pairs(sentences, 30, rng)]
    labels = Counter(pair.label for pair in pairs)
    assert labels[SWAPPED] / len(pairs) == pytest.approx(0.5, abs=0.06)
    for pair in pairs:
        a, b = (pair.first, pair.second) if pair.label == IN_ORDER else (pair.second, pair.first)
        assert a and b and len(a) + len(b) <= 30
        text = a + b
        assert text == list(range(text[0], text[0] + len(text))) or _consecutive_sentences(text)
        assert b[0] % 100 == 0  # segments are cut at a sentence boundary


def _consecutive_sentences(tokens: list[int]) -> bool:
    positions = [(t // 100) * 5 + t % 100 for t in tokens]
    return positions == list(range(positions[0], positions[0] + len(positions)))


def test_sop_single_sentence_is_cut_inside_and_long_pairs_keep_the_boundary():
    rng = random.Random(3)
    (pair,) = segment_pairs([list(range(10))], 64, rng)
    a, b = (pair.first, pair.second) if pair.label == IN_ORDER else (pair.second, pair.first)
    assert a + b == list(range(10)) and a and b
    long_pairs = list(segment_pairs([list(range(50)), list(range(50, 100))], 20, random.Random(4)))
    for pair in long_pairs:
        a, b = (pair.first, pair.second) if pair.label == IN_ORDER else (pair.second, pair.first)
        assert len(a) + len(b) == 20 and a[-1] + 1 == b[0]  # trimmed away from the A|B boundary
    assert list(segment_pairs([[7]], 64, rng)) == []


# --- LAMB -----------------------------------------------------------------------------------------


def test_lamb_first_update_matches_the_paper_by_hand():
    """Step 1: m_hat = g, v_hat = g^2, so r = g/|g| + wd*w = [1.3, 1.4] for w = [3, 4], g = [1, 2],
    wd = 0.1; ||w|| = 5, ||r|| = sqrt(3.65); w' = w - lr * 5/sqrt(3.65) * r with lr = 0.1."""
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    bias = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    optimizer = Lamb([weight, bias], lr=0.1, betas=(0.9, 0.999), eps=1e-9, weight_decay=0.1)
    weight.grad, bias.grad = torch.tensor([[1.0, 2.0]]), torch.tensor([0.2, -4.0])
    optimizer.step()
    trust = 5.0 / math.sqrt(1.3 ** 2 + 1.4 ** 2)
    assert weight.tolist()[0] == pytest.approx([3 - 0.1 * trust * 1.3, 4 - 0.1 * trust * 1.4], abs=1e-6)
    assert weight.tolist()[0] == pytest.approx([2.6597745, 3.6336033], abs=1e-6)
    # a bias: no weight decay, no trust ratio: Adam's first step, lr * sign(g)
    assert bias.tolist() == pytest.approx([0.4, -0.4], abs=1e-6)


def test_lamb_second_update_uses_bias_corrected_moments():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    optimizer = Lamb([weight], lr=0.1, betas=(0.5, 0.75), eps=1e-9, weight_decay=0.0)
    weight.grad = torch.tensor([[1.0, 2.0]])
    optimizer.step()
    after_first = weight.detach().clone()
    weight.grad = torch.tensor([[3.0, 0.0]])
    optimizer.step()
    # m = 0.5*0.5*[1,2] + 0.5*[3,0] = [1.75, 0.5], m_hat = m / 0.75; v = 0.75*0.25*[1,4] + 0.25*[9,0]
    # = [2.4375, 0.75], v_hat = v / 0.4375; r = m_hat / sqrt(v_hat)
    r = torch.tensor([1.75 / 0.75 / math.sqrt(2.4375 / 0.4375), 0.5 / 0.75 / math.sqrt(0.75 / 0.4375)])
    expected = after_first[0] - 0.1 * after_first.norm() / r.norm() * r
    assert weight[0].tolist() == pytest.approx(expected.tolist(), abs=1e-6)


def test_lamb_rejects_bad_settings():
    with pytest.raises(ValueError, match="learning rate"):
        Lamb([torch.nn.Parameter(torch.ones(2))], lr=0.0)
    with pytest.raises(ValueError, match="betas"):
        Lamb([torch.nn.Parameter(torch.ones(2))], betas=(1.0, 0.9))


# --- schedule -------------------------------------------------------------------------------------


def test_warmup_then_linear_decay_by_global_epoch():
    schedule = WarmupDecay(warmup_epochs=3, decay_epochs=4, final_fraction=0.2)
    assert [schedule.factor(e) for e in range(9)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 0.8, 0.6, 0.4, 0.2, 0.2])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=2.0)
    scheduler = schedule.scheduler(optimizer)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5, 1.0, 1.5, 2.0, 1.6])
    with pytest.raises(ValueError, match="final_lr_fraction"):
        WarmupDecay(1, 1, 1.5)
