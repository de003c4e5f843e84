"""The deploy recipes of examples/deploy/: the Kubernetes manifests against the API schemas
(kubernetes-validate, offline), and the HAProxy configuration run in front of three engines on
loopback, each entrypoint type driven through it."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import trio
import yaml
from httpx_sse import aconnect_sse

from mediation.config import load_config, parse_config
from mediation.engine import MediationEngine, open_mediation_engine

from .conftest import CLIENT_WAIT, make_config, open_ws
from .fleet.haproxy import DEPLOY, FLEET_CONFIG, SHIPPED, haproxy_binary, running_haproxy

KUBERNETES = DEPLOY / "kubernetes.yaml"
SECRET_ENV = {"MEDIATION_CURSOR_SECRET": "a fleet secret of 32 bytes or more"}
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still maintained upstream when this was written


def manifests() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [d for d in manifests() if d["kind"] == kind]
    return found


# -- Kubernetes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_kubernetes_manifest_is_valid(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validation_is_not_a_no_op() -> None:
    deployment = by_kind("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_configmap_is_the_fleet_config_and_valid() -> None:
    text = by_kind("ConfigMap")["data"]["mediation.toml"]
    assert text == FLEET_CONFIG.read_text()
    parse_config(text, filename="configmap", env=SECRET_ENV)


def test_probes_prestop_and_grace_fit_shutdown_timeout() -> None:
    config = load_config(FLEET_CONFIG, env=SECRET_ENV)
    assert config.engine.cursor_secret == SECRET_ENV["MEDIATION_CURSOR_SECRET"]
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    health = [p for p in container["ports"] if p["name"] == "health"]
    assert health[0]["containerPort"] == config.engine.health_port
    # The preStop sleep, then SIGTERM and at most shutdown_timeout, all inside the grace period.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert int(command[1]) + config.engine.shutdown_timeout < pod["terminationGracePeriodSeconds"]
    volume = pod["volumes"][0]["configMap"]["name"]
    assert volume == by_kind("ConfigMap")["metadata"]["name"]
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert (
        by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )
    assert by_kind("Service")["spec"]["selector"].items() <= labels.items()
    ports = {p["containerPort"] for p in container["ports"]}
    assert {e.port for e in config.entrypoints} <= ports
    (secret,) = [e for e in container["env"] if e["name"] == "MEDIATION_CURSOR_SECRET"]
    assert secret["valueFrom"]["secretKeyRef"]["key"] == "cursor-secret"


# -- HAProxy ------------------------------------------------------------------------------------


def test_shipped_haproxy_config_is_valid() -> None:
    check = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(SHIPPED)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def engine_config() -> Any:
    """The fleet config's entrypoints (names and types) on a memory endpoint, ports 0."""
    document = tomllib.loads(FLEET_CONFIG.read_text())
    names = {t["name"]: t["type"] for t in document["entrypoints"]}
    return make_config(
        entrypoints={
            name: ({"type": kind, "poll_timeout": 0.3} if kind == "http_get" else kind)
            for name, kind in names.items()
        },
        routes=[
            {"source": "post", "target": "mem"},
            {"source": "mem", "target": "ws"},
            {"source": "mem", "target": "sse"},
            {"source": "mem", "target": "polling"},
        ],
    )


def engine_ports(engine: MediationEngine) -> dict[str, int]:
    return dict(engine.ports)


def sessions_per_engine(engines: list[MediationEngine], entrypoint: str) -> list[int]:
    return [sum(1 for s in e.sessions if s.entrypoint == entrypoint) for e in engines]


async def test_haproxy_balances_every_entrypoint_across_three_engines(tmp_path: Path) -> None:
    """Three engines, each with its own memory broker, behind the shipped HAProxy config:
    WebSocket and SSE spread one per engine (leastconn), three POSTs one per engine (round
    robin), and every polling client's subscribe, polls and ack reach the engine holding its
    session (hashed on X-Client-ID; with round robin most would be 404)."""
    async with (
        open_mediation_engine(engine_config()) as e1,
        open_mediation_engine(engine_config()) as e2,
        open_mediation_engine(engine_config()) as e3,
    ):
        engines = [e1, e2, e3]
        async with running_haproxy([engine_ports(e) for e in engines], tmp_path) as proxy:
            base = {name: f"http://127.0.0.1:{port}" for name, port in proxy.ports.items()}
            async with httpx.AsyncClient(timeout=CLIENT_WAIT) as client, trio.open_nursery() as n:
                with trio.fail_after(CLIENT_WAIT):
                    while True:  # HAProxy is up once it answers
                        try:
                            await client.post(base["post"], content=b"warm-up")
                            break
                        except httpx.TransportError:
                            await trio.sleep(0.05)
                # Polling: 9 clients, each bound to one engine by the hash of its id.
                polling = [f"poller-{i}" for i in range(9)]
                for client_id in polling:
                    answer = await client.post(
                        f"{base['polling']}/subscribe", headers={"x-client-id": client_id}
                    )
                    assert answer.status_code == 201, answer.text
                spread = sessions_per_engine(engines, "polling")
                assert sum(spread) == 9 and sorted(spread)[-2] > 0, spread
                # SSE and WebSocket: one at a time, so leastconn sees each arrive.
                received = [trio.Event() for _ in range(6)]  # 3 SSE, 3 WebSocket clients
                sse_events: list[list[str]] = [[], [], []]
                sse_ready = [trio.Event() for _ in range(3)]
                for i in range(3):
                    n.start_soon(
                        read_sse, client, base["sse"], sse_events[i], sse_ready[i], received[i]
                    )
                    with trio.fail_after(CLIENT_WAIT):
                        await sse_ready[i].wait()
                assert sessions_per_engine(engines, "sse") == [1, 1, 1]
                ws_messages: list[list[str]] = [[], [], []]
                ws_ready = [trio.Event() for _ in range(3)]
                for i in range(3):
                    n.start_soon(
                        read_ws, proxy.ports["ws"], ws_messages[i], ws_ready[i], received[3 + i]
                    )
                    with trio.fail_after(CLIENT_WAIT):
                        await ws_ready[i].wait()  # after the 101: the session exists
                assert sessions_per_engine(engines, "ws") == [1, 1, 1]
                # Three POSTs: one per engine; each engine's clients get the one published there.
                for i in range(3):
                    answer = await client.post(base["post"], content=f"event-{i}".encode())
                    assert answer.status_code == 202
                with trio.fail_after(CLIENT_WAIT):
                    for got in received:
                        await got.wait()
                expected = {"event-0", "event-1", "event-2"}
                assert {m[0] for m in ws_messages} == expected
                assert {m[0] for m in sse_events} == expected
                for client_id in polling:
                    headers = {"x-client-id": client_id}
                    poll = await client.get(f"{base['polling']}/poll", headers=headers)
                    assert poll.status_code == 200, (client_id, poll.status_code)
                    assert poll.text in expected
                    ack = await client.post(
                        f"{base['polling']}/ack",
                        headers={**headers, "x-event-id": poll.headers["x-event-id"]},
                    )
                    assert ack.status_code == 204
                    empty = await client.get(f"{base['polling']}/poll", headers=headers)
                    assert empty.status_code == 204
                    bye = await client.delete(f"{base['polling']}/unsubscribe", headers=headers)
                    assert bye.status_code == 200
                n.cancel_scope.cancel()


async def read_sse(
    client: httpx.AsyncClient, url: str, into: list[str], ready: trio.Event, got: trio.Event
) -> None:
    async with aconnect_sse(client, "GET", url) as source:
        assert source.response.status_code == 200
        async for event in source.aiter_sse():
            if event.event == "session":
                ready.set()
            elif event.event == "message":
                into.append(event.data)
                got.set()


async def read_ws(port: int, into: list[str], ready: trio.Event, got: trio.Event) -> None:
    async with open_ws(f"ws://127.0.0.1:{port}/") as ws:
        ready.set()
        while True:
            message = await ws.get_message()
            into.append(message if isinstance(message, str) else message.decode())
            got.set()
