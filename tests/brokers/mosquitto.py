"""Mosquitto 2.0 (Debian package `mosquitto`): a private MQTT 5 broker from a temp config."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

from ._common import (
    LOOPBACK,
    Broker,
    BrokerStartError,
    ManagedProcess,
    free_port,
    port_accepts,
)
from .tls import TLSFiles


def _find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.path.exists(p)), None
    )
    if not found:
        raise BrokerStartError("mosquitto not found: run scripts/install-system-deps")
    return found


class Mosquitto(Broker):
    """A mosquitto on loopback: anonymous access, no persistence (state is lost on stop()).

    Attributes: host, port, url ('mqtt://127.0.0.1:PORT'), config_path, workdir, log_path.
    `extra_config` lines are appended to the generated config. `websockets=True` adds a
    websockets listener on `websockets_port` (off by default; mosquitto 2.0.11 binds it on every
    interface whatever address is given, so only the benchmarks turn it on). `tls` (certificates
    from tests.brokers.tls) adds two MQTT-over-TLS listeners: `tls_port` (server certificate
    only) and `mtls_port` (a client certificate from the same CA required); `tls_url` and
    `mtls_url` are their `mqtts://localhost:PORT` URLs.
    """

    kind = "mosquitto"
    start_timeout = 15.0

    def __init__(
        self,
        port: int | None = None,
        host: str = LOOPBACK,
        extra_config: str = "",
        websockets: bool = False,
        tls: TLSFiles | None = None,
        **kw: bool,
    ) -> None:
        self.binary = _find_mosquitto()
        super().__init__(port, host, **kw)
        self.websockets_port = free_port(host) if websockets else None
        if self.websockets_port:
            extra_config += f"\nlistener {self.websockets_port} {host}\nprotocol websockets\n"
        self.tls = tls
        self.tls_port = free_port(host) if tls else None
        self.mtls_port = free_port(host) if tls else None
        if tls is not None:
            # Running as root, mosquitto switches to its own user before it reads the
            # certificates: they go in the workdir, readable by that user.
            tls_dir = self.workdir / "tls"
            tls_dir.mkdir()
            for path in (self.workdir, tls_dir):
                path.chmod(0o755)
            copies = {}
            for name in ("ca", "server_cert", "server_key"):
                source = getattr(tls, name)
                copies[name] = tls_dir / source.name
                shutil.copyfile(source, copies[name])
                copies[name].chmod(0o644)
            for listener, required in ((self.tls_port, "false"), (self.mtls_port, "true")):
                extra_config += (
                    f"\nlistener {listener} {host}\n"
                    f"cafile {copies['ca']}\ncertfile {copies['server_cert']}\n"
                    f"keyfile {copies['server_key']}\n"
                    f"require_certificate {required}\n"
                )
        self.config_path = self.workdir / "mosquitto.conf"
        self.config_path.write_text(
            "per_listener_settings false\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            "max_keepalive 65535\n"
            f"{extra_config}\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://localhost:{self.tls_port}"

    @property
    def mtls_url(self) -> str:
        return f"mqtts://localhost:{self.mtls_port}"

    def _spawn(self) -> ManagedProcess:
        # Running as root, mosquitto would switch to the `mosquitto` user; it needs no
        # files besides its config, which that user can read, so that is harmless.
        p = ManagedProcess(
            self.kind, [self.binary, "-c", str(self.config_path)], self.log_path, cwd=self.workdir
        )
        p.spawn()
        return p

    def _ready(self) -> bool:
        ports = [self.port, self.tls_port, self.mtls_port]
        return all(port_accepts(self.host, p) for p in ports if p is not None)


@contextlib.contextmanager
def start_mosquitto(
    port: int | None = None,
    host: str = LOOPBACK,
    extra_config: str = "",
    websockets: bool = False,
    tls: TLSFiles | None = None,
) -> Iterator[Mosquitto]:
    """Start a private mosquitto on a free (or the given) loopback port; stop it on exit."""
    with Mosquitto(port, host, extra_config=extra_config, websockets=websockets, tls=tls) as broker:
        broker.start()
        yield broker
