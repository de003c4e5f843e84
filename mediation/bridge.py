"""Bridges: routes from one endpoint to another, run as engine-owned sessions.

The contract: docs/design.md, "Bridges".

A bridge consumes from its source endpoint and publishes each event to its target, acking the
source per the route's guarantee, read from the same ack policy as client sessions: ``none`` and
``at_most_once`` ack before publishing, ``auto`` once the target's producer took the event,
``at_least_once`` only after the target confirmed it (a refusal nacks it, so the source
redelivers). A bridge whose source or target fails waits for both to be up again and resumes.
Source messages that cannot be converted into events are settled by the source endpoint and
counted in ``mediation_undeliverable_messages_total``, as for client sessions.

:func:`run_bridges` keeps the running bridges equal to the bridge routes of the current route
table: a reload stops the removed ones and starts the new ones, and leaves the others alone.
"""

from __future__ import annotations

import logging
import uuid

import trio
from trio_util import AsyncValue

from .ack_policy import BridgeAck
from .config import RouteConfig
from .context import EngineContext
from .endpoints.base import EndpointState, Outbound, Subscription
from .errors import BrokerUnavailable
from .events import Delivery
from .session import SETTLE_TIMEOUT

log = logging.getLogger(__name__)

# Before a bridge retries after a failure: the endpoints reconnect on their own, this only keeps
# a bridge whose endpoints report "up" too early from spinning.
RETRY_DELAY = 1.0


async def run_bridges(
    context: EngineContext,
    routes: AsyncValue[tuple[RouteConfig, ...]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    running: dict[RouteConfig, trio.CancelScope] = {}
    async with trio.open_nursery() as nursery:
        task_status.started()
        async for wanted in routes.eventual_values():
            for route in [r for r in running if r not in wanted]:
                running.pop(route).cancel(reason="bridge route removed")
            for route in wanted:
                if route not in running:
                    running[route] = await nursery.start(run_bridge, context, route)


async def run_bridge(
    context: EngineContext,
    route: RouteConfig,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope() as scope:
        task_status.started(scope)
        source = context.endpoints[route.source]
        target = context.endpoints[route.target]
        while True:
            await source.state.wait_value(EndpointState.UP)
            await target.state.wait_value(EndpointState.UP)
            try:
                await _move_events(context, route)
            except BrokerUnavailable as error:
                log.warning("bridge interrupted", extra={"route": route.name, "error": str(error)})
            await trio.sleep(RETRY_DELAY)


async def _move_events(context: EngineContext, route: RouteConfig) -> None:
    source = context.endpoints[route.source]
    bridge_id = f"bridge-{route.source}-{route.target}"
    subscription = Subscription(
        client_id=bridge_id,
        session_id=str(uuid.uuid4()),
        entrypoint=route.source,
        route=route,
        undeliverable=lambda reason: context.telemetry.undeliverable.labels(
            route.source, reason
        ).inc(),
    )
    async with source.consume(subscription) as deliveries:
        log.info("bridge running", extra={"route": route.name})
        async for delivery in deliveries:
            try:
                await _forward(context, route, delivery, bridge_id)
            finally:
                if not delivery.settled:  # refused, or cancelled mid-way: the source redelivers
                    with trio.move_on_after(SETTLE_TIMEOUT, shield=True):
                        await delivery.nack()
                    context.telemetry.settled(route.name, False)


async def _forward(
    context: EngineContext, route: RouteConfig, delivery: Delivery, bridge_id: str
) -> None:
    plan = route.ack_plan
    if plan.bridge_acks is BridgeAck.BEFORE_PUBLISH:
        await delivery.ack()
    message = Outbound(
        event=delivery.event, route=route, client_id=bridge_id, entrypoint=route.source
    )
    await context.endpoints[route.target].publish(
        message, confirm=plan.bridge_acks is BridgeAck.CONFIRMED
    )
    await delivery.ack()  # idempotent: nothing more where it was acked first
    context.telemetry.settled(route.name, True)
    context.telemetry.packet(
        event=delivery.event,
        source_id=route.source,
        client_id=bridge_id,
        session_id=None,
        route=route.name,
        direction="bridge",
    )
