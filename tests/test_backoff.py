"""The back-off between failed state downloads: doubles from the first wait, capped, reset by a success."""
import time

from crowdtrain.swarm.backoff import JITTER, Backoff


def waits(backoff: Backoff, failures: int) -> list[float]:
    result = []
    for _ in range(failures):
        backoff.failed()
        result.append(backoff._next_try - time.monotonic())
    return result


def test_waits_double_up_to_the_longest_and_a_success_resets_them():
    backoff = Backoff(first=2.0, longest=10.0)
    assert backoff.ready()
    measured = waits(backoff, 5)
    for wait, nominal in zip(measured, [2.0, 4.0, 8.0, 10.0, 10.0]):
        assert nominal * JITTER[0] - 0.1 <= wait <= nominal * JITTER[1]
    assert not backoff.ready() and backoff.failures == 5
    backoff.succeeded()
    assert backoff.ready() and backoff.failures == 0
    assert waits(backoff, 1)[0] <= 2.0 * JITTER[1]
