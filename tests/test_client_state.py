"""Per-client broker state: the client ledger (pure), max_clients (503) and its metric."""

from __future__ import annotations

import httpx
import pytest

from mediation.client_state import ClientLedger, Sweep, name_pattern
from mediation.config import MQTT5Config, RabbitMQConfig, build_config
from mediation.endpoints.mqtt5 import MQTT5Endpoint
from mediation.endpoints.rabbitmq import RabbitMQEndpoint
from mediation.errors import ConfigError, TooManyClients

from .conftest import EngineFactory, clients_gone, url

# -- the ledger (pure) ---------------------------------------------------------------------------


def test_a_client_counts_while_live_and_for_ttl_after_it_left() -> None:
    ledger = ClientLedger(ttl=60.0)
    ledger.enter("a", now=0.0)
    assert ledger.is_live("a") and ledger.count(now=1.0) == 1
    ledger.leave("a", now=5.0)
    assert not ledger.is_live("a") and ledger.left_at("a") == 5.0
    assert ledger.count(now=64.9) == 1
    assert ledger.count(now=65.0) == 0 and ledger.left_at("a") is None


def test_a_client_with_two_sessions_leaves_with_the_last() -> None:
    ledger = ClientLedger(ttl=10.0)
    ledger.enter("a", now=0.0)
    ledger.enter("a", now=1.0)
    ledger.leave("a", now=2.0)
    assert ledger.is_live("a") and ledger.left_at("a") is None
    ledger.leave("a", now=3.0)
    assert ledger.left_at("a") == 3.0


def test_ttl_zero_counts_live_clients_only() -> None:
    ledger = ClientLedger(ttl=0, max_clients=1)
    ledger.enter("a", now=0.0)
    with pytest.raises(TooManyClients):
        ledger.enter("b", now=0.0)
    ledger.leave("a", now=1.0)
    assert ledger.count(now=1.0) == 0
    ledger.enter("b", now=1.0)


def test_max_clients_refuses_only_new_clients_until_one_expires() -> None:
    ledger = ClientLedger(ttl=10.0, max_clients=2)
    for client in "ab":
        ledger.enter(client, now=0.0)
        ledger.leave(client, now=1.0)
    with pytest.raises(TooManyClients, match="max_clients"):
        ledger.enter("c", now=2.0)
    ledger.enter("a", now=2.0)  # a known client comes back: no new state
    ledger.leave("a", now=3.0)
    with pytest.raises(TooManyClients):
        ledger.enter("c", now=10.5)  # a is counted again from 3.0, b until 11.0
    ledger.enter("c", now=11.0)
    assert ledger.count(now=11.0) == 2


def test_many_clients_expire_in_the_order_they_left() -> None:
    ledger = ClientLedger(ttl=100.0)
    for n in range(1000):
        ledger.enter(f"c{n}", now=float(n))
        ledger.leave(f"c{n}", now=float(n))
    assert ledger.count(now=1000.0) == 99
    assert ledger.count(now=1100.0) == 0


def test_the_keys_are_on_the_endpoint_table_with_their_defaults() -> None:
    def endpoint(**keys: object) -> dict[str, object]:
        return {
            "entrypoints": [],
            "routes": [],
            "endpoints": [{"name": "mem", "type": "memory", **keys}],
        }

    default = build_config(endpoint()).endpoints[0]
    assert default.client_state_ttl == 86400 and default.max_clients is None
    set_ = build_config(endpoint(client_state_ttl=0, max_clients=5)).endpoints[0]
    assert set_.client_state_ttl == 0 and set_.max_clients == 5
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\.max_clients"):
        build_config(endpoint(max_clients=0))
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\.client_state_ttl"):
        build_config(endpoint(client_state_ttl=-1))


# -- max_clients at the engine ---------------------------------------------------------------------


async def test_max_clients_refuses_the_next_new_client_with_503_and_shows_in_metrics(
    engine_with: EngineFactory,
) -> None:
    endpoints = {"mem": {"type": "memory", "max_clients": 2, "client_state_ttl": 3600}}
    routes = [{"source": "mem", "target": "sse"}]
    async with (
        engine_with(entrypoints={"sse": "sse"}, routes=routes, endpoints=endpoints) as engine,
        httpx.AsyncClient() as http,
    ):
        for client in ("a", "b"):
            async with http.stream("GET", url(engine, "sse", f"/?client_id={client}")) as sse:
                assert sse.status_code == 200
        await clients_gone(engine)
        # Gone, but their state is kept for client_state_ttl: a third client is one too many.
        refused = await http.get(url(engine, "sse", "/?client_id=c"))
        assert refused.status_code == 503
        assert "max_clients" in refused.json()["error"]
        # A client already counted comes back.
        async with http.stream("GET", url(engine, "sse", "/?client_id=a")) as sse:
            assert sse.status_code == 200
        metrics = (await http.get(url(engine, "health", "/metrics"))).text
        assert 'mediation_clients{endpoint="mem"} 2.0' in metrics
        assert 'mediation_clients_limit{endpoint="mem"} 2.0' in metrics


# -- the sweep's choice (no I/O) ---------------------------------------------------------


def test_name_pattern_matches_only_the_engines_naming() -> None:
    pattern = name_pattern("mediation-{endpoint}-{client_id}", "k")
    assert pattern is not None
    match = pattern.fullmatch("mediation-k-alice-2")
    assert match is not None and match.group("client_id") == "alice-2"
    for other in ("mediation-k2-alice", "mediation-k-", "x-mediation-k-a", "mediation-k"):
        assert pattern.fullmatch(other) is None, other
    assert name_pattern("orders-{entrypoint}", "k") is None  # no client's: never swept
    with_entrypoint = name_pattern("g.{entrypoint}.{client_id}", "k")
    assert with_entrypoint is not None
    assert with_entrypoint.fullmatch("g.ws.bob")
    assert not with_entrypoint.fullmatch("gxwsxbob")  # literal dots stay literal


def test_sweep_deletes_empty_groups_of_clients_gone_for_the_ttl() -> None:
    ledger = ClientLedger(ttl=10.0)
    pattern = name_pattern("mediation-{endpoint}-{client_id}", "k")
    assert pattern is not None
    sweep = Sweep(pattern, ledger)
    ledger.enter("live", now=0.0)
    ledger.enter("gone", now=0.0)
    ledger.leave("gone", now=1.0)
    groups = {
        "mediation-k-live": True,  # empty (fetch = "shared") but its client reads here
        "mediation-k-gone": True,
        "mediation-k-busy": False,  # members: a client of another instance
        "mediation-k-stranger": True,  # empty, never seen here: counted from first sight
        "someone-else": True,
    }
    assert sweep.due(groups, now=5.0) == []
    assert sweep.due(groups, now=11.0) == ["mediation-k-gone"]
    del groups["mediation-k-gone"]  # deleted (one the broker refused to delete comes again)
    assert sweep.due(groups, now=14.9) == []
    assert sweep.due(groups, now=15.0) == ["mediation-k-stranger"]


def test_a_group_that_filled_again_starts_over() -> None:
    ledger = ClientLedger(ttl=10.0)
    pattern = name_pattern("mediation-{endpoint}-{client_id}", "k")
    assert pattern is not None
    sweep = Sweep(pattern, ledger)
    assert sweep.due({"mediation-k-x": True}, now=0.0) == []
    assert sweep.due({"mediation-k-x": False}, now=5.0) == []
    assert sweep.due({"mediation-k-x": True}, now=10.0) == []
    assert sweep.due({"mediation-k-x": True}, now=20.0) == ["mediation-k-x"]


# -- what each endpoint asks the broker for -------------------------------------------------------


def test_rabbitmq_sets_x_expires_on_per_client_queues_only() -> None:
    def expires(template: str, ttl: float) -> int | None:
        endpoint = RabbitMQEndpoint("r", RabbitMQConfig(), clients=ClientLedger(ttl=ttl))
        return endpoint._expires_ms(template)

    assert expires("q.{client_id}", 5) == 5000
    assert expires("mediation.{endpoint}.{client_id}.{session_id}", 0.5) == 500
    assert expires("shared-orders", 5) is None  # not a client's: the operator's rules
    assert expires("q.{client_id}", 0) is None  # ttl 0: the broker's own rules


def test_mqtt_session_expiry_is_capped_by_the_ttl() -> None:
    def expiry(ttl: float, session_expiry: int = 600) -> int:
        config = MQTT5Config(session_expiry=session_expiry)
        return MQTT5Endpoint("m", config, clients=ClientLedger(ttl=ttl)).session_expiry

    assert expiry(0) == 600
    assert expiry(30) == 30
    assert expiry(0.2) == 1  # whole seconds, never 0 (which would mean no resume at all)
    assert expiry(86400) == 600
    assert expiry(30, session_expiry=0) == 0
