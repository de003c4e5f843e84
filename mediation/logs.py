"""Logging for the command line: every log record is one JSON line on stdout.

::

    configure_logging("info")
    logging.getLogger("mediation.engine").info("listening", extra={"ports": {"ws": 8066}})
    # {"level": "info", "msg": "listening", "time": "2025-01-01T12:00:00.000+00:00", "ports": {...}}

Every line has ``level``, ``msg`` and ``time`` (RFC 3339, UTC) and then whatever the call put in
``extra``, so Fluent Bit (or anything reading stdout) gets structured records without parsing
text. The packet log (logger ``mediation.packets``, see :mod:`mediation.telemetry`) comes out the
same way, one line per packet with its ids, route, direction, size and timestamp; once this module
set up stdout, those lines skip the logging module (:class:`PacketLines`: the same JSON, made from a
template, buffered and written per burst).

Only the CLI calls :func:`configure_logging`; importing the library configures nothing, so an
application that embeds the engine keeps its own logging setup.
"""

from __future__ import annotations

import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Marks the handler configure_logging installed, so that calling it again replaces it rather
# than printing every line twice.
_HANDLER_NAME = "mediation-json-stdout"


class _Formatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        # Lower case, like ``log_level`` in the configuration.
        log_data["level"] = record.levelname.lower()


def json_formatter() -> logging.Formatter:
    """The formatter of every line: ``level``, ``msg``, ``time``, then the record's ``extra``."""
    formatter: logging.Formatter = _Formatter(
        "{levelname}{message}{asctime}",
        style="{",
        rename_fields={"levelname": "level", "message": "msg", "asctime": "time"},
    )
    return formatter


class PacketLines:
    """Packet lines for the stdout handler, buffered: written out by :meth:`flush`, or when large.

    Written to the handler's stream under the handler's lock, so a packet line never tears into
    (or is torn by) a log record from another thread.
    """

    # Past this many buffered characters, add() writes them out at once.
    LIMIT = 64 * 1024

    def __init__(self, handler: logging.StreamHandler[Any]) -> None:
        self._handler = handler
        self._lines: list[str] = []
        self._size = 0

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.LIMIT:
            self.flush()

    def flush(self) -> None:
        lines, self._lines, self._size = self._lines, [], 0
        if not lines:
            return
        handler = self._handler
        with handler.lock or threading.Lock():
            handler.stream.write("".join(lines))
            handler.flush()


_packet_lines: PacketLines | None = None


def packet_lines() -> PacketLines | None:
    """Where packet lines go once :func:`configure_logging` ran (None: through ``logging``)."""
    return _packet_lines


def configure_logging(level: str) -> None:
    """Send every log record, as one JSON line, to stdout; ``level`` as in ``engine.log_level``.

    ``level`` applies to the engine's own loggers (``mediation.*``); other libraries log only
    warnings and errors unless it is stricter than that, so ``debug`` does not drown the engine's
    lines in HTTP/2 frame dumps. The packet log is always at ``info``: it is switched on and off by
    ``engine.packet_log``, not by the level. Calling this again replaces the handler it installed.
    """
    try:
        threshold = LEVELS[level.lower()]
    except KeyError:
        expected = ", ".join(LEVELS)
        raise ValueError(f"unknown log level {level!r} (expected one of: {expected})") from None
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(json_formatter())
    root.addHandler(handler)
    global _packet_lines
    if _packet_lines is not None:
        _packet_lines.flush()
    _packet_lines = PacketLines(handler)
    root.setLevel(max(threshold, logging.WARNING))
    logging.getLogger("mediation").setLevel(threshold)
    logging.getLogger("mediation.packets").setLevel(logging.INFO)
