"""The one exception hierarchy of the engine, and what each error means to a client.

Every domain error carries its client-visible outcome (HTTP status, WebSocket close code, whether
an SSE stream gets an ``event: error``), so entrypoints never decide that themselves: they call
:func:`outcome_of` and apply the answer. Anything that is not a :class:`MediationError` reaching an
entrypoint is a bug in the engine and is reported as ``500`` / close ``1011``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """What a client is told when its request or session ends with an error."""

    http_status: int
    ws_close_code: int
    reason: str


class MediationError(Exception):
    """Base of every error the engine raises to its users and clients."""

    http_status = 500
    ws_close_code = 1011

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.http_status, self.ws_close_code, str(self) or type(self).__name__)


class ConfigError(MediationError):
    """The configuration is invalid; the message is one line ``FILE: table[i].key: problem``."""


class BadRequest(MediationError):
    """The client sent something the wire contract does not allow (bad client id, bad envelope)."""

    http_status = 400
    ws_close_code = 1008


class InvalidEventId(BadRequest):
    """A client's event id breaks the id rule (:func:`mediation.events.valid_event_id`).

    ``event_id`` is the id as the client sent it, so that the refusal can name it
    (``{"nack": id, "error": ...}``) and the connection go on.
    """

    def __init__(self, message: str, *, event_id: str) -> None:
        super().__init__(message)
        self.event_id = event_id


class OriginNotAllowed(MediationError):
    http_status = 403
    ws_close_code = 1008


class Forbidden(MediationError):
    """The client is known but may not have what it asked for: a stream its token does not
    grant (``authorize = true``), or a name that needs a token claim it does not carry."""

    http_status = 403
    ws_close_code = 1008


class NoRoute(MediationError):
    """The entrypoint has no route for what the client asked (502: a gateway with no upstream)."""

    http_status = 502
    ws_close_code = 1011


class TargetNotFound(MediationError):
    http_status = 502
    ws_close_code = 1011


class TooManySessions(MediationError):
    http_status = 503
    ws_close_code = 1013


class TooManyClients(MediationError):
    """An endpoint holds per-client broker state for ``max_clients`` distinct clients already
    (mediation/client_state.py): a client it does not count yet is refused."""

    http_status = 503
    ws_close_code = 1013


class MessageTooLarge(MediationError):
    http_status = 413
    ws_close_code = 1009


class SessionNotFound(MediationError):
    http_status = 404
    ws_close_code = 1008


class SessionClosed(MediationError):
    """The engine ended the session (idle expiry, broker failure, route removed)."""

    http_status = 410
    ws_close_code = 1011


class RouteChanged(SessionClosed):
    """A hot reload removed or changed a route the session was using."""

    ws_close_code = 1012  # "service restart": the client should reconnect


class Replaced(SessionClosed):
    """A newer session of the same client id took over (design.md, One client id, twice).

    On one instance the engine ends the older session of that entrypoint and client id before
    the newer one subscribes; across instances a broker that tells the older connection it was
    taken over (MQTT 5 reason code 0x8E) ends it the same way. Close ``4409`` "replaced", SSE
    ``event: error`` "replaced", polling ``409`` on the client's next call."""

    http_status = 409
    ws_close_code = 4409

    def __init__(self, message: str = "replaced") -> None:
        super().__init__(message)


class ClientTooSlow(MediationError):
    http_status = 503
    ws_close_code = 1013


class BrokerUnavailable(MediationError):
    """The endpoint's broker is down, refused a message, or failed while a session used it."""

    http_status = 503
    ws_close_code = 1011


class EngineShuttingDown(MediationError):
    http_status = 503
    ws_close_code = 1001


class ListenError(MediationError):
    """An entrypoint or the health server could not listen on its port."""


class UnknownEvent(MediationError):
    """The client confirmed an event id this session is not waiting for."""

    http_status = 404
    ws_close_code = 1008


class HeaderTooLarge(MediationError):
    """The request head (request line and headers) is longer than ``max_header_bytes``."""

    http_status = 431
    ws_close_code = 1009


class Unauthorized(MediationError):
    """``auth = "bearer"``: no token, or one that does not verify (signature, expiry, audience,
    issuer, identity claim). Answered 401 with a ``WWW-Authenticate: Bearer`` challenge (RFC 6750),
    always before any session or upgrade."""

    http_status = 401
    ws_close_code = 1008

    def __init__(self, message: str, *, token_given: bool) -> None:
        super().__init__(message)
        self.token_given = token_given

    @property
    def challenge(self) -> str:
        # No token: just the scheme (RFC 6750 3.1: no error code when none was presented).
        if not self.token_given:
            return 'Bearer realm="mediation"'
        return 'Bearer realm="mediation", error="invalid_token"'


class ClientIdle(MediationError):
    """A WebSocket client sent nothing (no message, no ack, no pong) for ``idle_timeout``."""

    http_status = 408
    ws_close_code = 1001  # "going away", with the reason "idle"; as AWS API Gateway does


def response_headers(error: BaseException) -> dict[str, str]:
    """Headers an HTTP refusal for ``error`` must carry besides its status."""
    if isinstance(error, Unauthorized):
        return {"www-authenticate": error.challenge}
    return {}


def outcome_of(error: BaseException) -> Outcome:
    """The client-visible outcome of any error: domain errors carry theirs, the rest are bugs."""
    if isinstance(error, MediationError):
        return error.outcome
    return Outcome(500, 1011, "internal error")
