"""Rounds in the background: groups of one round, and parts that arrive before this peer starts its round.

hivemind's matchmaking groups whoever looks for a group under the same DHT key at the same time; it
knows nothing of epochs. With averaging in the background (hivemind's delayed optimizer step and
gradient averaging, ``RunConfig.overlap``) a peer pre-schedules the round that will close its *next*
epoch while the others are still matchmaking for the current one, so groups mixed a round that had
started (its members sending their parts) with one that would start only an epoch later: every
reducer waited ``next_chunk_timeout`` for the missing member, and hivemind closed the round with what
it had ("Reducer: received 50.0% of input tensors") and reported success: each member applied a
different partial average and peers drifted apart (measured 2026-12-06, 3 volunteers on loopback with
overlap, before this module: of 22 gradient rounds the volunteers logged, 21 reported success, beside 32
"received 33-67%" warnings; members of one group logged different epochs, and peers' parameters at the
same epoch differed. With this module and the fixes in ``crowdtrain.swarm.optimizer``: 0-2 such warnings
per run, and members of a round start it from parameters equal to float rounding).

Here every step carries its round in the data hivemind gathers from each member (``gather``): the
state averager already sends its epoch there; :class:`RoundGradientAveraging` sends the epoch whose
gradients it averages (:attr:`round_tag`, set by the optimizer). A leader refuses a join request whose
round differs from its own, with hivemind's ``BAD_GROUP_KEY`` (the follower tries the next leader);
hivemind's other checks follow unchanged.

Second, a groupmate that starts its all-reduce before this peer does (its epoch ended a moment
earlier) sends its parts at once. hivemind 1.1.12 (``DecentralizedAverager.rpc_aggregate_part``)
waits for an unknown group on one shared event, ``_pending_groups_registered``, which every group
registration *and every group's end* sets and only the start of a step clears. In the foreground a
peer has no other round in flight, so the event is clear and the early parts wait. With overlap the
next round is matchmade while the previous one runs; when the previous one ends the event is set and
stays set, and early parts for the next round are answered ``BAD_GROUP_ID`` at once: the sender drops
this peer as a reducer and this peer waits ``next_chunk_timeout`` for the sender's parts, and both end
the round with half of it ("Averaging: received 49.9% results", measured on 2 peers of 2 with groups
already of one round). :meth:`RoundGroups.rpc_aggregate_part` waits for *that* group to be registered,
up to ``next_chunk_timeout`` (the sender's own patience is twice that).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Optional

from hivemind.averaging.averager import DecentralizedAverager
from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import achain, anext, as_aiter

logger = logging.getLogger(__name__)
REGISTRATION_POLL_S = 0.05
DEFAULT_REGISTRATION_WAIT_S = 10.0


def round_of(serializer: Any, data_for_gather: bytes) -> Any:
    """The user data of a step's ``data_for_gather`` (hivemind packs ``[bandwidth, mode, user data]``);
    a sentinel that matches nothing when it cannot be read."""
    try:
        _, _, user_data = serializer.loads(data_for_gather)
        return serializer.loads(user_data)
    except Exception:  # a malformed request: hivemind's own checks reject it or it averages alone
        return _UNREADABLE


_UNREADABLE = object()


class RoundGroups(DecentralizedAverager):
    """Mixin for a hivemind averager: as a leader, admits followers of its own round only; parts of a
    group it has not started yet wait for it."""

    async def rpc_join_group(self, request: averaging_pb2.JoinRequest,
                             context: P2PContext) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        step = self._matchmaking.step_control
        if step is not None:
            own, theirs = round_of(self.serializer, step.data_for_gather), round_of(self.serializer, request.gather)
            if own is _UNREADABLE or theirs is _UNREADABLE or own != theirs:
                logger.debug(f"{self.prefix.split('_', 1)[-1]}: refused peer {str(context.remote_id)[-6:]}: "
                             f"round {theirs!r}, ours {own!r}")
                yield averaging_pb2.MessageFromLeader(code=averaging_pb2.BAD_GROUP_KEY)
                return
        async for response in super().rpc_join_group(request, context):
            yield response

    async def rpc_aggregate_part(self, stream: AsyncIterator[averaging_pb2.AveragingData],
                                 context: P2PContext) -> AsyncIterator[averaging_pb2.AveragingData]:
        request = await anext(stream)
        loop = asyncio.get_event_loop()
        deadline = loop.time() + (self.next_chunk_timeout or DEFAULT_REGISTRATION_WAIT_S)
        while request.group_id not in self._running_groups and loop.time() < deadline:
            await asyncio.sleep(REGISTRATION_POLL_S)
        async for message in super().rpc_aggregate_part(achain(as_aiter(request), stream), context):
            yield message


class RoundGradientAveraging(RoundGroups):
    """Mixin for hivemind's GradientAverager: each step gathers :attr:`round_tag` (the epoch it averages)."""

    round_tag: Optional[int] = None
    "Set in the training process before a round is scheduled; None: every such round is one round."

    def schedule_step(self, scheduled_time: Optional[float] = None, **kwargs):
        kwargs.setdefault("gather", self.round_tag)
        return super().schedule_step(scheduled_time, **kwargs)
