"""The SSE entrypoint's wire contract (DESIGN sections 4, 4.1, 5, 9), with httpx and httpx-sse.

Events are published by a real HTTP POST client on the same engine (``post -> mem -> sse``), so
every event id a test checks is the one the webhook returned.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import httpx
import pytest
import trio
import trio.testing
from httpx_sse import ServerSentEvent, aconnect_sse

from mediation.endpoints.memory import MemoryEndpoint
from mediation.engine import MediationEngine

from .conftest import EngineFactory, url

ROUTES: list[dict[str, Any]] = [
    {"source": "post", "target": "mem"},
    {"source": "mem", "target": "sse"},
]


def entrypoints(**sse: Any) -> dict[str, str | dict[str, Any]]:
    return {"sse": {"type": "sse", **sse}, "post": "http_post"}


def memory(engine: MediationEngine) -> MemoryEndpoint:
    endpoint = engine.endpoints["mem"]
    assert isinstance(endpoint, MemoryEndpoint)
    return endpoint


async def post(client: httpx.AsyncClient, engine: MediationEngine, payload: bytes) -> str:
    """Publish one event through the webhook; its id."""
    response = await client.post(url(engine, "post"), content=payload)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


T = TypeVar("T")


@asynccontextmanager
async def finishing(
    response: httpx.Response, items: AsyncIterator[T]
) -> AsyncIterator[AsyncIterator[T]]:
    """Iterate a streamed response; on leaving, close it and run the iteration to its end.

    httpx 0.28 nests async generators without closing them, so a chain abandoned half-way is left
    to the garbage collector, and trio warns (encode/httpx#3686; ``filterwarnings = error``).
    Once the connection is closed the rest of the iteration ends at once and finishes them all.
    """
    try:
        yield items
    finally:
        await response.aclose()
        with suppress(httpx.ReadError, httpx.StreamError):
            async for _ in items:
                pass


@asynccontextmanager
async def sse_stream(
    client: httpx.AsyncClient, engine: MediationEngine, target: str = "/", **headers: str
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[ServerSentEvent], dict[str, Any]]]:
    """An open SSE stream, its events, and the ``session`` event's document (already read)."""
    async with aconnect_sse(client, "GET", url(engine, "sse", target), headers=headers) as source:
        assert source.response.status_code == 200
        async with finishing(source.response, source.aiter_sse()) as events:
            first = await anext(events)
            assert first.event == "session"
            yield source.response, events, json.loads(first.data)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for what the server does after the client can see it: there is no event to wait on."""
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110 (engine-side state, no client-visible signal)
            await trio.sleep(0.01)


async def wait_until_no_sessions(engine: MediationEngine) -> None:
    """The session ended and its broker-side subscription is gone."""
    await eventually(lambda: not engine.sessions and not memory(engine).subscriber_count("events"))


# -- the session event and client identity ---------------------------------------------------


async def test_first_event_is_session_with_header_client_id(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine, **{"X-Client-ID": "alice@example.com"}) as (
                response,
                _,
                doc,
            ),
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert set(doc) == {"client_id", "session_id"}
            assert doc["client_id"] == "alice@example.com"
            [session] = engine.sessions
            assert doc["session_id"] == session.id == str(uuid.UUID(doc["session_id"]))
            assert session.client_id == "alice@example.com"
            assert session.entrypoint == "sse"


async def test_client_id_from_query_parameter(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine, "/?client_id=device-7") as (_, _, doc),
        ):
            assert doc["client_id"] == "device-7"


async def test_header_client_id_wins_over_query_parameter(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine, "/?client_id=query", **{"X-Client-ID": "header"}) as (
                _,
                _,
                doc,
            ),
        ):
            assert doc["client_id"] == "header"


async def test_client_id_generated_when_not_given(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine) as (_, _, first),
            sse_stream(client, engine) as (_, _, second),
        ):
            assert first["client_id"] == str(uuid.UUID(first["client_id"]))
            assert second["client_id"] == str(uuid.UUID(second["client_id"]))
            assert first["client_id"] != second["client_id"]
            assert first["session_id"] != second["session_id"]


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/", {"X-Client-ID": "bad id!"}),
        ("/", {"X-Client-ID": "x" * 129}),
        ("/?client_id=bad%20id", {}),
        ("/?client_id=" + "q" * 129, {}),
    ],
    ids=["header-space", "header-129-chars", "query-space", "query-129-chars"],
)
async def test_invalid_client_id_is_400(
    engine_with: EngineFactory, target: str, headers: dict[str, str]
) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            response = await client.get(
                url(engine, "sse", target), headers={"Accept": "text/event-stream", **headers}
            )
        assert response.status_code == 400
        assert "client id" in response.json()["error"]
        assert engine.sessions == []


async def test_client_id_of_128_chars_is_accepted(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        client_id = "A-z0.9_:@" + "x" * 119
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine, **{"X-Client-ID": client_id}) as (_, _, doc),
        ):
            assert doc["client_id"] == client_id


async def test_disallowed_origin_is_403_and_allowed_origin_streams(
    engine_with: EngineFactory,
) -> None:
    config = entrypoints(allowed_origins=["https://good.example"])
    async with engine_with(entrypoints=config, routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            refused = await client.get(
                url(engine, "sse"),
                headers={"Accept": "text/event-stream", "Origin": "https://evil.example"},
            )
            assert refused.status_code == 403
            assert engine.sessions == []
            async with sse_stream(client, engine, Origin="https://good.example") as (_, _, doc):
                assert [s.id for s in engine.sessions] == [doc["session_id"]]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_other_methods_are_405(engine_with: EngineFactory, method: str) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            response = await client.request(method, url(engine, "sse"), content=b"x")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET"
        assert engine.sessions == []


async def test_unknown_path_is_404(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            response = await client.get(url(engine, "sse", "/elsewhere"))
        assert response.status_code == 404


async def test_no_route_is_502(engine_with: EngineFactory) -> None:
    routes = [{"source": "post", "target": "mem"}]
    async with engine_with(entrypoints=entrypoints(), routes=routes) as engine:
        async with httpx.AsyncClient() as client:
            response = await client.get(url(engine, "sse"), headers={"Accept": "text/event-stream"})
        assert response.status_code == 502
        assert "no route" in response.json()["error"]


async def test_broker_down_at_connect_is_503_until_it_recovers(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        memory(engine).fail()
        async with httpx.AsyncClient() as client:
            refused = await client.get(url(engine, "sse"), headers={"Accept": "text/event-stream"})
            assert refused.status_code == 503
            assert engine.sessions == []
            memory(engine).recover()
            async with sse_stream(client, engine) as (_, events, _):
                event_id = await post(client, engine, b"back")
                assert (await anext(events)).id == event_id


async def test_max_sessions_reached_is_503(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(max_sessions=1), routes=ROUTES) as engine:
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine) as (_, events, _),
        ):
            refused = await client.get(url(engine, "sse"), headers={"Accept": "text/event-stream"})
            assert refused.status_code == 503
            assert len(engine.sessions) == 1
            # The admitted stream is untouched by the refusal.
            event_id = await post(client, engine, b"still flowing")
            event = await anext(events)
            assert (event.id, event.data) == (event_id, "still flowing")


# -- events --------------------------------------------------------------------------------------


async def test_event_id_is_the_id_the_webhook_returned(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine) as (_, events, _),
        ):
            # Published right after the session event: it must arrive (subscribed before it).
            ids = [await post(client, engine, f"event {n}".encode()) for n in range(3)]
            received = [await anext(events) for _ in ids]
            assert [(e.event, e.id, e.data) for e in received] == [
                ("message", event_id, f"event {n}") for n, event_id in enumerate(ids)
            ]


@pytest.mark.parametrize(
    ("payload", "data"),
    [
        (b"line one\nline two\nline three", "line one\nline two\nline three"),
        (b"line one\r\nline two", "line one\nline two"),
        (b"trailing newline\n", "trailing newline\n"),
        (b"\n\nblank lines\n\n", "\n\nblank lines\n\n"),
        (
            b"data: not a field\nid: nor this\n: nor a comment",
            "data: not a field\nid: nor this\n: nor a comment",
        ),
        (b"", ""),
        (b"not utf-8: \xff", "not utf-8: \ufffd"),
        ("caf\u00e9 \u2603".encode(), "caf\u00e9 \u2603"),
    ],
    ids=[
        "lf",
        "crlf",
        "trailing-lf",
        "blank-lines",
        "field-lookalikes",
        "empty",
        "not-utf8",
        "utf8",
    ],
)
async def test_payload_survives_as_one_event(
    engine_with: EngineFactory, payload: bytes, data: str
) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine) as (_, events, _),
        ):
            event_id = await post(client, engine, payload)
            after = await post(client, engine, b"next")
            event = await anext(events)
            assert (event.event, event.id, event.data) == ("message", event_id, data)
            # Nothing in the payload split it or swallowed the event after it.
            assert (await anext(events)).id == after


async def test_multi_line_payload_is_framed_one_data_line_per_line(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with (
            httpx.AsyncClient() as client,
            client.stream(
                "GET", url(engine, "sse"), headers={"Accept": "text/event-stream"}
            ) as response,
            finishing(response, response.aiter_lines()) as lines,
        ):
            assert await anext(lines) == "event: session"
            assert (await anext(lines)).startswith("data: {")
            assert await anext(lines) == ""
            event_id = await post(client, engine, b"one\r\ntwo\nthree")
            assert [await anext(lines) for _ in range(5)] == [
                f"id: {event_id}",
                "data: one",
                "data: two",
                "data: three",
                "",
            ]


async def test_last_event_id_is_accepted(engine_with: EngineFactory) -> None:
    # The memory endpoint cannot resume (best effort): the request works and streams new events.
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            previous = await post(client, engine, b"before the reconnect")
            async with sse_stream(client, engine, **{"Last-Event-ID": previous}) as (_, events, _):
                event_id = await post(client, engine, b"after the reconnect")
                event = await anext(events)
                assert (event.id, event.data) == (event_id, "after the reconnect")


async def test_heartbeat_comment_on_an_idle_stream(
    engine_with: EngineFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # No client timeout (the mock clock would jump to it first); one bound for the whole test.
    with trio.fail_after(60):
        async with engine_with(
            entrypoints=entrypoints(heartbeat_interval=15), routes=ROUTES
        ) as engine:
            async with (
                httpx.AsyncClient(timeout=None) as client,
                client.stream(
                    "GET", url(engine, "sse"), headers={"Accept": "text/event-stream"}
                ) as response,
                finishing(response, response.aiter_lines()) as lines,
            ):
                assert await anext(lines) == "event: session"
                assert (await anext(lines)).startswith("data: {")
                assert await anext(lines) == ""
                opened = trio.current_time()
                for _ in range(2):
                    # A comment line alone: a blank line after it would dispatch an empty event
                    # in some parsers (httpx-sse).
                    assert await anext(lines) == ": keepalive"
                    assert trio.current_time() - opened == pytest.approx(15, abs=0.5)
                    opened = trio.current_time()
                # An event still arrives normally between heartbeats.
                event_id = await post(client, engine, b"between heartbeats")
                assert [await anext(lines) for _ in range(3)] == [
                    f"id: {event_id}",
                    "data: between heartbeats",
                    "",
                ]


# -- how a stream ends ---------------------------------------------------------------------------


async def test_broker_failure_sends_error_event_and_ends_the_stream(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine) as (_, events, _),
        ):
            memory(engine).fail()
            rest = [event async for event in events]
            assert [e.event for e in rest] == ["error"]
            assert "simulated broker outage" in rest[0].data
        await wait_until_no_sessions(engine)


async def test_engine_shutdown_ends_the_stream_cleanly(engine_with: EngineFactory) -> None:
    async with httpx.AsyncClient() as client:
        async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
            request = client.build_request(
                "GET", url(engine, "sse"), headers={"Accept": "text/event-stream"}
            )
            response = await client.send(request, stream=True)
            lines = response.aiter_lines()
            assert await anext(lines) == "event: session"
            event_id = await post(client, engine, b"last words")
            # Written before the shutdown begins (an event still in the session's channel when
            # it begins may be dropped: auto delivers what reached the client).
            written = [await anext(lines)]
            while written[-1] != "data: last words":
                written.append(await anext(lines))
            assert f"id: {event_id}" in written
        # The engine is gone; the response ended with its final chunk (no RemoteProtocolError),
        # and with no error event after what was written.
        async with finishing(response, lines):
            rest = [line async for line in lines]
        assert [line for line in rest if line and not line.startswith("data: {")] == []
        assert engine.sessions == []


async def test_client_disconnect_ends_the_session(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=ROUTES) as engine:
        async with httpx.AsyncClient() as client:
            async with sse_stream(client, engine):
                assert len(engine.sessions) == 1
                assert memory(engine).subscriber_count("events") == 1
            await wait_until_no_sessions(engine)
            # Publishing still works with nobody listening.
            await post(client, engine, b"nobody listens")


# -- delivery guarantees -------------------------------------------------------------------------


def guaranteed(guarantee: str) -> list[dict[str, Any]]:
    return [ROUTES[0], {**ROUTES[1], "delivery_guarantee": guarantee}]


async def test_at_most_once_acks_before_the_write(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=guaranteed("at_most_once")) as engine:
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine) as (_, events, _),
        ):
            await post(client, engine, b"once at most")
            assert (await anext(events)).data == "once at most"
            # Acked before the write began, so certainly by the time the client has the event.
            assert memory(engine).stats["acked"] == 1


async def test_at_least_once_acks_after_the_completed_write(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=guaranteed("at_least_once")) as engine:
        stats = memory(engine).stats
        async with (
            httpx.AsyncClient() as client,
            sse_stream(client, engine) as (_, events, _),
        ):
            for n in range(3):
                await post(client, engine, f"at least once {n}".encode())
                assert (await anext(events)).data == f"at least once {n}"
                # The ack follows the completed write; the client cannot see that moment.
                await eventually(lambda n=n: stats["acked"] == n + 1)
        await wait_until_no_sessions(engine)
        assert (stats["delivered"], stats["acked"], stats["nacked"]) == (3, 3, 0)


async def test_at_least_once_nacks_what_was_not_written_when_the_client_leaves(
    engine_with: EngineFactory,
) -> None:
    big = b"x" * (1024 * 1024)
    async with engine_with(entrypoints=entrypoints(), routes=guaranteed("at_least_once")) as engine:
        stats = memory(engine).stats
        async with httpx.AsyncClient() as client:
            async with sse_stream(client, engine):
                # The client reads nothing more: the socket buffers fill and the writer stalls
                # with an event in hand that was not written.
                for _ in range(16):
                    await post(client, engine, big)
                await trio.testing.wait_all_tasks_blocked()
                assert stats["nacked"] == 0
            await wait_until_no_sessions(engine)
        assert stats["nacked"] >= 1
        # Every delivery was settled exactly once; the nacked ones had no subscriber left.
        assert stats["acked"] + stats["nacked"] == stats["delivered"]
        assert stats["lost"] == stats["nacked"]
