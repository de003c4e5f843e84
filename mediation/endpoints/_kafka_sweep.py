"""The Kafka endpoint's sweep (``_sweep``): consumer groups of the engine's naming, gone for
``client_state_ttl``, are deleted through the AdminClient of the endpoint's admin child process
(``_kafka_admin_process``).

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

import threading
from collections.abc import Callable
from typing import Any

import trio

from ..client_state import Sweep
from ..errors import BrokerUnavailable
from ._kafka_admin_process import refusal

# How long a sweep's request may take in all: the child's own timeout, plus a margin.
ANSWER_TIMEOUT = 15.0

# One request to the endpoint's admin child process (``_kafka_admin_process``), from the sweep's
# worker thread: its answer, or why there is none.
Ask = Callable[[dict[str, Any]], dict[str, Any] | str]


class KafkaGroups:
    """The consumer groups of a cluster, for :func:`~._sweep.run_sweep` (blocking calls, made
    by the endpoint's admin child: librdkafka can abort the process that makes them)."""

    what = "kafka consumer groups"
    failures: tuple[type[Exception], ...] = (BrokerUnavailable,)

    def __init__(self, ask: Ask) -> None:
        self._ask = ask

    def _answer(self, request: dict[str, Any], key: str) -> Any:
        answer = self._ask(request)
        reason = refusal(answer)
        if reason is None and isinstance(answer, dict):
            if key in answer:
                return answer[key]
            reason = f"an answer without {key}: {answer!r}"
        raise BrokerUnavailable(f"kafka sweep request {request['op']} failed: {reason}")

    def list_matching(self, sweep: Sweep) -> dict[str, bool]:
        listed = self._answer({"op": "groups"}, "groups")
        groups = [g for g in listed if isinstance(g, str) and sweep.matches(g)]
        if not groups:
            return {}
        empty = self._answer({"op": "describe", "groups": groups}, "empty")
        return {g: e for g, e in empty.items() if g in groups and isinstance(e, bool)}

    def delete(self, names: list[str]) -> list[str]:
        deleted = self._answer({"op": "delete", "groups": names}, "deleted")
        return [g for g in deleted if g in names]


def ask_from_thread(request_soon: Callable[..., None]) -> Ask:
    """:data:`Ask` through ``request_soon`` (``AdminProcess.request``, a Trio-thread call)."""

    def ask(request: dict[str, Any]) -> dict[str, Any] | str:
        done = threading.Event()
        box: list[dict[str, Any] | str] = []

        def answered(answer: dict[str, Any] | str) -> None:  # on the Trio thread
            box.append(answer)
            done.set()

        trio.from_thread.run_sync(request_soon, request, answered)
        if not done.wait(ANSWER_TIMEOUT):
            return "no answer in time"
        return box[0]

    return ask
