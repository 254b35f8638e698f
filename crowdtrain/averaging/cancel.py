"""A cancelled averaging step stops looking for its group at once.

hivemind 1.1.12's ``StepControl.cancel`` (training process) first resolves the step's ``cancel`` future
and only then marks the step itself cancelled. The averager's process wakes on the former and checks
the latter (``DecentralizedAverager._step``: ``if step.cancelled(): ...``); when it wakes first, which
a loaded machine makes likely, it finds the step not cancelled and goes on looking for a group until
the step's deadline (``averaging_timeout``). hivemind looks for one group at a time, so the peer's next
rounds queue behind a round it has left: measured 2026-12-06 on the 2-core machine, two volunteers
under two CPU-bound processes (the dashboard test's swarm, 80-90 s): a cancelled step held the
matchmaking for 15.0 s, 1.2 s after the cancel was seen, and 13-23 of each peer's rounds failed with
"could not find a group"; the dashboard test failed in CI with 0 rounds averaged in 90 s.

Here the averager's process, once the cancel future resolves, waits (briefly) for the step to read
cancelled before hivemind checks it.

Second, a parameter-averaging round that finds no group in time is cancelled (:func:`cancel_unless_grouped`).
hivemind's training state averager averages parameters in the background, one round at a time, and the
next optimizer step waits for that round to end. Rounds are of one epoch (:mod:`crowdtrain.averaging.rounds`):
once two peers' rounds are offset by an epoch, each waits ``averaging_timeout`` for a group of its epoch while
the other's round of the next epoch is refused, and every step of both waits for it (measured 2026-12-06,
same swarm: 3-4 such rounds per peer in 80 s, each stopping its training for up to 15 s).

Third, a cancelled step's clean-up runs to its end. hivemind's ``_step`` cancels its matchmaking task and drops
it; the task's clean-up then withdraws the group declaration through the DHT, awaiting a future that hivemind
holds only weakly (its ``MPFuture`` registry), and asyncio holds pending tasks only weakly too. When the
garbage collector runs before the DHT answers, which a loaded machine makes likely, it destroys the whole
chain of tasks mid-clean-up ("Task was destroyed but it is pending!", ``GeneratorExit``), and the locks it
held stay locked: ``PotentialLeaders.lock_search`` above all, so that every later step of that averager waits
on it until its deadline without ever declaring itself or asking a leader, and fails ("could not find a
group"). Its peers fail with it. Measured 2026-12-07, the dashboard test's swarm beside 5 CPU-bound
processes: after one such destruction, every gradient round of both volunteers failed for 2 minutes, both at
the same epoch, their searches overlapping by 5 s per round; CI's dashboard test failed the same way twice
(0 rounds averaged in 90 s). Here the averager's event loop holds every task it runs until it ends
(:func:`hold_tasks`).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Optional

from hivemind.averaging.averager import DecentralizedAverager
from hivemind.averaging.control import AveragingStage, StepControl
from hivemind.utils.timed_storage import get_dht_time

CANCEL_VISIBLE_WITHIN_S = 2.0
"How long the averager waits for a step whose cancel it has seen to read cancelled (normally milliseconds)."
CANCEL_POLL_S = 0.005


async def wait_until_cancelled(step: StepControl, within: float = CANCEL_VISIBLE_WITHIN_S) -> None:
    """``step.wait_for_cancel()``, returning once ``step.cancelled()`` (or done) is visible too, or ``within`` later."""
    await StepControl.wait_for_cancel(step)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not step.done() and loop.time() < deadline:
        await asyncio.sleep(CANCEL_POLL_S)


def hold_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """From now on ``loop`` holds every task it creates until the task ends (asyncio holds them only weakly)."""
    previous: Optional[Callable[..., asyncio.Future]] = loop.get_task_factory()
    if getattr(previous, "holds_tasks", False):
        return
    held: set[asyncio.Future] = set()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future:
        task = previous(loop, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=loop, **kwargs)
        held.add(task)
        task.add_done_callback(held.discard)
        return task

    factory.holds_tasks = True
    loop.set_task_factory(factory)


class PromptCancel(DecentralizedAverager):
    """Mixin for a hivemind averager: a step cancelled while it looks for a group leaves matchmaking at once, and
    its clean-up runs to its end (:func:`hold_tasks`, installed when the averager's process starts serving)."""

    async def add_p2p_handlers(self, *args: Any, **kwargs: Any) -> None:
        hold_tasks(asyncio.get_running_loop())  # before the averager's first background task (client mode: below)
        return await super().add_p2p_handlers(*args, **kwargs)

    async def _step(self, *, step: StepControl, **kwargs: Any) -> Any:
        hold_tasks(asyncio.get_running_loop())
        step.wait_for_cancel = lambda: wait_until_cancelled(step)  # this process's copy of the step
        return await super()._step(step=step, **kwargs)


class LatestStep(DecentralizedAverager):
    """Mixin for a hivemind averager: remembers the last step it began without waiting (the training state
    averager begins its parameter rounds itself, in its background thread). It goes after
    ``TrainingStateAverager`` among the bases: that class's rounds call ``super().step``."""

    latest_step: Optional[StepControl] = None

    def step(self, *args: Any, **kwargs: Any) -> Any:
        result = super().step(*args, **kwargs)
        if isinstance(result, StepControl):
            self.latest_step = result
        return result


def cancel_unless_grouped(control: Optional[StepControl], patience: float, poll: float = 0.05) -> bool:
    """Wait until ``control`` has found its group or ended, at most ``patience`` seconds past its scheduled start,
    and cancel it if it still looks for one then; True if cancelled. (hivemind's own wait is ``averaging_timeout``.)"""
    while control is not None and not control.done() and control.stage in _NOT_GROUPED:
        if get_dht_time() >= control.scheduled_time + patience:
            return control.cancel()
        time.sleep(poll)
    return False


_NOT_GROUPED = (AveragingStage.IDLE, AveragingStage.LOOKING_FOR_GROUP)
