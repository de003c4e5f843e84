"""Authentication on connect (``auth = "bearer"``): the pure verifier, the config checks, and
every entrypoint refusing (401, ``WWW-Authenticate: Bearer``) or admitting real clients."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mediation import ConfigError, parse_config
from mediation.auth import BearerVerifier, bearer_token
from mediation.errors import BadRequest, Unauthorized

from .conftest import EngineFactory, open_ws, url
from .test_limits import ACCEPTED, ROUTES, all_entrypoints, raw, request_head

SECRET = "s" * 32
KINDS = ["ws", "sse", "post", "poll"]


def token(key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    claims.setdefault("sub", "alice")
    claims.setdefault("exp", int(time.time()) + 600)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm)


def pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class Settings:
    """The auth keys of an entrypoint, as BearerVerifier.from_config reads them."""

    def __init__(self, **values: Any) -> None:
        self.auth = "bearer"
        self.jwt_secret: str | None = None
        self.jwt_public_key: str | None = None
        self.jwt_audience: str | None = None
        self.jwt_issuer: str | None = None
        self.identity_claim = "sub"
        self.access_token_query = True
        self.__dict__.update(values)


def verifier(**values: Any) -> BearerVerifier:
    values.setdefault("jwt_secret", None if "jwt_public_key" in values else SECRET)
    made = BearerVerifier.from_config(Settings(**values))
    assert made is not None
    return made


# -- the verifier (pure) -----------------------------------------------------------------------


def test_a_valid_hs256_token_gives_its_subject() -> None:
    assert verifier().client_id(token()) == "alice"


def test_auth_none_has_no_verifier() -> None:
    assert BearerVerifier.from_config(Settings(auth="none")) is None


@pytest.mark.parametrize(
    "bad",
    [
        token(exp=int(time.time()) - 10),
        token(key="t" * 32),
        token(exp=None),  # exp is required
        jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, "none"),
        "not.a.token",
        token()[:-4] + "AAAA",
    ],
    ids=["expired", "wrong-secret", "no-exp", "alg-none", "garbage", "tampered"],
)
def test_invalid_tokens_are_401_invalid_token(bad: str) -> None:
    with pytest.raises(Unauthorized) as refused:
        verifier().client_id(bad)
    assert refused.value.http_status == 401
    assert refused.value.challenge == 'Bearer realm="mediation", error="invalid_token"'


def test_no_token_is_401_without_an_error_code() -> None:
    with pytest.raises(Unauthorized) as refused:
        verifier().client_id(None)
    assert refused.value.challenge == 'Bearer realm="mediation"'


def test_rs256_and_es256_public_keys(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    assert verifier(jwt_public_key=pem(rsa_key)).client_id(token(rsa_key, "RS256")) == "alice"
    assert verifier(jwt_public_key=pem(ec_key)).client_id(token(ec_key, "ES256")) == "alice"
    with pytest.raises(Unauthorized):  # an EC verifier takes no RSA signature
        verifier(jwt_public_key=pem(ec_key)).client_id(token(rsa_key, "RS256"))


def test_a_public_key_is_never_used_as_an_hmac_secret(rsa_key: rsa.RSAPrivateKey) -> None:
    """The algorithm-confusion attack: HS256 signed with the (public) PEM as the secret."""
    public = pem(rsa_key)

    def part(document: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=")

    signing_input = (
        part({"alg": "HS256", "typ": "JWT"})
        + b"."
        + part({"sub": "mallory", "exp": int(time.time()) + 60})
    )
    signature = hmac.new(public.encode(), signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
    with pytest.raises(Unauthorized):
        verifier(jwt_public_key=public).client_id(forged)


def test_audience_and_issuer() -> None:
    checked = verifier(jwt_audience="gateway", jwt_issuer="https://idp.example")
    good = token(aud="gateway", iss="https://idp.example")
    assert checked.client_id(good) == "alice"
    for bad in (
        token(aud="other", iss="https://idp.example"),
        token(aud="gateway", iss="https://evil.example"),
        token(iss="https://idp.example"),  # no aud
    ):
        with pytest.raises(Unauthorized):
            checked.client_id(bad)
    with pytest.raises(Unauthorized):  # meant for someone else: refused when none is configured
        verifier().client_id(token(aud="gateway"))


def test_identity_claim() -> None:
    by_email = verifier(identity_claim="email")
    assert by_email.client_id(token(email="alice@example.com")) == "alice@example.com"
    with pytest.raises(Unauthorized):  # missing
        by_email.client_id(token())
    with pytest.raises(Unauthorized):  # not a string
        verifier().client_id(token(sub=42))
    with pytest.raises(BadRequest):  # a string that cannot be a client id
        verifier().client_id(token(sub="alice smith"))
    with pytest.raises(BadRequest):
        verifier().client_id(token(sub="a" * 129))


def test_where_the_token_comes_from() -> None:
    assert bearer_token({"authorization": "Bearer abc"}, "query") == "abc"
    assert bearer_token({"authorization": "bearer  abc "}, None) == "abc"
    assert bearer_token({}, "query") == "query"
    assert bearer_token({"authorization": "Basic dXNlcjpwdw=="}, "query") is None
    assert verifier(access_token_query=False).token({}, "query") is None
    assert verifier().token({}, "query") == "query"


# -- the config --------------------------------------------------------------------------------


def entrypoint_config(extra: str) -> str:
    return f'[[entrypoints]]\nname = "ws"\ntype = "websocket"\nport = 0\n{extra}\n'


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            'auth = "bearer"',
            'gw.toml: entrypoints[0].auth: "bearer" needs jwt_secret or jwt_public_key',
        ),
        (
            f'auth = "bearer"\njwt_secret = "{SECRET}"\njwt_public_key = "k.pem"',
            "gw.toml: entrypoints[0].jwt_public_key: give jwt_secret or jwt_public_key, not both",
        ),
        (
            'auth = "bearer"\njwt_secret = "short"',
            "gw.toml: entrypoints[0].jwt_secret: must be at least 32 bytes for HS256",
        ),
        (
            f'jwt_secret = "{SECRET}"',
            'gw.toml: entrypoints[0].jwt_secret: is only used with auth = "bearer"',
        ),
        (
            'jwt_audience = "x"',
            'gw.toml: entrypoints[0].jwt_audience: is only used with auth = "bearer"',
        ),
        (
            'auth = "bearer"\njwt_public_key = "-----BEGIN PUBLIC KEY-----\\nnope\\n"',
            "gw.toml: entrypoints[0].jwt_public_key: not a PEM public key",
        ),
        (
            'auth = "basic"',
            "gw.toml: entrypoints[0].auth: input should be 'none' or 'bearer'",
        ),
        (
            'auth = "bearer"\njwt_public_key = "missing.pem"',
            "gw.toml: entrypoints[0].jwt_public_key: cannot read missing.pem: "
            "No such file or directory",
        ),
    ],
)
def test_config_errors_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(entrypoint_config(extra), filename="gw.toml")
    assert str(refused.value).startswith(message)


def test_secret_from_the_environment() -> None:
    text = entrypoint_config('auth = "bearer"\njwt_secret = "${GW_SECRET}"')
    config = parse_config(text, env={"GW_SECRET": SECRET})
    assert config.entrypoint("ws").jwt_secret == SECRET


def test_public_key_file_is_read_relative_to_the_config(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "idp.pem").write_text(pem(ec_key))
    config_file = tmp_path / "gw.toml"
    config_file.write_text(entrypoint_config('auth = "bearer"\njwt_public_key = "keys/idp.pem"'))
    from mediation import load_config

    config = load_config(config_file, env={})
    assert config.entrypoint("ws").jwt_public_key == pem(ec_key)
    made = BearerVerifier.from_config(config.entrypoint("ws"))
    assert made is not None and made.algorithms == ("ES256",)


def test_shipped_example_is_valid() -> None:
    from mediation import load_config

    repo = Path(__file__).resolve().parent.parent
    config = load_config(repo / "examples" / "auth.toml", env={"MEDIATION_JWT_SECRET": SECRET})
    assert {e.auth for e in config.entrypoints} == {"bearer"}


# -- over the wire -----------------------------------------------------------------------------


def bearer(**settings: Any) -> dict[str, str | dict[str, Any]]:
    return all_entrypoints(auth="bearer", jwt_secret=SECRET, **settings)


@pytest.mark.parametrize("kind", KINDS)
async def test_no_token_is_401_before_any_session(engine_with: EngineFactory, kind: str) -> None:
    async with engine_with(entrypoints=bearer(), routes=ROUTES) as engine:
        async with raw(engine, kind) as client:
            await client.stream.send_all(request_head(kind))
            status, headers = await client.response_head()
        assert status == 401
        assert headers["www-authenticate"] == 'Bearer realm="mediation"'
        assert engine.sessions == []


@pytest.mark.parametrize("kind", KINDS)
async def test_expired_token_is_401_invalid_token(engine_with: EngineFactory, kind: str) -> None:
    expired = token(exp=int(time.time()) - 1)
    async with engine_with(entrypoints=bearer(), routes=ROUTES) as engine:
        async with raw(engine, kind) as client:
            head = (
                request_head(kind, end=False) + f"Authorization: Bearer {expired}\r\n\r\n".encode()
            )
            await client.stream.send_all(head)
            status, headers = await client.response_head()
        assert status == 401
        assert 'error="invalid_token"' in headers["www-authenticate"]
        assert engine.sessions == []


@pytest.mark.parametrize("kind", KINDS)
async def test_a_valid_token_admits_and_names_the_client(
    engine_with: EngineFactory, kind: str
) -> None:
    """The claim wins over X-Client-ID."""
    async with engine_with(entrypoints=bearer(), routes=ROUTES) as engine:
        async with raw(engine, kind) as client:
            head = (
                request_head(kind, end=False).replace(b"X-Client-ID: limits\r\n", b"")
                + f"Authorization: Bearer {token(sub='bob')}\r\nX-Client-ID: mallory\r\n\r\n".encode()
            )
            await client.stream.send_all(head)
            assert (await client.response_head())[0] == ACCEPTED[kind]
            if kind != "post":
                assert [s.client_id for s in engine.sessions] == ["bob"]


async def test_browsers_pass_the_token_in_the_query(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=bearer(), routes=ROUTES) as engine:
        async with open_ws(url(engine, "ws", f"/?access_token={token(sub='carol')}", "ws")):
            assert [s.client_id for s in engine.sessions] == ["carol"]
        async with (
            httpx.AsyncClient() as http,
            http.stream(
                "GET",
                url(engine, "sse", f"/?access_token={token(sub='dave')}"),
                headers={"Accept": "text/event-stream"},
            ) as response,
        ):
            assert response.status_code == 200
            assert "dave" in (await anext(response.aiter_text()))


async def test_query_tokens_can_be_turned_off(engine_with: EngineFactory) -> None:
    async with (
        engine_with(entrypoints=bearer(access_token_query=False), routes=ROUTES) as engine,
        httpx.AsyncClient() as http,
    ):
        response = await http.post(url(engine, "post", f"/?access_token={token()}"), content=b"x")
        assert response.status_code == 401
        accepted = await http.post(
            url(engine, "post"), content=b"x", headers={"Authorization": f"Bearer {token()}"}
        )
        assert accepted.status_code == 202


async def test_polling_requests_are_identified_by_the_token(engine_with: EngineFactory) -> None:
    async with (
        engine_with(entrypoints=bearer(), routes=ROUTES) as engine,
        httpx.AsyncClient() as http,
    ):
        erin = {"Authorization": f"Bearer {token(sub='erin')}"}
        subscribed = await http.post(url(engine, "poll", "/subscribe"), headers=erin)
        assert subscribed.status_code == 201 and subscribed.json()["client_id"] == "erin"
        published = await http.post(url(engine, "post"), content=b"hi", headers=erin)
        assert published.status_code == 202
        polled = await http.get(url(engine, "poll", "/poll"), headers=erin)
        assert (polled.status_code, polled.content) == (200, b"hi")
        # Another token is another client: not subscribed.
        frank = {"Authorization": f"Bearer {token(sub='frank')}"}
        assert (await http.get(url(engine, "poll", "/poll"), headers=frank)).status_code == 404
        assert (await http.get(url(engine, "poll", "/poll"))).status_code == 401
