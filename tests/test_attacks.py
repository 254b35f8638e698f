"""A hostile volunteer holding a share of the all-reduce, end to end: 4 peers, albert-tiny.

Each scenario is compared with a clean run of the same length (same global epochs, so the same
number of samples folded into the model) in the same test: the clean robust run ends with every peer
holding the same model; with defences on the final held-out loss stays within 5% of the clean run's
and the offender is detected; with defences off (hivemind's plain mean, the control) the same attack
does measurable damage: a loss above the clean run's by more than the spread between clean runs, and
above the defended run's. One attack has a CI size (4 epochs, 8 s averaging timeout: at 3 epochs the
control's damage fell under the noise bound in one of three runs); it is marked slow until its control's
damage is safely above that bound; ``--runslow`` runs it and every attack at full size.
A control in which the offender never returned a corrupted share to an honest peer (it joined too late
to share a group: CI, 2026-12-07, ended +0.034 over clean) tested nothing and is run once more.
The DiLoCo attacks (slow) compare runs of the same outer rounds: failed rounds make the defended runs
process more samples than the clean one. Their CI share is tests/test_robust_deltas.py (one in-process
all-reduce with a hostile member, on real albert-tiny deltas).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import pytest

from crowdtrain.peers.identity import Identity
from crowdtrain.testing.attacks import Outcome, Scenario, run_scenario
from crowdtrain.testing.local_swarm import LocalSwarm

CI_SIZE = Scenario(attack=None, aggregator="centered_clip", max_epochs=4, averaging_timeout=8.0)
FULL_SIZE = Scenario(attack=None, aggregator="centered_clip", max_epochs=6)
DILOCO_SIZE = Scenario(attack=None, aggregator="centered_clip", mode="diloco", inner_steps=10, max_epochs=6,
                       averaging_timeout=8.0)
TOLERANCE = 0.05
SAMPLES_DAMAGE = 0.75  # inflated claims: the share of the clean run's samples below which the run was damaged
NOISE = 0.1  # 7 clean runs of this scenario (4 epochs, 2026-11-25) ended up to 0.062 apart in held-out loss


def _run(local_swarm: LocalSwarm, tmp_path: Path, identity: Identity, size: Scenario, attack: Optional[str],
         aggregator: str) -> Outcome:
    scenario = dataclasses.replace(size, attack=attack, aggregator=aggregator)
    outcome = run_scenario(scenario, local_swarm, tmp_path, identity)
    local_swarm.close()
    return outcome


def check_attack(local_swarm: LocalSwarm, tmp_path: Path, attack: str, size: Scenario) -> dict[str, Outcome]:
    identity = Identity.temporary()
    clean = _run(local_swarm, tmp_path, identity, size, None, "centered_clip")
    defended = _run(local_swarm, tmp_path, identity, size, attack, "centered_clip")
    control = _run(local_swarm, tmp_path, identity, size, attack, "mean")
    if control.delivered == 0:  # the offender never shared a group with an honest peer: nothing was tested
        control = _run(local_swarm, tmp_path, identity, size, attack, "mean")  # (CI 2026-12-07: loss +0.034)
    summary = {o.scenario.aggregator if o.scenario.attack else "clean": o.to_dict() for o in (clean, defended, control)}
    print(json.dumps(summary))  # the figures, for -s
    assert clean.final_loss < float("inf") and clean.divergence < 1e-3, summary
    assert defended.final_loss <= clean.final_loss * (1 + TOLERANCE), summary
    assert defended.detected, summary
    assert control.delivered > 0, summary
    assert control.final_loss > clean.final_loss + NOISE, summary  # the attack does damage without defences
    assert defended.final_loss < control.final_loss, summary
    return {"clean": clean, "defended": defended, "control": control}


@pytest.mark.timeout(600)
def test_nan_gradients_from_a_group_member(local_swarm, tmp_path):
    """The attack CI runs (4 epochs): a peer whose gradients, and whatever it returns as a reducer, are NaN.
    Without defences hivemind's mean spreads them and the model ends non-finite (damage that no run-to-run
    noise can hide); with them the swarm trains on, the honest peers ban the offender, and they end
    holding one model although the offender makes itself the canonical end-of-run donor whenever its id
    is the lowest (they refuse its non-finite state and move on to the same next donor)."""
    outcomes = check_attack(local_swarm, tmp_path, "nan", CI_SIZE)
    defended = outcomes["defended"]
    assert defended.divergence < 1e-3, defended.to_dict()


@pytest.mark.slow  # out of CI until its margin is safe: the control's damage was +0.205 over clean (bound 0.1)
@pytest.mark.timeout(600)
def test_amplified_gradient_ascent_from_a_group_member(local_swarm, tmp_path):
    """The CI-sized attack (4 epochs). Passed 2 of 2 runs (201-243 s under load): clean 8.044, defended
    7.986 (3/3 honest peers rejected it), control 8.248. x1000 alone did +0.099 to +0.228 at this size and
    failed a CI rehearsal: LAMB normalises a gradient's scale away, and short runs rarely all-reduce with
    every peer, so the damage without defences is small next to the clean runs' spread (0.062)."""
    check_attack(local_swarm, tmp_path, "ascent", CI_SIZE)


@pytest.mark.slow  # 3 DiLoCo swarms per attack: 5-6 minutes each on a 2-core machine
@pytest.mark.timeout(900)
@pytest.mark.parametrize("attack", ["nan", "ascent"])
def test_corrupted_deltas_from_a_group_member_in_diloco_mode(local_swarm, tmp_path, attack):
    """DiLoCo (10 inner steps, 6 outer rounds): a peer that sends corrupted deltas and returns a corrupted
    average of its share. With robust aggregation every honest peer refuses its share (those rounds fail for
    them, and they ban it) and clips or rejects its deltas; with the plain mean (the control) they apply them."""
    outcomes = check_attack(local_swarm, tmp_path, attack, DILOCO_SIZE)
    assert outcomes["defended"].divergence < 1e-3, outcomes["defended"].to_dict()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("attack", ["scale", "nan", "sign_flip", "ascent"])
def test_every_gradient_attack(local_swarm, tmp_path, attack):
    check_attack(local_swarm, tmp_path, attack, FULL_SIZE)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_inflated_sample_counts(local_swarm, tmp_path):
    """The damage of inflated claims is to the global batch, not (in a run this short) to the loss: without
    the bound every epoch ends as soon as the offender reports, so the swarm takes the same number of steps
    on a fraction of the samples the run asked for (measured 2026-11-25: no loss difference, +0.0%). With the
    bound its claims count at most ``max_peer_share`` (half) of a batch: the honest peers fill the rest.
    Measured 2026-11-25 (6 epochs, load 20-28): clean 816 samples, defended 1128, control 408 (0.50 of
    clean); two clean 4-epoch runs differed by 5% in samples (744, 704), so the bound of 0.75 is five
    times the spread between clean runs."""
    identity = Identity.temporary()
    clean = _run(local_swarm, tmp_path, identity, FULL_SIZE, None, "centered_clip")
    defended = _run(local_swarm, tmp_path, identity, FULL_SIZE, "inflate", "centered_clip")
    control = _run(local_swarm, tmp_path, identity, FULL_SIZE, "inflate", "mean")
    summary = {o.scenario.aggregator if o.scenario.attack else "clean": o.to_dict() for o in (clean, defended, control)}
    print(json.dumps(summary))
    assert defended.detected, summary
    assert control.samples < SAMPLES_DAMAGE * clean.samples, summary  # the same epochs on far fewer samples
    assert defended.samples >= SAMPLES_DAMAGE * clean.samples, summary
    assert defended.final_loss <= clean.final_loss * (1 + TOLERANCE), summary


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_forged_records_of_other_peers(local_swarm, tmp_path):
    """Every forgery is refused (the unsigned control is tests/test_forged_records.py)."""
    identity = Identity.temporary()
    clean = _run(local_swarm, tmp_path, identity, FULL_SIZE, None, "centered_clip")
    forged = _run(local_swarm, tmp_path, identity, FULL_SIZE, "forge", "centered_clip")
    assert forged.detected, forged.to_dict()
    assert forged.final_loss <= clean.final_loss * (1 + TOLERANCE), (clean.to_dict(), forged.to_dict())
