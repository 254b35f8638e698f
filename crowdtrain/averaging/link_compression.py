"""Compression by link: what this peer sends in an all-reduce is compressed according to its upload.

Every tensor part travels with its compression type, so a peer on a slow uplink can send 8-bit
quantized parts while its groupmates stay lossless; each reducer answers with one average in its own
codec (:mod:`crowdtrain.averaging.consistent`), so the group still ends with one result. Unmeasured
links keep the default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hivemind.compression import CompressionBase, Float16Compression, NoCompression, Quantile8BitQuantization


@dataclass(frozen=True, kw_only=True)
class CompressionPolicy:
    fp16_below_mbps: float = 100.0
    "Send float16 on uplinks slower than this (halves the bytes; lossless enough for gradients)."
    int8_below_mbps: float = 20.0
    "Send 8-bit quantiles (a quarter of the bytes) on uplinks slower than this."

    def __post_init__(self) -> None:
        if not 0 <= self.int8_below_mbps <= self.fp16_below_mbps:
            raise ValueError("CompressionPolicy needs 0 <= int8_below_mbps <= fp16_below_mbps, "
                             f"got {self.int8_below_mbps}, {self.fp16_below_mbps}")


def choose_compression(upload_mbps: Optional[float], policy: CompressionPolicy = CompressionPolicy()
                       ) -> CompressionBase:
    """The compression of what this peer sends, from its measured upload (None: unmeasured)."""
    if upload_mbps is None or upload_mbps >= policy.fp16_below_mbps:
        return NoCompression()
    if upload_mbps >= policy.int8_below_mbps:
        return Float16Compression()
    return Quantile8BitQuantization()
