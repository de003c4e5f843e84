"""Parameters in paths and queries (mediation.params): resolution, config checks, injection
refused over real sockets on every entrypoint type, and Hypothesis properties of the resolver.

The per-broker case (two clients on ``/orders/1`` and ``/orders/2`` each get only their own
events) is ``ParamsConformance`` in ``tests/conformance/params.py``.
"""

from __future__ import annotations

import re
import string
from typing import Any

import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mediation.config import build_config
from mediation.errors import BadRequest, ConfigError, Forbidden
from mediation.params import (
    DEFAULT_PATTERN,
    MAX_VALUE_CHARS,
    WILDCARDS,
    EntrypointParams,
    PathTemplate,
    Template,
    check_names,
    usable_claims,
)

from .conftest import EngineFactory, url

# -- resolution ----------------------------------------------------------------------------------


def spec(path: str = "/orders/{order_id}", **params: str) -> EntrypointParams:
    return EntrypointParams.from_config(path, params)


def test_path_and_query_parameters_resolve() -> None:
    orders = spec("/t/{tenant}/orders/{order_id}", order_id="[0-9]{1,12}", symbol="[A-Z]{1,8}")
    values = orders.resolve("/t/acme/orders/42", {"symbol": ["ABC"]})
    assert values == {"tenant": "acme", "order_id": "42", "symbol": "ABC"}
    assert orders.query == ("symbol",)


def test_a_path_that_is_not_the_entrypoints_is_none_and_one_that_is_but_wrong_is_400() -> None:
    orders = spec()
    assert orders.resolve("/other", {}) is None
    assert orders.resolve("/", {}) is None
    for wrong in ("/orders", "/orders/", "/orders/1/2", "/orders/1/"):
        with pytest.raises(BadRequest):
            orders.resolve(wrong, {})
    assert spec("/").resolve("/", {}) == {}
    assert spec("/").resolve("/x", {}) is None


def test_percent_decoding_happens_once_then_the_pattern_decides() -> None:
    orders = spec(order_id="[0-9%A-F]{1,12}")
    # %252F is "%2F" after the one decoding: a value with a percent sign, not a slash.
    assert orders.resolve("/orders/%252F", {}) == {"order_id": "%2F"}
    with pytest.raises(BadRequest):
        spec().resolve("/orders/%252F", {})
    with pytest.raises(BadRequest):
        spec().resolve("/orders/1%2F2", {})


def test_query_parameters_missing_or_repeated_are_400() -> None:
    prices = spec("/prices", symbol="[A-Z]{1,8}")
    with pytest.raises(BadRequest, match="missing"):
        prices.resolve("/prices", {})
    with pytest.raises(BadRequest, match="more than once"):
        prices.resolve("/prices", {"symbol": ["A", "B"]})
    with pytest.raises(BadRequest):
        prices.resolve("/prices", {"symbol": ["a"]})


INJECTIONS = [
    "+",
    "#",
    "*",
    ">",
    "/",
    ".",
    "..",
    "a.b",
    "a/b",
    "%2F",
    "%2f",
    "%00",
    "a%00b",
    "%2E%2E",
    "%2B",
    "%23",
    "%2A",
    "%EF%BC%8B",  # FULLWIDTH PLUS SIGN
    "%EF%BC%8F",  # FULLWIDTH SOLIDUS
    "%E2%88%97",  # ASTERISK OPERATOR
    "%D0%B0",  # CYRILLIC SMALL LETTER A
    "1%E2%80%8B",  # a ZERO WIDTH SPACE after a digit
    "%F0%9D%9F%8F",  # MATHEMATICAL BOLD DIGIT ONE
    "%20",
    "{client_id}",
    "%7Bclient_id%7D",
    "A" * 10240,
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_values_are_refused_with_the_default_and_a_permissive_pattern(
    value: str,
) -> None:
    with pytest.raises(BadRequest):
        spec().resolve(f"/orders/{value}", {})
    # A pattern that allows "anything" still lets no wildcard, brace, non-ASCII, control
    # character or overlong value through (a separator it allows is the operator's choice).
    if value not in ("/", "a/b", ".", "..", "a.b", "%2F", "%2f", "%2E%2E"):
        with pytest.raises(BadRequest):
            spec(order_id=r"(?s).*").resolve(f"/orders/{value}", {})


def test_a_unicode_class_in_a_pattern_matches_ascii_only() -> None:
    words = spec(order_id=r"\w+")
    assert words.resolve("/orders/abc_1", {}) == {"order_id": "abc_1"}
    for lookalike in ("%D0%B0", "%C3%A9", "%EF%BC%91"):
        with pytest.raises(BadRequest):
            words.resolve(f"/orders/{lookalike}", {})


def test_claims_fill_templates_only_when_usable() -> None:
    claims = {"tenant": "acme", "bad": "a/b", "n": 3, "long": "x" * 300}
    assert usable_claims(claims, {}) == {"claims.tenant": "acme"}
    pattern = re.compile("[a-z/]+", re.ASCII)
    assert usable_claims(claims, {"bad": pattern})["claims.bad"] == "a/b"


def test_templates_fill_each_slot_with_its_value_only() -> None:
    template = Template.parse("orders.{order_id}.{claims.tenant}.#.{endpoint}")
    assert template.parameters == ("order_id", "claims.tenant")
    filled = template.fill({"order_id": "1", "claims.tenant": "acme"})
    assert filled == "orders.1.acme.#.{endpoint}"
    with pytest.raises(BadRequest):
        template.fill({"order_id": "#", "claims.tenant": "acme"})


def test_check_names_applies_each_brokers_rule() -> None:
    kafka = build_config(
        document(
            "kafka",
            {"brokers": "localhost:9092", "topic_in": "orders-{order_id}"},
            path="/orders/{order_id}",
        )
    ).endpoints[0]
    check_names("kafka", kafka.config, "downstream", {"order_id": "1", "client_id": "c"})
    # ":" and "@" pass the default pattern but are not in Kafka's topic charset.
    with pytest.raises(BadRequest, match="kafka topic"):
        check_names("kafka", kafka.config, "downstream", {"order_id": "a:b", "client_id": "c"})
    with pytest.raises(BadRequest, match="missing"):
        check_names("kafka", kafka.config, "downstream", {"client_id": "c"})
    claims = build_config(
        document("memory", {"topic_in": "t/{claims.tenant}"}, auth=True)
    ).endpoints[0]
    with pytest.raises(Forbidden):
        check_names("memory", claims.config, "downstream", {"client_id": "c"})


# -- config --------------------------------------------------------------------------------------


def document(
    endpoint_type: str,
    settings: dict[str, Any],
    *,
    path: str = "/",
    params: dict[str, str] | None = None,
    auth: bool = False,
    kind: str = "sse",
) -> dict[str, Any]:
    entrypoint: dict[str, Any] = {"name": "e", "type": kind, "port": 0, "path": path}
    if params is not None:
        entrypoint["params"] = params
    if auth:
        entrypoint |= {"auth": "bearer", "jwt_secret": "s" * 32}
    route = (
        {"source": "b", "target": "e"} if kind != "http_post" else {"source": "e", "target": "b"}
    )
    return {
        "entrypoints": [entrypoint],
        "endpoints": [{"name": "b", "type": endpoint_type, "config": settings}],
        "routes": [route],
    }


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            document("memory", {"topic_in": "orders/{order_id}"}),
            'endpoints[0].config.topic_in: {order_id} is not a parameter of entrypoint "e"',
        ),
        (
            document("memory", {"topic_out": "o/{order_id}"}, kind="http_post"),
            "endpoints[0].config.topic_out: {order_id} is not a parameter",
        ),
        (
            document("memory", {"topic_in": "t/{claims.tenant}"}),
            'endpoints[0].config.topic_in: {claims.tenant} needs auth = "bearer"',
        ),
        (document("memory", {}, path="/orders/x{id}"), "entrypoints[0].path: a {parameter} must"),
        (document("memory", {}, path="/a/{id}/{id}"), "entrypoints[0].path: {id} appears twice"),
        (document("memory", {}, path="/a/{client_id}"), "entrypoints[0].path: {client_id} is"),
        (
            document("memory", {}, params={"order_id": "[0-9"}),
            "entrypoints[0].params.order_id: not a regular expression",
        ),
        (
            document("memory", {}, params={"client_id": ".*"}),
            "entrypoints[0].params.client_id: filled by the engine",
        ),
    ],
)
def test_config_errors_name_the_key(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_config(doc, filename="m.toml")
    assert message in str(error.value)
    assert str(error.value).startswith("m.toml: ")


def test_a_bridge_cannot_use_parameters() -> None:
    doc = {
        "endpoints": [
            {"name": "a", "type": "memory", "config": {"topic_in": "x/{order_id}"}},
            {"name": "b", "type": "memory"},
        ],
        "routes": [{"source": "a", "target": "b"}],
    }
    with pytest.raises(ConfigError, match=r"endpoints\[0\].config.topic_in: {order_id} cannot"):
        build_config(doc)


def test_declared_parameters_pass() -> None:
    config = build_config(
        document(
            "memory",
            {"topic_in": "t/{claims.tenant}/{order_id}/{symbol}"},
            path="/orders/{order_id}",
            params={"symbol": "[A-Z]{1,8}", "claims.tenant": "[a-z]{1,16}"},
            auth=True,
        )
    )
    parameters = config.entrypoints[0].parameters
    assert parameters.query == ("symbol",)
    assert parameters.patterns["order_id"].pattern == DEFAULT_PATTERN


# -- over real sockets, every entrypoint type ----------------------------------------------------

KINDS = ("websocket", "sse", "http_post", "http_get")


def raw_request(kind: str, path: str) -> bytes:
    if kind == "websocket":
        head = (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        )
    elif kind == "sse":
        head = f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
    elif kind == "http_post":
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    else:
        head = f"POST {path}/subscribe HTTP/1.1\r\nHost: x\r\nX-Client-ID: c\r\n"
    body = b"x" if kind == "http_post" else b""
    if kind != "websocket":
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1") + body


async def status_of(port: int, request: bytes) -> int:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            received = b""
            while b"\r\n" not in received:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                received += chunk
    return int(received.split(b" ", 2)[1])


RAW_INJECTIONS = ["+", "#", "*", ".", "..", "%2F", "%00", "%EF%BC%8B", "%D0%B0", "a" * 10240]


@pytest.mark.parametrize("kind", KINDS)
async def test_injection_is_400_before_any_session_on_every_entrypoint_type(
    engine_with: EngineFactory, kind: str
) -> None:
    route = (
        {"source": kind, "target": "mem"}
        if kind == "http_post"
        else {"source": "mem", "target": kind}
    )
    topics = {"topic_in": "orders/{order_id}", "topic_out": "orders/{order_id}"}
    async with engine_with(
        entrypoints={kind: {"type": kind, "path": "/orders/{order_id}", "max_header_bytes": 65536}},
        routes=[route],
        endpoints={"mem": {"type": "memory", "config": topics}},
    ) as engine:
        memory: Any = engine.endpoints["mem"]
        for value in RAW_INJECTIONS:
            status = await status_of(engine.ports[kind], raw_request(kind, f"/orders/{value}"))
            assert status == 400, (value, status)
            assert engine.sessions == []
            assert memory.subscriber_count("orders/{order_id}") == 0
        # And a good value is served (a POST with nobody subscribed is still accepted).
        good = await status_of(engine.ports[kind], raw_request(kind, "/orders/42"))
        assert good == {"websocket": 101, "sse": 200, "http_post": 202, "http_get": 201}[kind]
        assert url(engine, kind)  # the port is this entrypoint's


# -- properties ----------------------------------------------------------------------------------

# Patterns an operator might write, including ones that allow separators, wildcards and anything.
PATTERNS = st.sampled_from(
    [
        DEFAULT_PATTERN,
        "[0-9]{1,12}",
        "[A-Z]{1,8}",
        r"\w+",
        "[a-z.]+",
        "[a-z/]+",
        r"[^/]+",
        r"(?s).*",
        "[+#*>a-z]+",
        r"[\x00-\xff]+",
    ]
)
LITERALS = st.text(alphabet="ab/.-_#+*>", max_size=6)
VALUES = st.text(max_size=40) | st.text(alphabet=string.printable, max_size=20)


@st.composite
def templates(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A name template: literals (wildcards included, as an operator may write them) and up to
    three parameter slots."""
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3))
    text = draw(LITERALS)
    for name in names:
        text += "{" + name + "}" + draw(LITERALS)
    return text, names


def _template_language(template: str, patterns: dict[str, str]) -> re.Pattern[str]:
    """The names ``template`` may resolve to: its literals, each slot its pattern.

    A pattern's leading global flags (``(?s)``) cannot stand inside a group: they are dropped, the
    whole language being compiled with DOTALL (the only such flag the patterns use)."""
    regex = ""
    for part in Template.parse(template).parts:
        if isinstance(part, str):
            regex += re.escape(part)
        else:
            regex += "(?:" + re.sub(r"^\(\?s\)", "", patterns[part.name]) + ")"
    return re.compile(regex, re.ASCII | re.DOTALL)


def _wildcard_positions(template: str, values: dict[str, str]) -> set[int]:
    """Where, in the filled name, the template's own literals put wildcard characters."""
    positions, at = set(), 0
    for part in Template.parse(template).parts:
        text = part if isinstance(part, str) else values[part.name]
        if isinstance(part, str):
            positions |= {at + i for i, char in enumerate(text) if char in WILDCARDS}
        at += len(text)
    return positions


@given(
    template=templates(),
    patterns=st.fixed_dictionaries({n: PATTERNS for n in "abc"}),
    raw=st.fixed_dictionaries({n: VALUES for n in "abc"}),
)
@settings(max_examples=400, deadline=None)
@example(
    template=("orders.{a}.#", ["a"]),
    patterns=dict.fromkeys("abc", r"(?s).*"),
    raw={"a": "#", "b": "", "c": ""},
)
@example(
    template=("t/{a}", ["a"]),
    patterns=dict.fromkeys("abc", r"[\x00-\xff]+"),
    raw={"a": "+/x", "b": "", "c": ""},
)
def test_no_input_resolves_outside_the_template_and_its_patterns(
    template: tuple[str, list[str]], patterns: dict[str, str], raw: dict[str, str]
) -> None:
    """Through the entrypoint (query parameters, decoded by the caller) and the template: a
    name is either refused (BadRequest) or in the template's language, and its wildcard
    characters are exactly those the template's literals put there (an MQTT filter, a RabbitMQ
    binding key, a Solace subscription gains none from a value)."""
    text, names = template
    declared = {n: patterns[n] for n in names}
    params = EntrypointParams.from_config("/s", declared)
    try:
        values = params.resolve("/s", {n: [raw[n]] for n in names})
        name = Template.parse(text).fill(values)
    except BadRequest:
        return
    assert _template_language(text, declared).fullmatch(name)
    wildcards = {i for i, char in enumerate(name) if char in WILDCARDS}
    assert wildcards == _wildcard_positions(text, values)
    for value in values.values():
        assert len(value) <= MAX_VALUE_CHARS
        assert all("!" <= char <= "~" for char in value)


@given(segment=st.text(max_size=30), pattern=PATTERNS)
@settings(max_examples=300, deadline=None)
def test_a_path_parameter_is_one_segment_decoded_once(segment: str, pattern: str) -> None:
    from urllib.parse import quote

    params = EntrypointParams.from_config("/o/{a}", {"a": pattern})
    raw = quote(segment, safe="")
    try:
        values = params.resolve(f"/o/{raw}", {})
    except BadRequest:
        return
    assert values == {"a": segment}
    assert re.fullmatch(pattern, segment, re.ASCII | re.DOTALL)
    assert not set(segment) & (WILDCARDS | set("{}"))


def test_path_templates_parse_whole_segments_only() -> None:
    assert PathTemplate.parse("/a/{b}/c").parameters == ("b",)
    for bad in ("a/{b}", "/a{b}", "/{b}c", "/{b-c}", "/{}"):
        with pytest.raises(ValueError):
            PathTemplate.parse(bad)
