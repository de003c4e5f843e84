"""Who a client is: the ``X-Client-ID`` header, else the ``client_id`` query parameter, else new.

Pure. Identity is trusted as given (Envoy in front of the engine authenticates); it is only checked
for shape, so it can go into topic names and logs safely.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

from .errors import BadRequest, OriginNotAllowed

CLIENT_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


def client_identity(headers: Mapping[str, str], query_client_id: str | None) -> str:
    """The client id for a request (``headers`` keyed in lower case); BadRequest if malformed."""
    given = headers.get("x-client-id", query_client_id)
    if given is None:
        return str(uuid.uuid4())
    if not CLIENT_ID.fullmatch(given):
        raise BadRequest("client id must match [A-Za-z0-9._:@-]{1,128}")
    return given


def check_origin(allowed: tuple[str, ...], origin: str | None) -> None:
    """Refuse a browser origin not in ``allowed``; an empty list allows every origin."""
    if allowed and origin is not None and origin not in allowed and "*" not in allowed:
        raise OriginNotAllowed(f"origin {origin} is not allowed")
