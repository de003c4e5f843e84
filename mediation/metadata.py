"""What a client may put into an event's metadata. Pure.

Client-supplied headers and envelope metadata travel to brokers (Kafka headers, AMQP properties,
MQTT user properties), so they are allow-listed and sanitised here, once, for every entrypoint:
only ``content-type`` and ``x-*`` names, no control characters (a CR/LF could split a header
downstream), bounded sizes, and never a key the engine or an endpoint sets itself (``client_id``,
``topic``, ``offset``...), so a client cannot impersonate another or spoof a broker position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_ENTRIES = 32
MAX_NAME = 64
MAX_VALUE = 1024

# Set by the engine or by endpoints on consumed events; a client may not supply them.
RESERVED = frozenset(
    {
        "client_id",
        "session_id",
        "entrypoint",
        "event_id",
        "topic",
        "partition",
        "offset",
        "key",
        "timestamp",
        "exchange",
        "routing_key",
        "redelivered",
        "qos",
        "retain",
        "mediation-event",
        "original-id",  # a broker id the engine replaced (mediation.events.with_valid_id)
    }
)

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def client_metadata(items: Iterable[tuple[str, str]], *, header_names: bool) -> dict[str, str]:
    """The metadata a client's items may carry; the rest is silently left out.

    ``header_names``: the items are HTTP headers, so only ``content-type`` and ``x-*`` (minus
    ``x-client-id``, which is identity, not data) qualify; otherwise (envelope metadata) any
    well-formed name does.
    """
    metadata: dict[str, str] = {}
    for raw_name, value in items:
        name = raw_name.lower()
        if header_names and not (name == "content-type" or name.startswith("x-")):
            continue
        if name in RESERVED or name == "x-client-id" or not _acceptable(name, value):
            continue
        metadata[name] = value
        if len(metadata) == MAX_ENTRIES:
            break
    return metadata


def _acceptable(name: str, value: str) -> bool:
    return (
        len(name) <= MAX_NAME
        and len(value) <= MAX_VALUE
        and _NAME.fullmatch(name) is not None
        and _CONTROL.search(value) is None
    )


# RFC 9110 token characters, for a header name.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
# A header value: visible Latin-1 and inner spaces and tabs, nothing that could end the line.
_FIELD_VALUE = re.compile(r"[\x20-\x7e\x80-\xff\t]*")


def header_safe(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The metadata entries that can be sent as HTTP response headers as they are (names
    lower-cased); the rest, which would be malformed or split a header, is left out."""
    return [
        (name.lower(), value)
        for name, value in items
        if _TOKEN.fullmatch(name)
        and len(value) <= MAX_VALUE
        and _FIELD_VALUE.fullmatch(value)
        and value == value.strip()
    ]
