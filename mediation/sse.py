"""Server-Sent Events framing per the WHATWG HTML spec. Pure: events in, bytes out.

Every payload line becomes its own ``data:`` line, so a payload with newlines survives; only
``\\n`` line endings are written (some parsers lose the last event of a stream with bare ``\\r``).
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def frame_event(data: str, *, event_id: str | None = None, event: str | None = None) -> bytes:
    lines = []
    if event is not None:
        lines.append(f"event: {_single_line(event)}")
    if event_id is not None:
        lines.append(f"id: {_single_line(event_id)}")
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


def frame_comment(text: str) -> bytes:
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


def _single_line(value: str) -> str:
    # An id or event name with a line break (or NUL, for ids) would end the field early.
    if _LINE_BREAK.search(value) or "\0" in value:
        raise ValueError(f"SSE field value must be one line without NUL: {value!r}")
    return value
