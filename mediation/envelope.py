"""The ``mediation.v1`` WebSocket envelope. Pure: JSON in and out (events out as UTF-8 bytes).

Downstream: ``{"id", "payload", "metadata"}`` (``"encoding": "base64"`` when the payload is not
UTF-8). From the client: ``{"ack": id}``, ``{"nack": id}``, or an upstream event
``{"id", "payload"}`` (optionally ``"encoding": "base64"`` and ``"metadata"``), which the engine
answers with ``{"ack": id}`` or ``{"nack": id, "error": ...}``. On an entrypoint with
parameters a downstream event also names its subscription (``"subscription"``), and the client
may send ``{"subscribe": {params}}`` and ``{"unsubscribe": {params}}``, answered
``{"ack": name}`` or ``{"nack": name, "error": ...}`` with the subscription's resolved name
(``"subscribe"`` or ``"unsubscribe"`` in place of a name the parameters do not resolve to). An
upstream event's id must obey the id rule (:func:`mediation.events.valid_event_id`: 1 to 256
printable ASCII characters, no space), else it is refused with :class:`InvalidEventId`; a
confirmation's id is taken as it is (one that breaks the rule matches no event).

Hot path: a client confirms every event, so ``{"ack": id}`` as clients write it (json.dumps'
spacing, or compact, an id without escapes) is matched by one regular expression instead of
json.loads, with the same result (tests/test_envelope.py checks it against json.loads); events
are encoded by orjson, to the bytes the stdlib's compact encoder would make.

Resume (docs/design.md): the client's first message may be ``{"resume": id}`` (an event id it
was given), answered ``{"ack": "resume"}`` or ``{"nack": "resume", "error"}``;
``{"reset": {"reason"}}`` downstream, before any event, says that the client's resume position
was gone at the broker and the events start from the oldest it has.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from .errors import BadRequest, InvalidEventId
from .events import MAX_EVENT_ID, valid_event_id

SUBPROTOCOL = "mediation.v1"


@dataclass(frozen=True)
class Confirmation:
    event_id: str
    accepted: bool


@dataclass(frozen=True)
class SubscriptionChange:
    """``{"subscribe": {...}}`` or ``{"unsubscribe": {...}}``: the parameters as the client
    sent them (checked by the entrypoint's patterns, not here)."""

    subscribe: bool
    params: object


@dataclass(frozen=True)
class Resume:
    """``{"resume": id}``: resume right after the event ``cursor`` (the session's first message)."""

    cursor: str


@dataclass(frozen=True)
class Publication:
    event_id: str
    payload: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)


# {"ack": id} / {"nack": id} as clients write them (json.dumps' spacing, or compact) with an id
# that needs no unescaping (nor a lone surrogate check): taken without json.loads, as json.loads
# would take it. Anything else goes through json.loads.
_PLAIN_CONFIRMATION = re.compile(r'\{"(n?ack)": ?"([^"\\\x00-\x1f\ud800-\udfff]*)"\}')


def encode_event(
    event_id: str, payload: bytes, metadata: Mapping[str, str], subscription: str | None = None
) -> bytes:
    """The downstream envelope as UTF-8 JSON, ready for a text frame.

    Encoded by orjson, which looks for what a payload must escape many bytes at a time, where the
    stdlib's encoder goes character by character (once per event on the Trio thread:
    docs/performance.md, "The envelope by orjson"). The same bytes as ``json.dumps(...,
    separators=(",", ":"), ensure_ascii=False)`` in UTF-8.
    """
    document: dict[str, object] = {"id": event_id}
    if subscription is not None:
        document["subscription"] = subscription
    try:
        document["payload"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        document["payload"] = base64.b64encode(payload).decode("ascii")
        document["encoding"] = "base64"
    document["metadata"] = metadata if type(metadata) is dict else dict(metadata)
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:
        # A string UTF-8 cannot carry (a lone surrogate from a broker's property), which orjson
        # refuses: JSON's escape for it, in ASCII.
        return json.dumps(document, separators=(",", ":")).encode("ascii")


def encode_reply(event_id: str, *, error: str | None = None) -> str:
    if error is None:
        return json.dumps({"ack": event_id})
    return json.dumps({"nack": event_id, "error": error})


def decode_client_message(
    text: str | bytes,
) -> Confirmation | Publication | SubscriptionChange | Resume:
    """Parse one client message; :class:`BadRequest` says what is wrong with it.

    An upstream event whose ``"id"`` is a string that breaks the id rule raises
    :class:`InvalidEventId` (a :class:`BadRequest` carrying that id), checked before the rest
    of the envelope, so that the refusal can name the event.
    """
    if isinstance(text, str):
        plain = _PLAIN_CONFIRMATION.fullmatch(text)
        if plain is not None:
            return Confirmation(plain[2], plain[1] == "ack")
    try:
        document = json.loads(text)
    except ValueError:  # UnicodeDecodeError included: bytes that are not UTF-8 (or -16, -32)
        raise BadRequest("envelope is not JSON") from None
    except RecursionError:
        # json recurses per nesting level: "[[[[..." from a client must not end anything else.
        raise BadRequest("envelope is nested too deeply") from None
    if not isinstance(document, dict):
        raise BadRequest("envelope must be a JSON object")
    for verdict, accepted in (("ack", True), ("nack", False)):
        if verdict in document:
            event_id = document[verdict]
            if not isinstance(event_id, str):
                raise BadRequest(f'"{verdict}" must be an event id string')
            return Confirmation(_unicode(event_id, verdict), accepted)
    for action, subscribe in (("subscribe", True), ("unsubscribe", False)):
        if action in document:
            return SubscriptionChange(subscribe, document[action])
    if "resume" in document:
        cursor = document["resume"]
        if not isinstance(cursor, str):
            raise BadRequest('"resume" must be an event id string')
        return Resume(_unicode(cursor, "resume"))
    event_id, payload = document.get("id"), document.get("payload")
    if not isinstance(event_id, str):
        raise BadRequest('envelope needs "id" (a string)')
    if not valid_event_id(event_id):
        # Lone surrogates included: they are not ASCII.
        raise InvalidEventId(
            f'"id" must be 1 to {MAX_EVENT_ID} printable ASCII characters without spaces',
            event_id=event_id,
        )
    if not isinstance(payload, str):
        raise BadRequest('envelope needs "payload" (a string)')
    metadata = document.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise BadRequest('"metadata" must be an object of strings')
    for key, value in metadata.items():
        _unicode(key, "metadata")
        _unicode(value, "metadata")
    if document.get("encoding") == "base64":
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII characters
            raise BadRequest("payload is not valid base64") from None
    elif "encoding" in document:
        raise BadRequest('"encoding" must be "base64" when given')
    else:
        data = _unicode(payload, "payload").encode("utf-8")
    return Publication(event_id, data, metadata)


def _unicode(value: str, what: str) -> str:
    """``value``, if it can be UTF-8: JSON's ``"\\ud800"`` escape decodes to a lone surrogate,
    which no broker header, log line or UTF-8 payload can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f'"{what}" is not valid Unicode (a lone surrogate)') from None
    return value


def encode_reset(reason: str) -> str:
    """``{"reset": {"reason": ...}}``: the client's resume position was gone at the broker, the
    events that follow start from the oldest position it has (sent before any event)."""
    return json.dumps({"reset": {"reason": reason}}, separators=(",", ":"), ensure_ascii=False)
