"""Bearer-token (JWT) authentication on connect, for an engine that runs without Envoy. Pure.

Behind Envoy (or any gateway that authenticates and sets ``X-Client-ID``) this is unnecessary:
leave ``auth = "none"``. Standalone, an entrypoint with ``auth = "bearer"`` admits a client only
with a valid token, and takes the client's identity from it::

    verifier = BearerVerifier.from_config(entrypoint)        # None when auth = "none"
    token = bearer_token(headers, query_token)                # header first, then ?access_token=
    client_id = verifier.client_id(token)                     # Unauthorized (401) or BadRequest

A token is valid when its signature verifies with the configured key (``jwt_secret``: HS256;
``jwt_public_key``: the algorithms of that key's type only, so a public key can never be used
as an HMAC secret), it has not expired (``exp`` is required; ``nbf`` is honoured), and its
``aud`` / ``iss`` match ``jwt_audience`` / ``jwt_issuer`` when those are set (a token carrying an
``aud`` is refused when no audience is configured: it was meant for someone else). The identity
is the ``identity_claim`` (default ``sub``), which must be a valid client id; it overrides
``X-Client-ID`` and ``?client_id=``.

The token is checked once, when the client connects: a WebSocket or SSE session outlives its
token's expiry (the client authenticated when it was admitted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import BadRequest, Unauthorized

# The same shape as mediation.identity.CLIENT_ID (kept here so this module imports no other).
_CLIENT_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@-")

SECRET_ALGORITHMS = ("HS256",)
# RFC 7518 3.2: an HMAC key at least as long as the hash; PyJWT warns below it.
MIN_SECRET_BYTES = 32


class AuthSettings(Protocol):
    """The entrypoint config keys this module reads (see mediation.config)."""

    @property
    def auth(self) -> str: ...
    @property
    def jwt_secret(self) -> str | None: ...
    @property
    def jwt_public_key(self) -> str | None: ...
    @property
    def jwt_audience(self) -> str | None: ...
    @property
    def jwt_issuer(self) -> str | None: ...
    @property
    def identity_claim(self) -> str: ...
    @property
    def access_token_query(self) -> bool: ...


def public_key_algorithms(pem: str) -> tuple[Any, tuple[str, ...]]:
    """The key in ``pem`` and the JWT algorithms that key type allows; ValueError if it is not
    a PEM public key of a type JWT can use."""
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as error:
        raise ValueError(f"not a PEM public key ({error})") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    if isinstance(key, ec.EllipticCurvePublicKey):
        # The curve fixes the algorithm (RFC 7518 3.4).
        algorithm = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
            key.curve.name
        )
        if algorithm is None:
            raise ValueError(f"elliptic curve {key.curve.name} is not usable with JWT")
        return key, (algorithm,)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key, ("EdDSA",)
    raise ValueError(f"{type(key).__name__} keys are not usable with JWT")


def check_secret(secret: str) -> None:
    """ValueError if ``secret`` is too short to be an HS256 key."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes for HS256")


@dataclass(frozen=True)
class BearerVerifier:
    key: Any
    algorithms: tuple[str, ...]
    audience: str | None
    issuer: str | None
    identity_claim: str
    query_token: bool

    @classmethod
    def from_config(cls, settings: AuthSettings) -> BearerVerifier | None:
        """The verifier for an entrypoint, or None for ``auth = "none"``.

        The config was validated (mediation.config), so the key is there and well-formed.
        """
        if settings.auth != "bearer":
            return None
        if settings.jwt_public_key is not None:
            key, algorithms = public_key_algorithms(settings.jwt_public_key)
        else:
            assert settings.jwt_secret is not None
            key, algorithms = settings.jwt_secret, SECRET_ALGORITHMS
        return cls(
            key=key,
            algorithms=algorithms,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            identity_claim=settings.identity_claim,
            query_token=settings.access_token_query,
        )

    def token(self, headers: Mapping[str, str], query_token: str | None) -> str | None:
        """The client's token: ``Authorization: Bearer``, else (if allowed) ``?access_token=``."""
        return bearer_token(headers, query_token if self.query_token else None)

    def client_id(self, token: str | None) -> str:
        """The identity in a valid ``token``: :class:`Unauthorized` or :class:`BadRequest`."""
        return self.verify(token)[0]

    def verify(self, token: str | None) -> tuple[str, dict[str, Any]]:
        """The identity and every claim of a valid ``token`` (:meth:`client_id`'s errors)."""
        if not token:
            raise Unauthorized("bearer token required", token_given=False)
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired", token_given=True) from None
        except jwt.InvalidTokenError as error:
            raise Unauthorized(f"invalid token: {error}", token_given=True) from None
        identity = claims.get(self.identity_claim)
        if not isinstance(identity, str):
            raise Unauthorized(
                f"token has no string claim {self.identity_claim!r}", token_given=True
            )
        if not 1 <= len(identity) <= 128 or not set(identity) <= _CLIENT_ID_CHARS:
            raise BadRequest(
                f"token claim {self.identity_claim!r} is not a client id "
                "([A-Za-z0-9._:@-]{1,128})"
            )
        return identity, claims


def bearer_token(headers: Mapping[str, str], query_token: str | None) -> str | None:
    """``Authorization: Bearer TOKEN`` (``headers`` keyed in lower case), else ``query_token``.

    Browsers cannot set headers on a WebSocket or an EventSource, hence the query parameter; it
    may end up in proxy logs and browser history, so tokens given that way should be short-lived.
    """
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return None  # some other scheme: not a bearer token, and not to be mixed with the query
    return query_token
