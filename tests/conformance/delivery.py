"""Credit and the delivery guarantees, for every endpoint (mixed into each broker's suite).

- Credit: an endpoint never hands one consumer more unsettled deliveries than its credit (the
  route's ``channel_size``), so the broker's flow control is the backpressure; settling lets the
  rest through, in order, with nothing lost. Where there is no broker flow control by design
  (Solace direct receivers) the consumer buffers what its endpoint documents and then follows
  the plan's ``drops_when_behind``.
- The guarantees across a client disconnect, through a real session (:func:`open_session`, the
  test being the writer): what README "Delivery guarantees" promises, no more. What a client got
  is never delivered again unless the guarantee waits for its confirmation (``at_least_once``),
  in which case what it got and did not confirm is; whatever it did not get is nacked, so the
  next session of the same client gets it where the endpoint resumes for a client
  (``EndpointUnderTest.resumes``), and no guarantee but ``at_least_once`` and ``at_most_once``
  says exactly which events that is (``none`` and ``auto`` ack events the client may not get).
  Each next session reads until a marker published after it subscribed, so nothing waits for
  an absence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from mediation.ack_policy import Guarantee, Step
from mediation.context import EngineContext
from mediation.errors import ClientTooSlow
from mediation.routing import RouteTable
from mediation.session import Session, SessionDelivery, open_session
from mediation.telemetry import Telemetry

from .suite import WAIT, EndpointUnderTest, receive

# How long a consumer holding its whole credit is watched for a delivery beyond it: an absence
# can only be seen by waiting (the endpoints hand out from their own threads and sockets, so
# neither an autojump clock nor wait_all_tasks_blocked can say that nothing more will come).
OVER_CREDIT_WATCH = 0.5


@asynccontextmanager
async def client_session(
    under_test: EndpointUnderTest, guarantee: Guarantee, client_id: str, channel_size: int = 4
) -> AsyncIterator[Session]:
    """A session of ``client_id`` on one downstream route from the endpoint, as an entrypoint
    opens it (the endpoint alone in the engine context)."""
    endpoint = under_test.endpoint
    route = under_test.route(guarantee.value, channel_size)
    context = EngineContext(
        endpoints={endpoint.name: endpoint},
        telemetry=Telemetry(
            packet_logging=False, endpoint_states=lambda: {endpoint.name: endpoint.state.value}
        ),
        routes=RouteTable([route]),
    )
    with trio.fail_after(WAIT):
        async with open_session(
            context,
            entrypoint=route.target,
            client_id=client_id,
            max_sessions=None,
            client_confirms=True,
        ) as session:
            yield session


async def write(session: Session) -> SessionDelivery:
    """The writer's part for one event: take it, (ack per guarantee), write it."""
    with trio.fail_after(WAIT):
        item = await session.next_delivery()
        await session.written([item])
    return item


class DeliveryConformance:
    async def test_never_more_unsettled_than_the_credit(
        self, under_test: EndpointUnderTest
    ) -> None:
        credit = 3
        route = under_test.route(channel_size=credit)
        plan = route.ack_plan
        if not under_test.flow_controlled(plan):
            await self._overflow(under_test, credit)
            return
        payloads = [b"credit-%d" % n for n in range(3 * credit + 1)]
        async with under_test.consumer(channel_size=credit) as deliveries:
            for payload in payloads:
                await under_test.publish(payload)
            held = [await receive(deliveries) for _ in range(credit)]
            received = [d.event.payload for d in held]
            # Its whole credit unsettled: nothing more, however much the broker has.
            with trio.move_on_after(OVER_CREDIT_WATCH):
                extra = await anext(deliveries)
                pytest.fail(f"handed out beyond the credit of {credit}: {extra.event.payload!r}")
            # Each settle lets exactly one more through.
            while len(received) < len(payloads):
                await held.pop(0).ack()
                held.append(await receive(deliveries))
                received.append(held[-1].event.payload)
                assert len(held) == credit
            for delivery in held:
                await delivery.ack()
        assert received == payloads

    async def _overflow(self, under_test: EndpointUnderTest, credit: int) -> None:
        """No broker flow control (Solace direct): the consumer buffers ``buffered`` messages for
        a client that takes none; beyond that a plan that does not drop (``auto``) ends the
        consumer with ClientTooSlow, after handing out what it buffered, in order."""
        route = under_test.route(channel_size=credit)
        buffered = under_test.buffered(credit)
        payloads = [b"behind-%d" % n for n in range(buffered + 2)]
        received: list[bytes] = []
        async with under_test.consumer(channel_size=credit) as deliveries:
            for payload in payloads:
                await under_test.publish(payload)
            # The suite's consumers of such an endpoint use a guarantee that does not drop (auto).
            assert not route.ack_plan.drops_when_behind
            with pytest.raises(ClientTooSlow):
                while True:
                    delivery = await receive(deliveries)
                    received.append(delivery.event.payload)
                    await delivery.ack()
        assert received == payloads[: len(received)]
        assert len(received) <= buffered

    @pytest.mark.parametrize("guarantee", list(Guarantee), ids=[g.value for g in Guarantee])
    async def test_a_client_that_reconnects_gets_what_its_guarantee_promises(
        self, under_test: EndpointUnderTest, guarantee: Guarantee
    ) -> None:
        # No more than the credit (4), so that every one is handed out at once where the broker
        # counts credit (MQTT's receive maximum: one queued beyond it may go with UNSUBSCRIBE).
        sent = [b"%s-%d" % (guarantee.value.encode(), n) for n in range(4)]
        plan = under_test.route(guarantee.value).ack_plan
        client = "c1"  # one of the suite's client ids (brokers with a queue per client make them)
        async with client_session(under_test, guarantee, client) as first:
            for payload in sent:
                await under_test.publish(payload)
            got = [await write(first), await write(first)]
            assert [item.event.payload for item in got] == sent[:2]
            if plan.keeps_until_confirmed:
                await first.confirm(got[0].event.id)  # the other one stays unconfirmed
        async with client_session(under_test, guarantee, client) as second:
            await under_test.publish(b"marker")
            again = []
            while (item := await write(second)).event.payload != b"marker":
                again.append(item.event.payload)
                if plan.keeps_until_confirmed:
                    await second.confirm(item.event.id)
        resumes = under_test.resumes(plan)
        if plan.keeps_until_confirmed:
            # Written and confirmed: never again. Written, not confirmed, or not written: again.
            assert sorted(set(again)) == (sent[1:] if resumes else [])
        else:
            # Acked by the time it was written: never again.
            assert not set(again) & set(sent[:2])
            assert len(again) == len(set(again))
            if plan.ack_step is Step.BEFORE_WRITE:
                # Nothing is acked before its write: all the client did not get comes again.
                assert sorted(again) == (sent[2:] if resumes else [])
            else:
                # Acked on receipt or in the channel: some the client never got may be gone.
                assert set(again) <= (set(sent[2:]) if resumes else set())
