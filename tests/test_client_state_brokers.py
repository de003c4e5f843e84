"""Per-client broker state expires, on the real brokers: N distinct clients connect once and
leave; what the engine made for them is gone within client_state_ttl (shortened here) plus the
broker's own check, and what the engine did not name survives (docs/design.md, "Cleanup")."""

from __future__ import annotations

import os
from typing import Any

import httpx
import trio

from tests.brokers import RabbitMQ

from .conftest import EngineFactory, clients_gone, url
from .test_rabbitmq import names as names  # the fixture
from .test_rabbitmq import put, rabbit_engine

# Distinct clients per broker: sized for `just test`; `just soak` sets more.
CLIENTS = int(os.environ.get("MEDIATION_CLEANUP_CLIENTS", "50"))
TTL = 1.0
GONE_WITHIN = TTL + 10.0  # the broker's own expiry check, and a loaded machine


async def connect_once(engine: Any, http: httpx.AsyncClient, client_id: str) -> None:
    async with http.stream("GET", url(engine, "sse", f"/?client_id={client_id}")) as sse:
        assert sse.status_code == 200, client_id


async def test_rabbitmq_per_client_queues_expire_and_others_survive(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any
) -> None:
    prefix = names("cleanup")
    other = names("cleanup")  # a queue of the operator's: no {client_id} naming
    old = f"{prefix}.old"  # declared before client_state_ttl, without x-expires
    with rabbitmq.channel() as channel:
        channel.queue_declare(other, durable=True)  # type: ignore[attr-defined]
        channel.queue_declare(old, durable=True)  # type: ignore[attr-defined]
    clients = [f"c{n}" for n in range(CLIENTS)]
    async with (
        rabbit_engine(
            engine_with,
            rabbitmq,
            entrypoints={"sse": "sse"},
            routes=[{"source": "rmq", "target": "sse"}],
            endpoints={
                "rmq": {
                    "type": "rabbitmq",
                    "client_state_ttl": TTL,
                    "config": {"url": rabbitmq.amqp_url, "queue_in": prefix + ".{client_id}"},
                }
            },
        ) as engine,
        httpx.AsyncClient(timeout=30) as http,
    ):
        for client in clients:
            await connect_once(engine, http, client)
        # A queue declared before with other arguments is used as it is (one warning).
        await put(rabbitmq, old, b"kept")
        async with http.stream("GET", url(engine, "sse", "/?client_id=old")) as sse:
            assert sse.status_code == 200
            with trio.fail_after(GONE_WITHIN):
                async for line in sse.aiter_lines():  # after the session's confirmation
                    if line == "data: kept":
                        break
        await clients_gone(engine)
        # Asked with rabbitmqctl: a (passive) declare would renew each queue's lease.
        made = {f"{prefix}.{client}" for client in clients}
        with trio.fail_after(GONE_WITHIN + 30):  # + rabbitmqctl's own seconds
            while made & set(queues := await trio.to_thread.run_sync(rabbitmq.list_queues)):  # noqa: ASYNC110
                await trio.sleep(0.5)
        assert {other, old} <= set(queues)
