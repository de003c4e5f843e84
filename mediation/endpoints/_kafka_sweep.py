"""The Kafka endpoint's sweep: consumer groups of the engine's naming, gone for
``client_state_ttl``, are deleted.

Kafka keeps an empty group's committed offsets for ``offsets.retention.minutes`` (7 days by
default) and its name for as long as it likes, so one group per client id ever seen piles up.
Every sweep interval (half the ttl, at most :data:`SWEEP_MAX`) :func:`run_sweep` lists the
cluster's groups, keeps those whose whole name matches the endpoint's ``group_id`` template
(:func:`group_pattern`: ``{endpoint}`` filled, ``{client_id}`` and any other placeholder a
non-empty run of characters; a template without ``{client_id}`` is no client's and is never
swept), describes them, and deletes each that is empty and whose client has been gone for the
ttl (:class:`GroupSweep`). A group whose name does not match is never touched.

When a client left: the broker does not say how long a group has been empty (tansu, for one,
reports no such time), so the sweep uses the engine's own record (:class:`ClientLedger`:
when the client's last session on this instance ended) and, for a group it has no record of
(a client of another instance, or of before a restart), the time it first saw the group empty.
A client with a live session on this instance is never swept.

``fetch = "shared"``: a client's group has no members even while it reads (its positions are
written through the admin API), so "empty" says nothing there; only the ledger and first-seen
times do. A client reading through another instance of a fleet whose group this instance has
seen empty for the ttl may have its group deleted; its next position write creates it again,
and what it had confirmed since its last write is delivered again if it reconnects before then.
Keep ``client_state_ttl`` well above ``position_refresh_interval`` on such fleets.

A delete the broker refuses (the group is not empty any more: a consumer joined meanwhile) is
left for the next sweep; a sweep that fails (the cluster is down) is logged and retried.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import trio
from confluent_kafka import ConsumerGroupState, KafkaException

from ..client_state import ClientLedger

log = logging.getLogger(__name__)

SWEEP_MAX = 300.0  # seconds between sweeps at most (the ttl halved otherwise)
REQUEST_TIMEOUT = 10.0  # seconds for each admin request of a sweep

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def group_pattern(template: str, endpoint: str) -> re.Pattern[str] | None:
    """The full-match pattern of the group names ``template`` makes for ``endpoint`` (the
    client id as group ``client_id``), or None for a template without ``{client_id}``."""
    if "{client_id}" not in template:
        return None
    parts: list[str] = []
    position = 0
    named = False
    for found in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[position : found.start()]))
        name = found.group(1)
        if name == "endpoint":
            parts.append(re.escape(endpoint))
        elif name == "client_id":
            parts.append("(?P=client_id)" if named else "(?P<client_id>.+?)")
            named = True
        else:
            parts.append(".+?")
        position = found.end()
    parts.append(re.escape(template[position:]))
    return re.compile("".join(parts), re.DOTALL)


def sweep_interval(ttl: float) -> float:
    """Half the ttl (so that a sweep sees when each client left before the ledger forgets
    it), at most :data:`SWEEP_MAX`."""
    return min(SWEEP_MAX, ttl / 2)


class GroupSweep:
    """Which matching groups are due for deletion (no I/O)."""

    def __init__(self, pattern: re.Pattern[str], clients: ClientLedger) -> None:
        self.pattern = pattern
        self.clients = clients
        # group -> since when its client is known gone (the ledger's time, else first seen).
        self._empty_since: dict[str, float] = {}

    def matches(self, group: str) -> bool:
        return self.pattern.fullmatch(group) is not None

    def due(self, groups: Mapping[str, bool], *, now: float) -> list[str]:
        """The groups to delete now, given every matching group and whether it is empty."""
        ttl = self.clients.ttl
        seen: dict[str, float] = {}
        due: list[str] = []
        for group, empty in groups.items():
            match = self.pattern.fullmatch(group)
            if match is None:
                continue
            client_id = match.group("client_id")
            if not empty or self.clients.is_live(client_id):
                continue
            left = self.clients.left_at(client_id)
            since = left if left is not None else self._empty_since.get(group, now)
            seen[group] = since
            if now - since >= ttl:
                due.append(group)
        self._empty_since = {g: t for g, t in seen.items() if g not in due}
        return due


def _list_matching(admin: Any, sweep: GroupSweep) -> dict[str, bool]:
    """Every group matching the sweep's pattern, and whether it is empty (blocking)."""
    listed = admin.list_consumer_groups(request_timeout=REQUEST_TIMEOUT).result(REQUEST_TIMEOUT)
    groups = [g.group_id for g in listed.valid if sweep.matches(g.group_id)]
    if not groups:
        return {}
    found: dict[str, bool] = {}
    described = admin.describe_consumer_groups(groups, request_timeout=REQUEST_TIMEOUT)
    for group, future in described.items():
        try:
            description = future.result(REQUEST_TIMEOUT)
        except KafkaException:
            continue  # gone meanwhile, or not answerable now: the next sweep
        found[group] = description.state == ConsumerGroupState.EMPTY and not description.members
    return found


def _delete(admin: Any, groups: list[str]) -> list[str]:
    """Delete ``groups``; the ones deleted (blocking)."""
    deleted = []
    for group, future in admin.delete_consumer_groups(
        groups, request_timeout=REQUEST_TIMEOUT
    ).items():
        try:
            future.result(REQUEST_TIMEOUT)
        except KafkaException:
            continue  # not empty any more, or gone: the next sweep decides again
        deleted.append(group)
    return deleted


async def run_sweep(
    endpoint: str,
    sweep: GroupSweep,
    make_admin: Callable[[], Any],
    limiter: trio.CapacityLimiter,
) -> None:
    """Sweep every :func:`sweep_interval` until cancelled (module docstring)."""
    admin: Any = None
    while True:
        await trio.sleep(sweep_interval(sweep.clients.ttl))
        try:
            if admin is None:
                admin = make_admin()
            groups = await trio.to_thread.run_sync(
                _list_matching, admin, sweep, abandon_on_cancel=True, limiter=limiter
            )
            due = sweep.due(groups, now=trio.current_time())
            if not due:
                continue
            deleted = await trio.to_thread.run_sync(
                _delete, admin, due, abandon_on_cancel=True, limiter=limiter
            )
        except KafkaException as error:
            log.info("kafka sweep failed", extra={"endpoint": endpoint, "error": str(error)})
            continue
        if deleted:
            log.info(
                "kafka consumer groups of departed clients deleted",
                extra={"endpoint": endpoint, "groups": len(deleted)},
            )
