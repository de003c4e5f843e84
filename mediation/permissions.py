"""Permissions from the token: which resolved stream names a client may subscribe to and publish
to. Pure.

With ``authorize = true`` (and ``auth = "bearer"``) an entrypoint reads the verified token's claim
``permissions_claim`` (default ``"mediation"``)::

    {"mediation": {"subscribe": ["orders/*", "prices.**"], "publish": ["orders/*/in"]}}

A pattern matches a whole resolved name (the topic, queue, binding or routing key, address a
client's routes would fill): ``*`` is one level (one or more characters other than ``.`` and
``/``), ``**`` the rest (anything, separators included, possibly nothing); every other character
stands for itself. A claim that is missing or not of that shape grants nothing.

    permissions = Permissions.from_claims(claims, "mediation")
    permissions.check("subscribe", "orders/42")     # Forbidden (403) unless a pattern matches
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import Forbidden

Action = Literal["subscribe", "publish"]
# A token is input too: its grants are bounded before any is compiled.
MAX_PATTERNS = 256
MAX_PATTERN_CHARS = 512


def compile_grant(pattern: str) -> re.Pattern[str]:
    """A grant pattern as a full-match regular expression (``*`` one level, ``**`` the rest)."""
    regex = ""
    for i, part in enumerate(re.split(r"(\*\*|\*)", pattern)):
        if i % 2 == 0:
            regex += re.escape(part)
        else:
            regex += ".*" if part == "**" else "[^./]+"
    return re.compile(regex, re.DOTALL)


@dataclass(frozen=True)
class Permissions:
    subscribe: tuple[re.Pattern[str], ...] = ()
    publish: tuple[re.Pattern[str], ...] = ()

    @staticmethod
    def from_claims(claims: Mapping[str, Any], claim: str) -> Permissions:
        """The grants in a verified token's ``claim``; nothing for a claim of another shape."""
        document = claims.get(claim)
        if not isinstance(document, Mapping):
            return Permissions()
        return Permissions(
            subscribe=_grants(document.get("subscribe")), publish=_grants(document.get("publish"))
        )

    def allows(self, action: Action, name: str) -> bool:
        patterns = self.subscribe if action == "subscribe" else self.publish
        return any(pattern.fullmatch(name) for pattern in patterns)

    def check(self, action: Action, name: str) -> None:
        """:class:`Forbidden` unless the token grants ``action`` on ``name``."""
        if not self.allows(action, name):
            raise Forbidden(f"the token does not grant {action} on {name!r}")


def _grants(value: object) -> tuple[re.Pattern[str], ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        compile_grant(p)
        for p in value[:MAX_PATTERNS]
        if isinstance(p, str) and 0 < len(p) <= MAX_PATTERN_CHARS
    )
