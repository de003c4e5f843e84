"""RabbitMQ (Debian's rabbitmq-server 3.10) as a private node, with the AMQP 1.0 plugin."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from ._common import (
    LOOPBACK,
    Broker,
    BrokerStartError,
    ManagedProcess,
    free_port,
    port_accepts,
    tail,
    wait_until,
)
from .tls import TLSFiles

RABBITMQ_HOME = Path("/usr/lib/rabbitmq")
SERVER = RABBITMQ_HOME / "bin" / "rabbitmq-server"  # not /usr/sbin/...: that one su's to rabbitmq
RABBITMQCTL = RABBITMQ_HOME / "bin" / "rabbitmqctl"
PLUGINS = ("rabbitmq_amqp1_0",)


def _find_epmd() -> str:
    found = shutil.which("epmd") or next(
        iter(sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))), None
    )
    if not found:
        raise BrokerStartError("epmd not found: run scripts/install-system-deps")
    return found


class QueueCounts(NamedTuple):
    """From a passive queue.declare: ready messages (not the unacked ones) and consumers."""

    messages: int
    consumers: int


class RabbitMQ(Broker):
    """A private RabbitMQ node on loopback, state in a temp dir, AMQP 0-9-1 and 1.0 on `port`.

    Attributes: host, port, amqp_url, amqp1_port (== port), amqp1_url, nodename, username,
    password, vhost, dist_port, epmd_port, workdir, log_path, web_mqtt_port and mqtt_port
    (None unless started with web_mqtt=True), and with `tls` (certificates from tests.brokers.tls)
    a TLS listener for AMQP 0-9-1 and 1.0 on `tls_port` (`amqps_url`, `amqp1s_url`) that
    requires a client certificate from the same CA; SASL EXTERNAL maps its CN to a user.
    Methods: queue_counts(name), queue_exists(name), delete_queue(name), purge_queue(name),
    list_queues() (rabbitmqctl, slower), rabbitmqctl(*args), connection() (pika), plus the
    Broker ones: stop(), kill(), start(), restart(), pause(), resume(), stopped(), frozen().
    Durable queues and persistent messages survive stop()/start() (same node, same dir).
    """

    kind = "rabbitmq"
    start_timeout = 60.0
    username = "guest"
    password = "guest"  # guest may log in from loopback only, which is all we use
    vhost = "/"

    def __init__(
        self,
        port: int | None = None,
        host: str = LOOPBACK,
        web_mqtt: bool = False,
        tls: TLSFiles | None = None,
        **kw: bool,
    ) -> None:
        if not SERVER.exists():
            raise BrokerStartError(f"{SERVER} missing: run scripts/install-system-deps")
        super().__init__(port, host, **kw)
        self.tls = tls
        self.tls_port = free_port(host) if tls else None
        self.dist_port = free_port(host)
        self.epmd_port = free_port(host)
        # Off by default (it adds ~5 s to the first boot): the benchmarks' broker-native
        # WebSocket reference. The plugin also opens an MQTT (3.1.1) TCP listener, which would
        # take 1883 on every interface: both are put on free loopback ports.
        self.web_mqtt_port = free_port(host) if web_mqtt else None
        self.mqtt_port = free_port(host) if web_mqtt else None
        self.nodename = f"mediation-{self.port}@localhost"
        self.epmd: ManagedProcess | None = None
        self._write_config()

    # -- addresses -------------------------------------------------------------
    @property
    def amqp_url(self) -> str:
        return f"amqp://{self.username}:{self.password}@{self.host}:{self.port}/%2F"

    @property
    def amqp1_port(self) -> int:
        """AMQP 1.0 is served by the rabbitmq_amqp1_0 plugin on the AMQP port."""
        return self.port

    @property
    def amqp1_url(self) -> str:
        return f"amqp://{self.username}:{self.password}@{self.host}:{self.port}"

    @property
    def amqps_url(self) -> str:
        return f"amqps://{self.username}:{self.password}@localhost:{self.tls_port}/%2F"

    @property
    def amqp1s_url(self) -> str:
        return f"amqps://{self.username}:{self.password}@localhost:{self.tls_port}"

    # -- config & process ------------------------------------------------------------
    def _write_config(self) -> None:
        d = self.workdir
        (d / "home").mkdir()
        (d / "log").mkdir()
        (d / "mnesia").mkdir()
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.host}:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
            "disk_free_limit.absolute = 10MB\n"
            # Keep the node small and quick on 2 cores.
            "collect_statistics_interval = 10000\n"
            + (
                f"listeners.ssl.1 = {self.host}:{self.tls_port}\n"
                f"ssl_options.cacertfile = {self.tls.ca}\n"
                f"ssl_options.certfile = {self.tls.server_cert}\n"
                f"ssl_options.keyfile = {self.tls.server_key}\n"
                "ssl_options.verify = verify_peer\n"
                "ssl_options.fail_if_no_peer_cert = true\n"
                "auth_mechanisms.1 = PLAIN\n"
                "auth_mechanisms.2 = AMQPLAIN\n"
                "auth_mechanisms.3 = EXTERNAL\n"
                "ssl_cert_login_from = common_name\n"
                if self.tls is not None
                else ""
            )
            + (
                f"mqtt.listeners.tcp.1 = {self.host}:{self.mqtt_port}\n"
                f"web_mqtt.tcp.ip = {self.host}\n"
                f"web_mqtt.tcp.port = {self.web_mqtt_port}\n"
                "mqtt.allow_anonymous = true\n"
                if self.web_mqtt_port
                else ""
            )
        )
        (d / "advanced.config").write_text(
            "[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].\n"
        )
        plugins = PLUGINS + (("rabbitmq_web_mqtt",) if self.web_mqtt_port else ())
        plugins += ("rabbitmq_auth_mechanism_ssl",) if self.tls is not None else ()
        (d / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        (d / "rabbitmq-env.conf").write_text("# empty: keeps /etc/rabbitmq/rabbitmq-env.conf out\n")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(d / "home"),
            "RABBITMQ_HOME": str(RABBITMQ_HOME),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
        }

    def _start_epmd(self) -> None:
        if self.epmd is not None and self.epmd.running():
            return
        argv = [_find_epmd(), "-port", str(self.epmd_port), "-address", self.host]
        self.epmd = ManagedProcess("epmd", argv, self.workdir / "epmd.log", env=self.env)
        self.epmd.spawn()
        try:
            wait_until(
                lambda: port_accepts(self.host, self.epmd_port),
                10.0,
                alive=self.epmd.running,
                what=f"epmd on {self.host}:{self.epmd_port}",
            )
        except (TimeoutError, ChildProcessError) as exc:
            raise BrokerStartError(f"{exc}\n{tail(self.workdir / 'epmd.log')}") from exc

    def _spawn(self) -> ManagedProcess:
        self._start_epmd()
        p = ManagedProcess(
            self.kind, [str(SERVER)], self.log_path, env=self.env, cwd=self.workdir / "home"
        )
        p.spawn()
        return p

    def _ready(self) -> bool:
        if not port_accepts(self.host, self.port):
            return False
        if self.tls_port is not None and not port_accepts(self.host, self.tls_port):
            return False
        try:
            conn = self.connection(
                connection_attempts=1, socket_timeout=2, blocked_connection_timeout=2
            )
        except Exception:
            return False
        with contextlib.suppress(Exception):
            conn.close()
        return True

    def _log_tail(self) -> str:
        node_log = self.workdir / "log" / f"{self.nodename}.log"
        return (
            f"--- stdout/stderr ---\n{tail(self.log_path)}\n"
            f"--- {node_log.name} ---\n{tail(node_log)}"
        )

    def _close_extra(self) -> None:
        if self.epmd is not None:
            self.epmd.stop(5.0)
            self.epmd = None

    # -- test-side helpers ---------------------------------------------------------
    def connection(self, **params: object):  # type: ignore[no-untyped-def]
        """A new pika BlockingConnection to this node (close it yourself)."""
        import pika

        creds = pika.PlainCredentials(self.username, self.password)
        p = pika.ConnectionParameters(host=self.host, port=self.port, credentials=creds, **params)
        return pika.BlockingConnection(p)

    @contextlib.contextmanager
    def channel(self) -> Iterator[object]:
        """`with rabbitmq.channel() as ch:` a pika channel on a fresh connection."""
        conn = self.connection()
        try:
            yield conn.channel()
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def queue_counts(self, queue: str) -> QueueCounts | None:
        """Ready message count and consumer count of `queue`, None if it does not exist.

        Fast (one short pika connection, passive queue.declare). Unacked messages are not
        counted in `messages`; use list_queues() for those.
        """
        import pika.exceptions

        conn = self.connection()
        try:
            try:
                ok = conn.channel().queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return None
                raise
            return QueueCounts(ok.method.message_count, ok.method.consumer_count)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def queue_exists(self, queue: str) -> bool:
        return self.queue_counts(queue) is not None

    def wait_for_queue(
        self,
        queue: str,
        *,
        messages: int | None = None,
        consumers: int | None = None,
        timeout: float = 10.0,
    ) -> QueueCounts:
        """Poll queue_counts() until the queue exists and matches the given counts."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.queue_counts(queue)
            if (
                counts is not None
                and (messages is None or counts.messages == messages)
                and (consumers is None or counts.consumers == consumers)
            ):
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"queue {queue!r}: {counts} after {timeout} s "
                    f"(wanted messages={messages} consumers={consumers})"
                )
            time.sleep(0.05)

    def delete_queue(self, queue: str) -> None:
        with self.channel() as ch:
            ch.queue_delete(queue)  # type: ignore[attr-defined]

    def purge_queue(self, queue: str) -> None:
        with self.channel() as ch:
            ch.queue_purge(queue)  # type: ignore[attr-defined]

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run rabbitmqctl against this node and return its stdout (slow: ~1-2 s a call)."""
        out = subprocess.run(
            [str(RABBITMQCTL), "-n", self.nodename, *args],
            env=self.env,
            cwd=self.workdir / "home",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out.stdout}{out.stderr}")
        return out.stdout

    def list_queues(self) -> dict[str, dict[str, int]]:
        """{queue: {messages, messages_ready, messages_unacknowledged, consumers}} (rabbitmqctl)."""
        cols = ["name", "messages", "messages_ready", "messages_unacknowledged", "consumers"]
        text = self.rabbitmqctl("list_queues", "-q", "--no-table-headers", *cols)
        result: dict[str, dict[str, int]] = {}
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) != len(cols):
                continue
            result[parts[0]] = {c: int(v) for c, v in zip(cols[1:], parts[1:], strict=True)}
        return result

    def unique_name(self, prefix: str = "q") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def start_rabbitmq(
    port: int | None = None,
    host: str = LOOPBACK,
    web_mqtt: bool = False,
    tls: TLSFiles | None = None,
) -> Iterator[RabbitMQ]:
    """Start a private RabbitMQ node on a free (or the given) loopback port; stop it on exit.

    ``web_mqtt``: also the rabbitmq_web_mqtt plugin (MQTT over WebSocket on ``web_mqtt_port``,
    path ``/ws``; plain MQTT 3.1.1 on ``mqtt_port``).
    """
    with RabbitMQ(port, host, web_mqtt=web_mqtt, tls=tls) as broker:
        broker.start()
        yield broker
