"""Configuration: what is accepted, and the exact one-line message for what is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from mediation import Config, ConfigError, load_config, parse_config
from mediation.ack_policy import Guarantee
from mediation.config import ENDPOINT_TYPES, MemoryConfig, build_config

REPO = Path(__file__).resolve().parent.parent

VALID = """
[engine]
host = "127.0.0.1"
health_port = 0

[[entrypoints]]
name = "ws"
type = "websocket"
port = 0

[[entrypoints]]
name = "feed"
type = "sse"
port = 0

[[endpoints]]
name = "bus"
type = "memory"

[[routes]]
source = "ws"
target = "bus"

[[routes]]
source = "bus"
target = "feed"
delivery_guarantee = "at_least_once"
"""


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, filename="gw.toml", env=env or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_valid_config_is_frozen_and_resolved() -> None:
    config = parse_config(VALID, filename="gw.toml")
    assert [e.name for e in config.entrypoints] == ["ws", "feed"]
    assert [(r.name, r.direction) for r in config.routes] == [
        ("ws->bus", "upstream"),
        ("bus->feed", "downstream"),
    ]
    assert config.routes[0].delivery_guarantee is Guarantee.AUTO
    assert config.routes[0].channel_size == 1
    assert config.routes[1].delivery_guarantee is Guarantee.AT_LEAST_ONCE
    assert isinstance(config.endpoint("bus").config, MemoryConfig)
    assert config.source_path == "gw.toml"
    with pytest.raises(ValueError):
        config.engine.health_port = 1  # type: ignore[misc]


def test_empty_file_is_the_defaults() -> None:
    config = parse_config("")
    assert config == Config()
    assert config.engine.health_port == 9091
    assert config.source_path is None


# -- unknown keys and tables --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[engine]\nbogus = 1", "gw.toml: engine.bogus: unknown key"),
        ("[logging]\nlevel = 1", "gw.toml: logging: unknown table"),
        (
            VALID + '\n[[entrypoints]]\nname = "x"\ntype = "sse"\nport = 0\nheartbeat = 3\n',
            "gw.toml: entrypoints[2].heartbeat: unknown key",
        ),
        (
            # max_body belongs to http_post only
            VALID.replace('type = "websocket"', 'type = "websocket"\nmax_body = 10'),
            "gw.toml: entrypoints[0].max_body: unknown key",
        ),
        (
            VALID.replace('type = "memory"', 'type = "memory"\nconfig = { topic = "t" }'),
            "gw.toml: endpoints[0].config.topic: unknown key",
        ),
        (
            VALID.replace('target = "feed"', 'target = "feed"\nguarantee = "none"'),
            "gw.toml: routes[1].guarantee: unknown key",
        ),
    ],
)
def test_unknown_keys_are_refused(text: str, message: str) -> None:
    assert error_of(text) == message


# -- references and names -----------------------------------------------------------------------


def test_route_to_unknown_name() -> None:
    text = (
        '[[endpoints]]\nname = "bus"\ntype = "memory"\n[[routes]]\nsource = "bus"\ntarget = "x"\n'
    )
    assert error_of(text) == 'gw.toml: routes[0].target: no entrypoint or endpoint named "x"'


def test_route_from_unknown_name_names_the_index() -> None:
    text = VALID + '\n[[routes]]\nsource = "kafak-main"\ntarget = "bus"\n'
    assert error_of(text) == (
        'gw.toml: routes[2].source: no entrypoint or endpoint named "kafak-main"'
    )


def test_entrypoint_without_route_is_valid() -> None:
    config = parse_config(VALID + '\n[[entrypoints]]\nname = "idle"\ntype = "http_get"\nport = 0\n')
    assert config.entrypoint("idle").type == "http_get"


def test_route_between_endpoints_is_a_bridge() -> None:
    text = VALID + '[[endpoints]]\nname = "other"\ntype = "memory"\n'
    text += '[[routes]]\nsource = "bus"\ntarget = "other"\n'
    assert parse_config(text).routes[-1].direction == "bridge"


def test_route_back_to_its_source() -> None:
    text = VALID + '\n[[routes]]\nsource = "bus"\ntarget = "bus"\n'
    assert error_of(text) == "gw.toml: routes[2].target: a route cannot lead back to its source"


def test_route_between_two_entrypoints() -> None:
    text = VALID + '\n[[routes]]\nsource = "ws"\ntarget = "feed"\n'
    assert error_of(text) == "gw.toml: routes[2].target: a route cannot join two entrypoints"


def test_route_direction_must_agree() -> None:
    text = VALID.replace('target = "feed"', 'target = "feed"\ndirection = "upstream"')
    assert error_of(text) == (
        'gw.toml: routes[1].direction: is "upstream" but bus -> feed is downstream'
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[[entrypoints]]\nname = "ws"\ntype = "sse"\nport = 0\n',
            'gw.toml: entrypoints[2].name: duplicate name "ws"',
        ),
        (
            '[[endpoints]]\nname = "bus"\ntype = "memory"\n',
            'gw.toml: endpoints[1].name: duplicate name "bus"',
        ),
        (
            # names are unique across entrypoints and endpoints
            '[[endpoints]]\nname = "feed"\ntype = "memory"\n',
            'gw.toml: endpoints[1].name: duplicate name "feed"',
        ),
    ],
)
def test_duplicate_names(extra: str, message: str) -> None:
    assert error_of(VALID + "\n" + extra) == message


# -- types and values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[engine]\nhealth_port = "x"',
            "gw.toml: engine.health_port: input should be a valid integer, "
            "unable to parse string as an integer",
        ),
        (
            "[engine]\nhealth_port = 1.5",
            "gw.toml: engine.health_port: input should be a valid integer, "
            "got a number with a fractional part",
        ),
        (
            "[engine]\nhealth_port = 70000",
            "gw.toml: engine.health_port: input should be less than or equal to 65535",
        ),
        (
            '[engine]\nlog_level = "loud"',
            "gw.toml: engine.log_level: input should be 'debug', 'info', 'warning' or 'error'",
        ),
        ("engine = 1", "gw.toml: engine: must be a table"),
        ("entrypoints = 1", "gw.toml: entrypoints: must be an array of tables ([[entrypoints]])"),
        (
            '[[entrypoints]]\nname = "a"\ntype = "ftp"\nport = 1',
            'gw.toml: entrypoints[0].type: unknown type "ftp" '
            "(expected one of: websocket, sse, http_post, http_get)",
        ),
        (
            '[[entrypoints]]\nname = "a"\nport = 1',
            "gw.toml: entrypoints[0].type: missing required key",
        ),
        (
            '[[entrypoints]]\nname = "a"\ntype = "sse"',
            "gw.toml: entrypoints[0].port: missing required key",
        ),
        (
            '[[entrypoints]]\nname = "a b"\ntype = "sse"\nport = 1',
            "gw.toml: entrypoints[0].name: string should match pattern '^[A-Za-z0-9._-]{1,64}$'",
        ),
        (
            '[[endpoints]]\nname = "m"\ntype = "carrier-pigeon"',
            # one of every endpoint type, "memory" first, as brokers are added
            'gw.toml: endpoints[0].type: unknown type "carrier-pigeon" '
            f"(expected one of: {', '.join(ENDPOINT_TYPES)})",
        ),
        (
            '[[endpoints]]\nname = "m"\ntype = "memory"\nconfig = { capacity = 0 }',
            "gw.toml: endpoints[0].config.capacity: input should be greater than 0",
        ),
        (
            '[[endpoints]]\nname = "m"\ntype = "memory"\nconfig = 3',
            "gw.toml: endpoints[0].config: must be a table",
        ),
        (
            VALID.replace('target = "bus"', 'target = "bus"\ndelivery_guarantee = "twice"'),
            "gw.toml: routes[0].delivery_guarantee: input should be 'none', 'auto', "
            "'at_most_once' or 'at_least_once'",
        ),
        (
            VALID.replace('target = "feed"', 'target = "feed"\nchannel_size = 0'),
            "gw.toml: routes[1].channel_size: input should be greater than 0",
        ),
    ],
)
def test_wrong_types_and_values(text: str, message: str) -> None:
    assert error_of(text) == message


# -- TOML syntax and pathological input -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = = 1", "gw.toml: Invalid value (at line 1, column 5)"),
        (
            '[engine]\nhost = "x"\nhost = "y"\n',
            "gw.toml: Cannot overwrite a value (at line 3, column 11)",
        ),
        (
            "[engine\nhost = 1",
            "gw.toml: Expected ']' at the end of a table declaration (at line 1, column 8)",
        ),
        (
            '[engine]\nhost = "unterminated\n',
            "gw.toml: Illegal character '\\n' (at line 2, column 21)",
        ),
    ],
)
def test_toml_syntax_errors_give_line_and_column(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 5000,
        "a = " + "[" * 100_000,
        "a = " + "{a = " * 5000,
        "a" + ".a" * 5000 + " = 1",
        "[" + "a." * 5000 + "b]",
    ],
    ids=["arrays", "arrays-100k", "inline-tables", "dotted-keys", "table-header"],
)
def test_deep_nesting_is_a_config_error(text: str) -> None:
    assert error_of(text) == "gw.toml: nested too deeply to be a configuration"


def test_nesting_that_parses_but_is_too_deep_to_validate() -> None:
    with pytest.raises(ConfigError):
        parse_config("a" + ".a" * 600 + " = 1", filename="gw.toml")


# -- environment ------------------------------------------------------------------------------


def test_env_substitution() -> None:
    text = '[engine]\nhost = "${BIND_HOST}"\n[[endpoints]]\nname = "m"\ntype = "memory"\n'
    text += '[endpoints.config]\ntopic_in = "in-${SUFFIX}-{client_id}"\n'
    config = parse_config(text, env={"BIND_HOST": "10.0.0.1", "SUFFIX": "eu"})
    assert config.engine.host == "10.0.0.1"
    # ``{client_id}`` (no dollar) is left for the session to fill.
    assert config.endpoint("m").config.topic_in == "in-eu-{client_id}"


def test_env_substitution_happens_before_type_checks() -> None:
    config = parse_config('[engine]\nhealth_port = "${PORT}"', env={"PORT": "9100"})
    assert config.engine.health_port == 9100


def test_missing_env_var_names_the_key() -> None:
    text = '[[endpoints]]\nname = "m"\ntype = "memory"\n[endpoints.config]\ntopic_in = "${TOPIC}"\n'
    assert error_of(text) == (
        "gw.toml: endpoints[0].config.topic_in: environment variable TOPIC is not set"
    )


def test_load_config_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[engine]\nhost = "${MEDIATION_TEST_HOST}"\n')
    monkeypatch.setenv("MEDIATION_TEST_HOST", "127.0.0.2")
    assert load_config(path).engine.host == "127.0.0.2"
    monkeypatch.delenv("MEDIATION_TEST_HOST")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (
        str(caught.value)
        == f"{path}: engine.host: environment variable MEDIATION_TEST_HOST is not set"
    )
    assert load_config(path, env={"MEDIATION_TEST_HOST": "::1"}).engine.host == "::1"


# -- files --------------------------------------------------------------------------------------


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[[routes]]\nsource = "a"\ntarget = "b"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f'{path}: routes[0].source: no entrypoint or endpoint named "a"'


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    assert str(caught.value) == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_bytes(b'[engine]\nhost = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: not UTF-8 (byte 17)"


def test_source_path_is_kept_for_the_watcher(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(VALID)
    assert load_config(path).source_path == str(path)


# -- the shipped default ----------------------------------------------------------------------


def test_shipped_mediation_toml() -> None:
    config = load_config(REPO / "mediation.toml", env={})
    assert config.engine.host == "0.0.0.0"
    assert config.engine.health_port == 9091
    assert config.engine.packet_log is True
    assert config.engine.reload_interval == 5
    assert {(e.name, e.type, e.port) for e in config.entrypoints} == {
        ("ws-inbound", "websocket", 8066),
        ("sse-feed", "sse", 8067),
        ("webhook-receiver", "http_post", 8068),
        ("polling-api", "http_get", 8069),
        ("orders-feed", "sse", 8070),
        ("orders-webhook", "http_post", 8071),
    }
    endpoint, orders = config.endpoints
    assert endpoint.type == orders.type == "memory"
    assert endpoint.config.topic_in == endpoint.config.topic_out == "events"
    # The parameterised route (README, "Choosing streams").
    assert orders.config.topic_in == orders.config.topic_out == "orders/{order_id}"
    assert config.entrypoint("orders-feed").path == "/orders/{order_id}"
    routes = {(r.source, r.target, r.direction) for r in config.routes}
    assert routes == {
        ("ws-inbound", endpoint.name, "upstream"),
        ("webhook-receiver", endpoint.name, "upstream"),
        (endpoint.name, "ws-inbound", "downstream"),
        (endpoint.name, "sse-feed", "downstream"),
        (endpoint.name, "polling-api", "downstream"),
        ("orders-webhook", orders.name, "upstream"),
        (orders.name, "orders-feed", "downstream"),
    }


# -- entrypoint limits and auth keys ------------------------------------------------------------


def test_entrypoint_limit_defaults() -> None:
    config = parse_config(VALID, filename="gw.toml")
    ws, feed = config.entrypoints
    assert (ws.max_header_bytes, ws.header_timeout) == (16 * 1024, 10.0)
    assert (feed.max_header_bytes, feed.header_timeout) == (16 * 1024, 10.0)
    assert ws.idle_timeout == 120.0
    assert (ws.auth, ws.identity_claim, ws.access_token_query) == ("none", "sub", True)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "max_header_bytes = 100",
            "max_header_bytes: input should be greater than or equal to 256",
        ),
        ("header_timeout = 0", "header_timeout: input should be greater than 0"),
        ("idle_timeout = -1", "idle_timeout: input should be greater than or equal to 0"),
        ('identity_claim = ""', "identity_claim: string should have at least 1 character"),
    ],
)
def test_entrypoint_limit_values(key: str, message: str) -> None:
    text = VALID.replace('type = "websocket"', f'type = "websocket"\n{key}')
    assert error_of(text) == f"gw.toml: entrypoints[0].{message}"


def test_idle_timeout_is_a_websocket_key() -> None:
    text = VALID.replace('type = "sse"', 'type = "sse"\nidle_timeout = 5')
    assert error_of(text) == "gw.toml: entrypoints[1].idle_timeout: unknown key"


# -- routes need what their endpoints publish to and consume from ------------------------------

WS_AND_FEED = """
[[entrypoints]]
name = "ws"
type = "websocket"
port = 0
"""


def with_endpoint(endpoint_type: str, settings: str, *routes: str) -> str:
    text = WS_AND_FEED + f'[[endpoints]]\nname = "b"\ntype = "{endpoint_type}"\n'
    text += f"[endpoints.config]\n{settings}\n"
    for route in routes:
        text += f"[[routes]]\n{route}\n"
    return text


@pytest.mark.parametrize(
    ("endpoint_type", "settings", "missing"),
    [
        ("kafka", 'brokers = "k:9092"\ntopic_in = "in"', "topic_out"),
        ("rabbitmq", 'queue_in = "in"', "queue_out or endpoints[0].config.exchange"),
        ("mqtt5", 'topic_in = "in"', "topic_out"),
        ("jms", 'queue_in = "in"', "queue_out"),
        ("solace", 'topic_in = "in"', "topic_out"),
    ],
)
def test_an_upstream_route_to_an_endpoint_with_nothing_to_publish_to(
    endpoint_type: str, settings: str, missing: str
) -> None:
    text = with_endpoint(endpoint_type, settings, 'source = "ws"\ntarget = "b"')
    assert error_of(text) == (
        'gw.toml: routes[0].target: endpoint "b" has nothing to publish to '
        f"(set endpoints[0].config.{missing})"
    )


@pytest.mark.parametrize(
    ("endpoint_type", "settings", "missing"),
    [
        ("kafka", 'brokers = "k:9092"\ntopic_out = "out"', "topic_in"),
        ("rabbitmq", 'queue_out = "out"', "queue_in or endpoints[0].config.exchange"),
        ("mqtt5", 'topic_out = "out"', "topic_in"),
        ("jms", 'queue_out = "out"', "queue_in"),
        ("solace", 'topic_out = "out"', "topic_in"),
    ],
)
def test_a_downstream_route_from_an_endpoint_with_nothing_to_consume(
    endpoint_type: str, settings: str, missing: str
) -> None:
    text = with_endpoint(endpoint_type, settings, 'source = "b"\ntarget = "ws"')
    assert error_of(text) == (
        'gw.toml: routes[0].source: endpoint "b" has nothing to consume from '
        f"(set endpoints[0].config.{missing})"
    )


def test_route_ends_that_have_what_they_need() -> None:
    # A RabbitMQ exchange serves both directions; memory always has its topics.
    parse_config(
        with_endpoint(
            "rabbitmq",
            'exchange = "x"',
            'source = "ws"\ntarget = "b"',
            'source = "b"\ntarget = "ws"',
        )
    )
    parse_config(with_endpoint("memory", "", 'source = "ws"\ntarget = "b"'))
    # Solace at_least_once consumes its queue_in (always set), with or without topic_in.
    parse_config(
        with_endpoint(
            "solace", "", 'source = "b"\ntarget = "ws"\ndelivery_guarantee = "at_least_once"'
        )
    )


def test_a_bridge_needs_both_ends() -> None:
    text = WS_AND_FEED + (
        '[[endpoints]]\nname = "src"\ntype = "mqtt5"\n[endpoints.config]\ntopic_in = "t"\n'
        '[[endpoints]]\nname = "dst"\ntype = "kafka"\n[endpoints.config]\nbrokers = "k:1"\n'
        'topic_in = "x"\n[[routes]]\nsource = "src"\ntarget = "dst"\n'
    )
    assert error_of(text) == (
        'gw.toml: routes[0].target: endpoint "dst" has nothing to publish to '
        "(set endpoints[1].config.topic_out)"
    )


# -- odd documents: always one ConfigError on one line -----------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"a\nb": 1}, 'gw.toml: "a\\nb": unknown table'),
        ({"engine": {"x\r": 1}}, 'gw.toml: engine."x\\r": unknown key'),
        (
            {"entrypoints": [{"name": "w", "port": 0, "type": "web\nsocket"}]},
            'gw.toml: entrypoints[0].type: unknown type "web\\nsocket" '
            "(expected one of: websocket, sse, http_post, http_get)",
        ),
        (
            {"entrypoints": [{"name": "w", "port": 0, "type": ["websocket"]}]},
            'gw.toml: entrypoints[0].type: unknown type ["websocket"] '
            "(expected one of: websocket, sse, http_post, http_get)",
        ),
        (
            {"endpoints": [{"name": "m", "type": "memory", "config": []}]},
            "gw.toml: endpoints[0].config: must be a table",
        ),
        (
            {"endpoints": [{"name": "m", "type": "memory", "config": False}]},
            "gw.toml: endpoints[0].config: must be a table",
        ),
    ],
)
def test_odd_keys_and_values_are_quoted_on_one_line(
    document: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(document, filename="gw.toml")
    assert str(caught.value) == message


def test_build_config_refuses_deep_nesting_too() -> None:
    nested: object = "x"
    for _ in range(5000):
        nested = {"a": nested}
    with pytest.raises(ConfigError) as caught:
        build_config({"engine": {"x": nested}}, filename="gw.toml")
    assert str(caught.value) == "gw.toml: nested too deeply to be a configuration"


def test_public_key_path_that_cannot_be_a_file_name() -> None:
    text = (
        '[[entrypoints]]\nname = "p"\ntype = "http_post"\nport = 0\nauth = "bearer"\n'
        'jwt_public_key = "key\\u0000.pem"\n'
    )
    assert error_of(text).startswith("gw.toml: entrypoints[0].jwt_public_key: cannot read ")
