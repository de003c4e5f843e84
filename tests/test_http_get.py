"""The HTTP GET long-polling entrypoint's wire contract (DESIGN sections 4, 4.1, 5, 9), with httpx.

Events are published by a real HTTP POST client on the same engine (``post -> mem -> poll``), so
each ``X-Event-ID`` a test checks is the id the webhook returned. Timers (``poll_timeout``,
``session_idle_timeout``) run on Trio's autojump clock where a test waits for them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from mediation.endpoints.base import Outbound
from mediation.endpoints.memory import MemoryEndpoint
from mediation.engine import MediationEngine
from mediation.events import Event

from .conftest import EngineFactory, url

UPSTREAM: dict[str, Any] = {"source": "post", "target": "mem"}
DOWNSTREAM: dict[str, Any] = {"source": "mem", "target": "poll"}
ROUTES = [UPSTREAM, DOWNSTREAM]


def entrypoints(**poll: Any) -> dict[str, str | dict[str, Any]]:
    return {"poll": {"type": "http_get", "poll_timeout": 2, **poll}, "post": "http_post"}


def guaranteed(guarantee: str, channel_size: int = 1) -> list[dict[str, Any]]:
    return [UPSTREAM, {**DOWNSTREAM, "delivery_guarantee": guarantee, "channel_size": channel_size}]


def memory(engine: MediationEngine) -> MemoryEndpoint:
    endpoint = engine.endpoints["mem"]
    assert isinstance(endpoint, MemoryEndpoint)
    return endpoint


class Poller:
    """One polling client: ``X-Client-ID`` on every request."""

    def __init__(self, client: httpx.AsyncClient, engine: MediationEngine, client_id: str) -> None:
        self.client = client
        self.engine = engine
        self.client_id = client_id

    async def request(self, method: str, path: str, **headers: str) -> httpx.Response:
        return await self.client.request(
            method,
            url(self.engine, "poll", path),
            headers={"X-Client-ID": self.client_id, **headers},
        )

    async def subscribe(self) -> httpx.Response:
        return await self.request("POST", "/subscribe")

    async def poll(self) -> httpx.Response:
        return await self.request("GET", "/poll")

    async def ack(self, event_id: str) -> httpx.Response:
        return await self.request("POST", "/ack", **{"X-Event-ID": event_id})

    async def unsubscribe(self) -> httpx.Response:
        return await self.request("DELETE", "/unsubscribe")


async def post(
    client: httpx.AsyncClient, engine: MediationEngine, payload: bytes, **headers: str
) -> str:
    response = await client.post(url(engine, "post"), content=payload, headers=headers)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for what the server does after answering: there is no client-visible event for it."""
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110 (engine-side state, no client-visible signal)
            await trio.sleep(0.01)


# -- subscribe -----------------------------------------------------------------------------------


async def test_subscribe_answers_201_with_the_session(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            response = await Poller(client, engine, "reader-1").subscribe()
            assert response.status_code == 201
            document = response.json()
            assert set(document) == {"session_id", "client_id"}
            assert document["client_id"] == "reader-1"
            assert document["session_id"] == str(uuid.UUID(document["session_id"]))
            [session] = engine.sessions
            assert (session.id, session.client_id, session.entrypoint) == (
                document["session_id"],
                "reader-1",
                "poll",
            )
            # Subscribed means the consumer exists: an event published now is delivered.
            assert memory(engine).subscriber_count("events") == 1
            # Subscribing again while the session lives answers the same session.
            again = await Poller(client, engine, "reader-1").subscribe()
            assert (again.status_code, again.json()) == (201, document)
            assert len(engine.sessions) == 1


async def test_subscribe_without_client_id_is_400(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            response = await client.post(url(engine, "poll", "/subscribe?client_id=query-id"))
        assert response.status_code == 400
        assert "X-Client-ID" in response.json()["error"]
        assert engine.sessions == []


@pytest.mark.parametrize(
    "client_id", ["bad id!", "x" * 129, ""], ids=["space", "129-chars", "empty"]
)
async def test_invalid_client_id_is_400(engine_with: EngineFactory, client_id: str) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            response = await Poller(client, engine, client_id).subscribe()
        assert response.status_code == 400
        assert engine.sessions == []


async def test_no_route_is_502(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=[UPSTREAM]) as engine:
        async with httpx.AsyncClient() as client:
            response = await Poller(client, engine, "reader").subscribe()
        assert response.status_code == 502
        assert engine.sessions == []


async def test_max_sessions_reached_is_503(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(max_sessions=1), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            assert (await Poller(client, engine, "first").subscribe()).status_code == 201
            refused = await Poller(client, engine, "second").subscribe()
            assert refused.status_code == 503
            assert [s.client_id for s in engine.sessions] == ["first"]
            # The refused client was never subscribed.
            assert (await Poller(client, engine, "second").poll()).status_code == 404


async def test_broker_down_at_subscribe_is_503(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        memory(engine).fail()
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            assert (await poller.subscribe()).status_code == 503
            assert (await poller.poll()).status_code == 404
            memory(engine).recover()
            assert (await poller.subscribe()).status_code == 201


# -- poll ----------------------------------------------------------------------------------------


async def test_poll_answers_the_event_with_its_id_and_metadata(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            event_id = await post(
                client,
                engine,
                b"line one\nline two\x00\xff",
                **{"Content-Type": "text/plain", "X-Trace": "t-1"},
            )
            response = await poller.poll()
        assert response.status_code == 200
        assert response.content == b"line one\nline two\x00\xff"
        assert response.headers["x-event-id"] == event_id
        assert response.headers["content-type"] == "text/plain"
        assert response.headers["x-meta-x-trace"] == "t-1"


async def test_poll_without_metadata_is_octet_stream(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            await memory(engine).publish(outbound(engine, b"raw"), confirm=True)
            response = await poller.poll()
        assert response.status_code == 200
        assert response.content == b"raw"
        assert response.headers["content-type"] == "application/octet-stream"
        assert not [k for k in response.headers if k.startswith("x-meta-")]


def outbound(engine: MediationEngine, payload: bytes) -> Outbound:
    """An event published straight into the memory broker, as a broker-side producer would."""
    route = next(r for r in engine.config.routes if r.name == "post->mem")
    return Outbound(event=Event(payload), route=route, client_id="producer", entrypoint="test")


async def test_poll_answers_events_in_order(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            ids = [await post(client, engine, b"%d" % n) for n in range(5)]
            responses = [await poller.poll() for _ in ids]
        assert [(r.status_code, r.headers["x-event-id"], r.content) for r in responses] == [
            (200, event_id, b"%d" % n) for n, event_id in enumerate(ids)
        ]


async def test_poll_with_nothing_answers_204_after_poll_timeout(
    engine_with: EngineFactory, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_with(entrypoints=entrypoints(poll_timeout=3), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            started = trio.current_time()
            response = await poller.poll()
            assert response.status_code == 204
            assert response.content == b""
            assert trio.current_time() - started == pytest.approx(3, abs=0.1)
            # The session lives on: the next event is delivered.
            event_id = await post(client, engine, b"later")
            assert (await poller.poll()).headers["x-event-id"] == event_id


async def test_a_waiting_poll_is_answered_when_an_event_arrives(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(poll_timeout=30), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            answered: list[httpx.Response] = []

            async def long_poll() -> None:
                answered.append(await poller.poll())

            nursery.start_soon(long_poll)
            await trio.testing.wait_all_tasks_blocked()
            assert answered == []
            event_id = await post(client, engine, b"wake up")
        assert (answered[0].status_code, answered[0].headers["x-event-id"]) == (200, event_id)


async def test_poll_when_not_subscribed_is_404(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "stranger")
            assert (await poller.poll()).status_code == 404
            assert (await poller.ack("no-such-event")).status_code == 404
            assert (await poller.unsubscribe()).status_code == 404
            missing = await client.get(url(engine, "poll", "/poll"))
            assert missing.status_code == 400


# -- ack and delivery guarantees -----------------------------------------------------------------


async def test_ack_is_204_and_unknown_event_is_404(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=guaranteed("at_least_once")) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            event_id = await post(client, engine, b"confirm me")
            assert (await poller.poll()).headers["x-event-id"] == event_id
            assert (await poller.ack(str(uuid.uuid4()))).status_code == 404
            assert (await poller.ack(event_id)).status_code == 204
            # Confirmed once: a second ack for it waits on nothing.
            assert (await poller.ack(event_id)).status_code == 404
            assert (await poller.request("POST", "/ack")).status_code == 400  # no X-Event-ID


async def test_at_least_once_holds_the_next_event_until_the_ack(
    engine_with: EngineFactory, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=guaranteed("at_least_once")) as engine:
        stats = memory(engine).stats
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            first = await post(client, engine, b"first")
            second = await post(client, engine, b"second")

            assert (await poller.poll()).headers["x-event-id"] == first
            assert stats["acked"] == 0  # written is not confirmed
            # channel_size = 1 unconfirmed event: the second is not handed out yet.
            assert (await poller.poll()).status_code == 204
            assert (await poller.ack(first)).status_code == 204
            assert stats["acked"] == 1  # acked on the broker before /ack answered

            assert (await poller.poll()).headers["x-event-id"] == second
            assert stats["acked"] == 1
            assert (await poller.ack(second)).status_code == 204
            assert (stats["acked"], stats["nacked"]) == (2, 0)


async def test_at_least_once_unacked_event_is_nacked_on_unsubscribe(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=guaranteed("at_least_once")) as engine:
        stats = memory(engine).stats
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            event_id = await post(client, engine, b"never confirmed")
            assert (await poller.poll()).headers["x-event-id"] == event_id
            assert stats["nacked"] == 0
            assert (await poller.unsubscribe()).status_code == 200
            # The unsubscribe is answered once the session is over, its unconfirmed event nacked.
            assert (stats["acked"], stats["nacked"]) == (0, 1)
            assert engine.sessions == []
            assert memory(engine).subscriber_count("events") == 0


async def test_at_most_once_acks_before_the_response(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=guaranteed("at_most_once")) as engine:
        stats = memory(engine).stats
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            await post(client, engine, b"at most once")
            response = await poller.poll()
            assert response.status_code == 200
            assert stats["acked"] == 1
            # Nothing to confirm: the id is known, the ack changes nothing.
            assert (await poller.ack(response.headers["x-event-id"])).status_code == 204
            assert (stats["acked"], stats["nacked"]) == (1, 0)


async def test_auto_acks_when_the_event_enters_the_session(engine_with: EngineFactory) -> None:
    async with engine_with(
        entrypoints=entrypoints(), routes=guaranteed("auto", channel_size=2)
    ) as engine:
        stats = memory(engine).stats
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            await post(client, engine, b"one")
            await post(client, engine, b"two")
            # Not polled yet: both sit in the session channel, already acked on the broker.
            await eventually(lambda: stats["acked"] == 2)
            assert [(await poller.poll()).content for _ in range(2)] == [b"one", b"two"]


# -- unsubscribe, expiry, broker failure, shutdown -------------------------------------------------


async def test_unsubscribe_is_200_then_poll_is_404(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            session_id = (await poller.subscribe()).json()["session_id"]
            response = await poller.unsubscribe()
            assert response.status_code == 200
            assert response.json()["session_id"] == session_id
            assert (await poller.poll()).status_code == 404
            assert (await poller.unsubscribe()).status_code == 404
            assert engine.sessions == []
            assert memory(engine).subscriber_count("events") == 0
            # Subscribing again is a new session.
            again = await poller.subscribe()
            assert again.status_code == 201
            assert again.json()["session_id"] != session_id
            event_id = await post(client, engine, b"for the new session")
            assert (await poller.poll()).headers["x-event-id"] == event_id


async def test_idle_session_expires_and_later_poll_is_410(
    engine_with: EngineFactory, autojump_clock: trio.testing.MockClock
) -> None:
    config = entrypoints(session_idle_timeout=60)
    async with engine_with(entrypoints=config, routes=guaranteed("at_least_once")) as engine:
        stats = memory(engine).stats
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            await post(client, engine, b"never confirmed")
            assert (await poller.poll()).status_code == 200
            await trio.sleep(61)
            # The consumer stopped and the unconfirmed event went back to the broker.
            assert engine.sessions == []
            assert memory(engine).subscriber_count("events") == 0
            assert stats["nacked"] == 1
            expired = await poller.poll()
            assert expired.status_code == 410
            assert "60" in expired.json()["error"]
            assert (await poller.ack("anything")).status_code == 410
            # The client may start over.
            assert (await poller.subscribe()).status_code == 201
            assert (await poller.poll()).status_code == 204


async def test_polling_keeps_the_session_alive(
    engine_with: EngineFactory, autojump_clock: trio.testing.MockClock
) -> None:
    config = entrypoints(poll_timeout=4, session_idle_timeout=10)
    async with engine_with(entrypoints=config, routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            session_id = (await poller.subscribe()).json()["session_id"]
            started = trio.current_time()
            for _ in range(5):
                assert (await poller.poll()).status_code == 204
                await trio.sleep(4)  # idle, but less than session_idle_timeout (and keep-alive)
            assert trio.current_time() - started >= 40 > 10
            assert [s.id for s in engine.sessions] == [session_id]


async def test_a_poll_longer_than_the_idle_timeout_does_not_expire_the_session(
    engine_with: EngineFactory, autojump_clock: trio.testing.MockClock
) -> None:
    config = entrypoints(poll_timeout=4, session_idle_timeout=1)
    async with engine_with(entrypoints=config, routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            assert (await poller.poll()).status_code == 204
            assert len(engine.sessions) == 1
            # Idle from the end of that poll on.
            await trio.sleep(2)
            assert engine.sessions == []
            assert (await poller.poll()).status_code == 410


async def test_broker_failure_ends_the_session_and_poll_is_503(engine_with: EngineFactory) -> None:
    # Issue 3: a broker failure is 503 for polling clients (retry later), as for the others.
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            memory(engine).fail()
            assert (await poller.poll()).status_code == 503
            assert (await poller.poll()).status_code == 503
            assert engine.sessions == []
            memory(engine).recover()
            await poller.subscribe()  # a new session once the broker is back
            assert (await poller.poll()).status_code == 204


async def test_broker_failure_answers_a_waiting_poll_with_503(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(poll_timeout=30), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            answered: list[httpx.Response] = []

            async def long_poll() -> None:
                answered.append(await poller.poll())

            nursery.start_soon(long_poll)
            await trio.testing.wait_all_tasks_blocked()
            memory(engine).fail()
        assert answered[0].status_code == 503


async def test_engine_shutdown_answers_a_waiting_poll(engine_with: EngineFactory) -> None:
    async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
        answered: list[httpx.Response] = []
        async with engine_with(entrypoints=entrypoints(poll_timeout=30), routes=ROUTES) as engine:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()

            async def long_poll() -> None:
                answered.append(await poller.poll())

            nursery.start_soon(long_poll)
            await trio.testing.wait_all_tasks_blocked()
        # The engine told the waiting client before it stopped (not a cut connection).
        assert answered[0].status_code == 503
        assert engine.sessions == []


# -- methods and paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/subscribe", "POST"),
        ("DELETE", "/subscribe", "POST"),
        ("POST", "/poll", "GET"),
        ("GET", "/ack", "POST"),
        ("GET", "/unsubscribe", "DELETE"),
        ("POST", "/unsubscribe", "DELETE"),
    ],
)
async def test_wrong_method_is_405(
    engine_with: EngineFactory, method: str, path: str, allow: str
) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            response = await Poller(client, engine, "reader").request(method, path)
        assert response.status_code == 405
        assert response.headers["allow"] == allow
        assert engine.sessions == []


@pytest.mark.parametrize("path", ["/", "/subscribe/extra", "/events"])
async def test_unknown_path_is_404(engine_with: EngineFactory, path: str) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            response = await Poller(client, engine, "reader").request("GET", path)
        assert response.status_code == 404


async def test_broker_failure_answers_a_poll_waiting_for_the_window_with_410(
    engine_with: EngineFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # The one unconfirmed event at_least_once allows is out: the next poll waits for an /ack.
    config = entrypoints(poll_timeout=30)
    async with engine_with(entrypoints=config, routes=guaranteed("at_least_once")) as engine:
        async with httpx.AsyncClient(timeout=None) as client, trio.open_nursery() as nursery:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            await post(client, engine, b"unconfirmed")
            assert (await poller.poll()).status_code == 200
            answered: list[httpx.Response] = []

            async def long_poll() -> None:
                answered.append(await poller.poll())

            nursery.start_soon(long_poll)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            memory(engine).fail()
        assert answered[0].status_code == 503
        assert trio.current_time() - started < 30


async def test_engine_shutdown_answers_a_poll_waiting_for_the_window_at_once(
    engine_with: EngineFactory, autojump_clock: trio.testing.MockClock
) -> None:
    async with httpx.AsyncClient(timeout=None) as client, trio.open_nursery() as nursery:
        answered: list[httpx.Response] = []
        config = entrypoints(poll_timeout=30)
        async with engine_with(entrypoints=config, routes=guaranteed("at_least_once")) as engine:
            poller = Poller(client, engine, "reader")
            await poller.subscribe()
            await post(client, engine, b"unconfirmed")
            assert (await poller.poll()).status_code == 200

            async def long_poll() -> None:
                answered.append(await poller.poll())

            nursery.start_soon(long_poll)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
        # Shutdown did not wait out the poll: the client was told, and the event nacked.
        assert trio.current_time() - started < 30
        assert answered[0].status_code == 503
        assert memory(engine).stats["nacked"] == 1


async def test_concurrent_subscribes_share_one_session(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            poller = Poller(client, engine, "twice")
            answers: list[httpx.Response] = []

            async def subscribe() -> None:
                answers.append(await poller.subscribe())

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(subscribe)
            assert {a.json()["session_id"] for a in answers} == {engine.sessions[0].id}
            assert len(engine.sessions) == 1
