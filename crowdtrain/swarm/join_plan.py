"""What a volunteer is about to do, printed before its first step."""
from __future__ import annotations

from dataclasses import dataclass

BYTES_PER_VALUE = 4  # fp32: the swarm averages without compression


def upload_per_round(parameters: int, group_size: int, client_mode: bool) -> int:
    """Bytes this peer sends per global epoch: gradients, then parameters, each in a butterfly all-reduce.

    A full peer sends (n-1)/n of each tensor out to be reduced and its own reduced part back to the
    n-1 others: 2(n-1)/n of the tensor. A client-mode peer reduces no part: (n-1)/n.
    """
    if group_size <= 1:
        return 0
    passes = 1 if client_mode else 2
    tensors = 2  # gradients and parameters
    return int(tensors * passes * BYTES_PER_VALUE * parameters * (group_size - 1) / group_size)


@dataclass(frozen=True)
class JoinPlan:
    run_id: str
    recipe: str
    role: str
    device: str
    parameters: int
    batch_size: int
    batch_auto: bool
    "True when the micro-batch was picked by the probe."
    batch_note: str
    samples_per_second: float
    "Measured by the probe (or one step when the batch was given)."
    target_batch_size: int
    peers_online: int
    "Other volunteers in the run right now."
    upload_bytes_per_round: int

    def lines(self) -> list[str]:
        batch = f"{self.batch_size} (auto: {self.batch_note})" if self.batch_auto else f"{self.batch_size} (given)"
        group = self.peers_online + 1
        return [
            f"run        {self.run_id}  recipe {self.recipe}  ({self.parameters / 1e6:.2f} M parameters)",
            f"role       {self.role}   device {self.device}",
            f"micro-batch {batch}",
            f"expected   {self.samples_per_second:.1f} samples/s; the swarm steps every {self.target_batch_size} samples",
            f"upload     ~{self.upload_bytes_per_round / 2**20:.1f} MiB per round with {group} peer"
            f"{'s' if group != 1 else ''} (fp32 gradients + parameters)",
        ]
