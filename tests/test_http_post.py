"""The HTTP POST (webhook) entrypoint's wire contract (DESIGN sections 4, 4.1, 5), with httpx.

What a POST published is read back by real clients of the same engine: an SSE stream
(``mem -> sse``) or an HTTP GET polling session (``mem -> poll``), whose ``X-Meta-*`` headers show
the metadata the webhook attached.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from mediation.endpoints.memory import MemoryEndpoint
from mediation.engine import MediationEngine

from .conftest import EngineFactory, sse_events, url

UPSTREAM: dict[str, Any] = {"source": "post", "target": "mem"}
TO_SSE: dict[str, Any] = {"source": "mem", "target": "sse"}
TO_POLL: dict[str, Any] = {"source": "mem", "target": "poll"}


def entrypoints(**post: Any) -> dict[str, str | dict[str, Any]]:
    return {
        "post": {"type": "http_post", **post},
        "sse": "sse",
        "poll": {"type": "http_get", "poll_timeout": 5},
    }


def memory(engine: MediationEngine) -> MemoryEndpoint:
    endpoint = engine.endpoints["mem"]
    assert isinstance(endpoint, MemoryEndpoint)
    return endpoint


async def subscribe(client: httpx.AsyncClient, engine: MediationEngine, client_id: str) -> None:
    response = await client.post(
        url(engine, "poll", "/subscribe"), headers={"X-Client-ID": client_id}
    )
    assert response.status_code == 201


async def poll(
    client: httpx.AsyncClient, engine: MediationEngine, client_id: str
) -> httpx.Response:
    return await client.get(url(engine, "poll", "/poll"), headers={"X-Client-ID": client_id})


async def test_accepted_with_id_and_delivered_to_a_subscriber(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=[UPSTREAM, TO_SSE]) as engine:
        async with httpx.AsyncClient() as client, sse_events(client, engine) as events:
            response = await client.post(url(engine, "post"), content=b"hello broker")
            assert response.status_code == 202
            assert response.headers["content-type"] == "application/json"
            document = response.json()
            assert set(document) == {"status", "id"}
            assert document["status"] == "accepted"
            assert document["id"] == str(uuid.UUID(document["id"]))
            event = await anext(events)
            assert (event.id, event.data) == (document["id"], "hello broker")
            # Each request is its own event with its own id; a webhook leaves no session behind.
            second = (await client.post(url(engine, "post"), content=b"again")).json()["id"]
            assert second != document["id"]
            assert (await anext(events)).id == second
            assert [s.entrypoint for s in engine.sessions] == ["sse"]
        assert memory(engine).stats["published"] == 2


async def test_body_of_exactly_max_body_is_accepted_one_more_is_413(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(
        entrypoints=entrypoints(max_body=64), routes=[UPSTREAM, TO_SSE]
    ) as engine:
        stats = memory(engine).stats
        async with httpx.AsyncClient() as client, sse_events(client, engine) as events:
            accepted = await client.post(url(engine, "post"), content=b"a" * 64)
            assert accepted.status_code == 202
            assert (await anext(events)).data == "a" * 64
            assert stats["published"] == 1

            refused = await client.post(url(engine, "post"), content=b"b" * 65)
            assert refused.status_code == 413
            assert "64" in refused.json()["error"]
            assert stats["published"] == 1

            # Nothing of the refused body reached the subscriber: the next event is the next POST.
            after = (await client.post(url(engine, "post"), content=b"after")).json()["id"]
            assert (await anext(events)).id == after


@pytest.mark.parametrize(
    ("size", "status"), [(1024 * 1024, 202), (1024 * 1024 + 1, 413), (8 * 1024 * 1024, 413)]
)
async def test_default_max_body_is_one_mib(
    engine_with: EngineFactory, size: int, status: int
) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=[UPSTREAM]) as engine:
        async with httpx.AsyncClient() as client:
            response = await client.post(url(engine, "post"), content=b"m" * size)
        assert response.status_code == status
        assert memory(engine).stats["published"] == (1 if status == 202 else 0)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(("size", "status"), [(64, 202), (65, 413)])
async def test_max_body_holds_for_a_chunked_body(
    engine_with: EngineFactory, size: int, status: int
) -> None:
    # No Content-Length: the limit is enforced while the body is read.
    async with engine_with(entrypoints=entrypoints(max_body=64), routes=[UPSTREAM]) as engine:
        body = b"c" * size
        async with httpx.AsyncClient() as client:
            response = await client.post(url(engine, "post"), content=chunks(body[:40], body[40:]))
        assert "content-length" not in response.request.headers
        assert response.status_code == status
        assert memory(engine).stats["published"] == (1 if status == 202 else 0)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405_with_allow_post(
    engine_with: EngineFactory, method: str
) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=[UPSTREAM]) as engine:
        async with httpx.AsyncClient() as client:
            response = await client.request(method, url(engine, "post"))
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert memory(engine).stats["published"] == 0


async def test_unknown_path_is_404(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=[UPSTREAM]) as engine:
        async with httpx.AsyncClient() as client:
            response = await client.post(url(engine, "post", "/elsewhere"), content=b"x")
        assert response.status_code == 404
        assert memory(engine).stats["published"] == 0


async def test_no_route_is_502(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=[TO_SSE]) as engine:
        async with httpx.AsyncClient() as client:
            response = await client.post(url(engine, "post"), content=b"nowhere to go")
        assert response.status_code == 502
        assert "no upstream route" in response.json()["error"]
        assert memory(engine).stats["published"] == 0


async def test_broker_down_is_503_and_recovery_accepts_again(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=[UPSTREAM]) as engine:
        async with httpx.AsyncClient() as client:
            memory(engine).fail()
            refused = await client.post(url(engine, "post"), content=b"while down")
            assert refused.status_code == 503
            assert "mem" in refused.json()["error"]
            memory(engine).recover()
            accepted = await client.post(url(engine, "post"), content=b"after recovery")
            assert accepted.status_code == 202
        assert memory(engine).stats["published"] == 1


@pytest.mark.parametrize(
    "headers",
    [{"X-Client-ID": "bad id!"}, {"X-Client-ID": "x" * 129}],
    ids=["space", "129-chars"],
)
async def test_invalid_client_id_is_400(
    engine_with: EngineFactory, headers: dict[str, str]
) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=[UPSTREAM]) as engine:
        async with httpx.AsyncClient() as client:
            response = await client.post(url(engine, "post"), content=b"x", headers=headers)
        assert response.status_code == 400
        assert memory(engine).stats["published"] == 0


async def test_disallowed_origin_is_403(engine_with: EngineFactory) -> None:
    config = entrypoints(allowed_origins=["https://good.example"])
    async with engine_with(entrypoints=config, routes=[UPSTREAM]) as engine:
        async with httpx.AsyncClient() as client:
            evil = await client.post(
                url(engine, "post"), content=b"x", headers={"Origin": "https://evil.example"}
            )
            good = await client.post(
                url(engine, "post"), content=b"x", headers={"Origin": "https://good.example"}
            )
        assert (evil.status_code, good.status_code) == (403, 202)
        assert memory(engine).stats["published"] == 1


async def test_content_type_and_x_headers_travel_as_metadata(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=entrypoints(), routes=[UPSTREAM, TO_POLL]) as engine:
        async with httpx.AsyncClient() as client:
            await subscribe(client, engine, "reader")
            document = {"order": 42}
            accepted = await client.post(
                url(engine, "post"),
                json=document,
                headers={
                    "X-Trace-ID": "trace-1",
                    "X-Tenant": "acme",
                    "Authorization": "Bearer secret",
                    "Accept-Language": "fr",
                },
            )
            assert accepted.status_code == 202
            response = await poll(client, engine, "reader")
        assert response.status_code == 200
        assert json.loads(response.content) == document
        assert response.headers["x-event-id"] == accepted.json()["id"]
        assert response.headers["content-type"] == "application/json"
        meta = {k: v for k, v in response.headers.items() if k.startswith("x-meta-")}
        assert meta == {"x-meta-x-trace-id": "trace-1", "x-meta-x-tenant": "acme"}


async def test_at_least_once_answers_202_only_once_the_broker_took_the_event(
    engine_with: EngineFactory,
) -> None:
    # A reader that does not poll, behind a memory broker that buffers one event per subscriber:
    # the session channel, the consumer's hand and the broker buffer fill, then the broker
    # cannot accept (confirm) the next event until the reader takes one.
    async with engine_with(
        entrypoints=entrypoints(),
        endpoints={"mem": {"type": "memory", "config": {"capacity": 1}}},
        routes=[{**UPSTREAM, "delivery_guarantee": "at_least_once"}, TO_POLL],
    ) as engine:
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            await subscribe(client, engine, "slow-reader")
            for n in range(3):
                assert (
                    await client.post(url(engine, "post"), content=b"%d" % n)
                ).status_code == 202
            answered: list[httpx.Response] = []
            done = trio.Event()

            async def post_fourth() -> None:
                answered.append(await client.post(url(engine, "post"), content=b"3"))
                done.set()

            nursery.start_soon(post_fourth)
            await trio.testing.wait_all_tasks_blocked()
            assert answered == []  # the broker has not taken it: no 202 yet

            first = await poll(client, engine, "slow-reader")
            assert (first.status_code, first.content) == (200, b"0")
            await done.wait()
            assert answered[0].status_code == 202
            later = [(await poll(client, engine, "slow-reader")).content for _ in range(3)]
            assert later == [b"1", b"2", b"3"]
