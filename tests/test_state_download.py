"""A downloaded training state is loaded only when complete (hivemind 1.1.12 takes a stream that closed early
for a whole state, then fails with IndexError in load_optimizer_state)."""
import torch
from hivemind.averaging.averager import DecentralizedAverager
from hivemind.optim.state_averager import TrainingStateAverager, dump_optimizer_state

from crowdtrain.averaging.averager import (
    STATE_DOWNLOAD_ATTEMPTS,
    CompleteStateDownload,
    CompleteTrainingStateAverager,
    expected_state_tensors,
)


def _donor_state() -> tuple[torch.optim.Optimizer, dict, list[torch.Tensor]]:
    """An Adam optimizer after one step, and the state a donor sends: parameters, then optimizer tensors."""
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.Adam(params)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    optimizer_metadata, optimizer_tensors = dump_optimizer_state(optimizer)
    return optimizer, {"epoch": 1, "optimizer_metadata": optimizer_metadata}, [*params, *optimizer_tensors]


class _Downloads(DecentralizedAverager):
    """Answers each download with the next of ``answers`` (no process, no network)."""

    def load_state_from_peers(self, *args, **kwargs):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class _Checked(CompleteStateDownload, _Downloads):
    pass


def _averager(optimizer: torch.optim.Optimizer, answers: list) -> _Checked:
    averager = object.__new__(_Checked)  # the check needs only these attributes
    averager.optimizer, averager.extra_tensors, averager.answers, averager.calls = optimizer, (), answers, 0
    return averager


def test_a_complete_state_counts_parameters_and_optimizer_tensors():
    optimizer, metadata, tensors = _donor_state()

    assert expected_state_tensors(2, metadata) == len(tensors) == 8  # 2 parameters, 2 × (step, exp_avg, exp_avg_sq)
    assert expected_state_tensors(2, {"epoch": 1}) is None and expected_state_tensors(2, None) is None


def test_a_truncated_state_is_refused_and_the_download_tried_again():
    optimizer, metadata, tensors = _donor_state()
    averager = _averager(optimizer, [(metadata, tensors[:4]), (metadata, tensors)])

    loaded = averager.load_state_from_peers(timeout=1)

    assert loaded == (metadata, tensors) and averager.calls == 2


def test_only_truncated_states_give_no_state():
    optimizer, metadata, tensors = _donor_state()
    averager = _averager(optimizer, [(metadata, tensors[:7])] * STATE_DOWNLOAD_ATTEMPTS)

    assert averager.load_state_from_peers() is None and averager.calls == STATE_DOWNLOAD_ATTEMPTS


def test_a_download_past_its_timeout_is_no_state():
    optimizer, _, _ = _donor_state()
    averager = _averager(optimizer, [TimeoutError()])

    assert averager.load_state_from_peers(timeout=1) is None and averager.calls == 1


def test_no_donor_is_no_state_at_once():
    optimizer, _, _ = _donor_state()
    averager = _averager(optimizer, [None])

    assert averager.load_state_from_peers() is None and averager.calls == 1


def test_the_checked_averager_serves_and_downloads_under_hivemind_s_names():
    for method in ("rpc_download_state", "rpc_join_group"):
        assert (CompleteTrainingStateAverager._get_handle_name("run_state_averager", method)
                == TrainingStateAverager._get_handle_name("run_state_averager", method))
