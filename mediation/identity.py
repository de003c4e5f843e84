"""Who a client is: the ``X-Client-ID`` header, else the ``client_id`` query parameter, else new.

Pure. Identity is trusted as given (Envoy in front of the engine authenticates); it is only checked
for shape, so it can go into topic names and logs safely. An entrypoint with ``auth = "bearer"``
takes it from a verified token instead (:mod:`mediation.auth`), and one with ``identity =
"certificate"`` from the client certificate the TLS handshake verified
(:func:`certificate_client_id`). :func:`admit_client` is the one order of checks every entrypoint
applies before a session: origin (403), token (401), identity (400).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .auth import BearerVerifier
from .errors import BadRequest, OriginNotAllowed
from .events import new_event_id

CLIENT_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


def client_identity(headers: Mapping[str, str], query_client_id: str | None) -> str:
    """The client id for a request (``headers`` keyed in lower case); BadRequest if malformed.

    A client that gives none gets a random version 4 UUID from :func:`.events.new_event_id`
    (the process's PRNG, not ``uuid.uuid4``'s system call and object): an id only has to be
    unique, since any client may claim any id anyway, and this is on every anonymous POST's path.
    """
    given = headers.get("x-client-id", query_client_id)
    if given is None:
        return new_event_id()
    if not CLIENT_ID.fullmatch(given):
        raise BadRequest("client id must match [A-Za-z0-9._:@-]{1,128}")
    return given


def certificate_client_id(certificate: Mapping[str, Any] | None) -> str:
    """The client id in a verified client certificate (as ``ssl.SSLSocket.getpeercert()`` gives
    it): its subject's common name, else its first DNS subject alternative name.
    :class:`BadRequest` without one (which the handshake refuses already) or if the name is not
    a client id."""
    if not certificate:
        raise BadRequest("a client certificate is required")
    name = next(
        (
            value
            for rdn in certificate.get("subject", ())
            for key, value in rdn
            if key == "commonName"
        ),
        None,
    )
    if name is None:
        name = next((v for k, v in certificate.get("subjectAltName", ()) if k == "DNS"), None)
    if name is None:
        raise BadRequest("the client certificate names no one (no subject CN, no DNS name)")
    if not CLIENT_ID.fullmatch(name):
        raise BadRequest(
            "the client certificate's name is not a client id ([A-Za-z0-9._:@-]{1,128})"
        )
    return str(name)


def check_origin(allowed: tuple[str, ...], origin: str | None) -> None:
    """Refuse a browser origin not in ``allowed``; an empty list allows every origin."""
    if allowed and origin is not None and origin not in allowed and "*" not in allowed:
        raise OriginNotAllowed(f"origin {origin} is not allowed")


@dataclass(frozen=True)
class Client:
    """An admitted client: its id and, with ``auth = "bearer"``, its verified token's claims."""

    id: str
    claims: Mapping[str, Any] = field(default_factory=dict)


def admit_client(
    headers: Mapping[str, str],
    query: Mapping[str, list[str]],
    *,
    allowed_origins: tuple[str, ...],
    verifier: BearerVerifier | None,
    client_id_header_required: bool = False,
    identity: str = "request",
    certificate: Mapping[str, Any] | None = None,
) -> Client:
    """The client of a request that may proceed, with its verified token's claims (for
    ``{claims.NAME}`` and permissions); else the error that refuses it.

    ``headers`` are keyed in lower case, ``query`` as :func:`urllib.parse.parse_qs` gives it.
    ``client_id_header_required``: without a verifier, ``X-Client-ID`` must be given (polling).
    ``identity`` is the entrypoint's key: with ``"certificate"`` the client id is the one in
    ``certificate``, the client certificate its TLS handshake verified.
    """
    check_origin(allowed_origins, headers.get("origin"))
    if identity == "certificate":
        return Client(certificate_client_id(certificate))
    if verifier is not None:
        client_id, claims = verifier.verify(verifier.token(headers, _first(query, "access_token")))
        return Client(client_id, claims)
    if client_id_header_required and "x-client-id" not in headers:
        raise BadRequest("X-Client-ID header required")
    return Client(client_identity(headers, _first(query, "client_id")))


def _first(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None
