"""The engine's SSE stream must be decoded identically by four parsers written by others.

The parsers: ``httpx-sse`` (Python, in this process), npm ``eventsource`` (a WHATWG EventSource
for node), npm ``eventsource-parser`` (fed by node's own http client), and Chromium's
``EventSource`` in a page. Every client reads the real stream over a socket, through the loopback
relay of :mod:`tests.browser.harness`, which records what the engine sent and can cut a stream in
the middle of an event.

Each client reports every event it dispatched as ``(type, last event id, data)``; the lists must
equal what was published (line breaks of any kind come out as ``\\n``), and so each other. The
``session`` event's document is checked, then compared by shape (every connection is a session of
its own).

- Memory endpoint: awkward payloads (every kind of line break, empty lines and payloads, leading
  spaces, field-like lines, unicode, a NUL, bytes that are not UTF-8, a 70 000-character line,
  2000 lines), all four parsers on one engine; then heartbeat comments between events, per
  parser.
- Kafka (tansu): the relay cuts every stream three times in the middle of an event, once the
  client has dispatched every whole event before it (Chromium may drop what came in the same
  read as a hang-up, and then resume from earlier: correct, but not this test's expected
  list); each client reconnects with ``Last-Event-ID`` (the two EventSources by themselves,
  after their default 3 s); the engine resumes right after it: no gaps, no duplicates.

npm ``eventsource`` parses with ``eventsource-parser`` inside, so those two share a tokenizer
(but not the connection handling); httpx-sse and Chromium (Blink) are independent of both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import aclosing
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from httpx_sse import aconnect_sse

from mediation.endpoints import EndpointState
from mediation.engine import MediationEngine
from tests.brokers import Tansu
from tests.browser.harness import (
    EVENTS_PATH,
    PageServer,
    Relayed,
    Reports,
    ensure_node_modules,
    events_of,
    run_reporter,
    serve_pages,
)

from .conftest import EngineFactory, url
from .test_conformance_kafka import FAST_GROUPS, new_topic

# Generous: the machine is shared and loaded; a broken engine still fails, never hangs.
WAIT = 60.0
PARSERS = ("httpx-sse", "eventsource", "eventsource-parser", "chromium")
END = "the end"

# (payload as published, the data every parser must decode)
VECTORS: list[tuple[bytes, str]] = [
    (b"plain", "plain"),
    (b"two\nlines", "two\nlines"),
    (b"crlf\r\nline", "crlf\nline"),
    (b"cr\ronly", "cr\nonly"),
    (b"mixed\r\n\r\n\n\rbreaks", "mixed\n\n\n\nbreaks"),
    (b"", ""),
    (b"\n", "\n"),
    (b"\r\n", "\n"),
    (b"trailing break\r", "trailing break\n"),
    (b"\n\nleading empty lines", "\n\nleading empty lines"),
    (b" one leading space", " one leading space"),
    (b"   three leading spaces\n\tand a tab ", "   three leading spaces\n\tand a tab "),
    (
        b"data: field-like\nid: 99\nevent: nope\nretry: 1\n: not a comment\n:",
        "data: field-like\nid: 99\nevent: nope\nretry: 1\n: not a comment\n:",
    ),
    (
        "unicode: héllo wörld ✓ 日本語 🎉 \u2028 \u0085 \ufeffbom".encode(),
        "unicode: héllo wörld ✓ 日本語 🎉 \u2028 \u0085 \ufeffbom",
    ),
    (b"a \x00 nul", "a \x00 nul"),
    (b"not utf-8: \xff\xfe!", "not utf-8: \ufffd\ufffd!"),
]
LARGE: list[tuple[bytes, str]] = [
    (b"x" * 70_000, "x" * 70_000),
    (
        "\n".join(f"line {n} ✓" for n in range(2000)).encode(),
        "\n".join(f"line {n} ✓" for n in range(2000)),
    ),
]


@pytest.fixture(scope="session")
def node_modules() -> None:
    ensure_node_modules()


# -- the clients -------------------------------------------------------------------------------


async def httpx_sse_client(stream_url: str, reports: Reports) -> None:
    """httpx-sse, reconnecting at once with the last event id, as an EventSource would.

    httpx-sse parses one response; the id it gives is the last one set in that response, so the
    id carried over from an earlier connection is kept here (as an EventSource keeps it).
    """
    last_id = ""
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT)) as client:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                async with aconnect_sse(client, "GET", stream_url, headers=headers) as source:
                    assert source.response.status_code == 200
                    reports.add({"kind": "open"})
                    async with aclosing(source.aiter_sse()) as events:
                        async for event in events:
                            last_id = event.id or last_id
                            reports.add(
                                {
                                    "kind": "event",
                                    "type": event.event,
                                    "id": last_id,
                                    "data": event.data,
                                }
                            )
                            if event.data == END:
                                reports.add({"kind": "done"})
                                return
                reports.add({"kind": "error", "message": "end of stream"})
            except httpx.TransportError as error:  # the relay cut the stream
                reports.add({"kind": "error", "message": repr(error)})


async def start_client(
    nursery: trio.Nursery, server: PageServer, name: str, **query: str
) -> Reports:
    """Parser ``name`` reading ``/events?client=NAME&...query`` through the relay."""
    path = str(httpx.URL(EVENTS_PATH, params={"client": name, **query}))
    if name == "httpx-sse":
        reports = Reports(name)
        nursery.start_soon(httpx_sse_client, server.origin + path, reports)
        return reports
    if name == "chromium":
        page = httpx.URL(f"{server.origin}/sse.html", params={"src": path, "end": END})
        return await run_reporter(nursery, name, "chromium.mjs", str(page))
    return await run_reporter(nursery, name, "sse_client.mjs", name, server.origin + path, END)


async def finished(clients: dict[str, Reports]) -> None:
    """Every client saw the last event, and every script ended well."""
    with trio.move_on_after(WAIT):
        for reports in clients.values():
            await reports.wait_for("done")
        for name, reports in clients.items():
            if name != "httpx-sse":
                await reports.exited()
        return
    summary = {
        name: (reports.count("open"), reports.count("event"), [r for r in reports.seen[-2:]])
        for name, reports in clients.items()
    }
    raise AssertionError(f"not every client finished in {WAIT} s (opens, events, last): {summary}")


def normalised(events: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The events, each ``session`` event checked and replaced by ``("session", "", "<session>")``.

    Its last event id is left out: the event has no ``id`` field, and the parsers disagree on
    what it inherits after a reconnect. Chromium keeps the id of the last event before the cut,
    as the WHATWG spec says (the id buffer belongs to the EventSource); npm eventsource 4.1.1
    starts each connection with an empty one. The resume itself does not depend on it: see the
    ``Last-Event-ID`` headers checked in the Kafka test.
    """
    result = []
    for kind, event_id, data in events:
        if kind == "session":
            document = json.loads(data)
            assert set(document) == {"client_id", "session_id"}
            assert document["session_id"] == str(uuid.UUID(document["session_id"]))
            event_id, data = "", "<session>"
        result.append((kind, event_id, data))
    return result


def assert_decoded_alike(clients: dict[str, Reports], expected: list[tuple[str, str, str]]) -> None:
    decoded = {name: normalised(events_of(reports)) for name, reports in clients.items()}
    for name, events in decoded.items():
        assert len(events) == len(expected), f"{name}: {len(events)} events, not {len(expected)}"
        for n, (got, wanted) in enumerate(zip(events, expected, strict=True)):
            assert got == wanted, f"{name}, event {n}: {got!r:.200} != {wanted!r:.200}"


def relayed_summary(server: PageServer) -> str:
    """Each relayed stream: its client, Last-Event-ID, whether the relay cut it, how it began
    and ended (what a failure needs to tell who ended a stream early)."""
    return "\n".join(
        f"  {s.client}: last-event-id={s.head.get('last-event-id')!r} cut={s.cut} "
        f"bytes={len(s.raw)} head={bytes(s.raw[:120])!r} tail={bytes(s.raw[-160:])!r}"
        for s in server.relayed
    )


def keepalive_after(server: PageServer, event_id: str) -> bool:
    """The (one) relayed stream has a heartbeat after the event ``event_id``."""
    [stream] = server.relayed
    return b": keepalive\n" in stream.raw.partition(f"id: {event_id}\n".encode())[2]


def sse_entrypoint(server: PageServer, **table: Any) -> dict[str, Any]:
    return {
        "type": "sse",
        "path": EVENTS_PATH,
        "allowed_origins": [server.origin],
        **table,
    }


async def publisher(client: httpx.AsyncClient, engine: MediationEngine, payload: bytes) -> str:
    """Publish through the webhook; the event's id."""
    response = await client.post(url(engine, "post"), content=payload)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


MEMORY_ROUTES = [{"source": "post", "target": "mem"}, {"source": "mem", "target": "sse"}]


# -- memory: awkward payloads, then heartbeats ---------------------------------------------------


async def test_awkward_payloads_are_decoded_alike_by_every_parser(
    engine_with: EngineFactory, node_modules: None
) -> None:
    published = [*VECTORS, *LARGE, (END.encode(), END)]
    server = PageServer(cuts={})
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_pages, server)
        async with (
            engine_with(
                entrypoints={"sse": sse_entrypoint(server), "post": "http_post"},
                routes=MEMORY_ROUTES,
            ) as engine,
            httpx.AsyncClient(timeout=WAIT) as client,
        ):
            server.sse_port = engine.ports["sse"]
            clients = {}
            with trio.fail_after(WAIT):
                for name in PARSERS:
                    clients[name] = await start_client(nursery, server, name, client_id=name)
                for reports in clients.values():
                    await reports.wait_for("event")  # the session event: subscribed
                ids = [await publisher(client, engine, payload) for payload, _ in published]
            await finished(clients)
            nursery.cancel_scope.cancel()

    assert_decoded_alike(
        clients,
        [("session", "", "<session>")]
        + [("message", i, data) for i, (_, data) in zip(ids, published, strict=True)],
    )
    for name, reports in clients.items():
        [session] = [r["data"] for r in reports.seen if r.get("type") == "session"]
        assert json.loads(session)["client_id"] == name  # the client_id parameter, as given
        assert (reports.count("open"), reports.count("error")) == (1, 0), reports.seen
    assert len(server.relayed) == len(PARSERS) and not any(r.cut for r in server.relayed)


@pytest.mark.parametrize("parser", PARSERS)
async def test_heartbeats_between_events_are_not_events(
    engine_with: EngineFactory, node_modules: None, parser: str
) -> None:
    """``: keepalive`` comments between events (each with an id) dispatch nothing.

    httpx-sse 0.4.3 dispatches an empty event carrying the last id at a blank line after a
    comment (florimondmanca/httpx-sse#35): the engine's heartbeat has no blank line after it.
    """
    server = PageServer(cuts={})
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_pages, server)
        async with (
            engine_with(
                entrypoints={
                    "sse": sse_entrypoint(server, heartbeat_interval=0.05),
                    "post": "http_post",
                },
                routes=MEMORY_ROUTES,
            ) as engine,
            httpx.AsyncClient(timeout=WAIT) as client,
        ):
            server.sse_port = engine.ports["sse"]
            ids = []
            with trio.fail_after(WAIT):
                reports = await start_client(nursery, server, parser)
                await reports.wait_for("event")
                for payload in (b"one", b"two"):
                    ids.append(await publisher(client, engine, payload))
                    # A heartbeat in the stream after this event, before the next is published.
                    await server.wait_for(partial(keepalive_after, server, ids[-1]))
                ids.append(await publisher(client, engine, END.encode()))
            await finished({parser: reports})
            nursery.cancel_scope.cancel()

    assert_decoded_alike(
        {parser: reports},
        [("session", "", "<session>")]
        + [("message", i, d) for i, d in zip(ids, ("one", "two", END), strict=True)],
    )
    if parser == "eventsource-parser":  # the one that shows comments: it saw them
        assert {r["text"] for r in reports.seen if r["kind"] == "comment"} == {"keepalive"}


# -- Kafka: Last-Event-ID resume over forced disconnects -----------------------------------------

KAFKA_EVENTS = 40
CUT_AT = (7, 19, 30)  # each stream is cut inside the event with this offset, once per connection


def kafka_payload(offset: int) -> tuple[bytes, str]:
    """A marker the relay cuts after (``#0007``), then one of the vectors."""
    if offset == KAFKA_EVENTS - 1:
        return END.encode(), END
    payload, data = VECTORS[offset % len(VECTORS)]
    return b"#%04d\n" % offset + payload, f"#{offset:04d}\n{data}"


def produce(tansu: Tansu, topic: str) -> None:
    """Every event, one record batch each (blocking: call in a thread)."""
    producer = Producer(tansu.client_config(**{"linger.ms": 0}))
    for offset in range(KAFKA_EVENTS):
        producer.produce(topic, kafka_payload(offset)[0])
        assert producer.flush(10) == 0


async def test_kafka_resume_over_forced_disconnects_has_no_gaps_and_no_duplicates(
    engine_with: EngineFactory,
    tansu: Tansu,
    node_modules: None,
    report_figures: Callable[..., None],
) -> None:
    tansu.ensure_running()
    admin = AdminClient({"bootstrap.servers": tansu.bootstrap_servers})
    topic = await trio.to_thread.run_sync(new_topic, admin, "sse-parsers")

    def event_id(offset: int) -> str:
        return f"{topic}:0:{offset}"

    await trio.to_thread.run_sync(produce, tansu, topic)
    clients: dict[str, Reports] = {}

    async def dispatched_before_cut(relayed: Relayed, marker: bytes) -> None:
        # Every whole event before the cut reaches the client before the hang-up: Chromium can
        # drop what arrived in the same read as the end of the connection (then it resumes from
        # the event before those, which the expected list below does not allow for).
        before = event_id(int(marker[1:]) - 1)
        with trio.fail_after(WAIT):
            await clients[relayed.client].wait_until(
                lambda seen: any(r.get("id") == before for r in seen if r.get("type") == "message"),
                f"event {before}",
            )

    server = PageServer(
        cuts={name: [b"#%04d" % n for n in CUT_AT] for name in PARSERS},
        before_cut=dispatched_before_cut,
    )
    endpoint = {
        "type": "kafka",
        "config": {
            "brokers": tansu.bootstrap_servers,
            "topic_in": topic,
            # A new client (no client_id: a new group per connection) reads from the start;
            # a reconnecting one from right after its Last-Event-ID.
            "auto_offset_reset": "earliest",
            **FAST_GROUPS,
        },
    }
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_pages, server)
        async with engine_with(
            entrypoints={"sse": sse_entrypoint(server)},
            endpoints={"k": endpoint},
            routes=[{"source": "k", "target": "sse"}],
        ) as engine:
            with trio.fail_after(WAIT):
                await engine.endpoints["k"].state.wait_value(EndpointState.UP)
            server.sse_port = engine.ports["sse"]
            for name in PARSERS:
                clients[name] = await start_client(nursery, server, name)
            await finished(clients)
            nursery.cancel_scope.cancel()

    expected: list[tuple[str, str, str]] = []
    for start, stop in zip((0, *CUT_AT), (*CUT_AT, KAFKA_EVENTS), strict=True):
        expected.append(("session", "", "<session>"))
        expected += [("message", event_id(n), kafka_payload(n)[1]) for n in range(start, stop)]
    received = {
        name: [r["id"] for r in reports.seen if r.get("type") == "message"]
        for name, reports in clients.items()
    }
    report_figures(
        parsers=len(PARSERS),
        events=KAFKA_EVENTS,
        cuts_per_stream=len(CUT_AT),
        lost=sum(KAFKA_EVENTS - len(set(ids)) for ids in received.values()),
        duplicated=sum(len(ids) - len(set(ids)) for ids in received.values()),
    )
    try:
        assert_decoded_alike(clients, expected)
    except AssertionError as error:
        raise AssertionError(f"{error}\nrelayed streams:\n{relayed_summary(server)}") from None
    # Chromium, per the spec: a session event after a reconnect has the last id before the cut.
    assert [r["id"] for r in clients["chromium"].seen if r.get("type") == "session"] == [
        "",
        *(event_id(n - 1) for n in CUT_AT),
    ]
    for name in PARSERS:
        streams = server.streams(name)
        assert [s.cut for s in streams] == [True, True, True, False]
        assert [s.head.get("last-event-id") for s in streams] == [
            None,
            *(event_id(n - 1) for n in CUT_AT),
        ]
