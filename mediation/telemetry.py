"""Metrics (Prometheus, one registry per engine) and the packet log (one JSON line per packet).

The packet log never carries payloads: only ids, names, sizes and a timestamp, so it can be shipped
by Fluent Bit from stdout without leaking data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .endpoints.base import EndpointState
from .events import Event

packet_log = logging.getLogger("mediation.packets")


class Telemetry:
    def __init__(
        self, *, packet_logging: bool, endpoint_states: Callable[[], Mapping[str, EndpointState]]
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
        self.settlements = Counter(
            "mediation_settlements",
            "Deliveries acked or nacked to the broker",
            ["route", "outcome"],
            registry=self.registry,
        )
        self.registry.register(_EndpointStateCollector(endpoint_states))

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
        self.messages.labels(route, direction).inc()
        self.bytes.labels(route, direction).inc(len(event.payload))
        if self.packet_logging:
            packet_log.info(
                "packet",
                extra={
                    "event_id": event.id,
                    "source_id": source_id,
                    "client_id": client_id,
                    "session_id": session_id,
                    "route": route,
                    "direction": direction,
                    "payload_bytes": len(event.payload),
                    "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
                },
            )

    def settled(self, route: str, accepted: bool) -> None:
        self.settlements.labels(route, "ack" if accepted else "nack").inc()


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
