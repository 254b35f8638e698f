"""A state donor re-declares itself when its declaration changes, not whenever its tensors do.

hivemind 1.1.12's ``DecentralizedAverager._declare_for_download_periodically`` stores the averager's
state-sharing priority under ``{prefix}.all_averagers`` every ``declare_state_period`` and whenever its
``_state_updated`` event is set. Besides the priority's and sharing's setters, its all-reduce sets that event
for every tensor it averages, so each round re-stored the same value once per tensor: in a 4-peer albert-tiny
DiLoCo run (H = 500, 2 rounds, 322 s; ``bench_dht_traffic.py``, 2026-12-07) the peers stored their
declarations 434 times, 1,604 store and 1,715 find RPCs (each DHT store first looks the key up, and each
answer carries every declaration under it). Raising the period to 15 s had changed nothing measurable.

Here a wake-up re-declares only when the declared value (the priority, or None once sharing stops) differs
from the last one stored; otherwise the declaration waits for its period, as hivemind's does.
"""
from __future__ import annotations

import asyncio

from hivemind.averaging.averager import DecentralizedAverager
from hivemind.utils.timed_storage import get_dht_time

DECLARE_STATE_PERIOD = 5.0  # hivemind: 30 s; a departed donor stays advertised at most this long

class SteadyDeclarations(DecentralizedAverager):
    def _declared_value(self):
        return self.state_sharing_priority if self.allow_state_sharing else None

    async def _declare_for_download_periodically(self):
        download_key = f"{self._matchmaking.group_key_manager.prefix}.all_averagers"
        sharing_was_allowed = self.allow_state_sharing
        while True:
            expiration_time = get_dht_time() + self.declare_state_period
            declared = self._declared_value()
            if self.allow_state_sharing or sharing_was_allowed:
                # as hivemind: also when sharing was just switched off (None overwrites the last declaration)
                asyncio.create_task(asyncio.wait_for(
                    self.dht.store(download_key, subkey=self.peer_id.to_bytes(), value=declared,
                                   expiration_time=expiration_time, return_future=True),
                    timeout=expiration_time - get_dht_time()))
                sharing_was_allowed = self.allow_state_sharing
            await self._until_changed_or_due(declared, expiration_time)

    async def _until_changed_or_due(self, declared, expiration_time: float) -> None:
        while True:
            self._state_updated.clear()
            try:
                await asyncio.wait_for(self._state_updated.wait(), timeout=max(0.0, expiration_time - get_dht_time()))
            except asyncio.TimeoutError:
                return
            if self._declared_value() != declared:
                return
