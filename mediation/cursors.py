"""Signed resume cursors: event ids that carry a broker position, safe to hand to any instance.

An endpoint whose event ids are its positions (``Endpoint.ids_are_positions``: Kafka's
``topic:partition:offset``) lets a client resume right after an id it was given (SSE
``Last-Event-ID``, ``?last_event_id=``). In a fleet the id comes back to whichever instance the
load balancer picks, so every instance must be able to tell an id the fleet issued from one a
client made up. With ``[engine] cursor_secret`` such ids go out as ``<position>.<mac>``, the mac
an HMAC-SHA256 of the position under the fleet's secret (truncated to 128 bits, base64url
without padding: 22 characters, after a ``.``). Every instance with the same secret accepts
every instance's cursors.

:meth:`Cursors.resume_position` is the check on the way in:

- a cursor whose mac is right: its position, resumed from;
- a cursor shaped like a signed one (a ``.`` 23 characters from its end) whose mac is wrong
  (any byte of the position or the mac changed, another fleet's secret): :class:`BadCursor`,
  ``400`` before any session;
- an id without a mac (not one this fleet signed; an EventSource also sends back the ids of
  other brokers' events): no position, so the client resumes where the broker keeps its place
  (its consumer group's commit), exactly as if it had sent nothing.

Without a secret nothing is signed and a position is taken as the client gives it (what a single
instance did before fleets: a client can then name any offset of the topics its routes read).

Pure: no trio, no broker library. Synopsis::

    cursors = Cursors(b"a fleet secret of at least 32 bytes.....")
    cursor = cursors.sign("orders:0:41")          # "orders:0:41.<22 characters>"
    assert cursors.resume_position(cursor) == "orders:0:41"
    cursors.resume_position("orders:0:40" + cursor[11:])   # BadCursor
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from .errors import BadRequest

MIN_SECRET_BYTES = 32
MAC_BYTES = 16
MAC_CHARS = 22  # base64url of 16 bytes, without padding
# Domain separation: the same secret used for something else never yields a valid cursor.
_DOMAIN = b"mediation.cursor.v1\x00"


class BadCursor(BadRequest):
    """A resume cursor whose signature does not match: tampered with, or another fleet's."""


def check_secret(secret: str) -> None:
    """ValueError if ``secret`` is too short to be a cursor key (config validation)."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes")


class Cursors:
    """Signs positions into cursors and checks cursors back into positions (module docstring).

    ``Cursors(None)`` signs nothing and takes every id as a position, as before fleets."""

    __slots__ = ("_key",)

    def __init__(self, secret: bytes | str | None) -> None:
        self._key = secret.encode() if isinstance(secret, str) else secret

    @property
    def signing(self) -> bool:
        return self._key is not None

    def sign(self, position: str) -> str:
        """The cursor clients are given for ``position`` (the position itself when not signing)."""
        if self._key is None:
            return position
        return f"{position}.{self._mac(position)}"

    def resume_position(self, cursor: str | None) -> str | None:
        """The position to resume after, or ``None``; :class:`BadCursor` for a bad signature."""
        if cursor is None or self._key is None:
            return cursor
        if len(cursor) <= MAC_CHARS + 1 or cursor[-MAC_CHARS - 1] != ".":
            return None  # never signed here: resume where the broker keeps the client's place
        position, mac = cursor[: -MAC_CHARS - 1], cursor[-MAC_CHARS:]
        if not hmac.compare_digest(
            mac.encode("utf-8", "surrogatepass"), self._mac(position).encode("ascii")
        ):
            raise BadCursor("resume position: bad signature")
        return position

    def _mac(self, position: str) -> str:
        assert self._key is not None
        digest = hmac.new(
            self._key, _DOMAIN + position.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
