"""The configuration: TOML in, one frozen and fully validated :class:`Config` out.

Pure apart from :func:`load_config`, which reads the file and the environment (for ``${VAR}``
secrets), and an entrypoint's ``jwt_public_key`` given as a file name, which is read while the
config is validated (relative to the config file); the engine itself never reads either.
Every error is a :class:`ConfigError` with one line ``FILE: table[index].key: problem``:
pydantic checks each table's types and rejects unknown keys, this module adds the cross-table
checks (unique names, route references, directions, what a route needs of its endpoints, the
auth keys of an entrypoint).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tomli
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .ack_policy import AckPlan, Guarantee, plan_for
from .cursors import check_secret as check_cursor_secret
from .errors import ConfigError
from .params import BUILTIN, CLAIM_NAME, ENDPOINT_FILLED, EntrypointParams, Template, name_templates
from .tls_files import tls_files_problem

MiB = 1024 * 1024

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0)]
Size = Annotated[int, Field(gt=0)]
FilterField = Annotated[str, Field(pattern=r"^[a-z0-9._-]{1,64}$")]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


M = TypeVar("M", bound=_Table)


class EngineConfig(_Table):
    host: str = "0.0.0.0"
    health_port: Port = 9091
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    packet_log: bool = True
    reload_interval: Annotated[float, Field(ge=0)] = 5.0
    shutdown_timeout: Seconds = 30.0
    # Signs the event ids that carry a broker position (Kafka's topic:partition:offset) as
    # "<position>.<mac>", so that any instance of a fleet with the same secret resumes a client
    # from one and refuses a forged one (400). At least 32 bytes; may be "${ENV_VAR}". None:
    # positions go out and are taken back unsigned (mediation/cursors.py).
    cursor_secret: str | None = None


# -- entrypoints -------------------------------------------------------------------------------


class _EntrypointConfig(_Table):
    name: Name
    port: Port
    path: str = "/"
    # Browser origins admitted (Origin header, checked before any upgrade or session: 403).
    # Empty: any origin. Requests without Origin (not from a browser) are always admitted.
    allowed_origins: tuple[str, ...] = ()
    max_message_bytes: Size = MiB
    # Sessions open at once on this entrypoint (WebSocket, SSE, polling) or, on http_post,
    # requests being handled at once; one more is refused with 503 before any upgrade.
    max_sessions: Size | None = None
    # Bytes a request head (request line and headers) may take; a longer one is answered 431 and
    # the connection closed (the WebSocket handshake too). Inclusive.
    max_header_bytes: Annotated[int, Field(ge=256, le=MiB)] = 16 * 1024
    # Seconds a client has to send a complete request head, counted from its connect (or, on a
    # keep-alive HTTP connection, from the previous response; it is also how long an idle
    # keep-alive connection is kept). A client that trickles its headers (slowloris) is dropped.
    header_timeout: Seconds = 10.0
    # Seconds a client has to send a whole request body, counted from the end of its head; past
    # it the connection is closed (408 if nothing was answered yet) and nothing is published.
    body_timeout: Seconds = 30.0
    # "bearer": a client must present a JWT (Authorization: Bearer, or ?access_token= if
    # access_token_query), checked on connect, 401 otherwise; its identity_claim is the client
    # id. Unnecessary behind Envoy, which authenticates and sets X-Client-ID itself.
    auth: Literal["none", "bearer"] = "none"
    # The HS256 shared secret (at least 32 bytes; may be "${ENV_VAR}"), or
    jwt_secret: str | None = None
    # a PEM public key (RSA: RS*/PS*, EC: ES256/384/512, Ed25519/Ed448: EdDSA), inline or the
    # path of a PEM file (relative to the config file). Exactly one of the two with "bearer".
    jwt_public_key: str | None = None
    jwt_audience: str | None = None  # the required "aud" (a token with an aud needs it set)
    jwt_issuer: str | None = None  # the required "iss"
    identity_claim: Annotated[str, Field(min_length=1)] = "sub"  # the claim that is the client id
    # Accept the token from ?access_token= (browsers cannot set headers on WebSocket or
    # EventSource); such URLs can end up in proxy logs, so prefer short-lived tokens.
    access_token_query: bool = True
    # TLS (HTTPS, and WSS on a websocket entrypoint), for use without a proxy in front: a PEM
    # certificate (chain, the server's first) and its unencrypted PEM key, both or neither;
    # paths relative to the config file. Reread when they change: the next connection gets the
    # new certificate, established ones keep theirs.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Mutual TLS: a PEM file of the CAs whose client certificates are accepted; a client
    # without one (or with one from another CA) is refused during the handshake.
    tls_client_ca_file: str | None = None
    # Where the client id comes from. "request": X-Client-ID, else ?client_id=, else new (the
    # token's identity_claim with auth = "bearer"). "certificate": the verified client
    # certificate's subject CN, else its first DNS SAN (needs tls_client_ca_file).
    identity: Literal["request", "certificate"] = "request"
    # Path and query parameters (mediation.params): name -> full-match regular expression. A
    # {name} segment of ``path`` without an entry gets params.DEFAULT_PATTERN; a query parameter
    # is one only with an entry; "claims.NAME" sets the pattern a token claim must match.
    params: dict[str, str] = Field(default_factory=dict)
    # Permissions from the token (mediation.permissions; needs auth = "bearer"): the claim
    # permissions_claim holds {"subscribe": [patterns], "publish": [patterns]}, matched against
    # the names a client's routes resolve to; anything else is refused (403, or a nack).
    authorize: bool = False
    permissions_claim: Annotated[str, Field(min_length=1)] = "mediation"
    # Subscriptions one session may have at once: a repeated query parameter makes one per
    # value (?symbol=A&symbol=B), a WebSocket {"subscribe"} adds one; more is 400 (or a nack).
    max_subscriptions: Annotated[int, Field(ge=1, le=1024)] = 16

    @cached_property
    def parameters(self) -> EntrypointParams:
        """The parsed path template and patterns (validated with the config)."""
        return EntrypointParams.from_config(self.path, self.params)


class WebSocketEntrypoint(_EntrypointConfig):
    type: Literal["websocket"]
    frame_type: Literal["auto", "text", "binary"] = "auto"
    # Seconds a connection may stay silent: no message, no ack and no pong from the client, and
    # nothing written to it. After half of it the engine pings (every live client answers by
    # itself); after all of it the connection is closed with 1001 "idle". 0: never.
    idle_timeout: Annotated[float, Field(ge=0)] = 120.0
    # Seconds a mediation.v1 session's consumers with positions (Kafka) wait for the client's
    # first message, which may be {"resume": id} (mediation/resume_gate.py): their first event
    # is that much later for a client that sends nothing. 0: no envelope resume.
    resume_grace: Annotated[float, Field(ge=0)] = 0.5


class SSEEntrypoint(_EntrypointConfig):
    type: Literal["sse"]
    heartbeat_interval: Seconds = 15.0


class HTTPPostEntrypoint(_EntrypointConfig):
    type: Literal["http_post"]
    max_body: Size = MiB


class HTTPGetEntrypoint(_EntrypointConfig):
    type: Literal["http_get"]
    poll_timeout: Seconds = 30.0
    session_idle_timeout: Seconds = 120.0


EntrypointConfig = WebSocketEntrypoint | SSEEntrypoint | HTTPPostEntrypoint | HTTPGetEntrypoint
ENTRYPOINT_TYPES: dict[str, type[_EntrypointConfig]] = {
    "websocket": WebSocketEntrypoint,
    "sse": SSEEntrypoint,
    "http_post": HTTPPostEntrypoint,
    "http_get": HTTPGetEntrypoint,
}


# -- endpoints ---------------------------------------------------------------------------------


class MemoryConfig(_Table):
    topic_in: str = "events"
    topic_out: str = "events"
    capacity: Size = 16  # per-subscriber buffer; a full subscriber slows the publisher


class KafkaConfig(_Table):
    brokers: str  # bootstrap servers, "host:port,host:port"
    topic_in: str | None = None  # consumed for downstream routes
    topic_out: str | None = None  # produced to by upstream routes
    # One consumer group per client, so a reconnecting client resumes after its last commit.
    group_id: str = "mediation-{endpoint}-{client_id}"
    auto_offset_reset: Literal["earliest", "latest"] = "latest"
    # Short enough that a group join (which waits half of it on some brokers) stays quick.
    session_timeout_ms: Annotated[int, Field(ge=1000)] = 6000
    heartbeat_interval_ms: Annotated[int, Field(ge=100)] = 500
    # Off by default: topics belong to the operator (a cluster's own defaults, ACLs and retention
    # decide how they look), and a session on a topic that does not exist yet simply waits for
    # it. True: the endpoint creates topic_in and topic_out (unless they hold a {placeholder})
    # through the admin API each time it connects, when missing, with these two settings.
    create_topics: bool = False
    partitions: Annotated[int, Field(ge=1)] = 1
    replication_factor: Annotated[int, Field(ge=1)] = 1
    # Passed to librdkafka as is (SASL, TLS, tuning), to the producer and every consumer. It
    # overrides the endpoint's tuning defaults (queue sizes, message.timeout.ms); the keys set from
    # the fields above and those the semantics need (group.id, enable.auto.commit,
    # enable.idempotence, callbacks) win over it.
    librdkafka: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # How sessions read (README, "Kafka"): "shared", one fetch of topic_in for every session at
    # its tail, positions kept per client in the same groups through the admin API, sessions
    # behind the tail read by catch-up readers; "per_session", a consumer in its group per
    # session (about 600 KiB and 5 threads each, a rebalance per join). "shared" applies only
    # where group_id holds {client_id} (one group per client); a group shared by sessions
    # (competing consumers) always has real group membership.
    fetch: Literal["per_session", "shared"] = "shared"
    # "shared": how many sessions may read behind the tail at once, each with a consumer (and
    # its threads) of its own; the others wait their turn.
    catch_up_readers: Annotated[int, Field(ge=1)] = 32
    # "shared": what the shared fetch may hold fetched and not yet handed to the sessions.
    fetch_prefetch_kbytes: Annotated[int, Field(ge=64)] = 1024
    # "shared": a session whose stored position has not been written for this long (seconds) gets
    # it written again, so that the broker does not expire an idle client's position (Kafka
    # drops an empty group's offsets after offsets.retention.minutes, 7 days by default; keep
    # this well below it).
    position_refresh_interval: Annotated[float, Field(ge=1)] = 3600.0


class BrokerTLS(_Table):
    """The TLS keys of the MQTT 5, RabbitMQ and AMQP 1.0 endpoints, used when the broker URL's
    scheme says TLS (``mqtts://``, ``ssl://``, ``amqps://``). File names are relative to the
    config file; each is read and checked when the config is validated (it exists, it parses,
    the key matches its certificate) and again on every connect, so a renewed file is used at
    the next reconnect."""

    # PEM bundle of the CAs that may sign the broker's certificate; None: the system's CAs.
    ca_file: str | None = None
    # A client certificate (PEM; it may hold the key too), for brokers that require one.
    cert_file: str | None = None
    key_file: str | None = None  # its private key (PEM, unencrypted); needs cert_file
    # The name the broker's certificate must carry, also sent as SNI; None: the URL's host.
    tls_server_name: Annotated[str, Field(min_length=1)] | None = None
    # False: accept any certificate from any broker (a test bench only: no protection at all).
    tls_verify: bool = True


_MQTT_BROKER = r"^(tcp|mqtt|mqtts|ssl)://[^\s/:@]+(:[0-9]{1,5})?/?$"
_SASL_MECHANISMS = r"^ *(PLAIN|ANONYMOUS|EXTERNAL)( +(PLAIN|ANONYMOUS|EXTERNAL))* *$"
_TLS_KEYS = ("ca_file", "cert_file", "key_file", "tls_server_name", "tls_verify")


class RabbitMQConfig(BrokerTLS):
    # amqp:// or amqps:// (TLS, port 5671 by default, with the keys of BrokerTLS); pika's URL
    # query options apply (heartbeat, blocked_connection_timeout).
    url: Annotated[str, Field(pattern=r"^amqps?://")] = "amqp://guest:guest@localhost:5672/"
    # Downstream: a shared queue (competing consumers), or an exchange with a per-session
    # exclusive queue bound with binding_key (broadcast). Names may hold {client_id}.
    # queue_in wins when both are set (the exchange then serves upstream only).
    queue_in: str | None = None
    exchange: str | None = None
    binding_key: str = "#"
    # Upstream: to a queue (default exchange), or to ``exchange`` with routing_key.
    queue_out: str | None = None
    routing_key: str = ""
    # Declare queue_in and queue_out (durable) and the exchange when missing. An existing one
    # declared with other arguments (a quorum queue, another exchange type) is refused by the
    # broker: set false to use what an administrator provisioned.
    declare: bool = True
    # The type the exchange is declared with (declare = true).
    exchange_type: Literal["direct", "fanout", "topic", "headers"] = "topic"
    # Broadcast: the name of each session's exclusive, auto-delete queue. May hold {endpoint},
    # {entrypoint}, {client_id} and {session_id}; without {session_id} a client's sessions share
    # one queue (competing consumers), which goes when the last of them leaves.
    session_queue: str = "mediation.{endpoint}.{client_id}.{session_id}"


class MQTT5Config(BrokerTLS):
    # tcp://host:port (mqtt:// is accepted too; port 1883 when left out), or over TLS
    # mqtts://host:port or ssl://host:port (port 8883 when left out; the keys of BrokerTLS).
    broker: Annotated[str, Field(pattern=_MQTT_BROKER)] = "tcp://localhost:1883"
    # A topic filter (+ and # as whole levels, # last), may hold {client_id} and {entrypoint}.
    topic_in: Annotated[
        str | None, Field(min_length=1, pattern=r"^((\+|[^+#/\x00]*)/)*(\+|#|[^+#/\x00]*)$")
    ] = None
    # The topic upstream events are published to (no wildcards); may hold {client_id}.
    topic_out: Annotated[str | None, Field(min_length=1, pattern=r"^[^+#\x00]+$")] = None
    # Publish QoS, and the subscriptions' maximum QoS; at_least_once routes subscribe with at most
    # 1, because QoS 2 hands a message over for good at PUBREC (see mediation/endpoints/mqtt5.py).
    qos: Literal[0, 1, 2] = 1
    username: str | None = None
    password: str | None = None
    # MQTT keepalive (seconds) of the endpoint's own connection: it pings after keepalive of
    # silence, and a broker that does not answer within another keepalive is down and every
    # session's consumer ends (5-11 s at the default). Session connections ping only if the
    # broker imposes it.
    keepalive: Annotated[int, Field(ge=5)] = 5
    # The MQTT client id of a session's consumer connection ({endpoint}, {entrypoint},
    # {client_id}): stable per client, so a returning client resumes its MQTT session.
    client_id: str = "mediation-{endpoint}-{client_id}"
    # Seconds the broker keeps a client's MQTT session after its consumer left: what was sent to
    # it and not acked (or queued for it) is redelivered if it comes back in time. 0: no resume.
    session_expiry: Annotated[int, Field(ge=0, le=4294967295)] = 600
    # Seconds for a connection's TCP connect plus CONNACK.
    connect_timeout: Seconds = 10.0
    # Seconds before reconnecting the endpoint's connection; doubles per failure up to 30 s,
    # with jitter.
    retry_interval: Seconds = 1.0
    # Publishes in flight (sent, not yet PUBACK/PUBCOMP) on the endpoint's connection; further
    # publishers wait. Small on purpose: paho scans the in-flight list on every ack.
    publish_window: Annotated[int, Field(ge=1, le=65535)] = 20


class JMSConfig(BrokerTLS):
    # AMQP 1.0: amqp://[user:password@]host[:port] (5672), or amqps:// over TLS (5671; the keys
    # of BrokerTLS).
    url: Annotated[str, Field(pattern=r"^amqps?://")] = "amqp://localhost:5672"
    # The SASL mechanisms offered, space-separated, among PLAIN, ANONYMOUS and EXTERNAL (the
    # TLS client certificate is the identity: amqps:// with cert_file). None: PLAIN when the
    # URL has a user name, else ANONYMOUS.
    sasl_mechanisms: Annotated[str, Field(pattern=_SASL_MECHANISMS)] | None = None
    queue_in: str | None = None  # a node address, may hold {client_id}
    queue_out: str | None = None
    # Seconds the broker may take to answer a connect (TCP and AMQP open), a link attach, or to
    # give a sender credit; a publish that waits longer fails (503).
    open_timeout: Seconds = 10.0
    # Seconds a goodbye may wait for the broker: a consumer's AMQP session end, the connection's
    # close.
    close_timeout: Seconds = 2.0
    # AMQP idle timeout, seconds: a broker that sends nothing (not even heartbeats) for this long
    # is taken as gone, and its consumers end.
    idle_timeout: Seconds = 10.0
    # Seconds before reconnecting after a failure; doubles per failure up to retry_max_interval,
    # each wait jittered (between half and all of it).
    retry_interval: Seconds = 1.0
    retry_max_interval: Seconds = 30.0
    # Publish persistent messages (AMQP header durable; JMS DeliveryMode.PERSISTENT).
    durable: bool = True
    # A consumed message larger than this (encoded) is rejected: no client could be given it.
    max_message_bytes: Size = 16 * MiB


class SolaceConfig(_Table):
    host: str = "tcp://localhost:55555"
    vpn: str = "default"
    username: str = "default"
    password: str = ""
    topic_in: str | None = None  # direct messaging (none, auto, at_most_once)
    topic_out: str | None = None
    # at_least_once consumes from a persistent queue (subscribed to topic_in); may hold {client_id}.
    queue_in: str = "mediation-{client_id}"
    # Create a missing queue_in (durable, non-exclusive) and add the topic_in subscription to it
    # when a consumer binds. False: bind to queues an administrator provisioned.
    create_queues: bool = True
    # Per-consumer buffer for direct messages (none, auto, at_most_once), which have no broker
    # flow control: how far a client may fall behind its topic. Past it, an auto consumer ends
    # with "client too slow"; none and at_most_once drop and flag what they dropped.
    direct_buffer: Size = 256
    # The publishers' own buffer (back-pressure "reject"): a full one waits for the API's ready
    # notice, so a publish never blocks a thread.
    publish_buffer: Size = 256
    # Seconds before reconnecting after a failed connect or an interruption the API could not
    # recover from itself; doubles per failure up to 30 s.
    retry_interval: Seconds = 1.0
    # Passed to MessagingService.builder().from_properties as is (TLS, compression, the API's own
    # reconnection attempts); host, vpn, username and password above win where both are given.
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # The module that implements the Solace API: the real one, or a drop-in laid out like it or
    # exporting its names at the top level (the tests use "tests.solace_fake").
    api: str = "solace.messaging"
    # The broker's management API (SEMP v2, "http(s)://host:port"), for deleting the queues the
    # engine created for clients gone for client_state_ttl (the messaging API cannot delete a
    # queue). None: those queues stay until an administrator removes them.
    semp_url: str | None = None
    semp_username: str = "admin"
    semp_password: str = ""


class EndpointConfig(_Table):
    name: Name
    type: str
    # Seconds a client's per-client broker objects (its Kafka group, MQTT session, RabbitMQ or
    # Solace queue named with {client_id}) are kept after its last session ended: RabbitMQ
    # x-expires, MQTT session expiry (the smaller of this and session_expiry), the Kafka sweep.
    # 0: the engine sets no expiry and sweeps nothing (the broker's own rules apply).
    client_state_ttl: Annotated[float, Field(ge=0)] = 86400.0
    # Distinct clients the endpoint keeps per-client state for (live, or gone for less than
    # client_state_ttl: mediation/client_state.py); a new client beyond it is refused (503).
    # None: no limit.
    max_clients: Annotated[int, Field(ge=1)] | None = None
    config: Any = None  # one of the *Config models above, chosen by ``type``


ENDPOINT_TYPES: dict[str, type[_Table]] = {
    "memory": MemoryConfig,
    "kafka": KafkaConfig,
    "rabbitmq": RabbitMQConfig,
    "mqtt5": MQTT5Config,
    "jms": JMSConfig,
    "solace": SolaceConfig,
}


def endpoint_type_of(settings: object) -> str | None:
    """The endpoint type whose ``*Config`` model ``settings`` is, or None."""
    for name, model in ENDPOINT_TYPES.items():
        if type(settings) is model:
            return name
    return None


# -- routes ------------------------------------------------------------------------------------


class RouteConfig(_Table):
    source: Name
    target: Name
    # Derived from what source and target are; a value given in the file must agree with it.
    direction: Literal["upstream", "downstream", "bridge"] | None = None
    delivery_guarantee: Guarantee = Guarantee.AUTO
    channel_size: Size = 1
    slow_client: Literal["block", "disconnect"] = "block"
    slow_client_timeout: Seconds = 5.0
    lifecycle_events: bool = False
    key: Literal["event_id", "client_id"] = "event_id"
    # Server-side filters (downstream routes): the metadata fields, and "key" (the event key),
    # that clients may filter on with ?filter.NAME=value (mediation.params.Filter). Events a
    # client's filter refuses are acked (delivered to nobody) and counted, never sent.
    filter_fields: tuple[FilterField, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def ack_plan(self) -> AckPlan:
        """What the route's guarantee means for the session, bridge and endpoints (ack_policy)."""
        return plan_for(self.delivery_guarantee)


class Config(_Table):
    engine: EngineConfig = EngineConfig()
    entrypoints: tuple[EntrypointConfig, ...] = ()
    endpoints: tuple[EndpointConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    # Where the config came from, for error messages and the reload watcher; None if built in code.
    source_path: str | None = None

    def entrypoint(self, name: str) -> EntrypointConfig:
        return next(e for e in self.entrypoints if e.name == name)

    def endpoint(self, name: str) -> EndpointConfig:
        return next(e for e in self.endpoints if e.name == name)


# -- loading -----------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute ``${VAR}`` from ``env`` (default: the process environment), validate."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 (byte {error.start})") from None
    return parse_config(text, filename=str(path), env=os.environ if env is None else env)


def parse_config(text: str, *, filename: str = "<config>", env: Mapping[str, str] = {}) -> Config:
    try:
        document = tomli.loads(text)
        return build_config(document, filename=filename, env=env)
    except tomli.TOMLDecodeError as error:
        raise ConfigError(f"{filename}: {error}") from None
    except RecursionError:
        # A config file is input too: tomli and the checks below recurse per nesting level.
        raise ConfigError(f"{filename}: nested too deeply to be a configuration") from None


def build_config(
    document: Mapping[str, Any], *, filename: str = "<config>", env: Mapping[str, str] = {}
) -> Config:
    """Validate an already-parsed document (a dict shaped like the TOML file)."""
    try:
        return _build_config(document, filename=filename, env=env)
    except RecursionError:
        # The checks recurse per nesting level; an embedder's document can nest as deep as it likes.
        raise ConfigError(f"{filename}: nested too deeply to be a configuration") from None


def _build_config(document: Mapping[str, Any], *, filename: str, env: Mapping[str, str]) -> Config:
    def fail(path: Sequence[str | int], problem: str) -> ConfigError:
        return ConfigError(f"{filename}: {format_path(path)}: {problem}")

    document = _substitute_env(document, env, (), fail)
    known = {"engine", "entrypoints", "endpoints", "routes"}
    for key in document:
        if key not in known:
            raise fail([key], "unknown table")

    engine = _validate(EngineConfig, document.get("engine", {}), ["engine"], fail)
    if engine.cursor_secret is not None:
        try:
            check_cursor_secret(engine.cursor_secret)
        except ValueError as error:
            raise fail(["engine", "cursor_secret"], str(error)) from None
    entrypoints = [
        _validate_typed(ENTRYPOINT_TYPES, item, ["entrypoints", i], fail)
        for i, item in enumerate(_array(document, "entrypoints", fail))
    ]
    endpoints = []
    for i, item in enumerate(_array(document, "endpoints", fail)):
        endpoint = _validate(EndpointConfig, item, ["endpoints", i], fail)
        model = ENDPOINT_TYPES.get(endpoint.type)
        if model is None:
            raise fail(["endpoints", i, "type"], _unknown_type(endpoint.type, ENDPOINT_TYPES))
        settings = _validate(
            model,
            {} if endpoint.config is None else endpoint.config,
            ["endpoints", i, "config"],
            fail,
        )
        if isinstance(settings, BrokerTLS):
            settings = _check_broker_tls(settings, ["endpoints", i, "config"], filename, fail)
        endpoints.append(endpoint.model_copy(update={"config": settings}))
    routes = [
        _validate(RouteConfig, item, ["routes", i], fail)
        for i, item in enumerate(_array(document, "routes", fail))
    ]

    kinds: dict[str, str] = {}
    for table, items in (("entrypoints", entrypoints), ("endpoints", endpoints)):
        for i, item in enumerate(items):
            if item.name in kinds:
                raise fail([table, i, "name"], f'duplicate name "{item.name}"')
            kinds[item.name] = table
    entrypoints = [
        _check_entrypoint_tls(
            _check_auth(entrypoint, ["entrypoints", i], filename, fail),
            ["entrypoints", i],
            filename,
            fail,
        )
        for i, entrypoint in enumerate(entrypoints)
    ]
    for i, entrypoint in enumerate(entrypoints):
        _check_params(entrypoint, ["entrypoints", i], fail)
    _check_ports(entrypoints, engine, fail)
    resolved_routes = []
    for i, route in enumerate(routes):
        for key in ("source", "target"):
            name = getattr(route, key)
            if name not in kinds:
                raise fail(["routes", i, key], f'no entrypoint or endpoint named "{name}"')
        direction = _direction(kinds[route.source], kinds[route.target])
        if direction is None:
            raise fail(["routes", i, "target"], "a route cannot join two entrypoints")
        if route.direction is not None and route.direction != direction and direction != "bridge":
            raise fail(
                ["routes", i, "direction"],
                f'is "{route.direction}" but {route.source} -> {route.target} is {direction}',
            )
        if route.source == route.target:
            raise fail(["routes", i, "target"], "a route cannot lead back to its source")
        if route.filter_fields and direction != "downstream":
            raise fail(
                ["routes", i, "filter_fields"],
                "only a route from an endpoint to an entrypoint delivers to clients to filter",
            )
        _check_route_ends(route, i, endpoints, fail)
        _check_templates(route, i, direction, entrypoints, endpoints, fail)
        resolved_routes.append(route.model_copy(update={"direction": direction}))
    return Config(
        engine=engine,
        entrypoints=tuple(entrypoints),
        endpoints=tuple(endpoints),
        routes=tuple(resolved_routes),
        source_path=None if filename.startswith("<") else filename,
    )


def _check_auth(
    entrypoint: EntrypointConfig, path: list[str | int], filename: str, fail: Any
) -> EntrypointConfig:
    """The auth keys agree with each other; a jwt_public_key file is read (the config then holds
    the PEM itself, so a reload notices a changed key as a changed entrypoint)."""
    from .auth import check_secret, public_key_algorithms

    keys = {k: getattr(entrypoint, k) for k in ("jwt_secret", "jwt_public_key")}
    if entrypoint.auth != "bearer":
        if entrypoint.authorize:
            raise fail(
                [*path, "authorize"], 'needs auth = "bearer" (permissions come from the token)'
            )
        for key in ("jwt_secret", "jwt_public_key", "jwt_audience", "jwt_issuer"):
            if getattr(entrypoint, key) is not None:
                raise fail([*path, key], 'is only used with auth = "bearer"')
        return entrypoint
    given = [k for k, v in keys.items() if v is not None]
    if not given:
        raise fail([*path, "auth"], '"bearer" needs jwt_secret or jwt_public_key')
    if len(given) > 1:
        raise fail([*path, "jwt_public_key"], "give jwt_secret or jwt_public_key, not both")
    if entrypoint.jwt_secret is not None:
        try:
            check_secret(entrypoint.jwt_secret)
        except ValueError as error:
            raise fail([*path, "jwt_secret"], str(error)) from None
        return entrypoint
    pem = keys["jwt_public_key"]
    if "-----BEGIN" not in pem:
        base = Path(".") if filename.startswith("<") else Path(filename).parent
        try:
            pem = (base / pem).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, ValueError) as error:
            # ValueError: a path with a NUL in it.
            reason = getattr(error, "strerror", None) or (
                "not UTF-8" if isinstance(error, UnicodeDecodeError) else "not a file name"
            )
            raise fail(
                [*path, "jwt_public_key"], f"cannot read {base / keys['jwt_public_key']}: {reason}"
            ) from None
    try:
        public_key_algorithms(pem)
    except ValueError as error:
        raise fail([*path, "jwt_public_key"], str(error)) from None
    return entrypoint.model_copy(update={"jwt_public_key": pem})


def _check_entrypoint_tls(
    entrypoint: EntrypointConfig, path: list[str | int], filename: str, fail: Any
) -> EntrypointConfig:
    """The TLS keys agree with each other and their files load (the config then holds their
    paths resolved against the config file's directory)."""
    cert, key, ca = entrypoint.tls_cert_file, entrypoint.tls_key_file, entrypoint.tls_client_ca_file
    if (cert is None) != (key is None):
        missing = "tls_key_file" if key is None else "tls_cert_file"
        given = "tls_cert_file" if key is None else "tls_key_file"
        raise fail([*path, missing], f"missing (needed with {given})")
    if ca is not None and cert is None:
        raise fail([*path, "tls_client_ca_file"], "needs tls_cert_file and tls_key_file")
    if entrypoint.identity == "certificate":
        if ca is None:
            raise fail([*path, "identity"], '"certificate" needs tls_client_ca_file')
        if entrypoint.auth != "none":
            raise fail(
                [*path, "identity"], '"certificate" and auth = "bearer" both name the client'
            )
    if cert is None or key is None:
        return entrypoint
    base = Path(".") if filename.startswith("<") else Path(filename).parent
    files = {
        name: str(base / value)
        for name, value in (
            ("tls_cert_file", cert),
            ("tls_key_file", key),
            ("tls_client_ca_file", ca),
        )
        if value is not None
    }
    problem = tls_files_problem(
        files["tls_cert_file"], files["tls_key_file"], files.get("tls_client_ca_file"), server=True
    )
    if problem is not None:
        keys = {"cert": "tls_cert_file", "key": "tls_key_file", "ca": "tls_client_ca_file"}
        raise fail([*path, keys[problem.which]], problem.reason)
    return entrypoint.model_copy(update=files)


def tls_scheme(settings: BrokerTLS) -> bool:
    """Whether the endpoint's broker URL asks for TLS (``mqtts``/``ssl``, ``amqps``)."""
    url = settings.broker if isinstance(settings, MQTT5Config) else getattr(settings, "url", "")
    return url.split("://", 1)[0].lower() in ("mqtts", "ssl", "amqps")


def _check_broker_tls(settings: M, path: list[str | int], filename: str, fail: Any) -> M:
    """The TLS keys of a broker endpoint agree with its URL, and its files exist and parse (the
    key matches its certificate). Returns the settings with the file names made absolute
    (relative ones are relative to the config file)."""
    assert isinstance(settings, BrokerTLS)
    given = settings.model_fields_set
    if not tls_scheme(settings):
        for key in _TLS_KEYS:
            if key in given:
                scheme = "mqtts:// or ssl://" if isinstance(settings, MQTT5Config) else "amqps://"
                raise fail([*path, key], f"is only used over TLS (a {scheme} URL)")
    if settings.key_file is not None and settings.cert_file is None:
        raise fail([*path, "key_file"], "needs cert_file (the certificate it is the key of)")
    mechanisms = (getattr(settings, "sasl_mechanisms", None) or "").split()
    if "EXTERNAL" in mechanisms and settings.cert_file is None:
        raise fail([*path, "sasl_mechanisms"], "EXTERNAL needs a client certificate (cert_file)")
    base = Path(".") if filename.startswith("<") else Path(filename).parent
    resolved = {
        key: str((base / name).absolute())
        for key in ("ca_file", "cert_file", "key_file")
        if (name := getattr(settings, key)) is not None
    }
    problem = tls_files_problem(
        resolved.get("cert_file"), resolved.get("key_file"), resolved.get("ca_file"), server=False
    )
    if problem is not None:
        key = {"cert": "cert_file", "key": "key_file", "ca": "ca_file"}[problem.which]
        raise fail([*path, key], problem.reason)
    return settings.model_copy(update=resolved) if resolved else settings


def _check_params(entrypoint: EntrypointConfig, path: list[str | int], fail: Any) -> None:
    """The path template and the parameter patterns parse (mediation.params)."""
    from .params import PathTemplate

    try:
        PathTemplate.parse(entrypoint.path)
    except ValueError as error:
        raise fail([*path, "path"], str(error)) from None
    try:
        entrypoint.parameters  # noqa: B018 (parsed and cached here, used per request)
    except ValueError as error:
        name, _, problem = str(error).partition(": ")
        raise fail([*path, "params", name], problem) from None


def _check_ports(entrypoints: list[EntrypointConfig], engine: EngineConfig, fail: Any) -> None:
    """Entrypoints on one port can share it (mediation.listeners: paths no request can
    confuse, the same TLS and limits), and none is on the health port."""
    from .listeners import listener_problem

    problem = listener_problem(entrypoints, engine.health_port)
    if problem is not None:
        raise fail(["entrypoints", problem.index, problem.key], problem.reason)


def _check_templates(
    route: RouteConfig,
    index: int,
    direction: str,
    entrypoints: Sequence[EntrypointConfig],
    endpoints: Sequence[EndpointConfig],
    fail: Any,
) -> None:
    """Every ``{name}`` in a name the route's endpoint fills is one the entrypoint at the
    route's other end declares (a bridge has none to declare), and every ``{claims.NAME}`` has
    a token to come from."""
    by_name = {e.name: e for e in entrypoints}
    position = {e.name: i for i, e in enumerate(endpoints)}
    ends: list[
        tuple[int, str, EntrypointConfig | None]
    ] = []  # (endpoint index, the direction its names are filled for, the entrypoint)
    if direction == "downstream":
        ends.append((position[route.source], "downstream", by_name[route.target]))
    elif direction == "upstream":
        ends.append((position[route.target], "upstream", by_name[route.source]))
    else:
        ends += [(position[route.source], "downstream", None)]
        ends += [(position[route.target], "upstream", None)]
    for j, used_for, entrypoint in ends:
        endpoint = endpoints[j]
        for key, template in name_templates(endpoint.type, endpoint.config, used_for):
            for name in Template.parse(template).names:
                if name in BUILTIN or name in ENDPOINT_FILLED:
                    continue
                where = ["endpoints", j, "config", key]
                if entrypoint is None:
                    raise fail(where, f"{{{name}}} cannot be filled on the bridge routes[{index}]")
                if CLAIM_NAME.fullmatch(name):
                    if entrypoint.auth != "bearer":
                        raise fail(
                            where,
                            f'{{{name}}} needs auth = "bearer" on entrypoint '
                            f'"{entrypoint.name}" (routes[{index}])',
                        )
                elif not entrypoint.parameters.declares(name):
                    raise fail(
                        where,
                        f'{{{name}}} is not a parameter of entrypoint "{entrypoint.name}" '
                        f"(routes[{index}]; declare it in its path or [entrypoints.params])",
                    )


# What each endpoint type needs to be consumed from (downstream) and published to (upstream),
# checked here so that a route that could never work fails validation instead of each session.
_CONSUMES_FROM: dict[str, tuple[str, ...]] = {
    "kafka": ("topic_in",),
    "rabbitmq": ("queue_in", "exchange"),
    "mqtt5": ("topic_in",),
    "jms": ("queue_in",),
    "solace": ("topic_in",),  # at_least_once routes consume queue_in, which always has a value
}
_PUBLISHES_TO: dict[str, tuple[str, ...]] = {
    "kafka": ("topic_out",),
    "rabbitmq": ("queue_out", "exchange"),
    "mqtt5": ("topic_out",),
    "jms": ("queue_out",),
    "solace": ("topic_out",),
}


def _check_route_ends(
    route: RouteConfig, index: int, endpoints: Sequence[EndpointConfig], fail: Any
) -> None:
    """A route's endpoint ends have what the route needs: something to publish to where the
    route ends at an endpoint, something to consume from where it starts at one."""
    position = {e.name: i for i, e in enumerate(endpoints)}
    if route.target in position:
        _require(endpoints, position[route.target], _PUBLISHES_TO, "publish to", index, fail)
    if route.source in position:
        source = endpoints[position[route.source]]
        if source.type == "solace" and route.ack_plan.redelivers_unconfirmed:
            return
        _require(endpoints, position[route.source], _CONSUMES_FROM, "consume from", index, fail)


def _require(
    endpoints: Sequence[EndpointConfig],
    position: int,
    table: Mapping[str, tuple[str, ...]],
    verb: str,
    route_index: int,
    fail: Any,
) -> None:
    endpoint = endpoints[position]
    keys = table.get(endpoint.type, ())
    if keys and all(getattr(endpoint.config, key) is None for key in keys):
        end = "target" if verb == "publish to" else "source"
        wanted = " or ".join(f"endpoints[{position}].config.{key}" for key in keys)
        raise fail(
            ["routes", route_index, end],
            f'endpoint "{endpoint.name}" has nothing to {verb} (set {wanted})',
        )


def format_path(path: Sequence[str | int]) -> str:
    """``["routes", 2, "target"]`` -> ``routes[2].target`` (0-based, dotted)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        # A key that is not a bare TOML key is quoted as TOML would (escapes keep one line).
        key = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
        text += f".{key}" if text else key
    return text


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _direction(source_kind: str, target_kind: str) -> str | None:
    return {
        ("entrypoints", "endpoints"): "upstream",
        ("endpoints", "entrypoints"): "downstream",
        ("endpoints", "endpoints"): "bridge",
    }.get((source_kind, target_kind))


def _array(document: Mapping[str, Any], key: str, fail: Any) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise fail([key], f"must be an array of tables ([[{key}]])")
    return value


def _unknown_type(name: object, types: Mapping[str, object]) -> str:
    # Quoted as JSON: a line break in the value stays escaped, the message one line.
    return f"unknown type {json.dumps(name, default=str)} (expected one of: {', '.join(types)})"


def _validate_typed(
    types: Mapping[str, type[_Table]], item: Any, path: list[str | int], fail: Any
) -> Any:
    if not isinstance(item, Mapping):
        raise fail(path, "must be a table")
    if "type" not in item:
        raise fail([*path, "type"], "missing required key")
    model = types.get(item["type"]) if isinstance(item["type"], str) else None
    if model is None:
        raise fail([*path, "type"], _unknown_type(item["type"], types))
    return _validate(model, item, path, fail)


def _validate(model: type[M], item: Any, path: list[str | int], fail: Any) -> M:
    if not isinstance(item, Mapping):
        raise fail(path, "must be a table")
    try:
        return model.model_validate(item)
    except ValidationError as error:
        first = error.errors()[0]
        problem = {
            "extra_forbidden": "unknown key",
            "missing": "missing required key",
        }.get(first["type"], first["msg"][0].lower() + first["msg"][1:])
        raise fail([*path, *first["loc"]], problem) from None


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute_env(
    value: Any, env: Mapping[str, str], path: tuple[str | int, ...], fail: Any
) -> Any:
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            if match.group(1) not in env:
                raise fail(path, f"environment variable {match.group(1)} is not set")
            return env[match.group(1)]

        return _ENV_REFERENCE.sub(lookup, value)
    if isinstance(value, Mapping):
        return {k: _substitute_env(v, env, (*path, k), fail) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, env, (*path, i), fail) for i, v in enumerate(value)]
    return value
