"""TLS on the entrypoints (issue 15): HTTPS and WSS with real clients, mutual TLS with the client
id from the certificate, certificate files replaced on disk, stalled and garbage handshakes, and
the config checks of the TLS keys.

Certificates are made per test run with trustme: a test CA, a server certificate for
127.0.0.1, client certificates from that CA or from another one.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import trustme
from httpx_sse import ServerSentEvent, aconnect_sse

from mediation.config import parse_config
from mediation.engine import MediationEngine
from mediation.errors import ConfigError
from mediation.identity import certificate_client_id

from .conftest import CLIENT_WAIT, EngineFactory, open_ws, url

TO_ALL = [
    {"source": "post", "target": "mem"},
    {"source": "mem", "target": "sse"},
    {"source": "mem", "target": "ws"},
    {"source": "ws", "target": "mem"},
    {"source": "mem", "target": "poll"},
]


@dataclass
class ServerFiles:
    ca: trustme.CA
    cert_file: Path
    key_file: Path

    def issue(self, ca: trustme.CA) -> None:
        """Replace the files with a certificate from ``ca`` (each file renamed into place)."""
        write_server_files(ca, self.cert_file, self.key_file)
        self.ca = ca

    def client_context(self, ca: trustme.CA | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        (ca or self.ca).configure_trust(context)
        return context


def write_server_files(ca: trustme.CA, cert_file: Path, key_file: Path) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    for path, data in (
        (cert_file, b"".join(pem.bytes() for pem in cert.cert_chain_pems)),
        (key_file, cert.private_key_pem.bytes()),
    ):
        temporary = path.with_suffix(".new")
        temporary.write_bytes(data)
        os.replace(temporary, path)


@pytest.fixture
def server_files(tmp_path: Path) -> ServerFiles:
    ca = trustme.CA()
    files = ServerFiles(ca, tmp_path / "server.pem", tmp_path / "server.key")
    write_server_files(ca, files.cert_file, files.key_file)
    return files


def tls_keys(files: ServerFiles, **more: Any) -> dict[str, Any]:
    return {"tls_cert_file": str(files.cert_file), "tls_key_file": str(files.key_file), **more}


def tls_entrypoints(files: ServerFiles, **more: Any) -> dict[str, str | dict[str, Any]]:
    keys = tls_keys(files, **more)
    return {
        "post": {"type": "http_post", **keys},
        "sse": {"type": "sse", **keys},
        "ws": {"type": "websocket", **keys},
        "poll": {"type": "http_get", "poll_timeout": 5, **keys},
    }


@asynccontextmanager
async def sse_stream(
    client: httpx.AsyncClient, address: str, **headers: str
) -> AsyncIterator[tuple[ServerSentEvent, AsyncIterator[ServerSentEvent]]]:
    """An open SSE stream: its ``session`` event and the events after it (closed and run to its
    end on leaving, as :func:`tests.conftest.sse_events` does)."""
    async with aconnect_sse(client, "GET", address, headers=headers) as source:
        assert source.response.status_code == 200
        events = source.aiter_sse()
        try:
            with trio.fail_after(CLIENT_WAIT):
                session = await anext(events)
            assert session.event == "session"
            yield session, events
        finally:
            await source.response.aclose()
            with suppress(httpx.ReadError, httpx.StreamError):
                async for _ in events:
                    pass


def https(engine: MediationEngine, name: str, path: str = "/") -> str:
    return url(engine, name, path, scheme="https")


def wss(engine: MediationEngine, name: str = "ws") -> str:
    return url(engine, name, scheme="wss")


# -- HTTPS and WSS with Python clients -----------------------------------------------------------


async def test_https_post_sse_polling_and_wss_carry_events(
    engine_with: EngineFactory, server_files: ServerFiles
) -> None:
    trust = server_files.client_context()
    async with engine_with(entrypoints=tls_entrypoints(server_files), routes=TO_ALL) as engine:
        async with (
            httpx.AsyncClient(verify=trust) as client,
            sse_stream(client, https(engine, "sse")) as (_session, events),
            open_ws(wss(engine), ssl_context=trust) as ws,
        ):
            headers = {"X-Client-ID": "poller"}
            subscribed = await client.post(https(engine, "poll", "/subscribe"), headers=headers)
            assert subscribed.status_code == 201

            posted = await client.post(https(engine, "post"), content=b"over tls")
            assert posted.status_code == 202
            with trio.fail_after(CLIENT_WAIT):
                assert (await anext(events)).data == "over tls"
                assert await ws.get_message() == "over tls"
            polled = await client.get(https(engine, "poll", "/poll"), headers=headers)
            assert (polled.status_code, polled.content) == (200, b"over tls")

            # And upstream over WSS: the WebSocket's own message reaches the others.
            await ws.send_message("from wss")
            with trio.fail_after(CLIENT_WAIT):
                assert (await anext(events)).data == "from wss"


async def test_plain_http_on_a_tls_port_gets_nothing_and_ends_nothing_else(
    engine_with: EngineFactory, server_files: ServerFiles
) -> None:
    trust = server_files.client_context()
    async with engine_with(entrypoints=tls_entrypoints(server_files), routes=TO_ALL) as engine:
        async with open_ws(wss(engine), ssl_context=trust) as bystander:
            async with httpx.AsyncClient() as plain:
                with pytest.raises(httpx.TransportError):
                    await plain.post(url(engine, "post"), content=b"plain")
            async with httpx.AsyncClient(verify=trust) as client:
                assert (await client.post(https(engine, "post"), content=b"x")).status_code == 202
            with trio.fail_after(CLIENT_WAIT):
                assert await bystander.get_message() == "x"


async def test_the_health_port_stays_plain(
    engine_with: EngineFactory, server_files: ServerFiles
) -> None:
    async with engine_with(entrypoints=tls_entrypoints(server_files), routes=TO_ALL) as engine:
        async with httpx.AsyncClient() as client:
            assert (await client.get(url(engine, "health", "/healthz"))).status_code == 200


# -- mutual TLS ---------------------------------------------------------------------------------


@pytest.fixture
def client_ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path / "clients.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def client_context(
    files: ServerFiles, ca: trustme.CA | None, *names: str, common_name: str | None = None
) -> ssl.SSLContext:
    context = files.client_context()
    if ca is not None:
        ca.issue_cert(*names, common_name=common_name).configure_cert(context)
    return context


async def test_mutual_tls_takes_the_client_id_from_the_certificate(
    engine_with: EngineFactory,
    server_files: ServerFiles,
    client_ca: tuple[trustme.CA, Path],
) -> None:
    ca, ca_file = client_ca
    keys = {"tls_client_ca_file": str(ca_file), "identity": "certificate"}
    async with engine_with(
        entrypoints=tls_entrypoints(server_files, **keys), routes=TO_ALL
    ) as engine:
        alice = client_context(server_files, ca, "alice.example", common_name="alice")
        async with httpx.AsyncClient(verify=alice) as client:
            # The certificate names the client, whatever the request says.
            address = https(engine, "sse")
            async with sse_stream(client, address, **{"X-Client-ID": "mallory"}) as (session, _):
                assert json.loads(session.data)["client_id"] == "alice"
            # Polling takes it from the certificate too: no X-Client-ID needed.
            subscribed = await client.post(https(engine, "poll", "/subscribe"))
            assert (subscribed.status_code, subscribed.json()["client_id"]) == (201, "alice")
        # Without a CN, the first DNS name.
        device = client_context(server_files, ca, "device-7.example", "device-8.example")
        async with open_ws(wss(engine), ssl_context=device):
            # The 101 came once the session was open.
            assert {s.client_id for s in engine.sessions if s.entrypoint == "ws"} == {
                "device-7.example"
            }


@pytest.mark.parametrize("who", ["no certificate", "another CA"])
async def test_mutual_tls_refuses_in_the_handshake(
    engine_with: EngineFactory,
    server_files: ServerFiles,
    client_ca: tuple[trustme.CA, Path],
    who: str,
) -> None:
    _ca, ca_file = client_ca
    keys = {"tls_client_ca_file": str(ca_file), "identity": "certificate"}
    stranger = trustme.CA() if who == "another CA" else None
    context = client_context(server_files, stranger, "eve.example", common_name="eve")
    async with engine_with(
        entrypoints=tls_entrypoints(server_files, **keys), routes=TO_ALL
    ) as engine:
        async with httpx.AsyncClient(verify=context) as client:
            for name in ("post", "sse", "poll"):
                with pytest.raises(httpx.TransportError):
                    await client.post(https(engine, name, "/subscribe"), content=b"x")
        # The WebSocket handshake never gets an answer: the TLS one failed. (A raw client: with
        # TLS 1.3 the client's side of the handshake completes before the server checks its
        # certificate, and trio-websocket then waits out its connect timeout.)
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", engine.ports["ws"], ssl_context=context
        )
        async with stream:
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(WEBSOCKET_HANDSHAKE)
                with trio.fail_after(CLIENT_WAIT):
                    await stream.receive_some()
        assert engine.sessions == []
        assert engine._context.telemetry.connection_errors.labels("post")._value.get() == 0


WEBSOCKET_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_certificate_client_id_rules() -> None:
    def cert(cn: str | None = None, *dns: str) -> dict[str, Any]:
        subject = [(("organizationName", "x"),)] + ([(("commonName", cn),)] if cn else [])
        return {"subject": tuple(subject), "subjectAltName": tuple(("DNS", d) for d in dns)}

    assert certificate_client_id(cert("alice", "a.example")) == "alice"
    assert certificate_client_id(cert(None, "a.example", "b.example")) == "a.example"
    from mediation.errors import BadRequest

    for bad in (None, {}, cert(None), cert("Alice Smith")):
        with pytest.raises(BadRequest):
            certificate_client_id(bad)


# -- certificate files replaced on disk ----------------------------------------------------------


async def test_a_replaced_certificate_is_served_to_the_next_connection_and_drops_nothing(
    engine_with: EngineFactory, server_files: ServerFiles, caplog: pytest.LogCaptureFixture
) -> None:
    old_ca = server_files.ca
    old_trust = server_files.client_context()
    async with engine_with(entrypoints=tls_entrypoints(server_files), routes=TO_ALL) as engine:
        async with open_ws(wss(engine), ssl_context=old_trust) as established:
            server_files.issue(trustme.CA())
            new_trust = server_files.client_context()
            async with httpx.AsyncClient(verify=old_trust) as old_client:
                with pytest.raises(httpx.ConnectError):
                    await old_client.post(https(engine, "post"), content=b"x")
            async with httpx.AsyncClient(verify=new_trust) as client:
                posted = await client.post(https(engine, "post"), content=b"after renewal")
                assert posted.status_code == 202
            # The session that began with the old certificate goes on.
            with trio.fail_after(CLIENT_WAIT):
                assert await established.get_message() == "after renewal"

            # A broken replacement (a key that is not the certificate's) keeps the last good one.
            other = trustme.CA().issue_cert("127.0.0.1")
            other.private_key_pem.write_to_path(str(server_files.key_file))
            with caplog.at_level(logging.ERROR, logger="mediation.http"):
                async with httpx.AsyncClient(verify=new_trust) as client:
                    posted = await client.post(https(engine, "post"), content=b"still")
                    assert posted.status_code == 202
            assert "do not load" in caplog.text
            with trio.fail_after(CLIENT_WAIT):
                assert await established.get_message() == "still"
    assert old_ca is not server_files.ca


# -- hostile handshakes -------------------------------------------------------------------------


async def test_a_stalled_handshake_is_dropped_at_header_timeout(
    engine_with: EngineFactory, server_files: ServerFiles, autojump_clock: trio.testing.MockClock
) -> None:
    entrypoints = tls_entrypoints(server_files, header_timeout=3)
    async with engine_with(entrypoints=entrypoints, routes=TO_ALL) as engine:
        for name in ("post", "ws"):
            stream = await trio.open_tcp_stream("127.0.0.1", engine.ports[name])
            async with stream:
                # Half a ClientHello (a TLS record header promising more), then nothing.
                await stream.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                started = trio.current_time()
                with trio.fail_after(10):
                    while await stream.receive_some(1024):
                        pass
                assert 3 <= trio.current_time() - started < 4


async def test_tls_garbage_ends_only_its_connection(
    engine_with: EngineFactory, server_files: ServerFiles
) -> None:
    trust = server_files.client_context()
    garbage = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP
        b"\x16\x03\x01\x00\x05hello",  # a handshake record that is not a ClientHello
        b"\x17\x03\x03\x00\x10" + b"\x00" * 16,  # application data before any handshake
        bytes(range(256)) * 4,
    ]
    async with engine_with(entrypoints=tls_entrypoints(server_files), routes=TO_ALL) as engine:
        async with (
            open_ws(wss(engine), ssl_context=trust) as bystander,
            httpx.AsyncClient(verify=trust) as client,
        ):
            for data in garbage:
                for name in ("post", "sse", "ws", "poll"):
                    stream = await trio.open_tcp_stream("127.0.0.1", engine.ports[name])
                    async with stream:
                        try:
                            await stream.send_all(data)
                            with trio.fail_after(CLIENT_WAIT):
                                while await stream.receive_some(1024):
                                    pass
                        except trio.BrokenResourceError:
                            pass  # reset: closed just as well
                posted = await client.post(https(engine, "post"), content=b"alive")
                assert posted.status_code == 202
                with trio.fail_after(CLIENT_WAIT):
                    assert await bystander.get_message() == "alive"
        for name in ("post", "sse", "ws", "poll"):
            errors = engine._context.telemetry.connection_errors.labels(name)._value.get()
            assert errors == 0


# -- configuration ------------------------------------------------------------------------------


def config_text(**keys: Any) -> str:
    lines = ["[[entrypoints]]", 'name = "sse"', 'type = "sse"', "port = 0"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    lines += ["[[endpoints]]", 'name = "mem"', 'type = "memory"']
    lines += ["[[routes]]", 'source = "mem"', 'target = "sse"']
    return "\n".join(lines) + "\n"


def config_error(filename: str, **keys: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text(**keys), filename=filename)
    return str(caught.value)


def test_config_tls_files_are_resolved_against_the_config_file(
    server_files: ServerFiles,
) -> None:
    directory = server_files.cert_file.parent
    config = parse_config(
        config_text(tls_cert_file="server.pem", tls_key_file="server.key"),
        filename=str(directory / "mediation.toml"),
    )
    assert config.entrypoints[0].tls_cert_file == str(server_files.cert_file)
    assert config.entrypoints[0].tls_key_file == str(server_files.key_file)


def test_config_tls_errors_name_the_entrypoint_key(
    server_files: ServerFiles, tmp_path: Path
) -> None:
    f = str(tmp_path / "m.toml")
    cert, key = str(server_files.cert_file), str(server_files.key_file)
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x.example").private_key_pem.write_to_path(str(other_key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"tls_cert_file": cert},
            "entrypoints[0].tls_key_file: missing (needed with tls_cert_file)",
        ),
        ({"tls_key_file": key}, "entrypoints[0].tls_cert_file: missing (needed with tls_key_file)"),
        (
            {"tls_cert_file": cert, "tls_key_file": str(other_key)},
            f"entrypoints[0].tls_key_file: does not match the certificate in {cert}",
        ),
        (
            {"tls_cert_file": str(tmp_path / "nope.pem"), "tls_key_file": key},
            f"entrypoints[0].tls_cert_file: cannot read {tmp_path / 'nope.pem'}: "
            "No such file or directory",
        ),
        (
            {"tls_cert_file": str(garbage), "tls_key_file": key},
            f"entrypoints[0].tls_cert_file: no PEM certificate in {garbage}",
        ),
        (
            {"tls_cert_file": cert, "tls_key_file": str(garbage)},
            f"entrypoints[0].tls_key_file: no PEM private key in {garbage}",
        ),
        (
            {"tls_cert_file": cert, "tls_key_file": key, "tls_client_ca_file": str(garbage)},
            f"entrypoints[0].tls_client_ca_file: no PEM certificate in {garbage}",
        ),
        (
            {"tls_client_ca_file": cert},
            "entrypoints[0].tls_client_ca_file: needs tls_cert_file and tls_key_file",
        ),
        (
            {"tls_cert_file": cert, "tls_key_file": key, "identity": "certificate"},
            'entrypoints[0].identity: "certificate" needs tls_client_ca_file',
        ),
        ({"identity": "cert"}, "entrypoints[0].identity: input should be"),
    ]
    for keys, expected in cases:
        assert config_error(f, **keys).startswith(f"{f}: {expected}"), keys


def test_config_an_encrypted_key_is_refused(server_files: ServerFiles, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(server_files.key_file.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    f = str(tmp_path / "m.toml")
    error = config_error(f, tls_cert_file=str(server_files.cert_file), tls_key_file=str(encrypted))
    assert (
        error
        == f"{f}: entrypoints[0].tls_key_file: {encrypted} is encrypted (give an unencrypted key)"
    )


def test_mediation_check_validates_the_tls_files(server_files: ServerFiles, tmp_path: Path) -> None:
    from .test_cli import assert_one_line_error, mediation

    path = tmp_path / "gw.toml"
    path.write_text(config_text(tls_cert_file="server.pem", tls_key_file="server.key"))
    result = mediation("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert any(
        line.split()[:2] == ["sse", "sse"] and "TLS" in line for line in result.stdout.splitlines()
    )

    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x.example").private_key_pem.write_to_path(str(other_key))
    path.write_text(config_text(tls_cert_file="server.pem", tls_key_file="other.key"))
    assert_one_line_error(
        mediation("check", "--config", str(path)),
        2,
        f"{path}: entrypoints[0].tls_key_file: does not match the certificate in "
        f"{server_files.cert_file}",
    )
