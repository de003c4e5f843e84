"""One client id, two connections, against the real brokers (design.md, One client id, twice).

On one instance the newer WebSocket session takes over (the older is closed 4409) and, under
at_least_once, what the older one had not confirmed reaches the newer one: Kafka (the client's
consumer group), RabbitMQ (the client's queue: nacked, requeued), MQTT 5 (the client's MQTT
session: what it sent and was not PUBACKed is sent again), AMQP 1.0 (the client's queue:
released), Solace (on the fake of the API: the client's queue, the flow's outstanding messages
put back).

Across two engine instances the engines know nothing of each other and the broker decides; the
same scenario runs for each (``test_across_two_instances_nothing_lost``): the older session on
instance A confirms two events, holds the third unconfirmed and confirms three more; the newer
one connects to instance B; six more events come and both sessions read and confirm; then the
older one leaves and six more come. Nothing is lost: every event is confirmed by one of the two
sessions. What the older session sees differs per broker, asserted here (README, "Deploying"):

- Kafka ``per_session``: the newer consumer joins the client's group, which rebalances (eager:
  every partition revoked, then assigned again). The one partition goes to either of them (the
  assignor's choice: not always the older one, often the newer); the one that gets it starts from the group's commit, which never passed the held event, so it reads that
  and what followed again; the other one gets nothing more. Nothing ends. When the older leaves,
  the group rebalances again and the newer starts from the commit.
- Kafka ``fetch = "shared"``: no group membership at all: both read every event, each from its
  own start (the newer from the positions the older had written when it started); both write
  the client's positions. Nothing ends.
- RabbitMQ, AMQP 1.0 (RabbitMQ's plugin) and Solace (the fake's model of a non-exclusive
  queue): two consumers on the client's queue, each event to one of them, round-robin while
  both have credit; what the older held goes to the newer when the older leaves. Nothing ends.
- MQTT 5 (``test_mqtt_across_two_instances_the_broker_takes_over``): the broker takes the MQTT
  session over and the older session ends (4409 where the broker says why; Mosquitto 2.0 just
  closes the connection: 1011); what it had not confirmed comes again to the newer one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from mediation.config import Config
from mediation.endpoints.base import EndpointState, Outbound
from mediation.engine import MediationEngine, open_mediation_engine
from mediation.envelope import SUBPROTOCOL
from mediation.events import Event

from .conftest import clients_gone, envelope, make_config, open_ws, url
from .solace_fake import open_broker
from .solace_fake.harness import fake_table, fake_threads
from .test_conformance_jms import fanout

WAIT = 30.0  # a Kafka group join on tansu takes seconds

# The client ids of these tests (the AMQP 1.0 queues are made for them beforehand).
CLIENTS = ("alice", "bob")


@contextmanager
def endpoint_table(
    broker: str, request: pytest.FixtureRequest, client_id: str
) -> Iterator[dict[str, Any]]:
    """The ``broker`` endpoint's table: topics and queues of this test's own, per client where
    the broker keeps a client's place in a queue (removed on leaving); the test's producer
    publishes to ``client_id``'s."""
    name = uuid.uuid4().hex[:10]
    if broker.startswith("kafka"):
        tansu = request.getfixturevalue("tansu")
        yield {
            "type": "kafka",
            "config": {
                "brokers": tansu.bootstrap_servers,
                "fetch": "shared" if broker == "kafka-shared" else "per_session",
                "topic_in": f"twice-{name}",
                "topic_out": f"twice-{name}",
                "create_topics": True,
                "auto_offset_reset": "earliest",
                "session_timeout_ms": 3000,
                "heartbeat_interval_ms": 500,
            },
        }
    elif broker == "rabbitmq":
        rabbitmq = request.getfixturevalue("rabbitmq")
        queue = f"twice-{name}-{client_id}"
        try:
            yield {
                "type": "rabbitmq",
                "config": {
                    "url": rabbitmq.amqp_url,
                    "queue_in": f"twice-{name}-{{client_id}}",
                    "queue_out": queue,
                },
            }
        finally:
            rabbitmq.delete_queue(queue)
    elif broker == "jms":
        rabbitmq = request.getfixturevalue("rabbitmq")
        with fanout(rabbitmq, CLIENTS) as base:
            yield {
                "type": "jms",
                "config": {
                    "url": rabbitmq.amqp1_url,
                    "queue_in": f"/amq/queue/{base}-{{client_id}}",
                    "queue_out": f"/exchange/{base}",
                },
            }
    elif broker == "solace":
        with open_broker() as fake:
            yield {"type": "solace", "config": fake_table(fake, queue_in="q/{client_id}")}
        assert not fake_threads(), fake_threads()
    else:
        mosquitto = request.getfixturevalue("mosquitto")
        yield {
            "type": "mqtt5",
            "config": {
                "broker": f"tcp://{mosquitto.host}:{mosquitto.port}",
                "topic_in": f"twice/{name}",
                "topic_out": f"twice/{name}",
                "retry_interval": 0.1,
            },
        }


def config(table: dict[str, Any]) -> Config:
    return make_config(
        entrypoints={"ws": "websocket"},
        endpoints={"broker": table},
        routes=[
            {
                "source": "broker",
                "target": "ws",
                "delivery_guarantee": "at_least_once",
                "channel_size": 4,
            },
            # For the test's producer (publish below).
            {"source": "ws", "target": "broker", "delivery_guarantee": "at_least_once"},
        ],
    )


async def up(*engines: MediationEngine) -> None:
    with trio.fail_after(WAIT):
        for engine in engines:
            await engine.endpoints["broker"].state.wait_value(EndpointState.UP)


async def publish(engine: MediationEngine, *payloads: str) -> None:
    route = next(r for r in engine.config.routes if r.target == "broker")
    with trio.fail_after(WAIT):
        for payload in payloads:
            await engine.endpoints["broker"].publish(
                Outbound(
                    event=Event(payload.encode()),
                    route=route,
                    client_id="producer",
                    entrypoint="test",
                ),
                confirm=True,
            )


def client(engine: MediationEngine, client_id: str) -> Any:
    return open_ws(
        url(engine, "ws", f"/?client_id={client_id}", scheme="ws"), subprotocols=[SUBPROTOCOL]
    )


async def closed_with(ws: WebSocketConnection) -> tuple[int, str | None]:
    with trio.fail_after(WAIT):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            assert closed.reason is not None
            return closed.reason.code, closed.reason.reason


async def collect(ws: WebSocketConnection, wanted: set[str]) -> set[str]:
    """Read and confirm until every payload in ``wanted`` came (duplicates allowed)."""
    got: set[str] = set()
    with trio.fail_after(WAIT):
        while not wanted <= got:
            message = await envelope(ws)
            got.add(message["payload"])
            await ws.send_message(json.dumps({"ack": message["id"]}))
    return got


def batch(name: str) -> list[str]:
    return [f"{name}-{n}" for n in range(6)]


@pytest.mark.parametrize("broker", ["kafka", "rabbitmq", "mqtt5", "jms", "solace"])
async def test_one_instance_newer_takes_over_nothing_lost(
    broker: str, request: pytest.FixtureRequest
) -> None:
    payloads = batch("event")
    with endpoint_table(broker, request, "alice") as table:
        async with open_mediation_engine(config(table)) as engine:
            await up(engine)
            async with client(engine, "alice") as older:
                await publish(engine, *payloads)
                confirmed = set()
                for _ in range(2):
                    message = await envelope(older)
                    confirmed.add(message["payload"])
                    await older.send_message(json.dumps({"ack": message["id"]}))
                await envelope(older)  # one more, never confirmed
                async with client(engine, "alice") as newer:
                    assert await closed_with(older) == (4409, "replaced")
                    got = await collect(newer, set(payloads) - confirmed)
                assert confirmed | got == set(payloads)  # lost: none
            await clients_gone(engine)


# -- across two instances ------------------------------------------------------------------------


class Reader:
    """One session's side of the scenario: what it received (in order, duplicates too), what it
    confirmed (all but the first delivery of ``held``), and how it ended if it did."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.got: list[str] = []
        self.confirmed: set[str] = set()
        self.held: str | None = None  # received once and not confirmed then
        self.closed: tuple[int, str | None] | None = None

    async def take(self, count: int, *, confirm: bool = True) -> None:
        for _ in range(count):
            message = await envelope(self.ws)
            self.got.append(message["payload"])
            if confirm:
                await self.ws.send_message(json.dumps({"ack": message["id"]}))
                self.confirmed.add(message["payload"])
            else:
                self.held = message["payload"]

    async def read(self, until: Callable[[], bool], done: trio.CancelScope) -> None:
        """Read and confirm until ``until()`` holds (then cancel ``done``) or the session ends."""
        try:
            while not until():
                message = json.loads(await self.ws.get_message())
                self.got.append(message["payload"])
                await self.ws.send_message(json.dumps({"ack": message["id"]}))
                self.confirmed.add(message["payload"])
            done.cancel()
        except ConnectionClosed as closed:
            assert closed.reason is not None
            self.closed = closed.reason.code, closed.reason.reason


async def read_until(until: Callable[[], bool], *readers: Reader) -> None:
    """The sessions read and confirm, concurrently, until ``until()`` holds."""
    with trio.move_on_after(WAIT) as waiting:
        async with trio.open_nursery() as nursery:
            for reader in readers:
                nursery.start_soon(reader.read, until, nursery.cancel_scope)
    if waiting.cancelled_caught:
        raise AssertionError(f"after {WAIT} s: {[(r.got, r.held, r.closed) for r in readers]}")


def confirmed(*readers: Reader) -> set[str]:
    return {payload for reader in readers for payload in reader.confirmed}


@pytest.mark.parametrize("broker", ["kafka", "kafka-shared", "rabbitmq", "jms", "solace"])
async def test_across_two_instances_nothing_lost(
    broker: str, request: pytest.FixtureRequest
) -> None:
    first, second, third = batch("first"), batch("second"), batch("third")
    with endpoint_table(broker, request, "bob") as table:
        async with (
            open_mediation_engine(config(table)) as a,
            open_mediation_engine(config(table)) as b,
        ):
            await up(a, b)
            async with client(a, "bob") as ws_older, AsyncExitStack() as stack:
                older = Reader(ws_older)
                await publish(a, *first)
                await older.take(2)
                await older.take(1, confirm=False)
                held = older.held
                await older.take(3)  # the older has credit left (the channel holds 4)
                newer = Reader(await stack.enter_async_context(client(b, "bob")))
                await publish(b, *second)
                if broker == "kafka-shared":  # both read everything

                    def until() -> bool:
                        return set(second) <= set(older.got) and set(second) <= set(newer.got)

                else:  # every event to one of them (what the older holds stays there)

                    def until() -> bool:
                        return set(first + second) - {held} <= confirmed(older, newer)

                await read_until(until, older, newer)
                assert older.closed is None and newer.closed is None  # nothing ends
                to_older = set(second) & set(older.got)
                to_newer = set(second) & set(newer.got)
                if broker == "kafka":  # one partition: it went to one of them
                    assert set(second) in (to_older, to_newer)
                elif broker != "kafka-shared":  # competing consumers: shared out, round-robin
                    assert not to_older & to_newer
                    assert to_older and to_newer
                # The older one leaves: what it held unconfirmed goes to the newer one (unless
                # the older got it again and confirmed it: a Kafka rebalance that gave the
                # partition back to the older consumer starts it again from the group's commit).
                await ws_older.aclose()
                await clients_gone(a)
                await publish(a, *third)
                every = set(first + second + third)
                await read_until(lambda: every <= confirmed(older, newer), newer)
                assert set(third) <= newer.confirmed
            await clients_gone(a)
            await clients_gone(b)


async def test_mqtt_across_two_instances_the_broker_takes_over(
    request: pytest.FixtureRequest,
) -> None:
    payloads = batch("event")
    with endpoint_table("mqtt5", request, "bob") as table:
        async with (
            open_mediation_engine(config(table)) as a,
            open_mediation_engine(config(table)) as b,
        ):
            await up(a, b)
            async with client(a, "bob") as older:
                await publish(a, *payloads)
                message = await envelope(older)  # never confirmed
                async with client(b, "bob") as newer:
                    # A broker that says why (DISCONNECT 0x8E "Session taken over") ends the
                    # older session 4409; Mosquitto 2.0 closes the older connection without a
                    # word, which the older instance cannot tell from a broker fault: 1011.
                    code, _ = await closed_with(older)
                    assert code in (4409, 1011)
                    got = await collect(newer, set(payloads))
                assert message["payload"] in got
            await clients_gone(a)
            await clients_gone(b)
