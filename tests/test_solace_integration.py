"""The conformance suite against a real Solace PubSub+ broker, when one is configured.

No Solace broker can run on the development machine (it ships only as container and VM images),
so the Solace endpoint's tests use the fake of the API (``test_conformance_solace.py``,
``test_solace.py``). This module runs the same conformance suite through the real
``solace.messaging`` API against a real broker, when the environment names one::

    SOLACE_HOST=tcp://broker:55555 SOLACE_VPN=default SOLACE_USERNAME=user SOLACE_PASSWORD=secret \\
        just test tests/test_solace_integration.py

The client username needs guaranteed messaging (send and receive) and permission to create
queues (endpoint create) in its client profile. Each test uses topics and queues of its own
(``mediation-test-<id>/...``); the queues are durable and stay on the broker unless SEMP is
configured too (``SOLACE_SEMP_URL``, e.g. ``http://broker:8080``, with ``SOLACE_SEMP_USERNAME``
and ``SOLACE_SEMP_PASSWORD``), in which case the persistent suite counts the flows bound to its
queues through SEMP (otherwise the count is the endpoint's own) and deletes the queues after each
test.

Without ``SOLACE_HOST`` this module defines no tests at all: nothing is collected, so nothing is
reported as skipped or passed. (Run alone it then ends with pytest's "no tests ran", exit 5.)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from mediation.config import RouteConfig, SolaceConfig
from mediation.endpoints.base import EndpointState
from mediation.endpoints.solace import SolaceEndpoint

from .conformance import ClientResumeConformance, EndpointConformance, EndpointUnderTest

CONNECT_WAIT = 30.0


def _broker_config(run: str, **config: Any) -> SolaceConfig:
    return SolaceConfig(
        host=os.environ["SOLACE_HOST"],
        vpn=os.environ.get("SOLACE_VPN", "default"),
        username=os.environ.get("SOLACE_USERNAME", "default"),
        password=os.environ.get("SOLACE_PASSWORD", ""),
        topic_in=f"mediation-test-{run}/events",
        topic_out=f"mediation-test-{run}/events",
        queue_in=f"mediation-test-{run}-{{client_id}}",
        **config,
    )


class _Semp:
    """Just enough SEMP v2 for the tests: bound flows per queue, and deleting queues."""

    def __init__(self, client: httpx.AsyncClient, vpn: str, prefix: str) -> None:
        self._client = client
        self._vpn = vpn
        self._prefix = prefix

    async def _queues(self) -> list[dict[str, Any]]:
        response = await self._client.get(
            f"/SEMP/v2/monitor/msgVpns/{self._vpn}/queues",
            params={"where": f"queueName=={self._prefix}*", "select": "queueName,bindCount"},
        )
        response.raise_for_status()
        queues: list[dict[str, Any]] = response.json()["data"]
        return queues

    async def bound_flows(self) -> int:
        return sum(int(queue.get("bindCount", 0)) for queue in await self._queues())

    async def delete_queues(self) -> None:
        for queue in await self._queues():
            name = quote(queue["queueName"], safe="")
            await self._client.delete(f"/SEMP/v2/config/msgVpns/{self._vpn}/queues/{name}")


@asynccontextmanager
async def _semp(prefix: str) -> AsyncIterator[_Semp | None]:
    base = os.environ.get("SOLACE_SEMP_URL")
    if not base:
        yield None
        return
    auth = (
        os.environ.get("SOLACE_SEMP_USERNAME", "admin"),
        os.environ.get("SOLACE_SEMP_PASSWORD", "admin"),
    )
    async with httpx.AsyncClient(base_url=base, auth=auth) as client:
        semp = _Semp(client, os.environ.get("SOLACE_VPN", "default"), prefix)
        try:
            yield semp
        finally:
            with trio.move_on_after(10, shield=True):
                await semp.delete_queues()


@asynccontextmanager
async def _on_broker(*, direct: bool) -> AsyncIterator[EndpointUnderTest]:
    run = uuid.uuid4().hex[:12]
    endpoint = SolaceEndpoint("solace-it", _broker_config(run))
    async with _semp(f"mediation-test-{run}") as semp, trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        with trio.fail_after(CONNECT_WAIT):
            await endpoint.state.wait_value(EndpointState.UP)

        async def subscriptions() -> int:
            if semp is not None and not direct:
                return await semp.bound_flows()
            return len(endpoint._consumers)

        under_test = (_DirectUnderTest if direct else EndpointUnderTest)(
            endpoint,
            subscriptions,
            redelivers_in_session=not direct,
            resumes_for_client=not direct,
        )
        yield under_test
        nursery.cancel_scope.cancel()


class _DirectUnderTest(EndpointUnderTest):
    def route(self, guarantee: str = "auto", channel_size: int = 4) -> RouteConfig:
        return super().route(guarantee, channel_size)


if os.environ.get("SOLACE_HOST"):

    class TestSolaceDirectOnBroker(EndpointConformance):
        @pytest.fixture
        async def under_test(self) -> AsyncIterator[EndpointUnderTest]:
            async with _on_broker(direct=True) as under_test:
                yield under_test

    class TestSolacePersistentOnBroker(EndpointConformance, ClientResumeConformance):
        @pytest.fixture
        async def under_test(self) -> AsyncIterator[EndpointUnderTest]:
            async with _on_broker(direct=False) as under_test:
                yield under_test
