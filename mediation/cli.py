"""The ``mediation`` command: ``run`` the engine, or ``check`` a configuration.

::

    $ mediation check --config mediation.toml      # exit 0 and a summary, or 2 and the error
    $ mediation run --config mediation.toml        # until SIGINT/SIGTERM, then exit 0

This is the only place that calls :func:`trio.run`, handles signals and configures logging; the
library does none of that. Exit status: 0 after a clean shutdown or a valid configuration, 2 for an
invalid configuration (including a reload refused at start), 1 for any other
:class:`~mediation.errors.MediationError` (a port already in use, say). An error is reported as one
line on stderr, never a traceback: a traceback means a bug in the engine.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from .config import Config, load_config
from .engine import open_mediation_engine
from .errors import ConfigError, MediationError
from .logs import configure_logging

log = logging.getLogger("mediation.cli")

DEFAULT_CONFIG = "mediation.toml"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        _report(error)
        return EXIT_CONFIG
    if args.command == "check":
        print(summary(config))
        return EXIT_OK
    return run(config)


def tune_garbage_collector() -> None:
    """Make the collector's pauses rare and short for a process holding many sessions.

    A process with many live sessions tracks hundreds of thousands of objects, and with the
    default thresholds a full collection, which stalls every session, comes often under load
    (measured: docs/performance.md, "Garbage collector thresholds"). Startup's objects (modules,
    config) never become garbage, so they are left out of every collection (``gc.freeze``), and
    the young generation is collected every 50,000 allocations instead of 700. Only the command
    line does this: an application embedding the engine keeps its own settings.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def run(config: Config) -> int:
    """Serve ``config`` until SIGINT or SIGTERM, then shut down gracefully."""
    configure_logging(config.engine.log_level)
    tune_garbage_collector()
    try:
        trio.run(_serve, config)
    except ConfigError as error:
        _report(error)
        return EXIT_CONFIG
    except MediationError as error:
        _report(error)
        return EXIT_ERROR
    except OSError as error:
        # The engine turns its own (a port in use: ListenError) into MediationErrors; one that
        # got through is still the machine's answer to the operator, not a bug to trace.
        _report(MediationError(str(error)))
        return EXIT_ERROR
    except KeyboardInterrupt:
        # SIGINT before the signal receiver was installed (or after it was removed): nothing
        # was serving yet, so there is nothing to shut down.
        return EXIT_OK
    return EXIT_OK


async def _serve(config: Config) -> None:
    # The receiver is installed before the engine starts, so a signal that arrives while the
    # listeners are being bound is held and handled as soon as the engine is up. Signals during
    # shutdown are ignored: shutdown is bounded by ``engine.shutdown_timeout`` already.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_mediation_engine(config) as engine:
            ports = dict(engine.ports)
            log.info(
                "listening",
                extra={"host": config.engine.host, "ports": ports, "config": config.source_path},
            )
            async for signum in signals:
                log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                break
    log.info("stopped")


def summary(config: Config) -> str:
    """A short, human description of a valid configuration (``mediation check``)."""
    names = [e.name for e in config.entrypoints] + [e.name for e in config.endpoints]
    width = max((len(name) for name in names), default=0)
    lines = [f"{config.source_path or '<config>'}: OK"]
    lines.append(f"entrypoints ({len(config.entrypoints)}):")
    for entrypoint in config.entrypoints:
        tls = ""
        if entrypoint.tls_cert_file is not None:
            tls = "  TLS" if entrypoint.tls_client_ca_file is None else "  TLS, client certificates"
        lines.append(
            f"  {entrypoint.name:<{width}}  {entrypoint.type:<9}  "
            f"{config.engine.host}:{entrypoint.port}{entrypoint.path}{tls}"
        )
    lines.append(f"endpoints ({len(config.endpoints)}):")
    for endpoint in config.endpoints:
        lines.append(f"  {endpoint.name:<{width}}  {endpoint.type}")
    lines.append(f"routes ({len(config.routes)}):")
    route_width = max((len(_arrow(r.source, r.target)) for r in config.routes), default=0)
    for route in config.routes:
        lines.append(
            f"  {_arrow(route.source, route.target):<{route_width}}  {route.direction:<10}  "
            f"{route.delivery_guarantee.value}"
        )
    lines.append(f"health: {config.engine.host}:{config.engine.health_port}")
    return "\n".join(lines)


def _arrow(source: str, target: str) -> str:
    return f"{source} -> {target}"


def _report(error: MediationError) -> None:
    # One line, whatever the message holds, so that scripts and humans read it alike. A
    # configuration error already starts with the file name (``FILE: table[i].key: problem``,
    # like a compiler's); anything else says where it comes from.
    message = " ".join(str(error).split()) or type(error).__name__
    print(message if isinstance(error, ConfigError) else f"mediation: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediation",
        description="An event gateway: WebSocket, SSE and HTTP clients <-> message brokers.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("run", "serve the configuration until SIGINT or SIGTERM"),
        ("check", "validate the configuration and print a summary (exit 2 if invalid)"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument(
            "--config",
            "-c",
            default=DEFAULT_CONFIG,
            metavar="PATH",
            help=f"the TOML configuration (default: {DEFAULT_CONFIG})",
        )
    return parser
