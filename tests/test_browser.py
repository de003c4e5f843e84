"""A real browser end to end: Chromium (Debian's, driven by playwright-core) on pages served by
the test, talking to the engine with its own WebSocket and EventSource.

- 1000 sequence-numbered messages, page -> WebSocket -> engine -> Kafka (tansu) -> engine -> the
  same WebSocket and an EventSource: none lost, none duplicated, order kept, every upstream
  message confirmed by the broker (``at_least_once``, ``mediation.v1`` acks both ways), and the
  topic holds exactly the 1000.
- ``allowed_origins`` seen from a browser: the page's origin may open a WebSocket, another is
  refused before the upgrade.
- A cross-origin EventSource from an allowed origin (expected to fail until the engine answers
  with CORS headers; see the test).
- WSS and an ``EventSource`` over HTTPS (TLS on the entrypoints), Chromium trusting the test
  certificate by its public key (``--ignore-certificate-errors-spki-list``): no CA store to set up.
- Clients choose their streams (issue 14): two pages with two tokens (``authorize = true``) open
  an EventSource and a WebSocket each on the same parameterised entrypoints, and each sees only
  its own symbol; a symbol outside a token's grant is refused (403 before the session, a nack for
  a WebSocket ``{"subscribe"}``).

The page's EventSource goes through the page server's relay (:mod:`tests.browser.harness`), so
it is same-origin; its WebSocket goes straight to the engine, with the page's ``Origin``.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from mediation.endpoints import EndpointState
from tests.brokers import Tansu
from tests.browser.harness import (
    EVENTS_PATH,
    PageServer,
    Reports,
    ensure_node_modules,
    run_reporter,
    serve_pages,
)

from .conftest import EngineFactory, url
from .test_conformance_kafka import FAST_GROUPS, new_topic
from .test_permissions import SECRET, token

WAIT = 60.0  # generous: the machine is shared and loaded
MESSAGES = 1000


@pytest.fixture(scope="session")
def node_modules() -> None:
    ensure_node_modules()


def page_url(server: PageServer, page: str, **query: str) -> str:
    return str(httpx.URL(f"{server.origin}/{page}", params=query))


def reports_of(reports: Reports, page: int, kind: str) -> list[dict[str, Any]]:
    return [r for r in reports.seen if r.get("page") == page and r["kind"] == kind]


async def browse(nursery: trio.Nursery, *urls: str, switches: tuple[str, ...] = ()) -> Reports:
    """Chromium on every page at once, until each reported ``done``; ``switches`` are passed
    to Chromium."""
    reports = await run_reporter(nursery, "chromium", "chromium.mjs", *switches, *urls)
    with trio.fail_after(WAIT):
        await reports.wait_for("done", len(urls))
        await reports.exited()
    return reports


def read_topic(tansu: Tansu, topic: str, count: int) -> list[bytes]:
    """Everything in the (one-partition) topic, once ``count`` records are there or the wait is
    over (blocking: call in a thread)."""
    consumer = Consumer(tansu.consumer_config(f"reader-{uuid.uuid4().hex}"))
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        values: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                values.append(message.value() or b"")
        # Anything beyond ``count`` would be a duplicate: give it a moment to show up.
        while (message := consumer.poll(0.5)) is not None:
            if message.error() is None:
                values.append(message.value() or b"")
        return values
    finally:
        consumer.close()


async def test_a_thousand_messages_round_trip_through_kafka_in_order(
    engine_with: EngineFactory,
    tansu: Tansu,
    node_modules: None,
    report_figures: Callable[..., None],
) -> None:
    tansu.ensure_running()
    topic = await trio.to_thread.run_sync(
        new_topic, AdminClient({"bootstrap.servers": tansu.bootstrap_servers}), "browser"
    )
    kafka = {
        "type": "kafka",
        "config": {
            "brokers": tansu.bootstrap_servers,
            "topic_in": topic,
            "topic_out": topic,
            **FAST_GROUPS,
        },
    }
    server = PageServer(cuts={})
    client = uuid.uuid4().hex[:8]  # new consumer groups on a broker the whole run shares
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_pages, server)
        allowed = [server.origin]
        async with engine_with(
            entrypoints={
                "ws": {"type": "websocket", "allowed_origins": allowed},
                "sse": {"type": "sse", "path": EVENTS_PATH, "allowed_origins": allowed},
            },
            endpoints={"k": kafka},
            routes=[
                {"source": "ws", "target": "k", "delivery_guarantee": "at_least_once"},
                {"source": "k", "target": "ws", "delivery_guarantee": "at_least_once"},
                {"source": "k", "target": "sse", "delivery_guarantee": "at_least_once"},
            ],
        ) as engine:
            with trio.fail_after(WAIT):
                await engine.endpoints["k"].state.wait_value(EndpointState.UP)
            server.sse_port = engine.ports["sse"]
            page = page_url(
                server,
                "roundtrip.html",
                ws=url(engine, "ws", f"/?client_id=ws-{client}", scheme="ws"),
                src=str(httpx.URL(EVENTS_PATH, params={"client_id": f"sse-{client}"})),
                n=str(MESSAGES),
            )
            reports = await browse(nursery, page)
            stored = await trio.to_thread.run_sync(read_topic, tansu, topic, MESSAGES)
            nursery.cancel_scope.cancel()

    [done] = reports_of(reports, 0, "done")
    sent = [f"seq {n}" for n in range(MESSAGES)]
    assert done["problems"] == []
    assert done["nacked"] == []
    assert done["acked"] == [f"m-{n}" for n in range(MESSAGES)]  # each confirmed, in order
    assert done["ws"] == sent
    assert done["sse"] == sent
    assert [value.decode() for value in stored] == sent
    report_figures(
        sent=MESSAGES,
        upstream_acked=len(done["acked"]),
        ws_received=len(done["ws"]),
        sse_received=len(done["sse"]),
        in_broker=len(stored),
        lost=MESSAGES - len(set(done["ws"]) & set(done["sse"])),
        duplicated=len(done["ws"])
        - len(set(done["ws"]))
        + len(done["sse"])
        - len(set(done["sse"])),
        round_trip_s=done["ms"] / 1000,
    )


async def test_allowed_origins_seen_from_the_browser(
    engine_with: EngineFactory, node_modules: None
) -> None:
    """The page's own origin may open a WebSocket; a page from another origin is refused (403
    before the upgrade, which a browser shows as close 1006)."""
    allowed, other = PageServer(cuts={}), PageServer(cuts={})
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_pages, allowed)
        await nursery.start(serve_pages, other)
        async with engine_with(
            entrypoints={"ws": {"type": "websocket", "allowed_origins": [allowed.origin]}},
            routes=[{"source": "mem", "target": "ws"}],
        ) as engine:
            ws = url(engine, "ws", scheme="ws")
            reports = await browse(
                nursery,
                page_url(allowed, "origin.html", ws=ws),
                page_url(other, "origin.html", ws=ws),
            )
            nursery.cancel_scope.cancel()
    [opened] = reports_of(reports, 0, "done")
    [refused] = reports_of(reports, 1, "done")
    assert opened["outcome"] == "open"
    assert (refused["outcome"], refused["detail"]) == ("refused", "close 1006")


async def test_a_cross_origin_event_source_from_an_allowed_origin(
    engine_with: EngineFactory, node_modules: None
) -> None:
    """A page whose origin is in ``allowed_origins`` opens an EventSource straight to the engine.

    The engine checks ``Origin`` (403 for others) and answers an allowed one with
    ``Access-Control-Allow-Origin: <origin>``, without which the browser's CORS check would fail
    the stream.
    """
    server = PageServer(cuts={})
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_pages, server)
        async with engine_with(
            entrypoints={"sse": {"type": "sse", "allowed_origins": [server.origin]}},
            routes=[{"source": "mem", "target": "sse"}],
        ) as engine:
            reports = await browse(
                nursery, page_url(server, "origin.html", src=url(engine, "sse", "/?client_id=c"))
            )
            nursery.cancel_scope.cancel()
    [done] = reports_of(reports, 0, "done")
    assert done["outcome"] == "open", done


def spki_sha256(pem: bytes) -> str:
    """The base64 SHA-256 of a certificate's public key, as Chromium's
    ``--ignore-certificate-errors-spki-list`` takes it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = x509.load_pem_x509_certificate(pem).public_key()
    digest = hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    return base64.b64encode(digest.digest()).decode()


async def test_wss_and_event_source_over_https(
    engine_with: EngineFactory, node_modules: None, tmp_path: Path
) -> None:
    """A page (plain HTTP, another origin) opens a WebSocket to ``wss://`` and an EventSource
    to ``https://`` on the engine, with a certificate from a test CA Chromium trusts by the
    certificate's public key, and round-trips messages: every one sent comes back on both."""
    import trustme

    cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls = {"tls_cert_file": str(cert_file), "tls_key_file": str(key_file)}
    server = PageServer(cuts={})
    count = 50
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_pages, server)
        allowed = [server.origin]
        async with engine_with(
            entrypoints={
                "ws": {"type": "websocket", "allowed_origins": allowed, **tls},
                "sse": {"type": "sse", "allowed_origins": allowed, **tls},
            },
            routes=[
                {"source": "ws", "target": "mem"},
                {"source": "mem", "target": "ws"},
                {"source": "mem", "target": "sse"},
            ],
        ) as engine:
            page = page_url(
                server,
                "roundtrip.html",
                ws=url(engine, "ws", "/?client_id=tls-ws", scheme="wss"),
                src=url(engine, "sse", "/?client_id=tls-sse", scheme="https"),
                n=str(count),
            )
            spki = spki_sha256(cert.cert_chain_pems[0].bytes())
            reports = await browse(
                nursery, page, switches=(f"--ignore-certificate-errors-spki-list={spki}",)
            )
            nursery.cancel_scope.cancel()
    [done] = reports_of(reports, 0, "done")
    sent = [f"seq {n}" for n in range(count)]
    assert done["problems"] == []
    assert done["acked"] == [f"m-{n}" for n in range(count)]
    assert done["ws"] == sent
    assert done["sse"] == sent


async def test_two_pages_with_two_tokens_each_see_only_their_own_streams(
    engine_with: EngineFactory, node_modules: None
) -> None:
    """alice's token grants ``prices.A``, bob's ``prices.B``; each page opens an EventSource and a
    WebSocket on ``/prices?symbol=<its own>`` straight to the engine, and tries the other's
    symbol: an EventSource and a WebSocket (403 before the session or upgrade, which a page sees
    only as a failed EventSource and a close 1006: a browser shows no status to either) and a
    ``{"subscribe"}`` on its open WebSocket (a nack). Then events for A and B are published
    interleaved: each page gets exactly its own, in order, on both streams."""
    server = PageServer(cuts={})
    params = {"path": "/prices", "params": {"symbol": "[A-Z]{1,8}"}}
    guarded = {
        **params,
        "auth": "bearer",
        "jwt_secret": SECRET,
        "authorize": True,
        "allowed_origins": [],  # set below, once the page server has its port
    }
    events = 20
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_pages, server)
        guarded["allowed_origins"] = [server.origin]
        async with (
            engine_with(
                entrypoints={
                    "ws": {"type": "websocket", **guarded},
                    "sse": {"type": "sse", **guarded},
                    "hook": {"type": "http_post", **params, "path": "/prices/{symbol}"},
                },
                endpoints={
                    "mem": {
                        "type": "memory",
                        "config": {"topic_in": "prices.{symbol}", "topic_out": "prices.{symbol}"},
                    }
                },
                routes=[
                    {"source": "hook", "target": "mem"},
                    {"source": "mem", "target": "ws", "delivery_guarantee": "at_least_once"},
                    {"source": "mem", "target": "sse"},
                ],
            ) as engine,
            httpx.AsyncClient() as client,
        ):
            pages = []
            for name, own, other in [("alice", "A", "B"), ("bob", "B", "A")]:
                access = token(name, subscribe=[f"prices.{own}"])

                def stream(entrypoint: str, symbol: str, scheme: str, access: str = access) -> str:
                    path = f"/prices?symbol={symbol}&access_token={access}"
                    return url(engine, entrypoint, path, scheme)

                pages.append(
                    page_url(
                        server,
                        "streams.html",
                        sse=stream("sse", own, "http"),
                        ws=stream("ws", own, "ws"),
                        refused_sse=stream("sse", other, "http"),
                        refused_ws=stream("ws", other, "ws"),
                        other=other,
                        end=f"{own}-end",
                    )
                )
            reports = await run_reporter(nursery, "chromium", "chromium.mjs", *pages)
            with trio.fail_after(WAIT):
                await reports.wait_for("ready", 2)
                for n in range(events):
                    for symbol in "AB":
                        posted = await client.post(
                            url(engine, "hook", f"/prices/{symbol}"), content=f"{symbol}-{n}"
                        )
                        assert posted.status_code == 202, posted.text
                for symbol in "AB":
                    posted = await client.post(
                        url(engine, "hook", f"/prices/{symbol}"), content=f"{symbol}-end"
                    )
                    assert posted.status_code == 202, posted.text
                await reports.wait_for("done", 2)
                await reports.exited()
            nursery.cancel_scope.cancel()

    for page, own, other in [(0, "A", "B"), (1, "B", "A")]:
        [done] = reports_of(reports, page, "done")
        expected = [f"{own}-{n}" for n in range(events)] + [f"{own}-end"]
        assert done["sse"] == expected, done
        assert done["ws"] == expected, done
        assert set(done["subscriptions"]) == {f"prices.{own}"}
        assert done["answer"]["nack"] == f"prices.{other}", done["answer"]
        assert sorted(r["via"] for r in done["refused"]) == ["sse", "ws"], done["refused"]
        assert {r["detail"] for r in done["refused"]} == {"EventSource failed", "close 1006"}
