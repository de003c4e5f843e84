"""The sweep loop: per-client broker objects the broker does not expire by itself (Kafka
consumer groups, Solace queues) deleted once their client has been gone for
``client_state_ttl``.

Every :func:`~mediation.client_state.sweep_interval` :func:`run_sweep` asks the broker for the
objects whose whole name matches the endpoint's template and whether each is unused
(:meth:`SweepBroker.list_matching`), lets :class:`~mediation.client_state.Sweep` choose the due
ones, and deletes them (:meth:`SweepBroker.delete`). Both calls block (an admin client, an HTTP
request) and run in a worker thread under the endpoint's limiter; a cancelled sweep abandons
the thread, whose request ends by its own timeout. A delete the broker refuses (the object is
in use again) is left for the next sweep; a sweep that fails (the broker is down) is logged and
retried at the next interval. An object whose name does not match is never touched.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from ..client_state import Sweep, sweep_interval

log = logging.getLogger(__name__)


class SweepBroker(Protocol):
    """What a sweep asks of one broker (both calls blocking, from a worker thread)."""

    what: str  # the objects, for the log ("kafka consumer groups")
    failures: tuple[type[Exception], ...]  # what a broker that cannot answer raises

    def list_matching(self, sweep: Sweep) -> dict[str, bool]:
        """Every object whose name the sweep matches, and whether it is unused."""
        ...

    def delete(self, names: list[str]) -> list[str]:
        """Delete ``names``; the ones deleted (the others stay for the next sweep)."""
        ...


async def run_sweep(
    endpoint: str, sweep: Sweep, broker: SweepBroker, limiter: trio.CapacityLimiter
) -> None:
    """Sweep every interval until cancelled (module docstring)."""
    while True:
        await trio.sleep(sweep_interval(sweep.clients.ttl))
        try:
            objects = await trio.to_thread.run_sync(
                broker.list_matching, sweep, abandon_on_cancel=True, limiter=limiter
            )
            due = sweep.due(objects, now=trio.current_time())
            if not due:
                continue
            deleted = await trio.to_thread.run_sync(
                broker.delete, due, abandon_on_cancel=True, limiter=limiter
            )
        except broker.failures as error:
            log.info(
                "sweep failed",
                extra={"endpoint": endpoint, "objects": broker.what, "error": str(error)},
            )
            continue
        if deleted:
            log.info(
                "per-client objects of departed clients deleted",
                extra={"endpoint": endpoint, "objects": broker.what, "deleted": len(deleted)},
            )
