"""Resume on any instance: signed cursors and the reset, over the wire, on two engines that
share one "broker" with positions (the test double tests/fleet/positions.py: what Kafka's ids
are, with retention). An id from engine A resumes on engine B; a changed byte is 400; a
position the broker no longer holds is an explicit reset, then the oldest event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, cast

import httpx
import pytest
import trio
from httpx_sse import aconnect_sse

from mediation.engine import MediationEngine, open_mediation_engine
from mediation.envelope import SUBPROTOCOL

from .conftest import CLIENT_WAIT, envelope, make_config, open_ws, url
from .fleet.positions import PositionedLog
from .test_websocket import handshake_status

SECRET = "the fleet's cursor secret, 32 bytes or more"


def config(secret: str | None) -> Any:
    return make_config(
        entrypoints={
            "sse": "sse",
            "ws": "websocket",
            "polling": {"type": "http_get", "poll_timeout": 0.2},
        },
        routes=[
            {"source": "mem", "target": "sse"},
            {"source": "mem", "target": "ws", "delivery_guarantee": "at_least_once"},
            {"source": "mem", "target": "polling", "delivery_guarantee": "at_least_once"},
        ],
        engine={"cursor_secret": secret} if secret else {},
    )


@asynccontextmanager
async def fleet(
    log: PositionedLog, secret: str | None = SECRET, size: int = 2
) -> AsyncIterator[list[MediationEngine]]:
    """``size`` engines whose endpoint "mem" is the one shared ``log`` (the same broker)."""
    async with (
        open_mediation_engine(config(secret)) as a,
        open_mediation_engine(config(secret)) as b,
    ):
        engines = [a, b][:size]
        for engine in engines:
            cast(dict[str, Any], engine.endpoints)["mem"] = log
        yield engines


def filled(count: int) -> PositionedLog:
    log = PositionedLog("mem")
    for seq in range(count):
        log.append(b"event-%d" % seq)
    return log


async def sse_read(
    engine: MediationEngine,
    count: int,
    *,
    headers: dict[str, str] | None = None,
    query: str = "",
    connected: trio.Event | None = None,
) -> list[tuple[str, str, str]]:
    """(event, id, data) of the first ``count`` frames after ``session``."""
    frames: list[tuple[str, str, str]] = []
    async with httpx.AsyncClient(timeout=CLIENT_WAIT) as client:
        async with aconnect_sse(
            client, "GET", url(engine, "sse", "/" + query), headers=headers or {}
        ) as source:
            assert source.response.status_code == 200
            events = source.aiter_sse()
            try:
                with trio.fail_after(CLIENT_WAIT):
                    assert (await anext(events)).event == "session"
                    if connected is not None:
                        connected.set()
                    async for event in events:
                        frames.append((event.event, event.id, event.data))
                        if len(frames) == count:
                            break
            finally:
                await drain(source.response, events)
    return frames


async def drain(response: httpx.Response, events: AsyncIterator[Any]) -> None:
    """Close the stream and run the iteration to its end (see conftest.sse_events)."""
    await response.aclose()
    with suppress(httpx.ReadError, httpx.StreamError):
        async for _ in events:
            pass


async def sse_status(engine: MediationEngine, **headers: str) -> int:
    async with httpx.AsyncClient(timeout=CLIENT_WAIT) as client:
        async with client.stream("GET", url(engine, "sse"), headers=headers) as response:
            return response.status_code


def flipped(cursor: str, index: int) -> str:
    char = cursor[index]
    return cursor[:index] + ("A" if char != "A" else "B") + cursor[index + 1 :]


async def test_an_sse_id_from_one_instance_resumes_on_another() -> None:
    log = filled(0)
    async with fleet(log) as (a, b):
        async with httpx.AsyncClient(timeout=CLIENT_WAIT) as client:
            async with aconnect_sse(client, "GET", url(a, "sse")) as source:
                events = source.aiter_sse()
                try:
                    with trio.fail_after(CLIENT_WAIT):
                        assert (await anext(events)).event == "session"
                        for seq in range(5):
                            log.append(b"event-%d" % seq)
                        seen = [await anext(events) for _ in range(5)]
                finally:
                    await drain(source.response, events)
        ids = [e.id for e in seen]
        assert [e.data for e in seen] == [f"event-{i}" for i in range(5)]
        assert all(
            i.startswith(f"log:0:{n}.") and len(i) == len(f"log:0:{n}") + 23
            for n, i in enumerate(ids)
        )
        # Engine B, with the same secret, resumes right after the id engine A gave.
        frames = await sse_read(b, 2, headers={"last-event-id": ids[1]})
        assert [(f[2], f[1]) for f in frames] == [("event-2", ids[2]), ("event-3", ids[3])]
        # ?last_event_id= for a page that chose its own position.
        frames = await sse_read(b, 1, query=f"?last_event_id={ids[3]}")
        assert [f[2] for f in frames] == ["event-4"]


async def test_websocket_and_polling_resume_from_last_event_id_on_another_instance() -> None:
    log = filled(0)
    async with fleet(log) as (a, b):
        frames = await sse_read_after_append(a, log)
        ids = [f[1] for f in frames]
        async with open_ws(
            url(b, "ws", f"/?last_event_id={ids[0]}", "ws"), subprotocols=[SUBPROTOCOL]
        ) as ws:
            document = await envelope(ws)
            assert (document["payload"], document["id"]) == ("event-1", ids[1])
            await ws.send_message(json.dumps({"ack": document["id"]}))
        async with httpx.AsyncClient(timeout=CLIENT_WAIT) as client:
            headers = {"x-client-id": "poller"}
            answer = await client.post(
                url(b, "polling", "/subscribe"), params={"last_event_id": ids[1]}, headers=headers
            )
            assert answer.status_code == 201 and "reset" not in answer.json()
            poll = await client.get(url(b, "polling", "/poll"), headers=headers)
            assert (poll.text, poll.headers["x-event-id"]) == ("event-2", ids[2])


async def sse_read_after_append(
    engine: MediationEngine, log: PositionedLog
) -> list[tuple[str, str, str]]:
    """Three events appended while an SSE client of ``engine`` reads them: their frames."""
    async with trio.open_nursery() as nursery:
        result: list[list[tuple[str, str, str]]] = []

        connected = trio.Event()

        async def read() -> None:
            result.append(await sse_read(engine, 3, connected=connected))

        nursery.start_soon(read)
        with trio.fail_after(CLIENT_WAIT):
            await connected.wait()
        for seq in range(3):
            log.append(b"event-%d" % seq)
    return result[0]


@pytest.mark.parametrize("where", ["position", "mac"])
async def test_a_changed_byte_is_400_on_every_entrypoint(where: str) -> None:
    log = filled(3)
    async with fleet(log, size=1) as (a,):
        cursor = _cursor(log, 1)
        index = 2 if where == "position" else len(cursor) - 3
        forged = flipped(cursor, index)
        assert await sse_status(a, **{"last-event-id": forged}) == 400
        async with httpx.AsyncClient(timeout=CLIENT_WAIT) as client:
            answer = await client.get(url(a, "sse"), params={"last_event_id": forged})
            assert answer.status_code == 400
            answer = await client.post(
                url(a, "polling", "/subscribe"),
                params={"last_event_id": forged},
                headers={"x-client-id": "p"},
            )
            assert answer.status_code == 400
        assert await handshake_status(a, "ws", f"/?last_event_id={forged}") == 400
        assert a.sessions == []


def _cursor(log: PositionedLog, offset: int) -> str:
    from mediation.cursors import Cursors

    return Cursors(SECRET).sign(log.position(offset))


async def test_a_position_the_broker_no_longer_has_is_a_reset_then_the_oldest() -> None:
    log = filled(10)
    log.oldest = 6  # retention took offsets 0-5
    gone = _cursor(log, 2)
    async with fleet(log, size=1) as (a,):
        frames = await sse_read(a, 2, headers={"last-event-id": gone})
        assert frames[0][0] == "reset" and "gone" in json.loads(frames[0][2])["reason"]
        assert (frames[1][0], frames[1][2]) == ("message", "event-6")
        async with open_ws(
            url(a, "ws", f"/?last_event_id={gone}", "ws"), subprotocols=[SUBPROTOCOL]
        ) as ws:
            assert "reason" in (await envelope(ws))["reset"]
            assert (await envelope(ws))["payload"] == "event-6"
        async with httpx.AsyncClient(timeout=CLIENT_WAIT) as client:
            headers = {"x-client-id": "poller"}
            answer = await client.post(
                url(a, "polling", "/subscribe"), params={"last_event_id": gone}, headers=headers
            )
            assert answer.status_code == 201 and "gone" in answer.json()["reset"]["reason"]
            assert (await client.get(url(a, "polling", "/poll"), headers=headers)).text == "event-6"
            metrics = await client.get(f"http://127.0.0.1:{a.ports['health']}/metrics")
        assert 'mediation_resume_resets_total{endpoint="mem"} 3.0' in metrics.text


async def test_without_a_secret_ids_are_plain_positions_and_resume_as_before() -> None:
    log = filled(4)
    async with fleet(log, secret=None) as (_, b):
        frames = await sse_read(b, 2, headers={"last-event-id": log.position(1)})
        assert [(f[1], f[2]) for f in frames] == [("log:0:2", "event-2"), ("log:0:3", "event-3")]


async def test_with_a_secret_an_unsigned_id_resumes_nothing() -> None:
    log = filled(4)
    async with fleet(log, size=1) as (a,):
        # Not a cursor this fleet signed (e.g. from before the secret was set): the client's
        # place at the broker applies (here, never committed: the end), nothing is refused.
        async with trio.open_nursery() as nursery:
            got: list[list[tuple[str, str, str]]] = []
            connected = trio.Event()

            async def read() -> None:
                headers = {"last-event-id": log.position(0)}
                got.append(await sse_read(a, 1, headers=headers, connected=connected))

            nursery.start_soon(read)
            with trio.fail_after(CLIENT_WAIT):
                await connected.wait()
            log.append(b"event-4")
        assert got[0][0][2] == "event-4"
