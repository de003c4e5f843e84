"""Permissions from the token (``authorize = true``): the grant patterns, and per entrypoint type
a token with and without the grant (403 before the session, or a nack; nothing subscribed or
published on refusal)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
import pytest
import trio

from mediation.config import build_config
from mediation.envelope import SUBPROTOCOL
from mediation.errors import ConfigError, Forbidden
from mediation.permissions import Permissions, compile_grant

from .conformance.params import sse_on
from .conftest import EngineFactory, envelope, open_ws, url

SECRET = "s" * 32
WAIT = 10.0


def test_one_star_is_one_level_two_stars_the_rest() -> None:
    assert compile_grant("orders/*").fullmatch("orders/1")
    assert not compile_grant("orders/*").fullmatch("orders/1/2")
    assert not compile_grant("orders/*").fullmatch("orders/")
    assert not compile_grant("orders.*").fullmatch("orders.1.2")
    assert compile_grant("orders/**").fullmatch("orders/1/2")
    assert compile_grant("a.*.c").fullmatch("a.b.c")
    assert not compile_grant("a.b").fullmatch("aXb")  # "." stands for itself


def test_claims_of_another_shape_grant_nothing() -> None:
    for claims in ({}, {"mediation": "x"}, {"mediation": {"subscribe": "orders/*"}}):
        with pytest.raises(Forbidden):
            Permissions.from_claims(claims, "mediation").check("subscribe", "orders/1")
    granted = Permissions.from_claims({"m": {"subscribe": ["orders/*", 3]}}, "m")
    granted.check("subscribe", "orders/1")
    with pytest.raises(Forbidden):
        granted.check("publish", "orders/1")


def test_authorize_needs_bearer() -> None:
    with pytest.raises(ConfigError, match=r"entrypoints\[0\].authorize: needs auth"):
        build_config({"entrypoints": [{"name": "e", "type": "sse", "port": 0, "authorize": True}]})


def token(subject: str, **grants: list[str]) -> str:
    claims: dict[str, Any] = {"sub": subject, "exp": int(time.time()) + 300}
    if grants:
        claims["mediation"] = grants
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


AUTH = {"auth": "bearer", "jwt_secret": SECRET, "authorize": True, "path": "/orders/{order_id}"}
TOPICS = {"topic_in": "orders/{order_id}", "topic_out": "orders/{order_id}"}


async def test_each_entrypoint_type_with_and_without_the_grant(
    engine_with: EngineFactory,
) -> None:
    async with (
        engine_with(
            entrypoints={
                kind: {"type": kind, **AUTH}
                for kind in ("websocket", "sse", "http_post", "http_get")
            },
            routes=[
                {"source": "mem", "target": "websocket"},
                {"source": "mem", "target": "sse"},
                {"source": "mem", "target": "http_get"},
                {"source": "websocket", "target": "mem"},
                {"source": "http_post", "target": "mem"},
            ],
            endpoints={"mem": {"type": "memory", "config": TOPICS}},
        ) as engine,
        httpx.AsyncClient(timeout=WAIT) as client,
    ):
        memory: Any = engine.endpoints["mem"]
        reader = token("reader", subscribe=["orders/*"])
        writer = token("writer", publish=["orders/1"])
        nobody = token("nobody")
        sse_headers = {"Accept": "text/event-stream"}
        # Refused before any session: nothing is subscribed.
        for who in (writer, nobody):
            refused = await client.get(
                url(engine, "sse", "/orders/1"), headers={**sse_headers, **bearer(who)}
            )
            assert refused.status_code == 403
            subscribed = await client.post(
                url(engine, "http_get", "/orders/1/subscribe"), headers=bearer(who)
            )
            assert subscribed.status_code == 403
            upgrade = await client.get(
                url(engine, "websocket", "/orders/1"),
                headers={
                    **bearer(who),
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "13",
                },
            )
            assert upgrade.status_code == 403
        assert memory.subscriber_count("orders/1") == 0
        assert engine.sessions == []
        # POST: only with the publish grant, and only where it grants.
        for who, order, status in [
            (reader, "1", 403),
            (nobody, "1", 403),
            (writer, "2", 403),
        ]:
            posted = await client.post(
                url(engine, "http_post", f"/orders/{order}"), content=b"no", headers=bearer(who)
            )
            assert posted.status_code == status
        async with sse_on(client, engine, "/orders/1", **bearer(reader)) as sse:
            subscribed = await client.post(
                url(engine, "http_get", "/orders/1/subscribe"), headers=bearer(reader)
            )
            assert subscribed.status_code == 201
            ws_url = url(engine, "websocket", f"/orders/1?access_token={reader}", scheme="ws")
            async with open_ws(ws_url, subprotocols=[SUBPROTOCOL]) as ws:
                # The reader may subscribe but not publish: its upstream message is nacked.
                await ws.send_message(json.dumps({"id": "u-1", "payload": "not granted"}))
                reply = await envelope(ws)
                assert reply["nack"] == "u-1" and "does not grant publish" in reply["error"]
                posted = await client.post(
                    url(engine, "http_post", "/orders/1"),
                    content=b"granted",
                    headers=bearer(writer),
                )
                assert posted.status_code == 202
                # What was refused never reached the topic: the first event is the granted one.
                assert (await envelope(ws))["payload"] == "granted"
                with trio.fail_after(WAIT):
                    assert (await anext(sse)).data == "granted"
            await client.delete(
                url(engine, "http_get", "/orders/1/unsubscribe"), headers=bearer(reader)
            )
