"""The WebSocket entrypoint's wire contract (DESIGN section 4), with a real trio-websocket client."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from mediation.endpoints import Outbound
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL
from mediation.events import Event

from .conftest import EngineFactory, clients_gone, open_ws, url

ECHO = [{"source": "ws", "target": "mem"}, {"source": "mem", "target": "ws"}]


async def handshake_status(
    engine: MediationEngine, name: str, target: str = "/", **headers: str
) -> int:
    """The status a WebSocket upgrade request gets (httpx, since trio-websocket's client leaks
    its socket when a handshake is refused)."""
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with httpx.AsyncClient() as client:
        response = await client.get(url(engine, name, target), headers={**upgrade, **headers})
    return response.status_code


def ws_url(engine: MediationEngine, path: str = "/") -> str:
    return url(engine, "ws", path, scheme="ws")


async def publish(engine: MediationEngine, payload: bytes, topic_route: str = "ws->mem") -> Event:
    """Publish straight into the memory endpoint, as a broker-side producer would."""
    route = next(r for r in engine.config.routes if r.name == topic_route)
    event = Event(payload, metadata={"origin": "test"})
    await engine.endpoints["mem"].publish(
        Outbound(event=event, route=route, client_id="producer", entrypoint="test"), confirm=True
    )
    return event


async def test_text_and_binary_messages_round_trip(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints={"ws": "websocket"}, routes=ECHO) as engine:
        async with open_ws(ws_url(engine)) as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
            await ws.send_message(b"\xff\x00binary")
            assert await ws.get_message() == b"\xff\x00binary"


async def test_every_connected_client_receives_what_one_sends(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints={"ws": "websocket"}, routes=ECHO) as engine:
        async with open_ws(ws_url(engine)) as a, open_ws(ws_url(engine)) as b:
            await a.send_message("to everyone")
            assert await a.get_message() == "to everyone"
            assert await b.get_message() == "to everyone"


async def test_handshake_completes_only_once_subscribed(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints={"ws": "websocket"}, routes=ECHO) as engine:
        async with open_ws(ws_url(engine)) as ws:
            # Nothing to wait for: 101 means the consumer exists, so this event must arrive.
            await publish(engine, b"right after the handshake")
            assert await ws.get_message() == "right after the handshake"


@pytest.mark.parametrize(
    ("config", "target", "headers", "status"),
    [
        ({}, "/?client_id=bad%20id", {}, 400),
        ({}, "/", {"X-Client-ID": "x" * 129}, 400),
        (
            {"allowed_origins": ["https://good.example"]},
            "/",
            {"Origin": "https://evil.example"},
            403,
        ),
        ({}, "/elsewhere", {}, 404),
    ],
)
async def test_refusals_before_the_upgrade(
    engine_with: EngineFactory,
    config: dict[str, object],
    target: str,
    headers: dict[str, str],
    status: int,
) -> None:
    async with engine_with(
        entrypoints={"ws": {"type": "websocket", **config}}, routes=ECHO
    ) as engine:
        assert await handshake_status(engine, "ws", target, **headers) == status
        assert engine.sessions == []


async def test_allowed_origin_is_admitted(engine_with: EngineFactory) -> None:
    entrypoint = {"type": "websocket", "allowed_origins": ["https://good.example"]}
    async with (
        engine_with(entrypoints={"ws": entrypoint}, routes=ECHO) as engine,
        open_ws(ws_url(engine), extra_headers=[("Origin", "https://good.example")]) as ws,
    ):
        await ws.send_message("in")
        assert await ws.get_message() == "in"


async def test_no_route_is_502_and_capacity_is_503(engine_with: EngineFactory) -> None:
    entrypoints = {"ws": {"type": "websocket", "max_sessions": 1}, "lonely": "websocket"}
    async with engine_with(entrypoints=entrypoints, routes=ECHO) as engine:
        assert await handshake_status(engine, "lonely") == 502
        async with open_ws(ws_url(engine)):
            assert await handshake_status(engine, "ws") == 503
        await clients_gone(engine)
        async with open_ws(ws_url(engine)):
            pass  # capacity is back once the first session left


async def test_identity_from_header_then_query_then_generated(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints={"ws": "websocket"}, routes=ECHO) as engine:
        async with open_ws(
            ws_url(engine, "/?client_id=from-query"), extra_headers=[("X-Client-ID", "from-header")]
        ):
            assert [s.client_id for s in engine.sessions] == ["from-header"]
        async with open_ws(ws_url(engine, "/?client_id=from-query")):
            assert [s.client_id for s in engine.sessions] == ["from-query"]
        async with open_ws(ws_url(engine)):
            [session] = engine.sessions
            assert len(session.client_id) == 36


async def test_message_over_the_limit_closes_with_1009(engine_with: EngineFactory) -> None:
    entrypoint = {"type": "websocket", "max_message_bytes": 1000}
    async with engine_with(entrypoints={"ws": entrypoint}, routes=ECHO) as engine:
        async with open_ws(ws_url(engine)) as ws:
            await ws.send_message("x" * 1000)  # the limit is inclusive
            assert await ws.get_message() == "x" * 1000
            await ws.send_message("x" * 1001)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1009
        assert engine.endpoints["mem"].stats["published"] == 1


async def test_broker_failure_closes_with_1011(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints={"ws": "websocket"}, routes=ECHO) as engine:
        async with open_ws(ws_url(engine)) as ws:
            engine.endpoints["mem"].fail()
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1011


async def test_shutdown_closes_with_1001(engine_with: EngineFactory) -> None:
    shut_down = trio.Event()

    async def run_engine(*, task_status: trio.TaskStatus[MediationEngine]) -> None:
        async with engine_with(entrypoints={"ws": "websocket"}, routes=ECHO) as engine:
            task_status.started(engine)
            await shut_down.wait()

    async with trio.open_nursery() as nursery:
        engine = await nursery.start(run_engine)
        async with open_ws(ws_url(engine)) as ws:
            shut_down.set()
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1001


async def test_frame_type_binary_sends_text_payloads_as_binary(engine_with: EngineFactory) -> None:
    async with (
        engine_with(
            entrypoints={"ws": {"type": "websocket", "frame_type": "binary"}}, routes=ECHO
        ) as engine,
        open_ws(ws_url(engine)) as ws,
    ):
        await ws.send_message("text")
        assert await ws.get_message() == b"text"


# -- the mediation.v1 envelope ---------------------------------------------------------------


def envelope_routes(guarantee: str, channel_size: int = 1) -> list[dict[str, object]]:
    return [
        {"source": "ws", "target": "mem", "delivery_guarantee": guarantee},
        {
            "source": "mem",
            "target": "ws",
            "delivery_guarantee": guarantee,
            "channel_size": channel_size,
        },
    ]


async def test_envelope_downstream_and_client_ack(engine_with: EngineFactory) -> None:
    async with engine_with(
        entrypoints={"ws": "websocket"}, routes=envelope_routes("at_least_once")
    ) as engine:
        stats = engine.endpoints["mem"].stats
        async with open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws:
            assert ws.subprotocol == SUBPROTOCOL
            event = await publish(engine, b"\xfe binary")
            delivered = json.loads(await ws.get_message())
            assert delivered["id"] == event.id
            assert delivered["encoding"] == "base64"
            assert delivered["metadata"] == {"origin": "test"}
            assert stats["acked"] == 0  # at_least_once: not before the client confirmed
            await ws.send_message(json.dumps({"ack": event.id}))
            # The ack travels on; a second event proves the first one was processed in order.
            second = await publish(engine, b"second")
            assert json.loads(await ws.get_message())["id"] == second.id
            assert stats["acked"] == 1


async def test_envelope_nack_redelivers(engine_with: EngineFactory) -> None:
    async with (
        engine_with(
            entrypoints={"ws": "websocket"}, routes=envelope_routes("at_least_once")
        ) as engine,
        open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws,
    ):
        event = await publish(engine, b"try again")
        assert json.loads(await ws.get_message())["id"] == event.id
        await ws.send_message(json.dumps({"nack": event.id}))
        again = json.loads(await ws.get_message())
        assert (again["id"], again["payload"]) == (event.id, "try again")
        await ws.send_message(json.dumps({"ack": event.id}))


async def test_unconfirmed_events_are_nacked_on_disconnect(engine_with: EngineFactory) -> None:
    async with engine_with(
        entrypoints={"ws": "websocket"}, routes=envelope_routes("at_least_once")
    ) as engine:
        stats = engine.endpoints["mem"].stats
        async with open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws:
            await publish(engine, b"never confirmed")
            await ws.get_message()
        await clients_gone(engine)
        assert (stats["acked"], stats["nacked"]) == (0, 1)


async def test_envelope_upstream_is_acked_after_publish_and_nacked_when_broker_down(
    engine_with: EngineFactory,
) -> None:
    async with (
        engine_with(
            entrypoints={"ws": "websocket"}, routes=envelope_routes("at_least_once")
        ) as engine,
        open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws,
    ):
        await ws.send_message(
            json.dumps({"id": "up-1", "payload": "hello", "metadata": {"k": "v"}})
        )
        replies = [json.loads(await ws.get_message()) for _ in range(2)]
        assert {"ack": "up-1"} in replies  # the reply, and the echo of the event itself
        echo = next(r for r in replies if "payload" in r)
        assert (echo["id"], echo["payload"], echo["metadata"]) == ("up-1", "hello", {"k": "v"})
        await ws.send_message(json.dumps({"ack": "up-1"}))
        engine.endpoints["mem"]._check_up = _refuse  # type: ignore[method-assign]
        await ws.send_message(json.dumps({"id": "up-2", "payload": "lost?"}))
        assert json.loads(await ws.get_message()) == {"nack": "up-2", "error": "broker refused"}


def _refuse() -> None:
    from mediation.errors import BrokerUnavailable

    raise BrokerUnavailable("broker refused")


async def test_malformed_envelope_closes_with_1008(engine_with: EngineFactory) -> None:
    async with (
        engine_with(entrypoints={"ws": "websocket"}, routes=envelope_routes("auto")) as engine,
        open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws,
    ):
        await ws.send_message("{not json")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 1008


async def test_client_that_never_confirms_is_disconnected_with_1013(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock
) -> None:
    routes = envelope_routes("at_least_once")
    routes[1].update(slow_client="disconnect", slow_client_timeout=5)
    async with engine_with(entrypoints={"ws": "websocket"}, routes=routes) as engine:
        stats = engine.endpoints["mem"].stats
        async with open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws:
            for n in range(3):  # one written; it holds the credit (1): nothing more is handed out
                await publish(engine, b"%d" % n)
            await ws.get_message()
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1013
        await clients_gone(engine)
        assert stats["nacked"] == 1 and stats["acked"] == 0


async def test_a_client_that_stops_reading_stops_its_consumer_and_the_publisher(
    engine_with: EngineFactory,
) -> None:
    """Backpressure over a real socket: TCP fills, the writer waits, the channel fills, the
    consumer waits, the memory broker's subscriber buffer fills, the publisher waits."""
    payload = b"x" * 65536
    endpoints = {"mem": {"type": "memory", "config": {"capacity": 2}}}
    routes = [
        {"source": "ws", "target": "mem"},
        {"source": "mem", "target": "ws", "channel_size": 2},
    ]
    async with engine_with(
        entrypoints={"ws": "websocket"}, routes=routes, endpoints=endpoints
    ) as engine:
        async with open_ws(ws_url(engine)) as ws, trio.open_nursery() as nursery:
            published = 0

            async def publisher() -> None:
                nonlocal published
                for _ in range(300):
                    await publish(engine, payload)
                    published += 1

            nursery.start_soon(publisher)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            stalled_at = published
            assert stalled_at < 150  # socket buffers hold some; nothing else grows
            [session] = engine.sessions
            assert session.channel_depth == 2
            for _ in range(300):
                assert await ws.get_message() == payload.decode()
            assert published == 300


async def test_a_binary_message_comes_back_binary_even_when_its_bytes_are_utf8(
    engine_with: EngineFactory,
) -> None:
    async with (
        engine_with(entrypoints={"ws": "websocket"}, routes=ECHO) as engine,
        open_ws(ws_url(engine)) as ws,
    ):
        await ws.send_message(b"plain ascii")
        assert await ws.get_message() == b"plain ascii"
        await ws.send_message(b"")
        assert await ws.get_message() == b""
        await ws.send_message("text stays text")
        assert await ws.get_message() == "text stays text"
