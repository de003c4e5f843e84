"""Metrics (Prometheus, one registry per engine) and the packet log (one JSON line per packet).

The packet log never carries payloads: only ids, names, sizes and a timestamp, so it can be shipped
by Fluent Bit from stdout without leaking data. Once :func:`mediation.logs.configure_logging` has
set up stdout, packet lines bypass the logging module (same JSON lines, made from a template,
buffered and written per burst by :meth:`Telemetry.run`); otherwise they are records of the
``mediation.packets`` logger, for an embedding application's own logging setup.
"""

from __future__ import annotations

import json.encoder
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .client_state import ClientLedger
from .endpoint_state import EndpointState
from .events import Event
from .logs import packet_lines

# At most this late, a packet line reaches stdout (see Telemetry.run).
PACKET_FLUSH_INTERVAL = 0.1

_quote = json.encoder.encode_basestring_ascii

packet_log = logging.getLogger("mediation.packets")


class Telemetry:
    def __init__(
        self,
        *,
        packet_logging: bool,
        endpoint_states: Callable[[], Mapping[str, EndpointState]],
        clients: Mapping[str, ClientLedger] | None = None,
    ) -> None:
        self.packet_logging = packet_logging
        self.registry = CollectorRegistry(auto_describe=True)
        self.sessions = Gauge(
            "mediation_sessions", "Live client sessions", ["entrypoint"], registry=self.registry
        )
        self.messages = Counter(
            "mediation_messages", "Events moved", ["route", "direction"], registry=self.registry
        )
        self.bytes = Counter(
            "mediation_bytes", "Payload bytes moved", ["route", "direction"], registry=self.registry
        )
        self.settlements = _Counts(
            "mediation_settlements",
            "Deliveries acked or nacked to the broker",
            ["route", "outcome"],
        )
        self.registry.register(self.settlements)
        # Unexpected failures contained to one client connection (a bug, or input no parser
        # foresaw): the connection ended, the engine and the other clients went on.
        self.connection_errors = Counter(
            "mediation_connection_errors",
            "Client connections ended by an unexpected error in their handler",
            ["entrypoint"],
            registry=self.registry,
        )
        # Broker messages the engine could not turn into an event (an undecodable header, a
        # library error while converting), settled per the route's guarantee and not delivered.
        self.undeliverable = Counter(
            "mediation_undeliverable_messages",
            "Broker messages that could not be converted into events (settled, not delivered)",
            ["endpoint", "reason"],
            registry=self.registry,
        )
        # Events a client's server-side filter refused (?filter.NAME=...): acked, delivered to
        # nobody (mediation.params.Filter).
        self.filtered = Counter(
            "mediation_filtered",
            "Events refused by a client's server-side filter (acked, delivered to nobody)",
            ["route"],
            registry=self.registry,
        )
        # Resume positions the broker no longer held: the client was told (SSE "event: reset",
        # envelope {"reset": ...}) and continues from the oldest position there is.
        self.resume_resets = Counter(
            "mediation_resume_resets",
            "Resumes from a position the broker no longer holds (the client was sent a reset)",
            ["endpoint"],
            registry=self.registry,
        )
        self.registry.register(_EndpointStateCollector(endpoint_states))
        if clients:
            self.registry.register(_ClientsCollector(clients))
        self._moved: dict[tuple[str, str], tuple[Counter, Counter]] = {}
        self._clock = _MillisecondClock()
        self._unflushed = trio.Event()

    def packet(
        self,
        *,
        event: Event,
        source_id: str,
        client_id: str,
        session_id: str | None,
        route: str,
        direction: str,
    ) -> None:
        """Count one packet and, with the packet log on, log it."""
        self.packets_from(
            self.packet_source(
                source_id=source_id,
                client_id=client_id,
                session_id=session_id,
                route=route,
                direction=direction,
            ),
            (event,),
        )

    def packet_source(
        self, *, source_id: str, client_id: str, session_id: str | None, route: str, direction: str
    ) -> PacketSource:
        """What packets of one session on one route have in common, for :meth:`packets_from`."""
        try:
            messages, payload_bytes = self._moved[route, direction]
        except KeyError:
            # labels() costs a lock and a tuple lookup: once per route and direction, not per
            # packet.
            messages, payload_bytes = self._moved[route, direction] = (
                self.messages.labels(route, direction),
                self.bytes.labels(route, direction),
            )
        return PacketSource(
            messages,
            payload_bytes,
            {
                "source_id": source_id,
                "client_id": client_id,
                "session_id": session_id,
                "route": route,
                "direction": direction,
            },
        )

    def packets_from(self, source: PacketSource, events: Sequence[Event]) -> None:
        """Count packets of one source (one addition per counter for all of them: a session's
        writer counts a write's events at once, keeping ``source``) and, with the packet log
        on, log each."""
        source.messages.inc(len(events))
        source.payload_bytes.inc(sum([len(event.payload) for event in events]))
        if self.packet_logging:
            for event in events:
                self._log_packet(source, event)

    def _log_packet(self, source: PacketSource, event: Event) -> None:
        size = len(event.payload)
        lines = packet_lines()
        if lines is not None:
            time = _quote(self._clock.now())
            lines.add(
                f'{{"level": "info", "msg": "packet", "time": {time}, '
                f'"event_id": {_quote(event.id)}, {source.json_fields}, '
                f'"payload_bytes": {size}, "timestamp": {time}}}\n'
            )
            self._unflushed.set()
        elif packet_log.isEnabledFor(logging.INFO):
            # An application that embeds the engine gets the packet log through its own
            # logging configuration.
            packet_log.info(
                "packet",
                extra={
                    "event_id": event.id,
                    **source.fields,
                    "payload_bytes": size,
                    "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
                },
            )

    def settled(self, route: str, accepted: bool) -> None:
        counts = self.settlements.counts
        key = (route, "ack" if accepted else "nack")
        counts[key] = counts.get(key, 0) + 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush buffered packet lines a moment after the first one of a burst; at the end too.

        Writing each line as it comes would cost a write to stdout per packet; a burst's lines
        go out together instead, at most ``PACKET_FLUSH_INTERVAL`` late. Idle, this sleeps.
        """
        task_status.started()
        try:
            while True:
                await self._unflushed.wait()
                await trio.sleep(PACKET_FLUSH_INTERVAL)
                self.flush()
        finally:
            self.flush()

    def flush(self) -> None:
        """Write out the buffered packet lines now."""
        self._unflushed = trio.Event()
        lines = packet_lines()
        if lines is not None:
            lines.flush()


class PacketSource:
    """The metric children and the fixed fields of one session's packets on one route."""

    __slots__ = ("fields", "json_fields", "messages", "payload_bytes")

    def __init__(
        self, messages: Counter, payload_bytes: Counter, fields: dict[str, str | None]
    ) -> None:
        self.messages = messages
        self.payload_bytes = payload_bytes
        self.fields = fields
        # The middle of the packet line, quoted once: the logging module's record, filters and
        # generic JSON formatter cost more than the rest of a packet's trip through the engine,
        # so the line is made from a template, exactly as the formatter of mediation.logs
        # would write the record.
        self.json_fields = ", ".join(
            f"{_quote(name)}: {'null' if value is None else _quote(value)}"
            for name, value in fields.items()
        )


class _MillisecondClock:
    """The current UTC time as RFC 3339 with milliseconds, formatted once per millisecond."""

    def __init__(self) -> None:
        self._ms = -1
        self._text = ""

    def now(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            self._ms = ms
            self._text = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
        return self._text


class _Counts(Collector):
    """A labelled counter kept as plain integers, for a count on every event's path: a
    ``prometheus_client.Counter`` takes a lock and checks its argument at each increment, which
    showed in a Kafka drain's profile (docs/performance.md). Written on the Trio thread; read
    from a copy, so a registry collected from another thread (an embedding application's)
    never iterates a dict that is growing."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self._name, self._documentation, self._labels = name, documentation, labels
        self.counts: dict[tuple[str, ...], int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, value in list(self.counts.items()):
            family.add_metric(list(labels), value)
        yield family


class _EndpointStateCollector(Collector):
    def __init__(self, states: Callable[[], Mapping[str, EndpointState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mediation_endpoint_state",
            "1 for the state each endpoint is in",
            labels=["endpoint", "state"],
        )
        for name, current in self._states().items():
            for state in EndpointState:
                family.add_metric([name, state.value], 1.0 if state is current else 0.0)
        yield family


class _ClientsCollector(Collector):
    """``mediation_clients{endpoint}`` (distinct clients with per-client broker state, live or
    within ``client_state_ttl``) and ``mediation_clients_limit{endpoint}`` (``max_clients``,
    endpoints with one only)."""

    def __init__(self, clients: Mapping[str, ClientLedger]) -> None:
        self._clients = clients

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registering asks for this rather than collect(), which needs a Trio run (the time).
        yield GaugeMetricFamily("mediation_clients", "", labels=["endpoint"])
        yield GaugeMetricFamily("mediation_clients_limit", "", labels=["endpoint"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = trio.current_time()
        counted = GaugeMetricFamily(
            "mediation_clients",
            "Distinct clients an endpoint keeps per-client broker state for (live or within "
            "client_state_ttl)",
            labels=["endpoint"],
        )
        limit = GaugeMetricFamily(
            "mediation_clients_limit",
            "max_clients of each endpoint that has one",
            labels=["endpoint"],
        )
        for name, ledger in self._clients.items():
            counted.add_metric([name], float(ledger.count(now=now)))
            if ledger.max_clients is not None:
                limit.add_metric([name], float(ledger.max_clients))
        yield counted
        yield limit
