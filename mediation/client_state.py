"""Which clients an endpoint holds per-client broker state for, and when that state may go.

Pure (no trio, no broker library): callers pass the time (``trio.current_time()``).

An endpoint's per-client broker objects (a Kafka consumer group, an MQTT persistent session, a
RabbitMQ or Solace queue named with ``{client_id}``) outlive the client's session for
``client_state_ttl`` seconds, then expire (the broker's own expiry, or the engine's sweep).
:class:`ClientLedger` is the engine's record of them: a client id counts from the moment a
session of it starts consuming from the endpoint until ``ttl`` after its last such session
ended (``ttl`` 0: only while it has one). ``max_clients`` caps that count; a client not already
counted is refused beyond it (:class:`~mediation.errors.TooManyClients`, ``503``).

What is counted is the engine's own view since it started: clients of other instances of a
fleet, and those of before a restart, are not in it (their objects still expire by the broker's
rules or the sweep, which never needs this record to be complete).

Objects the broker does not expire by itself (Kafka consumer groups, Solace queues) are swept by
the endpoint: :func:`name_pattern` says which names are the engine's (its template, with
``{client_id}``), :class:`Sweep` which of those are due for deletion (the I/O is the endpoint's:
``endpoints/_sweep.py``).

Synopsis::

    ledger = ClientLedger(ttl=60.0, max_clients=2)
    ledger.enter("a", now=0.0)     # True: admitted and counted
    ledger.leave("a", now=5.0)     # counted until 65.0
    ledger.left_at("a")            # 5.0
    ledger.count(now=70.0)         # 0

    sweep = Sweep(name_pattern("mediation-{endpoint}-{client_id}", "k"), ledger)
    sweep.due({"mediation-k-a": True}, now=70.0)   # ["mediation-k-a"]: empty, gone for the ttl
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

from .errors import TooManyClients

SWEEP_MAX = 300.0  # seconds between sweeps at most (the ttl halved otherwise)

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


class ClientLedger:
    """The client ids an endpoint keeps per-client state for, live or within the ttl."""

    def __init__(self, *, ttl: float, max_clients: int | None = None) -> None:
        self.ttl = ttl
        self.max_clients = max_clients
        self._live: dict[str, int] = {}  # client id -> its sessions consuming now
        # client id -> when its last session ended, oldest first (re-inserted on each leave).
        self._left: OrderedDict[str, float] = OrderedDict()

    def enter(self, client_id: str, *, now: float) -> None:
        """A session of ``client_id`` starts consuming: count it, or refuse it
        (:class:`TooManyClients`) if it is new and ``max_clients`` are counted already."""
        self._expire(now)
        known = client_id in self._live or client_id in self._left
        if not known and self.max_clients is not None and self.count(now=now) >= self.max_clients:
            raise TooManyClients(f"at max_clients ({self.max_clients}) distinct clients")
        self._left.pop(client_id, None)
        self._live[client_id] = self._live.get(client_id, 0) + 1

    def leave(self, client_id: str, *, now: float) -> None:
        """A session of ``client_id`` stopped consuming (once per :meth:`enter`)."""
        sessions = self._live.get(client_id, 0) - 1
        if sessions > 0:
            self._live[client_id] = sessions
            return
        self._live.pop(client_id, None)
        if self.ttl > 0:
            self._left[client_id] = now
            self._left.move_to_end(client_id)

    def is_live(self, client_id: str) -> bool:
        """Whether a session of ``client_id`` consumes from the endpoint now."""
        return client_id in self._live

    def left_at(self, client_id: str) -> float | None:
        """When the last session of ``client_id`` ended, while the ledger still counts it
        (it forgets a client at the first :meth:`count` or :meth:`enter` past the ttl)."""
        return self._left.get(client_id)

    def count(self, *, now: float) -> int:
        """Distinct client ids counted now: live, or gone for less than the ttl."""
        self._expire(now)
        return len(self._live) + len(self._left)

    def _expire(self, now: float) -> None:
        while self._left:
            client_id, left = next(iter(self._left.items()))
            if now - left < self.ttl:
                break
            del self._left[client_id]


def name_pattern(template: str, endpoint: str) -> re.Pattern[str] | None:
    """The full-match pattern of the names ``template`` makes for ``endpoint`` (the client id
    as group ``client_id``), or None for a template without ``{client_id}`` (no client's object:
    never swept)."""
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


class Sweep:
    """Which of the engine's objects (names matching ``pattern``) are due for deletion.

    When a client left: brokers do not say how long an object has had no consumer (tansu
    reports no such time for a group), so the sweep uses the ledger (when the client's last
    session on this instance ended) and, for an object it has no record of (a client of another
    instance, or of before a restart), the time a sweep first saw it unused. A client with a
    live session on this instance is never due, nor is an object in use.
    """

    def __init__(self, pattern: re.Pattern[str], clients: ClientLedger) -> None:
        self.pattern = pattern
        self.clients = clients
        # name -> since when its client is known gone (the ledger's time, else first seen).
        self._unused_since: dict[str, float] = {}

    def matches(self, name: str) -> bool:
        return self.pattern.fullmatch(name) is not None

    def due(self, objects: Mapping[str, bool], *, now: float) -> list[str]:
        """The names to delete now, given every matching object and whether it is unused."""
        ttl = self.clients.ttl
        seen: dict[str, float] = {}
        due: list[str] = []
        for name, unused in objects.items():
            match = self.pattern.fullmatch(name)
            if match is None:
                continue
            client_id = match.group("client_id")
            if not unused or self.clients.is_live(client_id):
                continue
            left = self.clients.left_at(client_id)
            since = left if left is not None else self._unused_since.get(name, now)
            seen[name] = since
            if now - since >= ttl:
                due.append(name)
        self._unused_since = {n: t for n, t in seen.items() if n not in due}
        return due
