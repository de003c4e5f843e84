"""Several subscriptions per session: the pure resolution of repeated query parameters, and the
refusals (``max_subscriptions`` 400 / nack, a parameter that is not one, a stream the token does
not grant). Per broker, the scenario is in tests/conformance/params.py."""

from __future__ import annotations

import json

import httpx
import pytest

from mediation.envelope import SUBPROTOCOL, SubscriptionChange, decode_client_message, encode_event
from mediation.errors import BadRequest
from mediation.params import EntrypointParams

from .conftest import EngineFactory, envelope, open_ws, url
from .test_permissions import SECRET, token

SPEC = EntrypointParams.from_config("/prices", {"symbol": "[A-Z]{1,8}", "venue": "[a-z]{1,8}"})


def test_a_repeated_query_parameter_makes_one_value_set_per_value() -> None:
    query = {"symbol": ["A", "B", "A"], "venue": ["x"]}
    assert SPEC.resolve_subscriptions("/prices", query, 16) == [
        {"symbol": "A", "venue": "x"},
        {"symbol": "B", "venue": "x"},
    ]
    both = SPEC.resolve_subscriptions("/prices", {"symbol": ["A", "B"], "venue": ["x", "y"]}, 4)
    assert both is not None and len(both) == 4
    with pytest.raises(BadRequest, match="max_subscriptions"):
        SPEC.resolve_subscriptions("/prices", {"symbol": ["A", "B"], "venue": ["x", "y"]}, 3)
    with pytest.raises(BadRequest):
        SPEC.resolve_subscriptions("/prices", {"symbol": ["A", "b"], "venue": ["x"]}, 16)
    with pytest.raises(BadRequest, match="more than once"):
        SPEC.resolve("/prices", {"symbol": ["A", "B"], "venue": ["x"]})  # (a POST: one publish)


def test_override_takes_declared_parameters_only() -> None:
    base = {"symbol": "A", "venue": "x", "claims.tenant": "t"}
    assert SPEC.override(base, {"symbol": "C"}) == {**base, "symbol": "C"}
    for bad in ({}, [], {"claims.tenant": "u"}, {"symbol": 1}, {"symbol": "c"}, {"x": "A"}):
        with pytest.raises(BadRequest):
            SPEC.override(base, bad)


def test_the_envelope_reads_subscribe_and_names_subscriptions() -> None:
    assert decode_client_message('{"subscribe": {"symbol": "C"}}') == SubscriptionChange(
        True, {"symbol": "C"}
    )
    assert decode_client_message('{"unsubscribe": 3}') == SubscriptionChange(False, 3)
    assert json.loads(encode_event("1", b"p", {}, "prices.C"))["subscription"] == "prices.C"
    assert "subscription" not in json.loads(encode_event("1", b"p", {}))


ENTRY = {"path": "/prices", "params": {"symbol": "[A-Z]{1,8}"}, "max_subscriptions": 2}
TOPICS = {"topic_in": "prices.{symbol}", "topic_out": "prices.{symbol}"}


async def test_refusals_before_the_session_and_nacks_after(engine_with: EngineFactory) -> None:
    async with (
        engine_with(
            entrypoints={
                "ws": {"type": "websocket", **ENTRY},
                "sse": {"type": "sse", **ENTRY},
            },
            routes=[{"source": "mem", "target": "ws"}, {"source": "mem", "target": "sse"}],
            endpoints={"mem": {"type": "memory", "config": TOPICS}},
        ) as engine,
        httpx.AsyncClient() as client,
    ):
        over = await client.get(
            url(engine, "sse", "/prices?symbol=A&symbol=B&symbol=C"),
            headers={"Accept": "text/event-stream"},
        )
        assert over.status_code == 400 and "max_subscriptions" in over.json()["error"]
        ws_url = url(engine, "ws", "/prices?symbol=A", "ws")
        async with open_ws(ws_url, subprotocols=[SUBPROTOCOL]) as ws:
            for change, reply in [
                ({"subscribe": {"symbol": "a"}}, {"nack": "subscribe"}),
                ({"subscribe": {"nope": "A"}}, {"nack": "subscribe"}),
                ({"subscribe": {"symbol": "A"}}, {"nack": "prices.A"}),  # already
                ({"subscribe": {"symbol": "B"}}, {"ack": "prices.B"}),
                ({"subscribe": {"symbol": "C"}}, {"nack": "prices.C"}),  # max_subscriptions
                ({"unsubscribe": {"symbol": "A"}}, {"ack": "prices.A"}),
                ({"unsubscribe": {"symbol": "A"}}, {"nack": "prices.A"}),
                ({"subscribe": {"symbol": "C"}}, {"ack": "prices.C"}),
            ]:
                await ws.send_message(json.dumps(change))
                answer = await envelope(ws)
                assert {k: v for k, v in answer.items() if k != "error"} == reply, (change, answer)
            (session,) = engine.sessions
            assert session.subscriptions == ("prices.B", "prices.C")


async def test_subscribe_needs_the_grant(engine_with: EngineFactory) -> None:
    auth = {"auth": "bearer", "jwt_secret": SECRET, "authorize": True}
    async with engine_with(
        entrypoints={"ws": {"type": "websocket", **ENTRY, **auth}},
        routes=[{"source": "mem", "target": "ws"}],
        endpoints={"mem": {"type": "memory", "config": TOPICS}},
    ) as engine:
        granted = token("c1", subscribe=["prices.A"])
        ws_url = url(engine, "ws", f"/prices?symbol=A&access_token={granted}", "ws")
        async with open_ws(ws_url, subprotocols=[SUBPROTOCOL]) as ws:
            await ws.send_message(json.dumps({"subscribe": {"symbol": "B"}}))
            answer = await envelope(ws)
            assert answer["nack"] == "prices.B" and "does not grant" in answer["error"]
            (session,) = engine.sessions
            assert session.subscriptions == ("prices.A",)
            assert engine.endpoints["mem"].subscriber_count("prices.B") == 0  # type: ignore[attr-defined]
