"""Mediation: an event gateway between web clients and message brokers, on Trio.

WebSocket, Server-Sent Events, HTTP POST and HTTP GET long-polling clients on one side; Kafka,
RabbitMQ, MQTT 5, Solace, AMQP 1.0 (JMS) brokers or the embedded ``memory`` broker on the other.
Every client connection is a session with its own broker consumer; nothing is stored.

Embedding the engine (this runs as is, on the in-process broker, with free ports)::

    import trio
    from mediation import open_mediation_engine, parse_config

    CONFIG = '''
    [engine]
    host = "127.0.0.1"
    health_port = 0

    [[entrypoints]]
    name = "webhook"
    type = "http_post"
    port = 0

    [[endpoints]]
    name = "bus"
    type = "memory"

    [[routes]]
    source = "webhook"
    target = "bus"
    '''

    async def main() -> None:
        async with open_mediation_engine(parse_config(CONFIG)) as engine:
            print(engine.ports)     # {"health": 41234, "webhook": 41235}
            print(engine.sessions)  # [] (no client yet)
            # ... serve until the block is left: leaving it shuts down gracefully

    trio.run(main)

From the command line: ``mediation run --config mediation.toml`` (see :mod:`mediation.cli`).
Everything importable from this package is listed in ``__all__``; modules are free to change.
"""

from __future__ import annotations

from .config import Config, load_config, parse_config
from .engine import MediationEngine, open_mediation_engine
from .errors import (
    BadRequest,
    BrokerUnavailable,
    ClientTooSlow,
    ConfigError,
    EngineShuttingDown,
    ListenError,
    MediationError,
    MessageTooLarge,
    NoRoute,
    OriginNotAllowed,
    Replaced,
    RouteChanged,
    SessionClosed,
    SessionNotFound,
    TargetNotFound,
    TooManyClients,
    TooManySessions,
    UnknownEvent,
)
from .session import SessionInfo

__all__ = [
    "BadRequest",
    "BrokerUnavailable",
    "ClientTooSlow",
    "Config",
    "ConfigError",
    "EngineShuttingDown",
    "ListenError",
    "MediationEngine",
    "MediationError",
    "MessageTooLarge",
    "NoRoute",
    "OriginNotAllowed",
    "Replaced",
    "RouteChanged",
    "SessionClosed",
    "SessionInfo",
    "SessionNotFound",
    "TargetNotFound",
    "TooManyClients",
    "TooManySessions",
    "UnknownEvent",
    "load_config",
    "open_mediation_engine",
    "parse_config",
]
