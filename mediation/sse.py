"""Server-Sent Events framing per the WHATWG HTML spec. Pure: events in, bytes out.

Every payload line becomes its own ``data:`` line, so a payload with newlines survives; only
``\\n`` line endings are written (some parsers lose the last event of a stream with bare ``\\r``).
A comment is comment lines only, with no blank line after it: a blank line dispatches, and
although the spec dispatches nothing when no ``data:`` came, httpx-sse then yields an empty event
carrying the last id (after every heartbeat, once an event had an id).

No content can break a frame, and framing never raises because of it: an event id that SSE
cannot carry as it is (a line break would end the field early and the rest be read as other
fields; the spec ignores an id with a NUL; a lone surrogate is no UTF-8) is left out of the
frame, so the client keeps the last id it had (the engine's ids never are: see
:func:`mediation.events.valid_event_id`); a line break in an event name becomes U+FFFD.
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# What an ``id:`` field cannot hold as it is.
_UNWRITABLE_ID = re.compile(r"[\r\n\0\ud800-\udfff]")
_REPLACEMENT = "\ufffd"


def frame_event(data: str, *, event_id: str | None = None, event: str | None = None) -> bytes:
    """One event; ``event_id`` is left out when SSE cannot carry it as it is (see above)."""
    lines = []
    if event is not None:
        lines.append(f"event: {_LINE_BREAK.sub(_REPLACEMENT, event)}")
    if event_id is not None and _UNWRITABLE_ID.search(event_id) is None:
        lines.append(f"id: {event_id}")
    if "\n" in data or "\r" in data:
        lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    else:  # the usual payload, one line: the regex would scan it character by character
        lines.append(f"data: {data}")
    # "replace": a lone surrogate (in data or a name; never in the id, left out above) is no
    # UTF-8 and would raise.
    return ("\n".join(lines) + "\n\n").encode("utf-8", "replace")


def frame_comment(text: str) -> bytes:
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode("utf-8", "replace")
