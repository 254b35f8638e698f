"""State downloads that skip given donors.

hivemind's ``load_state_from_peers`` downloads from the peer with the highest declared state-sharing
priority (ties broken at random) and moves on only if that download fails outright. A donor whose
state arrives but is refused here (non-finite: :class:`~crowdtrain.averaging.averager.FiniteStateDownload`)
would be asked again on the next try, and a hostile peer can always declare the highest priority.
:class:`DonorChoice` takes ``exclude`` (base58 peer ids) and hides those peers from the donor list the
download reads; the end-of-run hand-over (:mod:`crowdtrain.swarm.finish`) passes the peers it refused
or banned. It goes last before ``DecentralizedAverager`` in an averager's bases: the mixins before it
see the downloaded state, it only chooses where it comes from.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from hivemind.averaging.averager import DecentralizedAverager
from hivemind.p2p import PeerID
from hivemind.utils import MPFuture, ValueWithExpiration


class DonorChoice(DecentralizedAverager):
    def load_state_from_peers(self, wait: bool = True, timeout: Optional[float] = None, exclude: Iterable[str] = ()):
        excluded = tuple(PeerID.from_base58(peer).to_bytes() for peer in exclude)
        if not excluded:
            return super().load_state_from_peers(wait=wait, timeout=timeout)
        future = MPFuture()  # hivemind's own call, with the exclusions for the averager's process
        self._outer_pipe.send(("_load_state_from_peers", [], dict(timeout=timeout, future=future, excluded=excluded)))
        return future.result(timeout=timeout) if wait else future

    async def _load_state_from_peers(self, future: MPFuture, timeout: Optional[float] = None,
                                     excluded: tuple[bytes, ...] = ()):
        if not excluded:
            return await super()._load_state_from_peers(future, timeout=timeout)
        dht = self.dht
        self.dht = DonorFilter(dht, f"{self._matchmaking.group_key_manager.prefix}.all_averagers", set(excluded))
        try:
            return await super()._load_state_from_peers(future, timeout=timeout)
        finally:
            self.dht = dht


class DonorFilter:
    """A DHT handle whose reads of the donor list (``key``) leave out ``excluded`` peers; all else passes."""

    def __init__(self, dht: Any, key: str, excluded: set[bytes]):
        self._dht, self._key, self._excluded = dht, key, excluded

    def get(self, key: str, *args, **kwargs):
        found = self._dht.get(key, *args, **kwargs)
        if key != self._key or not isinstance(found, ValueWithExpiration) or not isinstance(found.value, dict):
            return found
        kept = {subkey: value for subkey, value in found.value.items() if subkey not in self._excluded}
        return ValueWithExpiration(kept, found.expiration_time)

    def __getattr__(self, name: str):
        return getattr(self._dht, name)
