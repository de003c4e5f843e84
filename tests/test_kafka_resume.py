"""Kafka resume positions the broker no longer holds, with the harness's tansu, in both designs.

tansu keeps every record for ever, so "retention took offsets 0 to 5" is a test double at the
library boundary: the endpoint's ``watermarks`` (what ``get_watermark_offsets`` answers) with a
raised low watermark, the records themselves still there (so a reset that started at the real
oldest offset instead of the low watermark would show). A position above the high watermark (a
topic deleted and created again) needs no double: a cursor naming offset 50 of a ten-record
partition. Each is an explicit reset (SSE ``event: reset``, envelope ``{"reset"}``, polling
``"reset"``), then the events from the oldest offset there is.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import trio
from confluent_kafka import Consumer, TopicPartition

from mediation.cursors import Cursors
from mediation.endpoints import EndpointState
from mediation.endpoints.kafka import KafkaEndpoint, read_watermarks
from mediation.engine import MediationEngine, open_mediation_engine
from mediation.envelope import SUBPROTOCOL

from .conftest import clients_gone, envelope, make_config, open_ws, sse_events, url
from .test_conformance_kafka import FAST_GROUPS
from .test_kafka import WAIT, Kafka, kafka, next_sse, numbered, put, unique

__all__ = ["kafka"]  # the fixture: both designs

SECRET = "the fleet's cursor secret, 32 bytes or more"
CURSORS = Cursors(SECRET)


@asynccontextmanager
async def resume_engine(
    kafka: Kafka, topic: str, *, websocket: dict[str, Any] | None = None, **endpoint: Any
) -> AsyncIterator[MediationEngine]:
    """SSE, envelope WebSocket and polling on one Kafka endpoint "k", cursors signed;
    ``websocket``: more keys of the WebSocket entrypoint, ``endpoint``: of the endpoint."""
    config = make_config(
        entrypoints={
            "sse": "sse",
            "ws": {"type": "websocket", **(websocket or {})},
            "polling": {"type": "http_get", "poll_timeout": 0.2},
        },
        routes=[
            {"source": "k", "target": "sse"},
            {"source": "k", "target": "ws", "delivery_guarantee": "at_least_once"},
            {"source": "k", "target": "polling", "delivery_guarantee": "at_least_once"},
        ],
        endpoints={
            "k": {
                "type": "kafka",
                "config": {
                    "brokers": kafka.tansu.bootstrap_servers,
                    "fetch": kafka.fetch,
                    "topic_in": topic,
                    **FAST_GROUPS,
                    **endpoint,
                },
            }
        },
        engine={"cursor_secret": SECRET},
    )
    async with open_mediation_engine(config) as engine:
        with trio.fail_after(WAIT):
            await engine.endpoints["k"].state.wait_value(EndpointState.UP)
        yield engine


def retention(low: int) -> Any:
    """Watermarks of a broker whose retention removed every offset below ``low``."""

    def watermarks(consumer: Consumer, partition: TopicPartition) -> tuple[int, int]:
        return low, read_watermarks(consumer, partition)[1]

    return watermarks


async def sse_after(engine: MediationEngine, cursor: str, count: int) -> list[tuple[str, str]]:
    """(event, data) of the first ``count`` frames of an SSE session resumed after ``cursor``."""
    async with (
        httpx.AsyncClient(timeout=WAIT) as client,
        sse_events(client, engine, "sse", **{"Last-Event-ID": cursor}) as sse,
    ):
        return [((e := await next_sse(sse)).event, e.data) for _ in range(count)]


async def test_a_position_below_the_low_watermark_is_a_reset_then_the_oldest(
    kafka: Kafka,
) -> None:
    topic = await trio.to_thread.run_sync(kafka.topic, "gone")
    await put(kafka, topic, *numbered(10))
    async with resume_engine(kafka, topic) as engine:
        cast(KafkaEndpoint, engine.endpoints["k"]).watermarks = retention(6)
        gone = CURSORS.sign(f"{topic}:0:2")
        frames = await sse_after(engine, gone, 3)
        assert frames[0][0] == "reset"
        reason = json.loads(frames[0][1])["reason"]
        assert f"{topic}:0:2 is gone" in reason and "oldest offset is 6" in reason
        assert frames[1:] == [("message", "006"), ("message", "007")]
        # Right after the last offset retention took: nothing is gone, no reset.
        assert await sse_after(engine, CURSORS.sign(f"{topic}:0:5"), 1) == [("message", "006")]
        async with open_ws(
            url(engine, "ws", f"/?client_id={unique('w')}&last_event_id={gone}", "ws"),
            subprotocols=[SUBPROTOCOL],
        ) as ws:
            assert "is gone" in (await envelope(ws))["reset"]["reason"]
            document = await envelope(ws)
            assert (document["payload"], document["id"]) == ("006", CURSORS.sign(f"{topic}:0:6"))
        async with httpx.AsyncClient(timeout=WAIT) as client:
            headers = {"x-client-id": unique("p")}
            answer = await client.post(
                url(engine, "polling", "/subscribe"),
                params={"last_event_id": gone},
                headers=headers,
            )
            assert answer.status_code == 201 and "is gone" in answer.json()["reset"]["reason"]
            poll = await client.get(url(engine, "polling", "/poll"), headers=headers)
            assert poll.text == "006"
            metrics = await client.get(f"http://127.0.0.1:{engine.ports['health']}/metrics")
        assert 'mediation_resume_resets_total{endpoint="k"} 3.0' in metrics.text


async def test_a_position_above_the_high_watermark_is_a_reset_then_the_oldest(
    kafka: Kafka,
) -> None:
    """No double: the partition holds offsets 0 to 9 and the cursor names 50 (a topic deleted
    and created again since the client was given it)."""
    topic = await trio.to_thread.run_sync(kafka.topic, "ahead")
    await put(kafka, topic, *numbered(10))
    async with resume_engine(kafka, topic) as engine:
        frames = await sse_after(engine, CURSORS.sign(f"{topic}:0:50"), 2)
        assert frames[0][0] == "reset" and "next offset is 10" in json.loads(frames[0][1])["reason"]
        assert frames[1] == ("message", "000")
        # The last event there is: resumes at the end, no reset.
        async with trio.open_nursery() as nursery:
            got: list[list[tuple[str, str]]] = []

            async def read() -> None:
                got.append(await sse_after(engine, CURSORS.sign(f"{topic}:0:9"), 1))

            nursery.start_soon(read)
            # Whether the session is entered before 010 exists or after, it is the first
            # event after 9.
            await put(kafka, topic, b"010")
        assert got == [[("message", "010")]]


# -- the envelope's {"resume": id} ------------------------------------------------------------


async def left(engine: MediationEngine) -> None:
    """The previous session of a client has left its group. (tansu: a per-session consumer
    that joins while the client's previous one is still leaving may wait for ever.)"""
    with trio.fail_after(WAIT):
        await clients_gone(engine)


def ws_at(engine: MediationEngine, client_id: str) -> str:
    return url(engine, "ws", f"/?client_id={client_id}", "ws")


async def payloads(ws: Any, count: int, *, ack: bool = True) -> list[str]:
    """The next ``count`` events' payloads, each acked (or not)."""
    taken = []
    for _ in range(count):
        document = await envelope(ws)
        assert "payload" in document, document
        taken.append(document["payload"])
        if ack:
            await ws.send_message(json.dumps({"ack": document["id"]}))
    return taken


async def test_an_envelope_resume_as_the_first_message_continues_right_after_it(
    kafka: Kafka,
) -> None:
    """The client's group has 000-002 confirmed; it saw up to 006 elsewhere (another instance,
    not yet committed) and resumes after it: 007 on, nothing before it again, nothing missing."""
    topic = await trio.to_thread.run_sync(kafka.topic, "resume")
    await put(kafka, topic, *numbered(10))
    client = unique("c")
    async with resume_engine(kafka, topic, auto_offset_reset="earliest") as engine:
        async with open_ws(ws_at(engine, client), subprotocols=[SUBPROTOCOL]) as ws:
            # No first message within resume_grace: from the group's place (the beginning).
            assert await payloads(ws, 3) == ["000", "001", "002"]
        await left(engine)
        async with open_ws(ws_at(engine, client), subprotocols=[SUBPROTOCOL]) as ws:
            await ws.send_message(json.dumps({"resume": CURSORS.sign(f"{topic}:0:6")}))
            assert await envelope(ws) == {"ack": "resume"}
            assert await payloads(ws, 3) == ["007", "008", "009"]
            await put(kafka, topic, *numbered(2, start=10))
            assert await payloads(ws, 2) == ["010", "011"]
            # Only the first message resumes.
            await ws.send_message(json.dumps({"resume": CURSORS.sign(f"{topic}:0:1")}))
            assert "first message" in (await envelope(ws))["error"]
        await left(engine)
        # A changed byte: nacked with the reason, then from the client's place at the broker.
        async with open_ws(ws_at(engine, client), subprotocols=[SUBPROTOCOL]) as ws:
            forged = CURSORS.sign(f"{topic}:0:3")[:-2] + "AA"
            await ws.send_message(json.dumps({"resume": forged}))
            assert await envelope(ws) == {
                "nack": "resume",
                "error": "resume position: bad signature",
            }
            await put(kafka, topic, b"012")
            assert await payloads(ws, 1, ack=False) == ["012"]


async def test_an_envelope_resume_of_a_position_gone_is_acked_then_a_reset(kafka: Kafka) -> None:
    topic = await trio.to_thread.run_sync(kafka.topic, "resumegone")
    await put(kafka, topic, *numbered(10))
    async with resume_engine(kafka, topic) as engine:
        cast(KafkaEndpoint, engine.endpoints["k"]).watermarks = retention(6)
        async with open_ws(ws_at(engine, unique("c")), subprotocols=[SUBPROTOCOL]) as ws:
            await ws.send_message(json.dumps({"resume": CURSORS.sign(f"{topic}:0:2")}))
            assert await envelope(ws) == {"ack": "resume"}
            assert "oldest offset is 6" in (await envelope(ws))["reset"]["reason"]
            assert await payloads(ws, 2) == ["006", "007"]
