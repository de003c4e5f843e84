"""Server-Sent Events framing per the WHATWG HTML spec. Pure: events in, bytes out.

Every payload line becomes its own ``data:`` line, so a payload with newlines survives; only
``\\n`` line endings are written (some parsers lose the last event of a stream with bare ``\\r``).
A comment is comment lines only, with no blank line after it: a blank line dispatches, and
although the spec dispatches nothing when no ``data:`` came, httpx-sse then yields an empty event
carrying the last id (after every heartbeat, once an event had an id).
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def frame_event(data: str, *, event_id: str | None = None, event: str | None = None) -> bytes:
    lines = []
    if event is not None:
        lines.append(f"event: {_single_line(event, 'event name')}")
    if event_id is not None:
        if "\0" in event_id:
            # The spec ignores an id with a NUL: the client's Last-Event-ID would stay stale.
            raise ValueError(f"SSE event id must not contain NUL: {event_id!r}")
        lines.append(f"id: {_single_line(event_id, 'event id')}")
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


def frame_comment(text: str) -> bytes:
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode()


def _single_line(value: str, what: str) -> str:
    # A line break would end the field early, and the rest would be read as another field.
    if _LINE_BREAK.search(value):
        raise ValueError(f"SSE {what} must be one line: {value!r}")
    return value
