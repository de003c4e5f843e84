"""Client-chosen stream names: parameters from a request's path and query, the templates they
fill, and the checks that keep a value from ever becoming more than a name. Pure.

An entrypoint's ``path`` may hold ``{name}`` segments (``"/orders/{order_id}"``) and its
``[entrypoints.params]`` table maps parameters to full-match regular expressions; a path
parameter without an entry gets :data:`DEFAULT_PATTERN`, a query parameter is one only when it
has an entry. Endpoint names (topics, queues, keys, addresses, group ids) are templates::

    spec = EntrypointParams.from_config(path="/orders/{order_id}", params={})
    values = spec.resolve(raw_path="/orders/42", query={}, claims={})   # {"order_id": "42"}
    Template.parse("orders/{order_id}/events").fill(values)             # "orders/42/events"

Why a value can never inject a wildcard or a level separator, structurally rather than by a
list of bad strings alone:

- a template is parsed once into literal parts and slots; a value only ever goes into its slot,
  whole, and a filled name is never parsed again (what the template did not put there is not a
  wildcard position);
- a path parameter is one whole path segment, percent-decoded once and then matched: ``%2F`` is a
  ``/`` inside the value, which the pattern then refuses, never a segment boundary;
- patterns are full matches compiled with ``re.ASCII`` (``\\w`` and ``\\d`` are ASCII only, so no
  look-alike letter or digit passes), and a value is printable ASCII of at most
  :data:`MAX_VALUE_CHARS` characters whatever the pattern says;
- the wildcard characters of every broker (:data:`WILDCARDS`: MQTT ``+ #``, AMQP 0-9-1 ``* #``,
  Solace ``* >``) and the template braces are refused in every value, whatever the pattern says;
  the level separators (``/`` and ``.``) are allowed only where the operator's pattern allows them
  (the default pattern does not);
- each name kind then checks the filled name against its broker's rule (:data:`NAME_KINDS`:
  Kafka's topic charset and length, the length limits of the others).

``{client_id}`` and ``{entrypoint}`` are filled like parameters; ``{claims.NAME}`` is a string
claim of the verified token, held to the pattern ``claims.NAME`` in ``[entrypoints.params]`` or
to the default pattern. ``{endpoint}`` and ``{session_id}`` are left for the endpoints to fill.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from .errors import BadRequest, Forbidden

# The client-id rule without ".": one level in every broker's names.
DEFAULT_PATTERN = r"[A-Za-z0-9_:@-]{1,128}"
MAX_VALUE_CHARS = 256
# Never in a value, whatever its pattern: every broker's wildcards, and the template braces.
WILDCARDS = frozenset("+#*>")
NEVER_IN_VALUES = WILDCARDS | frozenset("{}")
# Filled by fill() from the session itself, and left in place for the endpoints to fill.
BUILTIN = frozenset({"client_id", "entrypoint"})
ENDPOINT_FILLED = frozenset({"endpoint", "session_id"})
# Query parameters the engine reads itself: never a stream parameter.
RESERVED_QUERY = frozenset({"client_id", "access_token"})

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
CLAIM_NAME = re.compile(r"claims\.([A-Za-z_][A-Za-z0-9_-]{0,63})")


# -- templates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    name: str


@dataclass(frozen=True)
class Template:
    """A name with ``{placeholder}`` slots, parsed once."""

    parts: tuple[str | Slot, ...]

    @staticmethod
    def parse(text: str) -> Template:
        return _parse(text)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts if isinstance(p, Slot))

    @property
    def parameters(self) -> tuple[str, ...]:
        """The slots a client or its token fills (not the built-in ones)."""
        return tuple(n for n in self.names if n not in BUILTIN and n not in ENDPOINT_FILLED)

    def fill(self, values: Mapping[str, str]) -> str:
        """The name with each slot that has a value filled; slots without one (``{endpoint}``,
        ``{session_id}``) stay as they are. :class:`BadRequest` for a value that breaks
        :func:`check_value`."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = values.get(part.name)
            if value is None:
                out.append(f"{{{part.name}}}")
            else:
                check_value(part.name, value)
                out.append(value)
        return "".join(out)


@lru_cache(maxsize=1024)
def _parse(text: str) -> Template:
    parts: list[str | Slot] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()])
        parts.append(Slot(match.group(1)))
        position = match.end()
    if position < len(text):
        parts.append(text[position:])
    return Template(tuple(parts))


def check_value(name: str, value: str) -> None:
    """:class:`BadRequest` unless ``value`` may go into a name: 1 to :data:`MAX_VALUE_CHARS`
    printable ASCII characters, none of them a wildcard or a brace. The value is not echoed."""
    if not 1 <= len(value) <= MAX_VALUE_CHARS:
        raise BadRequest(f"parameter {name}: must be 1 to {MAX_VALUE_CHARS} characters")
    for char in value:
        if not "!" <= char <= "~" or char in NEVER_IN_VALUES:
            raise BadRequest(f"parameter {name}: character not allowed in a name")


def fill(template: str, values: Mapping[str, str]) -> str:
    """``Template.parse(template).fill(values)`` (a name without a slot is returned as is)."""
    if "{" not in template:
        return template
    return _parse(template).fill(values)


# -- what each endpoint name is ----------------------------------------------------------------


@dataclass(frozen=True)
class NameKind:
    """One broker's rule for one kind of name, checked on the filled name."""

    kind: str
    max_bytes: int
    charset: re.Pattern[str] | None = None  # the whole name must full-match it
    reserved: frozenset[str] = frozenset()

    def check(self, name: str) -> None:
        if len(name.encode()) > self.max_bytes:
            raise BadRequest(f"{self.kind} would be longer than {self.max_bytes} bytes")
        if self.charset is not None and not self.charset.fullmatch(name):
            raise BadRequest(f"{self.kind} would break its broker's naming rule")
        if name in self.reserved:
            raise BadRequest(f"{self.kind} would be a reserved name")


_KAFKA_TOPIC = NameKind(
    "kafka topic", 249, re.compile(r"[A-Za-z0-9._-]+", re.ASCII), frozenset({".", ".."})
)
_ANY = NameKind("name", 64 * 1024)
_RABBIT = NameKind("rabbitmq name", 255)
_MQTT = NameKind("mqtt topic", 65535)
_SOLACE_TOPIC = NameKind("solace topic", 250)
_SOLACE_QUEUE = NameKind("solace queue", 200)

# endpoint type -> config field -> (direction that uses it, its rule). "downstream" fields are
# filled per consumer (Subscription.fill), "upstream" ones per publish (Outbound.fill).
NAME_KINDS: dict[str, dict[str, tuple[str, NameKind]]] = {
    "memory": {"topic_in": ("downstream", _ANY), "topic_out": ("upstream", _ANY)},
    "kafka": {
        "topic_in": ("downstream", _KAFKA_TOPIC),
        "group_id": ("downstream", _ANY),
        "topic_out": ("upstream", _KAFKA_TOPIC),
    },
    "rabbitmq": {
        "queue_in": ("downstream", _RABBIT),
        "exchange": ("both", _RABBIT),
        "binding_key": ("downstream", _RABBIT),
        "session_queue": ("downstream", _RABBIT),
        "queue_out": ("upstream", _RABBIT),
        "routing_key": ("upstream", _RABBIT),
    },
    "mqtt5": {
        "topic_in": ("downstream", _MQTT),
        "client_id": ("downstream", _MQTT),
        "topic_out": ("upstream", _MQTT),
    },
    "jms": {"queue_in": ("downstream", _ANY), "queue_out": ("upstream", _ANY)},
    "solace": {
        "topic_in": ("downstream", _SOLACE_TOPIC),
        "queue_in": ("downstream", _SOLACE_QUEUE),
        "topic_out": ("upstream", _SOLACE_TOPIC),
    },
}


# The names a stream is: what permissions (mediation.permissions) are checked against, per
# endpoint type and direction, in order of preference (the first one set; RabbitMQ consumes
# queue_in when set, else its exchange binding).
STREAM_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "memory": {"downstream": ("topic_in",), "upstream": ("topic_out",)},
    "kafka": {"downstream": ("topic_in",), "upstream": ("topic_out",)},
    "rabbitmq": {
        "downstream": ("queue_in", "binding_key"),
        "upstream": ("queue_out", "routing_key"),
    },
    "mqtt5": {"downstream": ("topic_in",), "upstream": ("topic_out",)},
    "jms": {"downstream": ("queue_in",), "upstream": ("queue_out",)},
    "solace": {"downstream": ("topic_in", "queue_in"), "upstream": ("topic_out",)},
}


def stream_name(
    endpoint_type: str, config: Any, direction: str, values: Mapping[str, str]
) -> str | None:
    """The filled name of the stream an endpoint consumes (``"downstream"``) or publishes to
    (``"upstream"``) for a client with ``values``; None if it has none."""
    for key in STREAM_FIELDS.get(endpoint_type, {}).get(direction, ()):
        template = getattr(config, key, None)
        if isinstance(template, str):
            return fill(template, values)
    return None


def name_templates(endpoint_type: str, config: Any, direction: str) -> Iterable[tuple[str, str]]:
    """(field, template) of every name an endpoint of ``endpoint_type`` fills for ``direction``
    (``"downstream"``: its consumers; ``"upstream"``: its publishes)."""
    for key, (used_for, _) in NAME_KINDS.get(endpoint_type, {}).items():
        if used_for in (direction, "both"):
            template = getattr(config, key, None)
            if isinstance(template, str):
                yield key, template


def check_names(endpoint_type: str, config: Any, direction: str, values: Mapping[str, str]) -> None:
    """Fill every name the endpoint would fill for ``direction`` and check it against its
    broker's rule: :class:`BadRequest` (a value, or the name it makes, is not allowed),
    :class:`Forbidden` (a ``{claims.NAME}`` the token does not carry usably)."""
    kinds = NAME_KINDS.get(endpoint_type, {})
    for key, template in name_templates(endpoint_type, config, direction):
        parsed = _parse(template)
        for name in parsed.parameters:
            if name not in values:
                claim = CLAIM_NAME.fullmatch(name)
                if claim is not None:
                    raise Forbidden(f"token has no usable string claim {claim.group(1)!r}")
                raise BadRequest(f"parameter {name} missing")
        filled = parsed.fill(values)
        if not ENDPOINT_FILLED.intersection(parsed.names):
            kinds[key][1].check(filled)


# -- entrypoints: where the values come from ---------------------------------------------------


@dataclass(frozen=True)
class PathTemplate:
    """An entrypoint's ``path``: literal segments and ``{name}`` segments."""

    text: str
    segments: tuple[str | Slot, ...]

    @staticmethod
    def parse(text: str) -> PathTemplate:
        """ValueError naming the problem for a path that is not a valid template."""
        if not text.startswith("/"):
            raise ValueError("must start with /")
        segments: list[str | Slot] = []
        for segment in text.split("/")[1:]:
            if "{" in segment or "}" in segment:
                match = re.fullmatch(r"\{([^{}]*)\}", segment)
                if match is None:
                    raise ValueError("a {parameter} must be a whole path segment")
                name = match.group(1)
                if not PARAMETER_NAME.fullmatch(name):
                    raise ValueError(f"{{{name}}} is not a parameter name ([A-Za-z_][A-Za-z0-9_]*)")
                if name in BUILTIN or name in ENDPOINT_FILLED:
                    raise ValueError(f"{{{name}}} is filled by the engine, not the path")
                if Slot(name) in segments:
                    raise ValueError(f"{{{name}}} appears twice")
                segments.append(Slot(name))
            else:
                segments.append(segment)
        return PathTemplate(text, tuple(segments))

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments if isinstance(s, Slot))

    @property
    def prefix(self) -> str:
        """The literal part before the first parameter (the whole path when there is none)."""
        literal: list[str] = []
        for segment in self.segments:
            if isinstance(segment, Slot):
                return "/" + "/".join(literal) + "/"
            literal.append(segment)
        return self.text

    def match(
        self, raw_path: str, patterns: Mapping[str, re.Pattern[str]]
    ) -> dict[str, str] | None:
        """The path parameters of a request to ``raw_path`` (still percent-encoded); None when
        the path is not this entrypoint's (404); :class:`BadRequest` when it is (it starts with
        the literal prefix) but a parameter is missing or does not match its pattern."""
        if not self.parameters:
            return {} if unquote(raw_path) == self.text else None
        prefix = self.prefix
        if not (raw_path.startswith(prefix) or raw_path + "/" == prefix):
            return None
        given = raw_path.split("/")[1:]
        if len(given) != len(self.segments):
            raise BadRequest(f"path must be {self.text}")
        values: dict[str, str] = {}
        for segment, raw in zip(self.segments, given, strict=True):
            if isinstance(segment, str):
                if unquote(raw) != segment:
                    raise BadRequest(f"path must be {self.text}")
                continue
            if not raw:
                raise BadRequest(f"parameter {segment.name} missing")
            values[segment.name] = _checked(segment.name, unquote(raw), patterns[segment.name])
        return values


def _checked(name: str, value: str, pattern: re.Pattern[str]) -> str:
    check_value(name, value)  # the length first: no pattern runs on a 10 KiB value
    if not pattern.fullmatch(value):
        raise BadRequest(f"parameter {name}: does not match {pattern.pattern}")
    return value


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A parameter's pattern (``re.ASCII``); ValueError if it is not a regular expression."""
    try:
        return re.compile(pattern, re.ASCII)
    except re.error as error:
        raise ValueError(f"not a regular expression: {error}") from None


@dataclass(frozen=True)
class EntrypointParams:
    """An entrypoint's parameters: its path template and every declared pattern."""

    path: PathTemplate
    patterns: Mapping[str, re.Pattern[str]]  # path and query parameters
    query: tuple[str, ...]  # the query parameters
    claim_patterns: Mapping[str, re.Pattern[str]]  # claim name -> pattern

    @staticmethod
    def from_config(path: str, params: Mapping[str, str]) -> EntrypointParams:
        """ValueError (naming the parameter) for a path or a pattern that is not valid; the
        config module checks this when it loads the file."""
        template = PathTemplate.parse(path)
        patterns: dict[str, re.Pattern[str]] = {}
        claims: dict[str, re.Pattern[str]] = {}
        query = []
        for name, pattern in params.items():
            claim = CLAIM_NAME.fullmatch(name)
            try:
                compiled = compile_pattern(pattern)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
            if claim is not None:
                claims[claim.group(1)] = compiled
                continue
            if not PARAMETER_NAME.fullmatch(name):
                raise ValueError(f"{name}: not a parameter name ([A-Za-z_][A-Za-z0-9_]*)")
            if name in BUILTIN or name in ENDPOINT_FILLED or name in RESERVED_QUERY:
                raise ValueError(f"{name}: filled by the engine, not a parameter")
            patterns[name] = compiled
            if name not in template.parameters:
                query.append(name)
        default = compile_pattern(DEFAULT_PATTERN)
        for name in template.parameters:
            patterns.setdefault(name, default)
        return EntrypointParams(template, patterns, tuple(query), claims)

    def declares(self, name: str) -> bool:
        """Whether a template may use ``{name}`` on a route of this entrypoint (a claim is
        always declared: whether the token has it is known per client)."""
        return name in self.patterns or CLAIM_NAME.fullmatch(name) is not None

    def resolve(self, raw_path: str, query: Mapping[str, list[str]]) -> dict[str, str] | None:
        """Every parameter value of a request (``raw_path`` still percent-encoded, ``query`` as
        :func:`urllib.parse.parse_qs` decoded it, once); None when the path is not this
        entrypoint's; :class:`BadRequest` when a value is missing, repeated or does not match
        its pattern."""
        values = self.path.match(raw_path, self.patterns)
        if values is None:
            return None
        for name in self.query:
            given = query.get(name)
            if not given:
                raise BadRequest(f"parameter {name} missing")
            if len(given) > 1:
                raise BadRequest(f"parameter {name} given more than once")
            values[name] = _checked(name, given[0], self.patterns[name])
        return values

    def resolve_subscriptions(
        self, raw_path: str, query: Mapping[str, list[str]], max_subscriptions: int
    ) -> list[dict[str, str]] | None:
        """As :meth:`resolve`, but a query parameter given several times (``?symbol=A&symbol=B``)
        makes one value set per value: one per combination when several are repeated, in the
        order given (a value repeated is taken once). :class:`BadRequest` when that would be
        more than ``max_subscriptions``, before any value is checked."""
        values = self.path.match(raw_path, self.patterns)
        if values is None:
            return None
        choices: list[tuple[str, list[str]]] = []
        count = 1
        for name in self.query:
            given = list(dict.fromkeys(query.get(name) or ()))
            if not given:
                raise BadRequest(f"parameter {name} missing")
            count *= len(given)
            if count > max_subscriptions:
                raise BadRequest(f"more than max_subscriptions ({max_subscriptions}) subscriptions")
            choices.append((name, [_checked(name, value, self.patterns[name]) for value in given]))
        combinations = [values]
        for name, given in choices:
            combinations = [{**c, name: value} for c in combinations for value in given]
        return combinations

    def override(self, base: Mapping[str, str], given: object) -> dict[str, str]:
        """``base`` with the parameters of a WebSocket ``{"subscribe": {...}}`` (a JSON object of
        declared parameters, each a string matching its pattern) put in; :class:`BadRequest`
        naming the first problem."""
        if not isinstance(given, dict) or not given:
            raise BadRequest("subscribe and unsubscribe take an object of parameters")
        values = dict(base)
        for name, value in given.items():
            if name not in self.patterns:
                raise BadRequest("not a parameter of this entrypoint")
            if not isinstance(value, str):
                raise BadRequest(f"parameter {name}: must be a string")
            values[name] = _checked(name, value, self.patterns[name])
        return values

    def claims(self, claims: Mapping[str, Any]) -> dict[str, str]:
        """``claims.NAME`` -> value, for each usable claim of a verified token."""
        return usable_claims(claims, self.claim_patterns) if claims else {}


def usable_claims(
    claims: Mapping[str, Any], patterns: Mapping[str, re.Pattern[str]]
) -> dict[str, str]:
    """``claims.NAME`` -> value for every string claim that may go into a name (its pattern from
    ``[entrypoints.params]``, else the default one); the others are left out, so a template
    that needs one refuses the client (403) rather than this refusing every client."""
    default = compile_pattern(DEFAULT_PATTERN)
    usable = {}
    for name, value in claims.items():
        if not isinstance(value, str) or not isinstance(name, str):
            continue
        if not 1 <= len(value) <= MAX_VALUE_CHARS:
            continue
        try:
            check_value(name, value)
        except BadRequest:
            continue
        if patterns.get(name, default).fullmatch(value):
            usable[f"claims.{name}"] = value
    return usable


# -- server-side filters -----------------------------------------------------------------------

# ``?filter.NAME=value``: a query parameter with this prefix is a filter, never a parameter (a
# parameter name has no ".").
FILTER_PREFIX = "filter."
# The field that is the event's key rather than a metadata entry.
KEY_FIELD = "key"
# A filterable field: a metadata name (mediation.metadata's rule).
FILTER_FIELD = re.compile(r"[a-z0-9._-]{1,64}", re.ASCII)
# A client's filter is input too: bounded before anything is kept of it.
MAX_FILTER_FIELDS = 16
MAX_FILTER_VALUES = 64  # per field
MAX_FILTER_VALUE_CHARS = 1024  # metadata's MAX_VALUE


def event_key(metadata: Mapping[str, str]) -> str | None:
    """The event's key: the metadata entry ``key`` (Kafka's message key), else RabbitMQ's
    ``routing_key``; None when the event has neither."""
    key = metadata.get(KEY_FIELD)
    return metadata.get("routing_key") if key is None else key


@dataclass(frozen=True)
class Filter:
    """A client's server-side filter: field -> the values it accepts. An event matches when,
    for every field, its value equals one of the field's values (an event without the field
    matches none)."""

    fields: Mapping[str, frozenset[str]]

    def __bool__(self) -> bool:
        return bool(self.fields)

    def matches(self, metadata: Mapping[str, str]) -> bool:
        for field, values in self.fields.items():
            value = event_key(metadata) if field == KEY_FIELD else metadata.get(field)
            if value not in values:
                return False
        return True

    def check_allowed(self, allowed: Iterable[str], route: str) -> None:
        """:class:`BadRequest` for a field the route does not let clients filter on."""
        allowed = frozenset(allowed)
        for field in self.fields:
            if field not in allowed:
                raise BadRequest(f"filter.{field}: route {route} does not filter on {field!r}")


NO_FILTER = Filter({})


def filter_from_query(query: Mapping[str, list[str]]) -> Filter:
    """The ``filter.NAME`` parameters of a query (as :func:`urllib.parse.parse_qs` decoded
    it); :class:`BadRequest` for a field name that cannot be one, or one over the bounds."""
    fields: dict[str, frozenset[str]] = {}
    for name, values in query.items():
        if not name.startswith(FILTER_PREFIX):
            continue
        field = name[len(FILTER_PREFIX) :]
        if not FILTER_FIELD.fullmatch(field):
            raise BadRequest("filter: a field is [a-z0-9._-], 1 to 64 characters")
        if len(fields) >= MAX_FILTER_FIELDS:
            raise BadRequest(f"filter: at most {MAX_FILTER_FIELDS} fields")
        if len(values) > MAX_FILTER_VALUES:
            raise BadRequest(f"filter.{field}: at most {MAX_FILTER_VALUES} values")
        if any(len(value) > MAX_FILTER_VALUE_CHARS for value in values):
            raise BadRequest(f"filter.{field}: a value is at most {MAX_FILTER_VALUE_CHARS} chars")
        fields[field] = frozenset(values)
    return Filter(fields) if fields else NO_FILTER
