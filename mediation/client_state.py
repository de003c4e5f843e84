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

Synopsis::

    ledger = ClientLedger(ttl=60.0, max_clients=2)
    ledger.enter("a", now=0.0)     # True: admitted and counted
    ledger.leave("a", now=5.0)     # counted until 65.0
    ledger.left_at("a")            # 5.0
    ledger.count(now=70.0)         # 0
"""

from __future__ import annotations

from collections import OrderedDict

from .errors import TooManyClients


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
