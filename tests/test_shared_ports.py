"""Many entrypoints on one port (issue 14): the rules of :mod:`mediation.listeners` (pure), the
config errors they give, and one engine serving every kind of entrypoint on one port.

A shared port cannot be port 0 (port 0 is a listener of its own): the engine tests take a port
the OS just gave out and released (:func:`free_port`), the only way to name one port twice.
"""

from __future__ import annotations

import socket
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import trio
from httpx_sse import aconnect_sse

from mediation import ConfigError
from mediation.config import build_config
from mediation.listeners import Router, claimed_paths, overlap, plan_listeners
from mediation.params import PathTemplate

from .conftest import CLIENT_WAIT, EngineFactory, open_ws, url

# -- the rules, pure ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "overlapping"),
    [
        ("/", "/", True),
        ("/a", "/b", False),
        ("/a", "/a/", False),
        ("/orders/{id}", "/orders/latest", True),  # no literal-beats-parameter precedence
        ("/orders/{id}", "/orders/{other}", True),
        ("/orders/{id}", "/orders/{id}/items", False),
        ("/{a}/x", "/y/{b}", True),
        ("/{a}/x", "/y/z", False),
        ("/orders/{id}", "/prices/{id}", False),
    ],
)
def test_two_templates_overlap_when_one_path_could_match_both(
    a: str, b: str, overlapping: bool
) -> None:
    assert overlap(PathTemplate.parse(a), PathTemplate.parse(b)) is overlapping
    assert overlap(PathTemplate.parse(b), PathTemplate.parse(a)) is overlapping


def entrypoints(*tables: dict[str, Any], health_port: int = 0) -> Any:
    """The validated entrypoints of a config with these entrypoint tables (name e0, e1...)."""
    return build_config(
        {
            "engine": {"health_port": health_port},
            "entrypoints": [{"name": f"e{i}", **table} for i, table in enumerate(tables)],
        }
    ).entrypoints


def test_polling_claims_its_four_routes() -> None:
    [root, nested] = entrypoints(
        {"type": "http_get", "port": 1, "path": "/"},
        {"type": "http_get", "port": 2, "path": "/o/{id}"},
    )
    assert [p.text for p in claimed_paths(root)] == ["/subscribe", "/poll", "/ack", "/unsubscribe"]
    assert claimed_paths(nested)[0].text == "/o/{id}/subscribe"


def test_listeners_group_by_port_and_port_0_stands_alone() -> None:
    listeners = plan_listeners(
        entrypoints(
            {"type": "sse", "port": 8000, "path": "/a"},
            {"type": "sse", "port": 0, "path": "/a"},
            {"type": "http_post", "port": 8000, "path": "/b"},
            {"type": "sse", "port": 0, "path": "/a"},
            {"type": "websocket", "port": 8001},
        )
    )
    assert [(li.port, [e.name for e in li.entrypoints]) for li in listeners] == [
        (8000, ["e0", "e2"]),
        (0, ["e1"]),
        (0, ["e3"]),
        (8001, ["e4"]),
    ]
    assert listeners[0].label == "e0+e2"


def test_the_router_picks_by_upgrade_then_by_path_shape() -> None:
    router = Router(
        entrypoints(
            {"type": "websocket", "port": 8000, "path": "/live"},
            {"type": "sse", "port": 8000, "path": "/live"},
            {"type": "sse", "port": 8000, "path": "/orders/{id}"},
            {"type": "http_post", "port": 8000, "path": "/orders/{id}/items"},
            {"type": "http_get", "port": 8000, "path": "/"},
        )
    )

    def pick(path: str, websocket: bool = False) -> str | None:
        return router.pick(websocket=websocket, raw_path=path)

    assert pick("/live", websocket=True) == "e0"
    assert pick("/anything", websocket=True) == "e0"  # the only WebSocket one: it answers 404
    assert router.sole(websocket=True) == "e0"  # (served its handshakes with no dispatch)
    assert router.sole(websocket=False) is None
    assert pick("/live") == "e1"
    assert pick("/orders/42") == "e2"
    assert pick("/orders/4%32") == "e2"
    assert pick("/orders/") == "e2"  # its parameter is missing: e2 answers 400
    assert pick("/orders/42/items") == "e3"
    assert pick("/orders/42/items/7") is None  # both begin so: nobody's (404)
    assert pick("/subscribe") == "e4"
    assert pick("/poll") == "e4"
    assert pick("/") is None
    assert pick("/nope") is None


@pytest.mark.parametrize(
    ("tables", "problem"),
    [
        (
            [{"type": "sse", "path": "/a"}, {"type": "http_post", "path": "/a"}],
            r"entrypoints\[1\]\.path: /a overlaps /a of entrypoint \"e0\" on port 8000",
        ),
        (
            [{"type": "websocket", "path": "/a"}, {"type": "websocket", "path": "/a"}],
            r"entrypoints\[1\]\.path: /a overlaps /a of entrypoint \"e0\"",
        ),
        (
            [{"type": "sse", "path": "/orders/{id}"}, {"type": "sse", "path": "/orders/latest"}],
            r"entrypoints\[1\]\.path: /orders/latest overlaps /orders/{id}",
        ),
        (
            [{"type": "http_get", "path": "/"}, {"type": "http_post", "path": "/{kind}"}],
            r"entrypoints\[1\]\.path: /{kind} overlaps /subscribe of entrypoint \"e0\"",
        ),
        (
            [{"type": "sse", "path": "/a"}, {"type": "sse", "path": "/b", "max_header_bytes": 512}],
            r"entrypoints\[1\]\.max_header_bytes: differs from entrypoint \"e0\" on port 8000",
        ),
        (
            [{"type": "sse", "path": "/a"}, {"type": "sse", "path": "/b", "header_timeout": 1}],
            r"entrypoints\[1\]\.header_timeout: differs",
        ),
        (
            [{"type": "sse", "path": "/a"}, {"type": "sse", "path": "/b", "body_timeout": 1}],
            r"entrypoints\[1\]\.body_timeout: differs",
        ),
    ],
    ids=[
        "same-path",
        "two-websockets",
        "literal-vs-parameter",
        "polling-route",
        "head-limit",
        "header-timeout",
        "body-timeout",
    ],
)
def test_entrypoints_that_cannot_share_a_port_are_a_config_error(
    tables: list[dict[str, Any]], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        entrypoints(*({"port": 8000, **table} for table in tables))


def test_tls_files_must_agree_on_a_shared_port(tmp_path: Any) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    tls = {"tls_cert_file": str(cert_file), "tls_key_file": str(key_file)}
    entrypoints({"type": "sse", "port": 8000, "path": "/a", **tls},
                {"type": "sse", "port": 8000, "path": "/b", **tls})  # fmt: skip
    with pytest.raises(ConfigError, match=r"entrypoints\[1\]\.tls_cert_file: differs"):
        entrypoints({"type": "sse", "port": 8000, "path": "/a", **tls},
                    {"type": "sse", "port": 8000, "path": "/b"})  # fmt: skip


def test_what_may_share_a_port() -> None:
    entrypoints(
        {"type": "websocket", "port": 8000, "path": "/live"},
        {"type": "sse", "port": 8000, "path": "/live"},  # told apart by the upgrade
        {"type": "http_get", "port": 8000, "path": "/"},  # /subscribe, /poll, ...
        {"type": "http_post", "port": 8000, "path": "/orders/{id}/items"},
        {"type": "sse", "port": 8000, "path": "/orders/{id}"},
        {"type": "sse", "port": 0},  # port 0: listeners of their own
        {"type": "sse", "port": 0},
    )


def test_the_health_port_is_no_entrypoint_port() -> None:
    with pytest.raises(ConfigError, match=r"entrypoints\[0\]\.port: 9100 is also \[engine\]"):
        entrypoints({"type": "sse", "port": 9100}, health_port=9100)
    entrypoints({"type": "sse", "port": 0}, health_port=0)


# -- one engine, one port ----------------------------------------------------------------------


def free_port() -> int:
    """A port the OS just gave out (and that nothing listens on any more)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def shared(port: int) -> dict[str, Any]:
    return {
        "ws": {"type": "websocket", "port": port, "path": "/live"},
        "sse": {"type": "sse", "port": port, "path": "/live"},
        "post": {"type": "http_post", "port": port, "path": "/in"},
        "poll": {"type": "http_get", "port": port, "path": "/polling"},
        "orders": {
            "type": "sse",
            "port": port,
            "path": "/orders/{order_id}",
            "params": {"order_id": "[0-9]{1,6}"},
        },
        "items": {"type": "http_post", "port": port, "path": "/orders/{order_id}/items"},
    }


ROUTES = [
    {"source": "ws", "target": "mem"},
    {"source": "post", "target": "mem"},
    {"source": "items", "target": "mem"},
    {"source": "mem", "target": "ws"},
    {"source": "mem", "target": "sse"},
    {"source": "mem", "target": "poll"},
    {"source": "mem", "target": "orders"},
]


async def test_every_entrypoint_on_one_port_gets_its_own_traffic(
    engine_with: EngineFactory,
) -> None:
    port = free_port()
    async with engine_with(entrypoints=shared(port), routes=ROUTES) as engine:
        assert {n: p for n, p in engine.ports.items() if n != "health"} == dict.fromkeys(
            shared(port), port
        )
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get(url(engine, "health", "/readyz"))).status_code == 200
            subscribed = await http.post("/polling/subscribe", headers={"x-client-id": "p1"})
            assert subscribed.status_code == 201
            async with (
                open_ws(f"ws://127.0.0.1:{port}/live?client_id=w1") as ws,
                aconnect_sse(http, "GET", "/live") as live,
                aconnect_sse(http, "GET", "/orders/42") as orders,
                aclosing(live.aiter_sse()) as live_events,
                aclosing(orders.aiter_sse()) as order_events,
            ):
                events = {"sse": live_events, "orders": order_events}
                with trio.fail_after(CLIENT_WAIT):
                    for stream in events.values():
                        assert (await anext(stream)).event == "session"
                    assert [s.entrypoint for s in engine.sessions].count("sse") == 1
                    assert {s.entrypoint for s in engine.sessions} == {
                        "ws",
                        "sse",
                        "orders",
                        "poll",
                    }
                    answer = await http.post("/in", content=b"hello")
                    assert answer.status_code == 202
                    assert await ws.get_message() == "hello"
                    for stream in events.values():
                        assert (await anext(stream)).data == "hello"
                    polled = await http.get("/polling/poll", headers={"x-client-id": "p1"})
                    assert (polled.status_code, polled.content) == (200, b"hello")
                    answer = await http.post("/orders/7/items", content=b"item")
                    assert answer.status_code == 202
                    assert await ws.get_message() == "item"
            await http.delete("/polling/unsubscribe", headers={"x-client-id": "p1"})


async def test_a_path_no_entrypoint_on_the_port_serves_is_404(
    engine_with: EngineFactory,
) -> None:
    port = free_port()
    async with engine_with(entrypoints=shared(port), routes=ROUTES) as engine:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for method, path in [
                ("GET", "/"),
                ("GET", "/nope"),
                ("POST", "/nope"),
                ("GET", "/orders/42/items/1"),
                ("GET", "/polling/nope"),
                ("POST", "/in/more"),
            ]:
                response = await http.request(method, path)
                assert response.status_code == 404, (method, path, response.text)
            # Each entrypoint answers its own refusals: a bad parameter (400), a method (405).
            assert (await http.get("/orders/abc")).status_code == 400
            assert (await http.get("/in")).status_code == 405
            assert (await http.get("/polling/subscribe")).status_code == 405
        # A WebSocket handshake goes to the WebSocket entrypoint, which has only /live.
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(
                b"GET /in HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            with trio.fail_after(CLIENT_WAIT):
                assert (await stream.receive_some(1024)).startswith(b"HTTP/1.1 404 ")
        assert engine.sessions == []


async def test_a_websocket_only_port_still_answers_426_and_an_http_only_one_400(
    engine_with: EngineFactory,
) -> None:
    port = free_port()
    tables = {
        "ws": {"type": "websocket", "port": port, "path": "/a"},
        "ws2": {"type": "websocket", "port": port, "path": "/b"},
        "sse": {"type": "sse", "port": 0, "path": "/a"},
        "post": {"type": "http_post", "port": 0, "path": "/b"},
    }
    routes = [{"source": "mem", "target": "ws"}, {"source": "mem", "target": "ws2"}]
    async with engine_with(entrypoints=tables, routes=routes) as engine:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{port}/a")
            assert (response.status_code, response.headers["upgrade"]) == (426, "websocket")
            async with open_ws(f"ws://127.0.0.1:{port}/b"):
                pass
        assert engine.ports["sse"] != engine.ports["post"]


async def test_errors_are_counted_on_the_entrypoint_whose_request_it_was(
    engine_with: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mediation import identity

    real_admit = identity.admit_client

    def admit(headers: Any, *args: Any, **kwargs: Any) -> identity.Client:
        if headers.get("x-fault") == "raise":
            raise RuntimeError("injected fault")
        return real_admit(headers, *args, **kwargs)

    monkeypatch.setattr("mediation.entrypoints.http_post.admit_client", admit)
    port = free_port()
    async with engine_with(entrypoints=shared(port), routes=ROUTES) as engine:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answer = await http.post("/orders/1/items", content=b"x", headers={"x-fault": "raise"})
            assert answer.status_code == 500
            assert (await http.post("/in", content=b"x")).status_code == 202
        errors = engine._context.telemetry.connection_errors
        assert errors.labels("items")._value.get() == 1
        assert errors.labels("post")._value.get() == 0
