"""Certificates for the brokers' TLS listeners, made per test run with trustme.

`make_certs(directory)` writes, as PEM files:

- `ca.pem`: the CA the brokers' and the client's certificates are signed by;
- `server.pem` / `server.key`: the brokers' certificate, for `localhost` and `127.0.0.1`;
- `client.pem` / `client.key`: a client certificate (subject CN `guest`, so that RabbitMQ's
  SASL EXTERNAL maps it to the guest user);
- `other-ca.pem` and `other-client.pem` / `other-client.key`: a second, unrelated CA and a client
  certificate from it (a "wrong CA" on either side).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path
    expired_client_cert: Path  # signed by ``ca``, valid until yesterday
    expired_client_key: Path


def make_certs(directory: Path) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("guest", common_name="guest")
    stranger = other.issue_cert("guest", common_name="guest")
    now = datetime.datetime.now(datetime.UTC)
    expired = ca.issue_cert(
        "guest",
        common_name="guest",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    files = TLSFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
        other_client_cert=directory / "other-client.pem",
        other_client_key=directory / "other-client.key",
        expired_client_cert=directory / "expired-client.pem",
        expired_client_key=directory / "expired-client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    other.cert_pem.write_to_path(str(files.other_ca))
    for leaf, cert, key in (
        (server, files.server_cert, files.server_key),
        (client, files.client_cert, files.client_key),
        (stranger, files.other_client_cert, files.other_client_key),
        (expired, files.expired_client_cert, files.expired_client_key),
    ):
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
    for path in directory.iterdir():
        path.chmod(0o644)  # the brokers may run as their own user
    return files
