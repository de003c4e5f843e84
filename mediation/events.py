"""The data unit that flows through the engine, the broker handle that travels with it, and
the rule every event id obeys.

The id rule (:func:`valid_event_id`): 1 to :data:`MAX_EVENT_ID` characters, each printable ASCII
other than space (``0x21``-``0x7E``). Such an id can be written as it is everywhere an id goes:
an SSE ``id:`` line, an HTTP header (``X-Event-ID``), a JSON string, a broker property, a log
line. A client's id that breaks it is refused (:class:`mediation.errors.InvalidEventId`); a
broker's is replaced by :func:`with_valid_id` in the session's consumer loop (except Kafka's,
which are its resume positions and always made of the rule's characters).
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from .metadata import MAX_VALUE

# Version 4 and the RFC 4122 variant, in a 128-bit UUID as an integer.
_UUID4_MASK = ~((0xF << 76) | (0x3 << 62))
_UUID4_BITS = (0x4 << 76) | (0x2 << 62)
_random_bits = random.getrandbits


def new_event_id() -> str:
    """A random (version 4) UUID as a string, for events that bring no id of their own.

    An id only has to be unique, not secret (a client can only confirm events of its own
    session), so its 122 random bits come from the process's PRNG (seeded from ``os.urandom``
    and reseeded after ``fork``) rather than from ``uuid.uuid4``, which makes a system call per
    id: a quarter of the time of ``str(uuid.uuid4())``, for every event of a RabbitMQ or MQTT
    message without a message id.
    """
    h = "%032x" % ((_random_bits(128) & _UUID4_MASK) | _UUID4_BITS)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


MAX_EVENT_ID = 256

# Metadata key under which an event whose broker id broke the rule keeps that id (escaped).
ORIGINAL_ID = "original-id"

_ID_CHARACTERS = r"[\x21-\x7e]"
_VALID_ID = re.compile(f"{_ID_CHARACTERS}{{1,{MAX_EVENT_ID}}}")
_WRITABLE_ID = re.compile(f"{_ID_CHARACTERS}+")
# What escape_event_id rewrites: anything but a printable ASCII character other than backslash.
_ESCAPED = re.compile(r"[^\x21-\x5b\x5d-\x7e]")


def valid_event_id(value: str) -> bool:
    """Whether ``value`` may be an event id: 1 to :data:`MAX_EVENT_ID` characters, each
    printable ASCII other than space (``0x21``-``0x7E``)."""
    return _VALID_ID.fullmatch(value) is not None


def writable_event_id(value: str) -> bool:
    """Whether a writer (SSE ``id:``, ``X-Event-ID``) may put ``value`` out as it is: the rule's
    characters, at least one, of any length.

    The length is not a writer's concern: Kafka's ids are its resume positions
    (``topic:partition:offset``, never replaced), and a topic name may have up to 249
    characters, so such an id can exceed :data:`MAX_EVENT_ID`. An id that fails this is not
    written raw (see :mod:`mediation.sse` and :mod:`mediation.entrypoints.http_get`).
    """
    return _WRITABLE_ID.fullmatch(value) is not None


def escape_event_id(value: str) -> str:
    """``value`` made of the rule's characters, for metadata and headers: a backslash doubled,
    every other character outside ``0x21``-``0x7E`` written as ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``, and cut (between two escapes) to at most metadata's ``MAX_VALUE``."""
    escaped: list[str] = []
    size = 0
    for character in value[:MAX_VALUE]:  # each character is at least one of the result
        piece = character if _ESCAPED.match(character) is None else _escape(character)
        size += len(piece)
        if size > MAX_VALUE:
            break
        escaped.append(piece)
    return "".join(escaped)


def _escape(character: str) -> str:
    code = ord(character)
    if character == "\\":
        return "\\\\"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


@dataclass(frozen=True, slots=True)
class Event:
    """One message. Never stored: it is passed along bounded channels and then forgotten.

    ``id`` is what clients see (envelope ``id``, SSE ``id:``, ``X-Event-ID``); endpoints that can
    resume from a position (Kafka) encode that position in it. Nothing here checks it: a client's
    id is checked by the envelope, a broker's in the session's consumer loop
    (:func:`with_valid_id`).
    """

    payload: bytes
    id: str = field(default_factory=new_event_id)
    metadata: Mapping[str, str] = field(default_factory=dict)
    client_id: str | None = None
    timestamp: float = field(default_factory=time.time)


_new_event = object.__new__
_event_slots = vars(Event)  # the slots' descriptors
_set_payload = _event_slots["payload"].__set__
_set_id = _event_slots["id"].__set__
_set_metadata = _event_slots["metadata"].__set__
_set_client_id = _event_slots["client_id"].__set__
_set_timestamp = _event_slots["timestamp"].__set__


def broker_event(payload: bytes, id: str, metadata: Mapping[str, str], timestamp: float) -> Event:
    """``Event(payload, id, metadata, None, timestamp)``, made through its slots: a frozen
    dataclass's ``__init__`` sets each field with ``object.__setattr__``, which was half of what
    a Kafka reader thread spent converting a record (docs/performance.md). For a broker's hot
    path; ``tests/test_events.py`` checks that it makes what ``Event`` makes, every field."""
    event = _new_event(Event)
    _set_payload(event, payload)
    _set_id(event, id)
    _set_metadata(event, metadata)
    _set_client_id(event, None)
    _set_timestamp(event, timestamp)
    return event


def with_valid_id(event: Event) -> Event:
    """``event`` if its id obeys the rule, else a copy under an engine id derived from the
    broker's (:func:`replacement_id`), which it keeps, escaped (:func:`escape_event_id`), in
    ``metadata[ORIGINAL_ID]``.

    For events from brokers, whose ids nobody checked: the event is still delivered (dropping
    it would lose a message for its id's sake), and a client that needs the broker's id finds it.
    """
    if _VALID_ID.fullmatch(event.id) is not None:
        return event
    metadata = {**event.metadata, ORIGINAL_ID: escape_event_id(event.id)}
    return replace(event, id=replacement_id(event.id), metadata=metadata)


# The namespace of replacement_id's UUIDs: uuid5(NAMESPACE_URL, "urn:mediation:event-id").
_REPLACEMENT_NAMESPACE = uuid.UUID("23271bd1-40fd-5dd4-8093-4a43c93ef3ae")


def replacement_id(broker_id: str) -> str:
    """The engine id of an event whose broker id breaks the rule: a name-based (version 5) UUID
    of that id, not a random one, so that the same message has the same id in every session it
    reaches (a memory topic's subscribers each replace it) and after every redelivery (a client
    can still tell a redelivery from a new event)."""
    name = broker_id.encode("utf-8", "surrogatepass")  # uuid.uuid5 refuses a lone surrogate
    digest = hashlib.sha1(_REPLACEMENT_NAMESPACE.bytes + name, usedforsecurity=False).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


Settle = Callable[[bool], Awaitable[None]]


class Delivery:
    """An event an endpoint handed to a session, with the means to ack or nack it on the broker.

    Settling is idempotent: the first ``ack``/``nack`` goes to the broker, later ones do nothing,
    so every exit path of a session may nack "whatever is still unsettled" without bookkeeping.
    """

    __slots__ = ("_settle", "event", "settled")

    def __init__(self, event: Event, settle: Settle) -> None:
        self.event = event
        self._settle = settle
        self.settled = False

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self._settle(True)

    async def nack(self) -> None:
        """Give the event back to the broker for redelivery."""
        if not self.settled:
            self.settled = True
            await self._settle(False)
