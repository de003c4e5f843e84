"""The Solace endpoint's sweep: queues the engine created for clients gone for
``client_state_ttl`` are deleted through SEMP (``mediation/endpoints/_solace_semp.py``).

Against the fake broker and its fake SEMP (``tests/solace_fake/semp.py``), the same broker the
messaging API's fake talks to: queues the engine's receivers created are the ones listed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from mediation.client_state import ClientLedger, Sweep, name_pattern
from mediation.endpoints._solace_semp import SempError, SempQueues
from mediation.endpoints.base import EndpointState
from mediation.engine import MediationEngine

from .conftest import EngineFactory, clients_gone, sse_events
from .solace_fake import FakeBroker, open_broker
from .solace_fake._broker import _Queue
from .solace_fake.harness import fake_table, publish_raw
from .solace_fake.semp import FakeSemp, serving_semp

WAIT = 20.0
TTL = 1.0
CLIENTS = 40  # more than a SEMP page (100 per page: the pages are tested below)


def add_queue(broker: FakeBroker, name: str) -> None:
    """A queue someone else provisioned (no flow bound)."""
    with broker.lock:
        broker.queues[name] = _Queue(name, False)


def queue_names(broker: FakeBroker) -> set[str]:
    with broker.lock:
        return set(broker.queues)


async def eventually(condition: Any) -> None:
    """Wait for the sweep (a worker thread, on its own interval), bounded."""
    with trio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110 (changed by the sweep's thread, no Trio signal)
            await trio.sleep(0.02)


def solace_endpoint(broker: FakeBroker, semp: FakeSemp | None, **config: Any) -> dict[str, Any]:
    table = fake_table(broker, **config)
    if semp is not None:
        table.update(semp_url=semp.url, semp_username="admin", semp_password="secret")
    return {"type": "solace", "client_state_ttl": TTL, "config": table}


@asynccontextmanager
async def sweeping_engine(
    engine_with: EngineFactory, broker: FakeBroker, semp: FakeSemp, **config: Any
) -> AsyncIterator[tuple[MediationEngine, httpx.AsyncClient]]:
    """An engine with an SSE entrypoint fed by ``sol`` (at_least_once: a queue per client),
    the endpoint up, and an HTTP client."""
    routes = [{"source": "sol", "target": "sse", "delivery_guarantee": "at_least_once"}]
    async with (
        engine_with(
            entrypoints={"sse": "sse"},
            endpoints={"sol": solace_endpoint(broker, semp, **config)},
            routes=routes,
        ) as engine,
        httpx.AsyncClient(timeout=WAIT) as http,
    ):
        with trio.fail_after(WAIT):
            await engine.endpoints["sol"].state.wait_value(EndpointState.UP)
        yield engine, http


async def test_queues_of_departed_clients_are_deleted_and_no_other(
    engine_with: EngineFactory,
) -> None:
    with open_broker() as broker, serving_semp(broker) as semp:
        add_queue(broker, "orders")  # not of the engine's naming: never touched
        add_queue(broker, "mediation-ghost")  # the engine's naming, no client seen: first sight
        async with sweeping_engine(engine_with, broker, semp) as (engine, http):
            for n in range(CLIENTS):
                async with sse_events(http, engine, path=f"/?client_id=gone-{n}"):
                    pass
            await clients_gone(engine)
            departed = {f"mediation-gone-{n}" for n in range(CLIENTS)}
            assert departed <= queue_names(broker)
            async with sse_events(http, engine, path="/?client_id=stayer") as stayer:
                await eventually(lambda: queue_names(broker) == {"orders", "mediation-stayer"})
                assert sorted(semp.deleted) == sorted({*departed, "mediation-ghost"})
                # The client that stayed still receives, from its queue.
                await trio.to_thread.run_sync(publish_raw, broker, b"still here")
                with trio.fail_after(WAIT):
                    event = await anext(stayer)
                assert event.data == "still here"
            # Only SEMP's read and delete requests, never a delete of a name not of its naming.
            assert {m for m, _ in semp.requests} <= {"GET", "DELETE"}
            assert all("mediation-" in path for m, path in semp.requests if m == "DELETE")


@pytest.mark.parametrize(
    "config",
    [
        {"create_queues": False},  # queues an administrator provisioned: never the engine's
        {"queue_in": "shared-queue"},  # no {client_id}: no client's queue
    ],
    ids=["provisioned", "shared"],
)
async def test_queues_the_engine_did_not_make_for_a_client_are_never_swept(
    engine_with: EngineFactory, config: dict[str, Any]
) -> None:
    with open_broker() as broker, serving_semp(broker) as semp:
        for name in ("mediation-old", "shared-queue", "mediation-c"):
            add_queue(broker, name)
        async with sweeping_engine(engine_with, broker, semp, **config) as (engine, http):
            async with sse_events(http, engine, path="/?client_id=c"):
                pass
            await clients_gone(engine)
            # Three sweep intervals (ttl / 2 each): a sweep would have listed by now.
            await trio.sleep(TTL * 1.5)
        assert semp.requests == []
        assert {"mediation-old", "shared-queue", "mediation-c"} <= queue_names(broker)


async def test_a_semp_that_cannot_answer_fails_the_sweep_not_the_endpoint(
    engine_with: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mediation")
    with open_broker() as broker, serving_semp(broker) as semp:
        semp.answer = b"<html>a proxy's error page</html>"
        async with sweeping_engine(engine_with, broker, semp) as (engine, http):
            async with sse_events(http, engine, path="/?client_id=gone"):
                pass
            await eventually(lambda: "sweep failed" in caplog.messages)
            assert "mediation-gone" in queue_names(broker)
            assert engine.endpoints["sol"].state.value is EndpointState.UP
            async with sse_events(http, engine, path="/?client_id=next") as events:
                await trio.to_thread.run_sync(publish_raw, broker, b"fine")
                with trio.fail_after(WAIT):
                    assert (await anext(events)).data == "fine"


# -- SempQueues against the fake, its requests one by one --------------------------------------


def sweep_of(template: str = "mediation-{client_id}") -> Sweep:
    pattern = name_pattern(template, "sol")
    assert pattern is not None
    return Sweep(pattern, ClientLedger(ttl=TTL))


def queues_of(
    semp: FakeSemp, password: str = "secret", template: str = "mediation-{client_id}"
) -> SempQueues:
    return SempQueues(semp.url, "default", "admin", password, template=template)


async def test_listing_follows_the_pages_and_keeps_only_the_engines_names() -> None:
    with open_broker() as broker, serving_semp(broker) as semp:
        for n in range(250):
            add_queue(broker, f"mediation-c{n}")
        add_queue(broker, "mediation")  # the prefix alone: no client id, not the engine's
        add_queue(broker, "other-c1")
        listed = await trio.to_thread.run_sync(queues_of(semp).list_matching, sweep_of())
        assert listed == {f"mediation-c{n}": True for n in range(250)}
        assert sum(1 for m, _ in semp.requests if m == "GET") == 3  # 100 a page
        assert all("where=queueName%3D%3Dmediation-%2A" in p for _, p in semp.requests[:1])


async def test_a_template_that_starts_with_a_placeholder_lists_everything_and_filters() -> None:
    with open_broker() as broker, serving_semp(broker) as semp:
        for name in ("a.q", "b.q", "b.x"):
            add_queue(broker, name)
        queues = queues_of(semp, template="{client_id}.q")
        listed = await trio.to_thread.run_sync(queues.list_matching, sweep_of("{client_id}.q"))
        assert listed == {"a.q": True, "b.q": True}
        assert "where" not in semp.requests[0][1]


async def test_a_queue_bound_again_before_its_delete_is_left() -> None:
    with open_broker() as broker, serving_semp(broker) as semp:
        add_queue(broker, "mediation-back")
        add_queue(broker, "mediation-gone")
        with broker.lock:
            broker.queues["mediation-back"].flows.append(object())  # type: ignore[arg-type]
        deleted = await trio.to_thread.run_sync(
            queues_of(semp).delete, ["mediation-back", "mediation-gone", "mediation-unknown"]
        )
        assert deleted == ["mediation-gone"]
        assert queue_names(broker) == {"mediation-back"}


@pytest.mark.parametrize(
    "answer",
    [
        b"not json",
        b"[1, 2, 3]",
        b'{"data": "not a list", "meta": {}}',
        b'{"data": [{"queueName": 7}, "x", null], "meta": {"paging": "odd"}}',
        b'{"data": [], "meta": {"paging": {"nextPageUri": "http://elsewhere.invalid/x"}}}',
    ],
    ids=["not-json", "a-list", "data-not-a-list", "odd-rows", "next-page-elsewhere"],
)
async def test_hostile_answers_list_nothing_or_fail_cleanly(answer: bytes) -> None:
    with open_broker() as broker, serving_semp(broker) as semp:
        add_queue(broker, "mediation-c")
        semp.answer = answer
        try:
            listed = await trio.to_thread.run_sync(queues_of(semp).list_matching, sweep_of())
        except SempError:
            listed = {}
        assert listed == {}
        assert all("elsewhere" not in p for _, p in semp.requests)
        assert len(semp.requests) == 1


async def test_wrong_credentials_or_no_broker_are_a_semp_error() -> None:
    with open_broker() as broker, serving_semp(broker) as semp:
        with pytest.raises(SempError, match="401"):
            await trio.to_thread.run_sync(queues_of(semp, "wrong").list_matching, sweep_of())
        url = semp.url
    closed = SempQueues(url, "default", "admin", "secret", template="mediation-{client_id}")
    with pytest.raises(SempError, match="failed"):
        await trio.to_thread.run_sync(closed.list_matching, sweep_of())
