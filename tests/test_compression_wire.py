"""Every delta compression crowdtrain offers survives hivemind's own wire format (serialize → bytes → deserialize).

hivemind 1.1.12's 8-bit codecs break with numpy >= 2.4 (``int()`` of a 1-element array): its all-reduce then
drops every 8-bit part with a debug-level log line and reports a partial round. This catches such a
dependency drift in a unit test instead of in a swarm that never completes a round.
"""
import pytest
import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import runtime_pb2

from crowdtrain.averaging.compression import COMPRESSIONS, delta_compression

TOLERANCE = {"none": 0.0, "fp16": 1e-3, "8bit": 0.05}


@pytest.mark.parametrize("name", sorted(COMPRESSIONS))
def test_a_compressed_delta_round_trips_through_hivemind_bytes(name):
    torch.manual_seed(0)
    delta = torch.randn(10_000) * 1e-2
    compression = delta_compression(name)
    wire = serialize_torch_tensor(delta, compression.compression_type).SerializeToString()
    decoded = deserialize_torch_tensor(runtime_pb2.Tensor.FromString(wire))
    assert decoded.shape == delta.shape and decoded.dtype == delta.dtype
    relative = ((decoded - delta).norm() / delta.norm()).item()
    assert relative <= TOLERANCE[name], f"{name}: relative error {relative:.4f}"
    if name != "none":
        assert len(wire) < delta.numel() * 4 * (0.3 if name == "8bit" else 0.55), f"{name} sent {len(wire)} bytes"
