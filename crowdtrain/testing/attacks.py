"""One attack scenario on a local swarm, measured: the end-to-end test and ``bench_attacks.py``.

A coordinator (without its state keeper: not part of what is measured) and ``peers`` volunteers (one
of them hostile, :mod:`crowdtrain.testing.hostile`, unless ``attack`` is None: the clean run) train
albert-tiny to ``max_epochs`` (global epochs; in ``mode="diloco"``, outer rounds). Measured afterwards:
the held-out masked-LM loss of every honest peer's exported model, the samples the swarm processed,
and whether the honest peers detected the hostile one (a rejection or ban naming it in their logs, a
clamped progress claim, or the hostile's own count of refused forgeries).
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from crowdtrain.peers.identity import Identity
from crowdtrain.swarm.coordinator import RUN_FILE, saved_recipe
from crowdtrain.testing.hostile import DELIVERED, hostile_launcher
from crowdtrain.testing.local_swarm import LocalSwarm, PeerProcess
from crowdtrain.trainers import Recipe

FORGERY_RE = re.compile(r"hostile: forged stores accepted (\d+), refused (\d+)")


@dataclass(frozen=True)
class Scenario:
    attack: Optional[str]
    aggregator: str
    peers: int = 4
    target_batch_size: int = 64
    max_epochs: int = 6
    batch_size: int = 8
    averaging_timeout: float = 15.0
    "Also how long a peer that missed the last round waits for a group before the others can finish."
    timeout: float = 300.0
    mode: str = "standard"
    "standard or diloco (``max_epochs`` then counts outer rounds of ``inner_steps``)."
    inner_steps: int = 10


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    final_loss: float
    "Held-out masked-LM loss of the first honest peer's final model (inf if not finite)."
    divergence: float
    "Largest absolute difference of any parameter between two honest peers' final models."
    samples: int
    "Samples all peers processed (the hostile's included)."
    detected: bool
    evidence: str
    delivered: int = 0
    "Times the hostile returned a corrupted share to another member of its group (corrupting attacks)."

    def to_dict(self) -> dict:
        return {"attack": self.scenario.attack, "aggregator": self.scenario.aggregator, "final_loss": round(self.final_loss, 4),
                "divergence": self.divergence, "samples": self.samples, "detected": self.detected,
                "evidence": self.evidence, "delivered": self.delivered}


def run_scenario(scenario: Scenario, swarm: LocalSwarm, workdir: Path, coordinator_identity: Identity) -> Outcome:
    """Runs ``scenario`` in ``swarm`` (the caller closes it). ``coordinator_identity`` and
    ``workdir/run`` are reused between scenarios so that the recipe's assets are built once."""
    run_dir = workdir / "run"
    _, address = swarm.start_coordinator([
        "--target-batch-size", str(scenario.target_batch_size), "--max-epochs", str(scenario.max_epochs),
        "--matchmaking-time", "2", "--request-timeout", "0.5",
        "--averaging-timeout", str(scenario.averaging_timeout), "--aggregator", scenario.aggregator,
        "--mode", scenario.mode, "--inner-steps", str(scenario.inner_steps),
        "--run-dir", str(run_dir), "--no-keep-state"],
        identity=coordinator_identity, name=f"coordinator-{_label(scenario)}", timeout=scenario.timeout)
    honest, hostile = [], None
    # the last peer (the hostile one) holds the lowest id: the donor every peer adopts at the end unless left out
    identities = sorted((Identity.temporary() for _ in range(scenario.peers)), key=lambda i: str(i.peer_id), reverse=True)
    for index, identity in enumerate(identities):
        name = f"{_label(scenario)}-{index}"
        args = ["--batch-size", str(scenario.batch_size), "--export", str(workdir / f"{name}.pt")]
        if scenario.attack is not None and index == scenario.peers - 1:
            hostile = swarm.start_volunteer(name, [address], args, launcher=hostile_launcher(scenario.attack),
                                            identity=identity)
        else:
            honest.append(swarm.start_volunteer(name, [address], args, identity=identity))
    for peer in honest:
        code = peer.popen.wait(timeout=scenario.timeout)
        if code != 0:
            raise RuntimeError(f"{peer.name} exited with {code}: {peer.log()[-2000:]}")
    states = [torch.load(workdir / f"{p.name}.pt") for p in honest]
    loss = _held_out_loss(run_dir, states[0])
    reports = [json.loads(p.report_path.read_text()) for p in [*honest, hostile] if p and p.report_path.exists()]
    detected, evidence = _detection(scenario.attack, honest, hostile)
    return Outcome(scenario=scenario, final_loss=loss if math.isfinite(loss) else float("inf"),
                   divergence=_divergence(states), samples=sum(r["samples"] for r in reports),
                   detected=detected, evidence=evidence,
                   delivered=hostile.log().count(f"hostile: {DELIVERED}") if hostile is not None else 0)


def _label(scenario: Scenario) -> str:
    return f"{scenario.mode}-{scenario.attack or 'clean'}-{scenario.aggregator}"


@functools.lru_cache(maxsize=2)
def _recipe(run_dir: Path, assets_sha256: str) -> Recipe:
    return saved_recipe(run_dir)


def _held_out_loss(run_dir: Path, state: dict[str, torch.Tensor]) -> float:
    run = json.loads((run_dir / RUN_FILE).read_text())
    recipe = _recipe(run_dir, run["assets_sha256"])
    model = recipe.build_model()
    model.load_state_dict(state)
    with torch.no_grad():
        return float(recipe.evaluate_loss(model))


def _divergence(states: list[dict[str, torch.Tensor]]) -> float:
    return max((float((other[key].float() - tensor.float()).abs().max()) for other in states[1:]
                for key, tensor in states[0].items()), default=0.0)


def _detection(attack: Optional[str], honest: list[PeerProcess], hostile: Optional[PeerProcess]) -> tuple[bool, str]:
    if hostile is None:
        return False, ""
    short = str(hostile.identity.peer_id)[-6:]
    logs = [peer.log() for peer in honest]
    if attack == "forge":
        counts = [tuple(map(int, m)) for m in FORGERY_RE.findall(hostile.log())]
        accepted, refused = counts[-1] if counts else (0, 0)
        return refused > 0 and accepted == 0, f"forged stores accepted {accepted}, refused {refused}"
    if attack == "inflate":
        clamped = sum(log.count("towards a batch of") for log in logs)
        return clamped > 0, f"{sum(c > 0 for c in [log.count('towards a batch of') for log in logs])}/{len(logs)} honest peers clamped its claims"
    banned = sum(f"banned peer {short}" in log for log in logs)
    rejected = sum(f"from peer {short}" in log or f"refused the final state of peer {short}" in log for log in logs)
    return rejected > 0, f"{rejected}/{len(logs)} honest peers rejected it, {banned}/{len(logs)} banned it"
