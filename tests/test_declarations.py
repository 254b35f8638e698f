"""A state donor's declaration is re-stored when it changes or its period ends, not once per averaged tensor."""
import asyncio
from types import SimpleNamespace

from hivemind.averaging.averager import DecentralizedAverager

from crowdtrain.averaging.declarations import SteadyDeclarations

PERIOD = 0.6


class _Dht:
    def __init__(self):
        self.stored, self.peer_id = [], SimpleNamespace(to_bytes=lambda: b"me")

    async def _store(self, value):
        self.stored.append(value)
        return True

    def store(self, key, subkey, value, expiration_time, return_future):
        return self._store(value)


def _donor(cls) -> SteadyDeclarations:
    """A state-sharing averager (priority 3.0) with only what the declaration loop reads."""
    averager = cls.__new__(cls)
    averager._matchmaking = SimpleNamespace(group_key_manager=SimpleNamespace(prefix="run_state"))
    averager.dht, averager.declare_state_period = _Dht(), PERIOD
    averager._allow_state_sharing, averager._state_sharing_priority = SimpleNamespace(value=True), SimpleNamespace(value=3.0)
    averager._parent_pid = -1  # not a started averager: nothing to shut down
    return averager


async def _declarations(cls) -> list:
    """The values stored in 1.5 s: an all-reduce wakes the loop for each of 40 tensors at 0.1 s, then the
    priority changes at 1.0 s."""
    averager = _donor(cls)
    averager._state_updated = asyncio.Event()
    loop = asyncio.create_task(averager._declare_for_download_periodically())
    await asyncio.sleep(0.1)
    for _ in range(40):  # hivemind's _run_allreduce_inplace_ sets the event after each tensor
        averager._state_updated.set()
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.7)
    averager._state_sharing_priority.value = 4.0
    averager._state_updated.set()  # as hivemind's priority setter does
    await asyncio.sleep(0.5)
    loop.cancel()
    return averager.dht.stored


def test_an_all_reduce_does_not_re_store_an_unchanged_declaration():
    ours = asyncio.run(_declarations(type("Donor", (SteadyDeclarations,), {})))
    # at 0, at the period's end (0.6 s), then the new priority at once (1.0 s; its period ends at 1.6 s)
    assert ours == [3.0, 3.0, 4.0]
    # control: hivemind's loop stores the same value again for (nearly) every averaged tensor
    theirs = asyncio.run(_declarations(type("Donor", (DecentralizedAverager,), {})))
    assert len(theirs) >= 30 and theirs[-1] == 4.0
