"""Wire formats of averaged deltas, and error feedback for the lossy ones."""
from __future__ import annotations

from typing import Sequence

import torch
from hivemind.compression import (CompressionBase, CompressionInfo, Float16Compression, NoCompression,
                                  Quantile8BitQuantization)

COMPRESSIONS: dict[str, type[CompressionBase]] = {
    "none": NoCompression,
    "fp16": Float16Compression,
    "8bit": Quantile8BitQuantization,
}


def delta_compression(name: str) -> CompressionBase:
    """The hivemind compression of a configured name (``none``, ``fp16``, ``8bit``)."""
    try:
        return COMPRESSIONS[name]()
    except KeyError:
        raise ValueError(f"unknown compression {name!r}; expected one of {', '.join(COMPRESSIONS)}") from None


def round_trip(tensor: torch.Tensor, compression: CompressionBase) -> torch.Tensor:
    """What a receiver decodes from ``tensor`` sent with ``compression``."""
    return compression.extract(compression.compress(tensor, CompressionInfo.from_tensor(tensor))).to(tensor.dtype)


class ErrorFeedback:
    """Adds last round's compression error to this round's delta, so that no part of it is lost for good.

    hivemind compresses the flattened tensors in parts, so the error recorded here (per whole tensor)
    approximates the error on the wire for part-wise codebooks (8-bit); it is exact for fp16.
    """

    def __init__(self, compression: CompressionBase):
        self.compression = compression
        self.residuals: list[torch.Tensor] = []

    def compensate(self, deltas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """delta + residual, and remember the new residual (what compression will drop of it)."""
        if not self.residuals:
            self.residuals = [torch.zeros_like(d) for d in deltas]
        sent = [d + r for d, r in zip(deltas, self.residuals)]
        self.residuals = [s - round_trip(s, self.compression) for s in sent]
        return sent

    def reset(self) -> None:
        """Forget the residual (after adopting another peer's state, it no longer applies)."""
        self.residuals = []
