"""N-gram masking for masked-language modelling, as in ALBERT (Lan et al., 2020, section 4.1).

``mask_prob`` of the maskable tokens of each sequence are chosen as spans of ``n`` consecutive
tokens, ``n`` drawn from 1..``max_ngram`` with ``p(n) = (1/n) / sum_k (1/k)``; spans never overlap
and never cover special tokens. Each chosen token then becomes [MASK] (80%), a random token (10%) or
stays as it is (10%), as in BERT; the model must predict all chosen tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
"""Label of positions that do not count in the loss (the convention of ``transformers``)."""
MAX_PLACEMENT_TRIES = 16


@dataclass(frozen=True)
class NgramMasking:
    """How to mask: selection rate, longest span, [MASK] id and the range of random replacement ids."""

    mask_prob: float
    max_ngram: int
    mask_id: int
    first_random_id: int
    vocab_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.mask_prob < 1:
            raise ValueError(f"mask_prob must lie in [0, 1), got {self.mask_prob!r}")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram must be at least 1, got {self.max_ngram!r}")

    def span_length_probs(self) -> torch.Tensor:
        """``p(n)`` for n = 1..max_ngram."""
        weights = 1.0 / torch.arange(1, self.max_ngram + 1, dtype=torch.float64)
        return weights / weights.sum()

    def select(self, maskable: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Boolean matrix of the chosen positions of a (batch, length) ``maskable`` matrix; at least
        one position per batch when any is maskable (so that the loss is defined)."""
        selected = torch.zeros_like(maskable)
        for row in range(maskable.shape[0]):
            selected[row] = self._select_row(maskable[row], generator)
        if maskable.any() and not selected.any():
            selected.view(-1)[maskable.view(-1).nonzero()[0]] = True
        return selected

    def apply(self, input_ids: torch.Tensor, maskable: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked inputs, labels): labels hold the original ids at the chosen positions and
        ``IGNORE_INDEX`` elsewhere; inputs are replaced 80/10/10 at the chosen positions."""
        selected = self.select(maskable, generator)
        labels = torch.where(selected, input_ids, IGNORE_INDEX)
        draw = torch.rand(input_ids.shape, generator=generator)
        random_ids = torch.randint(self.first_random_id, self.vocab_size, input_ids.shape, generator=generator)
        inputs = torch.where(selected & (draw < 0.8), self.mask_id, input_ids)
        inputs = torch.where(selected & (draw >= 0.8) & (draw < 0.9), random_ids, inputs)
        return inputs, labels

    def spans(self, maskable: torch.Tensor, generator: torch.Generator) -> list[tuple[int, int]]:
        """(start, length) of the spans chosen in one sequence, given its boolean ``maskable`` row.

        Draws a span length from ``p(n)``, then random start positions until the span fits on free
        maskable tokens (``MAX_PLACEMENT_TRIES`` at most, else a new length is drawn), until
        ``round(mask_prob * maskable)`` tokens are covered. Placing a drawn length instead of
        dropping it when it collides keeps the lengths of the chosen spans distributed as ``p(n)``;
        only the last span is shortened to the remaining budget."""
        length = maskable.shape[0]
        positions = maskable.nonzero().view(-1).tolist()
        budget = int(round(self.mask_prob * len(positions)))
        free = maskable.tolist()
        chosen: list[tuple[int, int]] = []
        covered = 0
        probs = self.span_length_probs()
        while covered < budget:
            span = min(int(torch.multinomial(probs, 1, generator=generator)) + 1, budget - covered)
            starts = torch.randint(len(positions), (MAX_PLACEMENT_TRIES,), generator=generator).tolist()
            for start in (positions[i] for i in starts):
                if start + span <= length and all(free[start:start + span]):
                    free[start:start + span] = [False] * span
                    chosen.append((start, span))
                    covered += span
                    break
        return chosen

    def _select_row(self, maskable: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        chosen = torch.zeros_like(maskable)
        for start, span in self.spans(maskable, generator):
            chosen[start:start + span] = True
        return chosen
