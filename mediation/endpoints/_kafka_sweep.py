"""The Kafka endpoint's sweep (``_sweep``): consumer groups of the engine's naming, gone for
``client_state_ttl``, are deleted through the AdminClient.

Kafka keeps an empty group's committed offsets for ``offsets.retention.minutes`` (7 days by
default) and its name for as long as it likes, so one group per client id ever seen piles up.
A group is unused when it is empty (no members); which groups are the engine's and when their
clients left is :class:`~mediation.client_state.Sweep`'s to say.

``fetch = "shared"``: a client's group has no members even while it reads (its positions are
written through the admin API), so "empty" says nothing there; only the ledger and first-seen
times do. A client reading through another instance of a fleet whose group this instance has
seen empty for the ttl may have its group deleted; its next position write creates it again,
and what it had confirmed since its last write is delivered again if it reconnects before then.
Keep ``client_state_ttl`` well above ``position_refresh_interval`` on such fleets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import ConsumerGroupState, KafkaException

from ..client_state import Sweep

REQUEST_TIMEOUT = 10.0  # seconds for each admin request of a sweep


class KafkaGroups:
    """The consumer groups of a cluster, for :func:`~._sweep.run_sweep` (blocking calls)."""

    what = "kafka consumer groups"
    failures: tuple[type[Exception], ...] = (KafkaException,)

    def __init__(self, make_admin: Callable[[], Any]) -> None:
        self._make_admin = make_admin
        self._admin: Any = None  # made at the first sweep: none while no sweep is due

    @property
    def admin(self) -> Any:
        if self._admin is None:
            self._admin = self._make_admin()
        return self._admin

    def list_matching(self, sweep: Sweep) -> dict[str, bool]:
        listed = self.admin.list_consumer_groups(request_timeout=REQUEST_TIMEOUT).result(
            REQUEST_TIMEOUT
        )
        groups = [g.group_id for g in listed.valid if sweep.matches(g.group_id)]
        if not groups:
            return {}
        found: dict[str, bool] = {}
        described = self.admin.describe_consumer_groups(groups, request_timeout=REQUEST_TIMEOUT)
        for group, future in described.items():
            try:
                description = future.result(REQUEST_TIMEOUT)
            except KafkaException:
                continue  # gone meanwhile, or not answerable now: the next sweep
            found[group] = description.state == ConsumerGroupState.EMPTY and not description.members
        return found

    def delete(self, names: list[str]) -> list[str]:
        deleted = []
        for group, future in self.admin.delete_consumer_groups(
            names, request_timeout=REQUEST_TIMEOUT
        ).items():
            try:
                future.result(REQUEST_TIMEOUT)
            except KafkaException:
                continue  # not empty any more, or gone: the next sweep decides again
            deleted.append(group)
        return deleted
