"""The scenarios S1-S10 of issue 6 and S11 of issue 14: each returns table rows and records its
raw figures.

Every scenario alternates its sides (engine, hand-rolled bridge, raw legs, broker-native
WebSocket) within each round, for ``ctx.rounds`` rounds, and the rows carry every round's figure.
A side that cannot run (no bench/baselines yet, a client that timed out) is recorded as missing
with the reason, and the row shows n/a; only the engine failing makes the scenario fail.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx

from .brokers import Brokers, declare_queue, endpoint, prefill, unique
from .procs import (
    PYTHON,
    BaselineMissing,
    Engine,
    Load,
    PortFileServer,
    RunFailed,
    baseline,
    engine_toml,
    running,
)
from .stats import Row, percentile

BROKER_LABEL = {
    "kafka": "Kafka (tansu)",
    "rabbitmq": "RabbitMQ",
    "mqtt": "MQTT 5 (Mosquitto)",
    "memory": "memory",
    "amqp1": "AMQP 1.0 (RabbitMQ)",
}


@dataclass
class Context:
    brokers: Brokers
    workdir: Path
    quick: bool
    rounds: int
    sizes: tuple[int, ...]
    raw: dict[str, Any] = field(default_factory=dict)  # scenario -> every measurement
    log: Callable[[str], None] = print
    only: tuple[str, ...] | None = None  # --broker: only these brokers' rows (S1-S3, S8)

    def brokers_of(self, *brokers: str) -> tuple[str, ...]:
        return tuple(b for b in brokers if self.only is None or b in self.only)

    def record(self, key: str, value: Any) -> None:
        self.raw.setdefault(key, []).append(value)


# -- helpers ------------------------------------------------------------------------------------


def receive(
    client: dict[str, Any], publisher: dict[str, Any] | None = None, timeout: float = 180.0
) -> dict[str, Any]:
    """Run one receiving client; with ``publisher``, live: warm-ups, then the measured burst."""
    with Load(client) as load:
        load.wait_event("open", timeout)
        if publisher is None:
            return load.result(timeout)
        with Load({**publisher, "kind": "publish", "warm": True}) as pub:
            load.wait_event("warm", timeout)
            pub.send("go")
            published = pub.result(timeout)
            received = load.result(timeout)
        received["publisher_rate"] = published["rate"]
        return received


T = TypeVar("T")


def try_side(ctx: Context, what: str, run: Callable[[], float | None]) -> float | None:
    """One measurement of a side that may be missing: None (n/a) instead of an exception."""
    try:
        return run()
    except BaselineMissing as error:
        ctx.record("missing", f"{what}: {error}")
        return None
    except RunFailed as error:
        ctx.log(f"  {what}: failed: {str(error)[:400]}")
        ctx.record("failures", f"{what}: {error}")
        return None


def bridge_may_fail(ctx: Context, what: str, side: str, run: Callable[[], T]) -> T | None:
    """One measurement of ``side``: the engine's failure fails the scenario; a bridge that cannot
    start (already recorded as missing) or fails is skipped, None, the failure recorded."""
    try:
        return run()
    except BaselineMissing:
        return None
    except RunFailed as error:
        if side == "engine":
            raise
        ctx.record("failures", f"{what}: {error}")
        return None


def sides(round_: int) -> tuple[str, str]:
    """Which side goes first alternates by round, so neither always gets the warmer machine."""
    return ("engine", "bridge") if round_ % 2 == 0 else ("bridge", "engine")


def add(values: list[float], value: float | None) -> None:
    if value is not None:
        values.append(value)


@contextlib.contextmanager
def maybe_baseline(ctx: Context, broker: str, window: int) -> Iterator[PortFileServer | None]:
    """The hand-rolled bridge for ``broker``, or None (recorded) when it cannot start."""
    try:
        server = baseline(broker, ctx.brokers.url(broker), window, ctx.workdir)
    except BaselineMissing as error:
        ctx.record("missing", str(error))
        yield None
        return
    try:
        with running(server) as started:
            yield started
    except RunFailed as error:
        if "baseline" in str(error).split(":")[0]:
            ctx.log(f"  baseline {broker}: {str(error)[:400]}")
            ctx.record("failures", str(error))
            yield None
        else:
            raise


def live_topic(broker: str, name: str) -> bool:
    return broker == "mqtt"


def names(broker: str, prefix: str) -> tuple[str, str]:
    """(the engine's template, a client id -> the concrete name) for per-client topics/queues."""
    if broker == "mqtt":
        return f"bench/{prefix}/{{client_id}}", f"bench/{prefix}/"
    return f"bench.{prefix}.{{client_id}}", f"bench.{prefix}."


def count_for(ctx: Context, size: int, broker: str, window: int = 64) -> int:
    """Messages per measured drain: a second or more at the rates seen here, so that the full
    run stays under 30 minutes. channel_size 1 runs at a round trip per message (1-6 k msgs/s),
    so it gets fewer, except on Kafka, whose read-ahead keeps it at 10-25 k msgs/s; Kafka with a
    window of 64 or more drains at 20-100 k msgs/s, so it gets more (12,000 were gone in 0.15 s,
    and the rounds' figures scattered with every hiccup of the broker)."""
    if ctx.quick:
        return 2000
    if window == 1 and broker != "kafka":
        return 3000 if size <= 100 else 1500
    if window >= 64 and broker == "kafka":
        return 48000 if size <= 100 else 12000
    return 12000 if size <= 100 else 4000


def publisher_spec(
    ctx: Context, broker: str, topic: str, count: int, size: int, **extra: Any
) -> dict[str, Any]:
    address = {
        "kafka": ctx.brokers.url("kafka") if broker == "kafka" else "",
        "rabbitmq": ctx.brokers.rabbitmq.amqp_url if broker == "rabbitmq" else "",
        "mqtt": ctx.brokers.mosquitto.url if broker == "mqtt" else "",
    }[broker]
    return {
        "broker": broker,
        "address": address,
        "topic": topic,
        "count": count,
        "size": size,
        **extra,
    }


def drain(
    ctx: Context, broker: str, url: str, topic: str, count: int, size: int, client: dict[str, Any]
) -> float | None:
    """Prefill (Kafka, RabbitMQ) or publish live (MQTT), then time one client's receipt."""
    if broker == "mqtt":
        result = receive(
            {**client, "url": url, "count": count, "live": True},
            publisher_spec(ctx, broker, topic, count, size, window=100),
        )
    else:
        prefill(ctx.brokers, broker, topic, count, size)
        result = receive({**client, "url": url, "count": count})
    if result["count"] < count:
        raise RunFailed(f"received {result['count']} of {count}")
    rate: float | None = result["rate"]
    return rate


# -- S1, S2, S3: one client, broker -> client --------------------------------------------------


def _stream(
    ctx: Context,
    scenario: str,
    transport: str,
    guarantee: str,
    channel_sizes: tuple[int, ...],
    brokers: tuple[str, ...],
) -> list[Row]:
    rows: list[Row] = []
    for broker in ctx.brokers_of(*brokers):
        if broker == "kafka":
            ctx.brokers.fresh_tansu()
        template, prefix = names(broker, scenario.lower())
        entrypoints, routes = {}, []
        subprotocol = guarantee == "at_least_once"
        for size in channel_sizes:
            entrypoints[f"c{size}"] = {"type": "websocket" if transport == "ws" else "sse"}
            routes.append(
                {
                    "source": "b",
                    "target": f"c{size}",
                    "channel_size": size,
                    "delivery_guarantee": guarantee,
                }
            )
        toml = engine_toml(entrypoints, {"b": endpoint(ctx.brokers, broker, template)}, routes)
        engine = Engine(toml, ctx.workdir, f"engine-{scenario}-{broker}")
        with running(engine):
            engine.wait_readyz()
            for window in channel_sizes:
                with maybe_baseline(ctx, broker, window) as bridge:
                    for size in ctx.sizes:
                        rows.extend(
                            _stream_cell(
                                ctx,
                                scenario,
                                transport,
                                guarantee,
                                broker,
                                prefix,
                                engine,
                                bridge,
                                window,
                                size,
                                subprotocol,
                            )
                        )
    return rows


def _client(transport: str, envelope: bool) -> dict[str, Any]:
    if transport == "sse":
        return {"kind": "sse_recv"}
    if envelope:
        return {"kind": "ws_recv", "subprotocol": "mediation.v1", "envelope": True, "ack": True}
    return {"kind": "ws_recv"}


def _stream_cell(
    ctx: Context,
    scenario: str,
    transport: str,
    guarantee: str,
    broker: str,
    prefix: str,
    engine: Engine,
    bridge: PortFileServer | None,
    window: int,
    size: int,
    envelope: bool,
) -> list[Row]:
    count = count_for(ctx, size, broker, window)
    engine_rates: list[float] = []
    bridge_rates: list[float] = []
    label = f"{transport} {guarantee} cs={window} {size} B"
    for r in range(ctx.rounds):
        for side in sides(r):
            client_id = unique("c")
            topic = prefix + client_id
            if side == "engine":
                url = engine.url(f"c{window}", "ws" if transport == "ws" else "http")
                url += f"?client_id={client_id}"
                rate = try_side(
                    ctx,
                    f"{scenario} engine {broker} {label}",
                    partial(
                        drain, ctx, broker, url, topic, count, size, _client(transport, envelope)
                    ),
                )
                if rate is None:
                    raise RunFailed(f"{scenario} {broker} {label}: the engine failed")
                engine_rates.append(rate)
            elif bridge is not None:
                path = "/ws" if transport == "ws" else "/sse"
                ack = "&ack=client" if envelope else "&ack=auto"
                url = bridge.url("ws" if transport == "ws" else "http", path)
                url += f"?topic={topic}&client_id={client_id}&from=earliest"
                url += ack if transport == "ws" else ""
                client = _client(transport, envelope)
                client.pop("subprotocol", None)
                add(
                    bridge_rates,
                    try_side(
                        ctx,
                        f"{scenario} bridge {broker} {label}",
                        partial(drain, ctx, broker, url, topic, count, size, client),
                    ),
                )
        ctx.log(
            f"  {scenario} {broker} {label} round {r + 1}: engine "
            f"{engine_rates[-1]:.0f}/s, bridge "
            f"{bridge_rates[-1] if len(bridge_rates) > r else float('nan'):.0f}/s"
        )
    ctx.record(f"{scenario}:{broker}:{label}", {"engine": engine_rates, "bridge": bridge_rates})
    target = {"S1": "ratio >= 1.5", "S2": "ratio >= 1.5", "S3": "ratio >= 1.2"}[scenario]
    return [
        Row(
            scenario,
            BROKER_LABEL[broker],
            label,
            "msgs/s",
            engine_rates,
            bridge_rates,
            "hand-rolled",
            target,
        )
    ]


def raw_legs(ctx: Context, broker: str, window: int, size: int, transport: str) -> list[float]:
    """Per round: the slower of the broker leg and the web leg (and both recorded)."""
    count = count_for(ctx, size, broker, window)
    slower: list[float] = []
    web = PortFileServer(f"raw-{transport}", [PYTHON, "-m", "bench.raw", transport], ctx.workdir)
    with running(web):
        for _ in range(ctx.rounds):
            topic = unique("bench.raw." if broker != "mqtt" else "bench/raw/")
            if broker == "kafka":
                prefill(ctx.brokers, broker, topic, count, size)
                leg = receive(
                    {
                        "kind": "kafka_consume",
                        "address": ctx.brokers.url("kafka"),
                        "topic": topic,
                        "count": count,
                    },
                    None,
                )
            elif broker == "rabbitmq":
                prefill(ctx.brokers, broker, topic, count, size)
                leg = receive(
                    {
                        "kind": "pika_consume",
                        "address": ctx.brokers.rabbitmq.amqp_url,
                        "topic": topic,
                        "count": count,
                        "window": window,
                    },
                    None,
                )
            else:
                leg = receive(
                    {
                        "kind": "paho_recv",
                        "address": ctx.brokers.mosquitto.url,
                        "topic": topic,
                        "count": count,
                    },
                    publisher_spec(ctx, broker, topic, count, size, window=100),
                )
            path = f"/?n={count}&size={size}"
            client = {"kind": "ws_recv"} if transport == "ws" else {"kind": "sse_recv"}
            url = web.url("ws" if transport == "ws" else "http", path)
            web_leg = receive({**client, "url": url, "count": count})
            ctx.record(
                f"raw:{broker}:{transport}:{window}:{size}", {"broker_leg": leg, "web_leg": web_leg}
            )
            slower.append(min(leg["rate"], web_leg["rate"]))
    return slower


def native_ws(
    ctx: Context,
    which: str,
    size: int,
    stamp: bool = False,
    rate: float | None = None,
    count: int | None = None,
) -> dict[str, Any]:
    """A paho subscriber over the broker's own WebSocket listener (no gateway in between)."""
    count = count or count_for(ctx, size, "mqtt")
    topic = unique("bench/native/")
    if which == "mosquitto":
        m = ctx.brokers.mosquitto
        address, ws_path, pub_address, mqtt311 = (
            f"ws://127.0.0.1:{m.websockets_port}",
            "/mqtt",
            m.url,
            False,
        )
    else:
        r = ctx.brokers.rabbitmq
        address, ws_path, pub_address, mqtt311 = (
            f"ws://127.0.0.1:{r.web_mqtt_port}",
            "/ws",
            f"mqtt://127.0.0.1:{r.mqtt_port}",
            True,
        )
    client = {
        "kind": "paho_recv",
        "address": address,
        "transport": "websockets",
        "ws_path": ws_path,
        "topic": topic,
        "count": count,
        "mqtt311": mqtt311,
        "stamp": stamp,
    }
    publisher = {
        "broker": "mqtt",
        "address": pub_address,
        "topic": topic,
        "count": count,
        "size": size,
        "window": 100,
        "mqtt311": mqtt311,
        "stamp": stamp,
        "rate": rate,
    }
    return receive(client, publisher)


def s1(ctx: Context) -> list[Row]:
    """One WebSocket client, broker -> client, auto; plus the raw legs and broker-native WS."""
    sizes = (64,) if ctx.quick else (1, 64, 1024)
    rows = _stream(ctx, "S1", "ws", "auto", sizes, ("kafka", "rabbitmq", "mqtt"))
    big = max(sizes)
    for broker in ctx.brokers_of("kafka", "rabbitmq", "mqtt"):
        for size in ctx.sizes:
            engine_row = next(
                r
                for r in rows
                if r.broker == BROKER_LABEL[broker] and r.params == f"ws auto cs={big} {size} B"
            )
            legs: list[float] = []
            try:
                legs = raw_legs(ctx, broker, big, size, "ws")
            except RunFailed as error:
                ctx.record("failures", f"S1 raw legs {broker}: {error}")
            rows.append(
                Row(
                    "S1",
                    BROKER_LABEL[broker],
                    f"ws auto cs={big} {size} B vs raw legs",
                    "msgs/s",
                    list(engine_row.engine),
                    legs,
                    "slower raw leg",
                    "ratio >= 0.5",
                )
            )
    for which, label in (("mosquitto", "mosquitto websockets"), ("rabbitmq", "RabbitMQ web_mqtt")):
        if not ctx.brokers_of("mqtt" if which == "mosquitto" else "rabbitmq"):
            continue
        size = ctx.sizes[0]  # paho over mosquitto's WebSocket stalled at >= 4 KiB
        native: list[float] = []
        for _ in range(ctx.rounds):
            add(
                native, try_side(ctx, f"S1 native {which}", partial(_native_rate, ctx, which, size))
            )
        broker = "mqtt" if which == "mosquitto" else "rabbitmq"
        engine_row = next(
            r
            for r in rows
            if r.broker == BROKER_LABEL[broker] and r.params == f"ws auto cs={big} {size} B"
        )
        rows.append(
            Row(
                "S1",
                BROKER_LABEL[broker],
                f"ws cs={big} {size} B vs broker-native WS",
                "msgs/s",
                list(engine_row.engine),
                native,
                label,
                note="reference: no gateway in the middle",
            )
        )
    return rows


def s2(ctx: Context) -> list[Row]:
    sizes = (64,) if ctx.quick else (1, 64, 1024)
    rows = _stream(ctx, "S2", "sse", "auto", sizes, ("kafka", "rabbitmq", "mqtt"))
    if not ctx.quick and ctx.brokers_of("kafka"):
        size = ctx.sizes[0]
        engine_row = next(
            r
            for r in rows
            if r.broker == BROKER_LABEL["kafka"] and r.params == f"sse auto cs=1024 {size} B"
        )
        legs: list[float] = []
        with contextlib.suppress(RunFailed):
            legs = raw_legs(ctx, "kafka", 1024, size, "sse")
        rows.append(
            Row(
                "S2",
                BROKER_LABEL["kafka"],
                f"sse cs=1024 {size} B vs raw legs",
                "events/s",
                list(engine_row.engine),
                legs,
                "slower raw leg",
            )
        )
    return rows


def s3(ctx: Context) -> list[Row]:
    sizes = (64,) if ctx.quick else (1, 64)
    return _stream(ctx, "S3", "ws", "at_least_once", sizes, ("kafka", "rabbitmq", "mqtt"))


# -- S4: HTTP POST -> broker ---------------------------------------------------------------


def s4(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    duration = 0.7 if ctx.quick else 2.5
    connections = 64
    for broker in ("kafka", "rabbitmq", "mqtt"):
        topic = "bench.s4" if broker != "mqtt" else "bench/s4"
        if broker == "rabbitmq":
            declare_queue(ctx.brokers, topic)
        out = {
            "kafka": {"topic_out": topic},
            "rabbitmq": {"queue_out": topic},
            "mqtt": {"topic_out": topic},
        }[broker]
        ep = endpoint(ctx.brokers, broker, "bench.unused" if broker != "mqtt" else "bench/x")
        ep["config"].update(out)
        entrypoints = {"auto": {"type": "http_post"}, "alo": {"type": "http_post"}}
        routes = [
            {"source": "auto", "target": "b", "delivery_guarantee": "auto"},
            {"source": "alo", "target": "b", "delivery_guarantee": "at_least_once"},
        ]
        engine = Engine(
            engine_toml(entrypoints, {"b": ep}, routes), ctx.workdir, f"engine-S4-{broker}"
        )
        with running(engine), maybe_baseline(ctx, broker, 64) as bridge:
            engine.wait_readyz()
            for mode in ("auto", "alo"):
                size = ctx.sizes[0]
                figures: dict[str, list[dict[str, Any]]] = {"engine": [], "bridge": []}
                for r in range(ctx.rounds):
                    for side in sides(r):
                        if side == "engine":
                            url = engine.url(mode)
                        elif bridge is not None:
                            confirm = 1 if mode == "alo" else 0
                            url = bridge.url(path=f"/publish?topic={topic}&confirm={confirm}")
                        else:
                            continue
                        spec = {
                            "kind": "post",
                            "url": url,
                            "connections": connections,
                            "duration": duration,
                            "size": size,
                        }
                        try:
                            top = receive_post(spec)
                            # The p99 at half rate is for the full run (quick stays short).
                            half = (
                                None
                                if ctx.quick
                                else receive_post({**spec, "rate": max(1.0, top["rate"] / 2)})
                            )
                        except RunFailed as error:
                            if side == "engine":
                                raise
                            ctx.record("failures", f"S4 bridge {broker} {mode}: {error}")
                            continue
                        figures[side].append({"max": top, "half": half})
                        if broker == "rabbitmq":
                            ctx.brokers.rabbitmq.purge_queue(topic)
                ctx.record(f"S4:{broker}:{mode}", figures)
                guarantee = "auto" if mode == "auto" else "at_least_once"
                label = f"POST {guarantee} x{connections} {size} B"
                e = figures["engine"]
                b = figures["bridge"]
                rows.append(
                    Row(
                        "S4",
                        BROKER_LABEL[broker],
                        label,
                        "req/s",
                        [f["max"]["rate"] for f in e],
                        [f["max"]["rate"] for f in b],
                        "hand-rolled",
                        "ratio >= 1.5",
                    )
                )
                if not ctx.quick:
                    rows.append(
                        Row(
                            "S4",
                            BROKER_LABEL[broker],
                            label + " at 50% of max",
                            "p99 ms",
                            [f["half"]["p99"] for f in e if f["half"]["p99"] is not None],
                            [f["half"]["p99"] for f in b if f["half"]["p99"] is not None],
                            "hand-rolled",
                            "value <= 20",
                        )
                    )
                ctx.log(
                    f"  S4 {broker} {mode}: engine {[round(f['max']['rate']) for f in e]} "
                    f"bridge {[round(f['max']['rate']) for f in b]} req/s"
                )
    return rows


def receive_post(spec: dict[str, Any]) -> dict[str, Any]:
    with Load(spec) as load:
        result = load.result(spec["duration"] + 120)
    if not result["ok"]:
        raise RunFailed(f"POST: no request succeeded: {result['statuses']}")
    return result


# -- S5: latency at 1,000 msgs/s ---------------------------------------------------------------


def s5(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    rate = 1000.0
    count = int(rate * (1 if ctx.quick else 3))
    size = ctx.sizes[0]
    natives: dict[str, list[float]] = {}
    native_p50: dict[str, list[float]] = {}
    for which in ("mosquitto", "rabbitmq"):
        natives[which] = []
        native_p50[which] = []
        for _ in range(ctx.rounds):
            result = try_side(
                ctx, f"S5 native {which}", partial(_native_latency, ctx, which, size, rate, count)
            )
            if result is not None:
                natives[which].append(result)
        ctx.record(f"S5:native:{which}", natives[which])
    for broker in ("kafka", "rabbitmq", "mqtt"):
        if broker == "kafka":
            ctx.brokers.fresh_tansu()
        template, prefix = names(broker, "s5")
        ep = endpoint(ctx.brokers, broker, template)
        if broker == "kafka":
            ep["config"]["auto_offset_reset"] = "latest"
        toml = engine_toml(
            {"ws": {"type": "websocket"}},
            {"b": ep},
            [{"source": "b", "target": "ws", "channel_size": 64}],
        )
        engine = Engine(toml, ctx.workdir, f"engine-S5-{broker}")
        figures: dict[str, list[dict[str, Any]]] = {"engine": [], "bridge": []}
        with running(engine), maybe_baseline(ctx, broker, 64) as bridge:
            engine.wait_readyz()
            for r in range(ctx.rounds):
                for side in sides(r):
                    client_id = unique("c")
                    topic = prefix + client_id
                    if side == "engine":
                        url = engine.url("ws", "ws") + f"?client_id={client_id}"
                    elif bridge is not None:
                        url = bridge.url("ws", f"/ws?topic={topic}&client_id={client_id}")
                    else:
                        continue
                    if broker == "rabbitmq":
                        declare_queue(ctx.brokers, topic)
                    if broker == "kafka":  # consuming from "latest" needs the topic to exist
                        prefill(ctx.brokers, "kafka", topic, 1, 10, b"w")
                    client = {
                        "kind": "ws_recv",
                        "url": url,
                        "count": count,
                        "live": True,
                        "stamp": True,
                    }
                    pub = publisher_spec(
                        ctx, broker, topic, count, size, rate=rate, stamp=True, window=100
                    )
                    try:
                        figures[side].append(receive(client, pub))
                    except RunFailed as error:
                        if side == "engine":
                            raise
                        ctx.record("failures", f"S5 bridge {broker}: {error}")
        ctx.record(f"S5:{broker}", figures)
        label = f"ws auto cs=64 {size} B at {rate:.0f}/s"
        for metric in ("p50", "p99"):
            rows.append(
                Row(
                    "S5",
                    BROKER_LABEL[broker],
                    label,
                    f"{metric} ms",
                    [f[metric] for f in figures["engine"]],
                    [f[metric] for f in figures["bridge"]],
                    "hand-rolled",
                )
            )
        native = natives["mosquitto" if broker == "mqtt" else "rabbitmq"]
        if broker != "kafka" and native:
            which = "mosquitto websockets" if broker == "mqtt" else "RabbitMQ web_mqtt"
            added = [f["p99"] - native[i % len(native)] for i, f in enumerate(figures["engine"])]
            rows.append(
                Row(
                    "S5",
                    BROKER_LABEL[broker],
                    f"p99 added over {which}",
                    "ms",
                    added,
                    [],
                    "",
                    "value <= 5",
                    note=f"native p99 {native}",
                )
            )
    return rows


def _native_rate(ctx: Context, which: str, size: int) -> float:
    rate: float = native_ws(ctx, which, size)["rate"]
    return rate


def _native_latency(ctx: Context, which: str, size: int, rate: float, count: int) -> float:
    result = native_ws(ctx, which, size, stamp=True, rate=rate, count=count)
    p99: float = result["p99"]
    return p99


# -- S6: idle sessions on the memory endpoint ----------------------------------------------------


def s6(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    n = 1000 if ctx.quick else 10000
    toml = engine_toml(
        {"ws": {"type": "websocket"}, "sse": {"type": "sse"}},
        {"mem": {"type": "memory"}},
        [{"source": "mem", "target": "ws"}, {"source": "mem", "target": "sse"}],
    )
    for kind in ("ws", "sse"):
        held: list[float] = []
        per_session: list[float] = []
        threads: list[float] = []
        health: list[float] = []
        for _ in range(ctx.rounds):
            engine = Engine(toml, ctx.workdir, f"engine-S6-{kind}")
            with running(engine):
                resources = engine.resources()
                before = resources.rss_kib()
                threads_before = resources.threads()
                url = engine.url(kind, "ws" if kind == "ws" else "http")
                spec = {"kind": "idle", "url": url, "n": n, "parallel": 64, "kind_session": kind}
                with Load(spec) as load:
                    load.wait_event("open", 300)
                    time.sleep(1.0)  # let the engine finish the last handshakes' work
                    after = resources.rss_kib()
                    threads.append(resources.threads() - threads_before)
                    health.append(_health_p99(engine))
                    load.send("go")
                    result = load.result(120)
                held.append(result["held"])
                per_session.append((after - before) / max(1, result["held"]))
                ctx.record(
                    f"S6:{kind}", {"rss_before_kib": before, "rss_after_kib": after, **result}
                )
        label = f"{kind} idle sessions (memory endpoint)"
        target_n = "value >= 10000" if not ctx.quick else ""
        rows.append(
            Row("S6", "memory", label, "sessions held", held, target=target_n, note=f"{n} opened")
        )
        rows.append(
            Row("S6", "memory", label, "RSS KiB/session", per_session, target="value <= 50")
        )
        rows.append(Row("S6", "memory", label, "threads added", threads))
        rows.append(Row("S6", "memory", label, "/healthz p99 ms", health, target="value <= 50"))
    return rows


def _health_p99(engine: Engine, requests: int = 200) -> float:
    times = []
    with httpx.Client(timeout=10) as client:
        url = engine.url("health", path="/healthz")
        for _ in range(requests):
            t0 = time.perf_counter()
            client.get(url).raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
    value = percentile(times, 99)
    assert value is not None
    return value


# -- S7: live sessions with a broker consumer each ---------------------------------------------


S7_TARGETS = {"kafka": 500, "rabbitmq": 2000, "mqtt": 5000}
# One round per side, the one scenario below the three rounds: opening 500 Kafka consumers (each
# joins a group of its own), 2,000 RabbitMQ and 5,000 MQTT sessions takes minutes per side, and its
# figures are counts and per-session costs, not rates a noisy neighbour moves much.
S7_ROUNDS = 1


def s7(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    quick_n = {"kafka": 20, "rabbitmq": 100, "mqtt": 200}
    for broker in ("kafka", "rabbitmq", "mqtt"):
        n = quick_n[broker] if ctx.quick else S7_TARGETS[broker]
        if broker == "kafka":
            ctx.brokers.fresh_tansu()
        topic = {"kafka": "bench.s7", "rabbitmq": "bench.s7", "mqtt": "bench/s7"}[broker]
        if broker == "rabbitmq":
            declare_queue(ctx.brokers, topic)
        # Kafka: a consumer each, as the scenario says (the default fetch is "shared", whose
        # sessions S7K counts), unless --kafka-fetch names a design.
        fetch = {"fetch": ctx.brokers.kafka_fetch or "per_session"} if broker == "kafka" else {}
        ep = endpoint(ctx.brokers, broker, topic, **fetch)
        if broker == "kafka":
            # The topic exists before anyone joins (a warm-up: nobody counts it).
            prefill(ctx.brokers, "kafka", topic, 1, 10, b"w")
        toml = engine_toml(
            {"ws": {"type": "websocket"}},
            {"b": ep},
            [{"source": "b", "target": "ws", "channel_size": 1}],
        )
        stats: dict[str, dict[str, list[float]]] = {}
        for r in range(min(ctx.rounds, S7_ROUNDS)):  # see S7_ROUNDS
            for side in sides(r):
                figures = stats.setdefault(side, {"complete": [], "rss": [], "threads": []})
                result = bridge_may_fail(
                    ctx,
                    f"S7 bridge {broker}",
                    side,
                    partial(_s7_side, ctx, broker, side, toml, topic, n),
                )
                if result is None:
                    continue
                figures["complete"].append(result["complete"])
                figures["rss"].append(result["rss_per_session"])
                figures["threads"].append(result["threads_per_session"])
                ctx.record(f"S7:{broker}:{side}", result)
                ctx.log(
                    f"  S7 {broker} {side}: {result['complete']}/{n} sessions receiving, "
                    f"{result['rss_per_session']:.0f} KiB and "
                    f"{result['threads_per_session']:.2f} threads per session"
                )
        e = stats.get("engine", {"complete": [], "rss": [], "threads": []})
        b = stats.get("bridge", {"complete": [], "rss": [], "threads": []})
        rounds = min(ctx.rounds, S7_ROUNDS)
        label = f"{n} WS sessions, a consumer each ({rounds} round per side)"
        target = f"value >= {S7_TARGETS[broker]}" if not ctx.quick else ""
        rows.append(
            Row(
                "S7",
                BROKER_LABEL[broker],
                label,
                "sessions receiving",
                e["complete"],
                b["complete"],
                "hand-rolled",
                target,
            )
        )
        rows.append(
            Row(
                "S7",
                BROKER_LABEL[broker],
                label,
                "RSS KiB/session",
                e["rss"],
                b["rss"],
                "hand-rolled",
            )
        )
        rows.append(
            Row(
                "S7",
                BROKER_LABEL[broker],
                label,
                "threads/session",
                e["threads"],
                b["threads"],
                "hand-rolled",
            )
        )
    return rows


def _s7_side(ctx: Context, broker: str, side: str, toml: str, topic: str, n: int) -> dict[str, Any]:
    server: Engine | PortFileServer
    if side == "engine":
        server = Engine(toml, ctx.workdir, f"engine-S7-{broker}")
    else:
        server = baseline(broker, ctx.brokers.url(broker), 1, ctx.workdir)
    # RabbitMQ: competing consumers on one queue (the bridge has no broadcast); every session
    # must get at least one of 3 per session. Kafka and MQTT: every session gets all 3.
    per_session = 1 if broker == "rabbitmq" else 3
    published = 3 * n if broker == "rabbitmq" else 3
    with running(server, timeout=120):
        if isinstance(server, Engine):
            server.wait_readyz()
            url = server.url("ws", "ws")
        else:
            url = server.url("ws", f"/ws?topic={topic}")
        resources = server.resources()
        before_rss, before_threads = resources.rss_kib(), resources.threads()
        parallel = 16 if broker == "kafka" else 64
        client = {
            "kind": "many",
            "url": url,
            "kind_session": "ws",
            "n": n,
            "parallel": parallel,
            "count": per_session,
            "warm": broker != "rabbitmq",
            # Every session is open (and subscribed) by now: a side that is not warm within 2
            # minutes is failing, and waiting longer only stretched the run (the hand-rolled
            # bridge held 0 of 500 Kafka sessions and waited out 300 s here).
            "warm_timeout": 120,
            "timeout": 60,
        }
        pub = publisher_spec(ctx, broker, topic, published, 100, warm_interval=0.2, window=100)
        with Load(client) as load:
            load.wait_event("open", 900)
            with Load({**pub, "kind": "publish", "warm": broker != "rabbitmq"}) as publisher:
                load.wait_event("warm", 900)
                rss, threads = resources.rss_kib(), resources.threads()
                publisher.send("go")
                publisher.result(300)
                result = load.result(300)
        if broker == "rabbitmq":
            ctx.brokers.rabbitmq.purge_queue(topic)
    sessions = max(1, result["sessions"])
    result.update(
        rss_per_session=(rss - before_rss) / sessions,
        threads_per_session=(threads - before_threads) / sessions,
        rss_kib=rss,
        threads=threads,
    )
    return result


# -- S7K: live Kafka sessions with the shared fetch --------------------------------------------


S7K_SESSIONS = 10_000


def s7k(ctx: Context) -> list[Row]:
    """S7 for Kafka with ``fetch = "shared"`` (one fetch of the topic, a position per client in
    its own group): the engine alone (the hand-rolled bridge's consumer per session held 0 of
    500 in S7), 10,000 sessions, each receiving every record."""
    n = 200 if ctx.quick else S7K_SESSIONS
    ctx.brokers.fresh_tansu()
    topic = "bench.s7k"
    ep = endpoint(ctx.brokers, "kafka", topic, fetch="shared", auto_offset_reset="latest")
    prefill(ctx.brokers, "kafka", topic, 1, 10, b"w")
    toml = engine_toml(
        {"ws": {"type": "websocket"}},
        {"b": ep},
        [{"source": "b", "target": "ws", "channel_size": 1}],
    )
    result = _s7_side(ctx, "kafka", "engine", toml, topic, n)
    ctx.record("S7K:kafka:engine", result)
    ctx.log(
        f"  S7K kafka shared: {result['complete']}/{n} sessions receiving, "
        f"{result['rss_per_session']:.0f} KiB and {result['threads_per_session']:.4f} threads "
        f"per session ({result['threads']} threads in all)"
    )
    label = f"{n} WS sessions, fetch = shared (1 round, engine only)"
    return [
        Row(
            "S7K",
            BROKER_LABEL["kafka"],
            label,
            "sessions receiving",
            [result["complete"]],
            [],
            "none",
            f"value >= {n}" if not ctx.quick else "",
        ),
        Row(
            "S7K",
            BROKER_LABEL["kafka"],
            label,
            "RSS KiB/session",
            [result["rss_per_session"]],
            [],
            "none",
            "value <= 64" if not ctx.quick else "",
        ),
        Row(
            "S7K",
            BROKER_LABEL["kafka"],
            label,
            "threads/session",
            [result["threads_per_session"]],
            [],
            "none",
        ),
    ]


# -- S8: fan-out --------------------------------------------------------------------------------


def s8(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    n = 200 if ctx.quick else 1000
    for broker in ctx.brokers_of("memory", "mqtt", "kafka"):
        topic = {"mqtt": "bench/s8", "kafka": "bench.s8"}.get(broker, "events")
        if broker == "memory":
            ep: dict[str, Any] = {"type": "memory"}
        elif broker == "kafka":
            # fetch = "shared" whatever --kafka-fetch says: a consumer group per session does
            # not hold 1,000 live sessions (S7). The bridge is not run: its consumer per
            # session held none of S7's 500.
            ctx.brokers.fresh_tansu()
            prefill(ctx.brokers, "kafka", topic, 1, 10, b"w")
            ep = endpoint(ctx.brokers, "kafka", topic, fetch="shared", auto_offset_reset="latest")
        else:
            ep = endpoint(ctx.brokers, "mqtt", topic)
        routes = [{"source": "b", "target": "sse", "channel_size": 16}]
        if broker == "memory":  # the event comes in through the engine's own POST entrypoint
            routes.append({"source": "post", "target": "b"})
        toml = engine_toml(
            {"sse": {"type": "sse"}, "post": {"type": "http_post"}}, {"b": ep}, routes
        )
        times: dict[str, list[float]] = {"engine": [], "bridge": []}
        for r in range(ctx.rounds):
            for side in sides(r):
                if side == "bridge" and broker in ("memory", "kafka"):
                    continue
                ms = bridge_may_fail(
                    ctx,
                    f"S8 bridge {broker}",
                    side,
                    partial(_s8_side, ctx, broker, side, toml, topic, n),
                )
                add(times[side], ms)
        ctx.record(f"S8:{broker}", times)
        rows.append(
            Row(
                "S8",
                BROKER_LABEL[broker],
                f"one event to {n} SSE clients",
                "ms until all",
                times["engine"],
                times["bridge"],
                "hand-rolled" if broker == "mqtt" else "",
                "value <= 250" if n >= 1000 else "",
            )
        )
    return rows


def _s8_side(ctx: Context, broker: str, side: str, toml: str, topic: str, n: int) -> float:
    server: Engine | PortFileServer
    if side == "engine":
        server = Engine(toml, ctx.workdir, f"engine-S8-{broker}")
    else:
        server = baseline(broker, ctx.brokers.url(broker), 16, ctx.workdir)
    with running(server, timeout=120):
        if isinstance(server, Engine):
            server.wait_readyz()
            url = server.url("sse")
        else:
            url = server.url(path=f"/sse?topic={topic}")
        if broker == "memory":
            assert isinstance(server, Engine)
            pub = {"broker": "http", "address": server.url("post"), "topic": topic}
        else:
            pub = publisher_spec(ctx, broker, topic, 1, 100)
        pub.update(count=1, size=100, stamp=True, warm_interval=0.1)
        client = {
            "kind": "many",
            "url": url,
            "kind_session": "sse",
            "n": n,
            "parallel": 64,
            "count": 1,
            "warm_timeout": 300,
            "timeout": 60,
        }
        with Load(client) as load:
            load.wait_event("open", 600)
            with Load({**pub, "kind": "publish", "warm": True}) as publisher:
                load.wait_event("warm", 600)
                time.sleep(0.3)  # the last warm-ups drain before the measured event
                publisher.send("go")
                published = publisher.result(120)
                result = load.result(120)
    if result["complete"] < result["sessions"] or result["first_max_ns"] is None:
        raise RunFailed(f"S8: {result['complete']} of {result['sessions']} got the event")
    return float((result["first_max_ns"] - published["t0_ns"]) / 1e6)


# -- S9: one stalled client among fast ones ------------------------------------------------------


def s9(ctx: Context) -> list[Row]:
    fast = 9
    count = 1000 if ctx.quick else 30000
    ratios: dict[str, list[float]] = {"engine": [], "bridge": []}
    ctx.brokers.fresh_tansu()
    for r in range(ctx.rounds):
        topic = unique("bench.s9.")
        prefill(ctx.brokers, "kafka", topic, count, 100)
        toml = engine_toml(
            {"ws": {"type": "websocket"}},
            {"b": endpoint(ctx.brokers, "kafka", topic)},
            [{"source": "b", "target": "ws", "channel_size": 64}],
        )
        for side in sides(r):
            run = partial(_s9_pair, ctx, side, toml, topic, fast, count, r)
            rates = bridge_may_fail(ctx, "S9 bridge", side, run)
            if rates is None:
                continue
            ratios[side].append(rates[1] / rates[0])
            ctx.record("S9", {"side": side, "without": rates[0], "with": rates[1]})
    return [
        Row(
            "S9",
            BROKER_LABEL["kafka"],
            f"{fast} fast WS clients + 1 stalled",
            "fast msgs/s with / without",
            ratios["engine"],
            ratios["bridge"],
            "hand-rolled",
            "value >= 0.95",
        )
    ]


def _s9_pair(
    ctx: Context, side: str, toml: str, topic: str, fast: int, count: int, r: int
) -> list[float]:
    """The rates without and with a stalled client, in that order; which runs first alternates
    by round, so neither is always the one measured on a topic its twin just drained."""
    order = (False, True) if r % 2 == 0 else (True, False)
    rate = {stalled: _s9_run(ctx, side, toml, topic, fast, count, stalled) for stalled in order}
    return [rate[False], rate[True]]


def _s9_run(
    ctx: Context, side: str, toml: str, topic: str, fast: int, count: int, stalled: bool
) -> float:
    server: Engine | PortFileServer
    if side == "engine":
        server = Engine(toml, ctx.workdir, "engine-S9")
    else:
        server = baseline("kafka", ctx.brokers.url("kafka"), 64, ctx.workdir)
    with running(server, timeout=120):
        if isinstance(server, Engine):
            server.wait_readyz()
            url = server.url("ws", "ws")
        else:
            url = server.url("ws", f"/ws?topic={topic}&from=earliest")
        with contextlib.ExitStack() as stack:
            if stalled:
                stall = stack.enter_context(
                    Load(
                        {
                            "kind": "idle",
                            "url": url,
                            "n": 1,
                            "parallel": 1,
                            "stall": True,
                            "kind_session": "ws",
                        }
                    )
                )
                stall.wait_event("open", 120)
                time.sleep(1.0)  # its consumer is filling its buffers meanwhile
            client = {
                "kind": "many",
                "url": url,
                "kind_session": "ws",
                "n": fast,
                "parallel": fast,
                "count": count,
                "warm": False,
                "timeout": 120,
            }
            with Load(client) as load:
                load.wait_event("open", 120)
                result = load.result(300)
    if result["complete"] < fast:
        raise RunFailed(f"S9: {result['complete']} of {fast} fast clients got everything")
    seconds = (result["last_max_ns"] - result["first_min_ns"]) / 1e9
    return float(result["received"] / seconds)


# -- S10: packet log on vs off -------------------------------------------------------------------


def s10(ctx: Context) -> list[Row]:
    ctx.brokers.fresh_tansu()
    template, prefix = names("kafka", "s10")
    size = ctx.sizes[0]
    # A per-packet cost is a small share of each message's: a long drain (3-4 s) keeps the
    # broker's hiccups from deciding the ratio.
    count = 5 * count_for(ctx, size, "kafka")
    ep = {"b": endpoint(ctx.brokers, "kafka", template)}
    routes = [{"source": "b", "target": "ws", "channel_size": 64}]
    on = Engine(
        engine_toml({"ws": {"type": "websocket"}}, ep, routes, packet_log=True),
        ctx.workdir,
        "engine-S10-on",
    )
    off = Engine(
        engine_toml({"ws": {"type": "websocket"}}, ep, routes, packet_log=False),
        ctx.workdir,
        "engine-S10-off",
    )
    rates: dict[str, list[float]] = {"on": [], "off": []}
    with running(on), running(off):
        on.wait_readyz()
        off.wait_readyz()
        for r in range(ctx.rounds):
            for name, engine in (
                (("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on))
            ):
                client_id = unique("c")
                url = engine.url("ws", "ws") + f"?client_id={client_id}"
                rate = drain(
                    ctx, "kafka", url, prefix + client_id, count, size, {"kind": "ws_recv"}
                )
                assert rate is not None
                rates[name].append(rate)
    ctx.record("S10", rates)
    return [
        Row(
            "S10",
            BROKER_LABEL["kafka"],
            f"ws auto cs=64 {size} B, packet_log on / off",
            "msgs/s",
            rates["on"],
            rates["off"],
            "packet_log off",
            "ratio >= 0.85",
        )
    ]


# -- S11: a stream of its own per session (parameterised paths, issue 14) -------------------------

S11_SESSIONS = 1000
S11_EVENTS = 20  # per session


def s11(ctx: Context) -> list[Row]:
    """1,000 WebSocket sessions on ``/t/{room}``, each its own room and so its own topic (memory:
    ``bench.s11.<room>``, published through the engine's POST entrypoint ``/t/{room}``; MQTT:
    ``bench/s11/<room>``, published with paho), every session a consumer of its own. Events per
    second delivered to all sessions together (first to last measured event), and the engine's
    RSS per session once every session is subscribed. The engine alone: the hand-rolled bridge
    takes one fixed topic per route."""
    rows: list[Row] = []
    n, per = (200, 5) if ctx.quick else (S11_SESSIONS, S11_EVENTS)
    for broker in ("memory", "mqtt"):
        if broker == "memory":
            ep = {
                "type": "memory",
                "config": {"topic_in": "bench.s11.{room}", "topic_out": "bench.s11.{room}"},
            }
        else:
            ep = endpoint(ctx.brokers, "mqtt", "bench/s11/{room}")
        entrypoints: dict[str, dict[str, Any]] = {
            "ws": {"type": "websocket", "path": "/t/{room}", "params": {"room": "[0-9]{1,6}"}}
        }
        routes = [{"source": "b", "target": "ws", "channel_size": 16}]
        if broker == "memory":
            entrypoints["post"] = {
                "type": "http_post",
                "path": "/t/{room}",
                "params": {"room": "[0-9]{1,6}"},
            }
            routes.append({"source": "post", "target": "b"})
        toml = engine_toml(entrypoints, {"b": ep}, routes)
        figures: dict[str, list[float]] = {"rate": [], "rss": []}
        for _ in range(ctx.rounds):
            result = _s11_round(ctx, broker, toml, n, per)
            ctx.record(f"S11:{broker}", result)
            ctx.log(
                f"  S11 {broker}: {result['complete']}/{n} sessions got all {per}, "
                f"{result['events_per_s']:.0f} events/s, {result['rss_per_session']:.0f} KiB "
                f"per session, engine CPU {result['engine_cpu_us_per_event']:.0f} us per event"
            )
            figures["rate"].append(result["events_per_s"])
            figures["rss"].append(result["rss_per_session"])
        label = f"{n} WS sessions, a topic each (/t/{{room}}), {per} events each"
        rows.append(Row("S11", BROKER_LABEL[broker], label, "events/s", figures["rate"]))
        rows.append(Row("S11", BROKER_LABEL[broker], label, "RSS KiB/session", figures["rss"]))
    return rows


def _s11_round(ctx: Context, broker: str, toml: str, n: int, per: int) -> dict[str, Any]:
    engine = Engine(toml, ctx.workdir, f"engine-S11-{broker}")
    with running(engine, timeout=120):
        engine.wait_readyz()
        resources = engine.resources()
        before_rss = resources.rss_kib()
        client = {
            "kind": "many",
            "url": engine.url("ws", "ws", "/t/{i}"),
            "kind_session": "ws",
            "n": n,
            "parallel": 64,
            "count": per,
            # A 101 comes once the session's consumer is subscribed: no warm-up is needed.
            "warm": False,
            "timeout": 300,
        }
        if broker == "memory":
            publisher = {
                "kind": "post_fan",
                "url": engine.url("post", path="/t/{i}"),
                "topics": n,
                "count": per,
                "size": 100,
                "connections": 16,
            }
        else:
            publisher = {
                **publisher_spec(ctx, "mqtt", "bench/s11/{i}", n * per, 100, window=100),
                "kind": "publish",
                "topics": n,
            }
        with Load(client) as load:
            load.wait_event("open", 600)
            rss = resources.rss_kib()
            cpu = sum(resources.process.cpu_times()[:2])
            with Load(publisher) as pub:
                published = pub.result(600)
            result = load.result(600)
            cpu = sum(resources.process.cpu_times()[:2]) - cpu
    if result["sessions"] < n or result["complete"] < result["sessions"]:
        raise RunFailed(
            f"S11 {broker}: {result['sessions']} of {n} sessions open ({result['failed']} "
            f"failed), {result['complete']} got all {per} events"
        )
    span = (result["last_max_ns"] - result["first_min_ns"]) / 1e9
    result.update(
        events_per_s=result["received"] / span if span > 0 else 0.0,
        rss_per_session=(rss - before_rss) / result["sessions"],
        rss_kib=rss,
        # The engine's CPU (user + system) per delivered event, publishing included: whether
        # the engine or the load generators on the same cores set the pace.
        engine_cpu_us_per_event=cpu / max(1, result["received"]) * 1e6,
        engine_cpu_share=cpu / span if span > 0 else None,
        publisher=published,
    )
    return result


SCENARIOS: dict[str, Callable[[Context], list[Row]]] = {
    "S1": s1,
    "S2": s2,
    "S3": s3,
    "S4": s4,
    "S5": s5,
    "S6": s6,
    "S7": s7,
    "S7K": s7k,
    "S8": s8,
    "S9": s9,
    "S10": s10,
    "S11": s11,
}

DESCRIPTIONS = {
    "S1": "one WebSocket client, broker -> client, auto, channel_size 1 / 64 / 1024",
    "S2": "one SSE client, broker -> client, auto",
    "S3": "at_least_once with client acks (WebSocket envelope)",
    "S4": "HTTP POST -> broker, 64 keep-alive connections, auto and at_least_once",
    "S5": "end-to-end latency at 1,000 msgs/s, broker publish -> WebSocket receive",
    "S6": "concurrent idle sessions (WebSocket and SSE, memory endpoint)",
    "S7": "concurrent live sessions, one broker consumer each",
    "S7K": "concurrent live Kafka sessions with fetch = shared (one fetch, a position each)",
    "S8": "fan-out: one event to N SSE clients",
    "S9": "slow client: 1 stalled + 9 fast clients on one endpoint",
    "S10": "packet log on vs off",
    "S11": "1,000 sessions, each on its own parameterised topic (memory, MQTT)",
}


def run_scenario(ctx: Context, name: str) -> tuple[list[Row], str | None]:
    """The rows, and the error (a traceback) when the scenario could not run."""
    try:
        return SCENARIOS[name](ctx), None
    except Exception:
        return [], traceback.format_exc()
