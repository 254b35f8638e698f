"""Periodic evaluation of the swarm's state (the state keeper's) and which score the dashboard charts."""
import time

import torch

from crowdtrain.dashboard.tracker import swarm_evaluation
from crowdtrain.dht.records import PeerRecord
from crowdtrain.swarm.evaluation import PeriodicEvaluation
from crowdtrain.trainers.base import EvalResult


class _Recipe:
    """Scores a model by its one weight; training the copy it is given must not touch the original."""

    def __init__(self):
        self.calls = 0

    def evaluate(self, model: torch.nn.Module) -> EvalResult:
        self.calls += 1
        with torch.no_grad():
            model.weight.add_(100.0)  # an evaluation that changes its model (e.g. batch-norm statistics)
        return EvalResult(metric="weight", value=float(model.weight.sum()) - 100.0)


def test_evaluates_at_start_then_every_n_epochs_on_a_copy():
    recipe, model = _Recipe(), torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 0.5)
    evaluation = PeriodicEvaluation(recipe, every=5)

    due = [epoch for epoch in range(13) if evaluation.due(epoch) and evaluation.run(model, epoch)]

    assert due == [0, 5, 10] and recipe.calls == 3
    assert evaluation.latest.epoch == 10 and evaluation.latest.result.value == 0.5
    assert model.weight.item() == 0.5  # the served state is untouched


def test_a_skipped_epoch_is_caught_up_once_and_zero_turns_it_off():
    evaluation = PeriodicEvaluation(_Recipe(), every=5)
    model = torch.nn.Linear(1, 1, bias=False)
    evaluation.run(model, 0)
    assert not evaluation.due(4) and evaluation.due(7)  # the swarm jumped from 4 to 7
    evaluation.run(model, 7)
    assert not evaluation.due(11) and evaluation.due(12)
    assert not PeriodicEvaluation(_Recipe(), every=0).due(0)


def _record(name: str, role: str, value) -> PeerRecord:
    return PeerRecord(peer_id=name, name=name, role=role, address="", samples=0, samples_per_second=0.0, loss=None,
                      epoch=1, device="cpu", finished=False, time=time.time(), eval_metric="m" if value is not None
                      else "", eval_value=value)


def test_the_dashboard_charts_the_keepers_score_of_the_swarm_state_before_volunteers_own():
    volunteers = (_record("a", "full", 0.2), _record("b", "full", 0.4), _record("c", "full", None))
    assert abs(swarm_evaluation(volunteers) - 0.3) < 1e-12
    assert swarm_evaluation(volunteers, (_record("k", "aux", 0.9),)) == 0.9
    assert swarm_evaluation(volunteers, (_record("k", "aux", None),)) == swarm_evaluation(volunteers)
    assert swarm_evaluation((_record("c", "full", None),)) is None
