"""Hypothesis property tests on the pure modules: whatever comes in, only the documented error.

- config: any text through ``parse_config`` and any nested document through ``build_config`` is a
  :class:`Config` or one one-line :class:`ConfigError` naming the file, never another exception;
- SSE framing: what :func:`frame_event` writes is read back exactly by httpx-sse's decoder (the
  WHATWG algorithm), fed in arbitrary chunks;
- the ``mediation.v1`` envelope: encode/decode round trips, and any client message is a
  confirmation, a publication, or :class:`BadRequest`;
- identity and admission: any header, query, origin or token is admitted or refused with
  BadRequest / OriginNotAllowed / Unauthorized;
- metadata: what a client may put into broker metadata never holds a control character, a
  reserved or overlong name or value, nor more than ``MAX_ENTRIES`` entries.

The deterministic examples of config bugs these properties found (now fixed) are kept at the end,
as regression tests.
"""

from __future__ import annotations

import base64
import codecs
import itertools
import json
import os
import re
import string
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode

import jwt
import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mediation.auth import BearerVerifier
from mediation.config import ENDPOINT_TYPES, ENTRYPOINT_TYPES, build_config, parse_config
from mediation.envelope import (
    Confirmation,
    Publication,
    decode_client_message,
    encode_event,
    encode_reply,
)
from mediation.errors import BadRequest, ConfigError, OriginNotAllowed, Unauthorized
from mediation.identity import CLIENT_ID, admit_client, client_identity
from mediation.metadata import (
    MAX_ENTRIES,
    MAX_NAME,
    MAX_VALUE,
    RESERVED,
    client_metadata,
    header_safe,
)
from mediation.sse import frame_comment, frame_event

# The same examples on every run (CI stays deterministic), enough to find shallow bugs, few
# enough that the module takes seconds. MEDIATION_FUZZ_EXAMPLES=5000 explores further, with a
# new random seed each run.
_EXPLORE = os.environ.get("MEDIATION_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_EXPLORE or 300),
    derandomize=_EXPLORE is None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Any Unicode character, lone surrogates included (JSON's "\ud800" escape produces them).
ANY_CHAR = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr))
# Any character a Python str can encode as UTF-8.
UNICODE_CHAR = st.characters(exclude_categories=["Cs"])


# -- config ------------------------------------------------------------------------------------

FILENAME = "gw.toml"


def assert_config_error(error: ConfigError) -> None:
    message = str(error)
    assert message.startswith(f"{FILENAME}: "), message
    assert not re.search(r"[\r\n]", message), message


def check_parse(text: str) -> None:
    try:
        parse_config(text, filename=FILENAME)
    except ConfigError as error:
        assert_config_error(error)


def check_build(document: Mapping[str, Any]) -> None:
    try:
        build_config(document, filename=FILENAME, env={"SET": "value"})
    except ConfigError as error:
        assert_config_error(error)


keys = st.text(max_size=8)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
)
# A type that is a list or a table, not a string, must be refused too.
type_values = st.one_of(
    scalars, st.lists(scalars, max_size=2), st.dictionaries(keys, scalars, max_size=2)
)
junk = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=10,
)
names = st.sampled_from(["ws", "sse", "post", "poll", "mem", "kafka", "bad name", ""])
durations = st.one_of(st.floats(allow_nan=True), st.integers(-2, 100), junk)
sizes = st.one_of(st.integers(-1, 2**40), junk)


def some_of(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A table with the required keys, some optional ones, and now and then an unknown key."""
    table = st.fixed_dictionaries(required, optional=optional)
    return st.one_of(
        table,
        st.tuples(table, keys, junk).map(lambda t: {**t[0], t[1]: t[2]}),
    )


entrypoint_tables = some_of(
    {"name": names, "type": st.sampled_from(list(ENTRYPOINT_TYPES)) | type_values},
    {
        "port": st.integers(-5, 70_000) | junk,
        "path": st.text(max_size=10),
        "allowed_origins": st.lists(st.text(max_size=10), max_size=3) | junk,
        "max_message_bytes": sizes,
        "max_sessions": sizes,
        "max_header_bytes": sizes,
        "header_timeout": durations,
        "frame_type": st.sampled_from(["auto", "text", "binary", "other"]),
        "heartbeat_interval": durations,
        "max_body": sizes,
        "poll_timeout": durations,
        "session_idle_timeout": durations,
        "auth": st.sampled_from(["none", "bearer", "basic"]),
        "jwt_secret": st.text(max_size=40) | st.just("${SET}") | st.just("${UNSET}"),
        "jwt_public_key": st.text(max_size=20)
        | st.just("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----"),
        "identity_claim": st.text(max_size=5),
    },
)
endpoint_config_tables = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            key: st.text(max_size=10) | junk
            for key in ("topic_in", "topic_out", "queue_in", "queue_out", "brokers", "url")
        },
    ),
    junk,
)
endpoint_tables = some_of(
    {"name": names, "type": st.sampled_from(list(ENDPOINT_TYPES)) | type_values},
    {"config": endpoint_config_tables},
)
route_tables = some_of(
    {"source": names, "target": names},
    {
        "direction": st.sampled_from(["upstream", "downstream", "bridge", "sideways"]),
        "delivery_guarantee": st.sampled_from(
            ["none", "auto", "at_most_once", "at_least_once", "maybe"]
        ),
        "channel_size": sizes,
        "slow_client": st.sampled_from(["block", "disconnect", "panic"]),
        "slow_client_timeout": durations,
        "lifecycle_events": st.booleans() | junk,
        "key": st.sampled_from(["event_id", "client_id", "payload"]),
    },
)
engine_tables = some_of(
    {},
    {
        "host": st.text(max_size=10) | st.just("${SET}"),
        "health_port": st.integers(-1, 70_000) | junk,
        "log_level": st.sampled_from(["debug", "info", "loud"]),
        "packet_log": st.booleans() | junk,
        "reload_interval": durations,
        "shutdown_timeout": durations,
    },
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "engine": engine_tables | junk,
        "entrypoints": st.lists(entrypoint_tables | junk, max_size=4) | junk,
        "endpoints": st.lists(endpoint_tables | junk, max_size=3) | junk,
        "routes": st.lists(route_tables | junk, max_size=4) | junk,
        "extra": junk,
    },
)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_string(text: str) -> str:
    escaped = "".join(
        "\\" + c if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c
        for c in text
    )
    return f'"{escaped}"'


def toml_value(value: Any) -> str:
    """Inline TOML for a JSON-like value (None has no TOML form: an empty inline table)."""
    if value is None:
        return "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        return repr(value) if abs(value) != float("inf") else "inf" if value > 0 else "-inf"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(document: Mapping[str, Any]) -> str:
    """The document as a TOML file: ``[table]`` and ``[[array]]`` sections where they fit."""
    lines = []
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"[{toml_key(key)}]")
            lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for table in value:
                lines.append(f"[[{toml_key(key)}]]")
                lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items())
        else:
            lines.insert(0, f"{toml_key(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(st.text())
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    check_parse(text)


@FUZZ
@given(documents, st.data())
def test_any_toml_document_is_a_config_or_a_config_error(
    document: dict[str, Any], data: st.DataObject
) -> None:
    text = toml_document(document)
    check_parse(text)
    # And the same file damaged: a line dropped, or a character changed.
    lines = text.splitlines()
    if lines:
        index = data.draw(st.integers(0, len(lines) - 1))
        check_parse("\n".join(lines[:index] + lines[index + 1 :]))
        position = data.draw(st.integers(0, len(text) - 1))
        damaged = text[:position] + data.draw(st.characters()) + text[position + 1 :]
        check_parse(damaged)


@FUZZ
@given(documents)
def test_any_document_is_a_config_or_a_config_error(document: dict[str, Any]) -> None:
    check_build(document)


@FUZZ
@given(st.dictionaries(keys | st.integers(), junk, max_size=5))
def test_any_mapping_is_a_config_or_a_config_error(document: dict[Any, Any]) -> None:
    check_build(document)


@pytest.mark.parametrize("depth", [50, 200, 990])
def test_moderately_deep_documents_are_config_errors(depth: int) -> None:
    # Below Python's recursion limit (1000 frames) these are plain validation errors.
    nested: Any = "x"
    for _ in range(depth // 4):  # each level costs a few frames in the checks
        nested = {"a": nested}
    check_build({"engine": nested})
    check_build({"entrypoints": [{"type": "websocket", "name": "w", "port": 0, "path": nested}]})


# -- SSE framing -------------------------------------------------------------------------------

one_line = st.text(st.characters(exclude_characters="\r\n\0", exclude_categories=["Cs"]))
event_names = st.text(
    st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), min_size=1
)


def decode_stream(stream: bytes, cuts: list[int]) -> list[dict[str, str]]:
    """httpx-sse's reading of ``stream`` delivered in pieces cut at ``cuts`` (as on a socket):
    UTF-8 decoded incrementally, split into lines, then the WHATWG field algorithm."""
    text_decoder = codecs.getincrementaldecoder("utf-8")()
    lines, decoder = SSELineDecoder(), SSEDecoder()
    events = []
    bounds = [0, *sorted(set(cuts)), len(stream)]

    def feed(line_list: list[str]) -> None:
        for line in line_list:
            event = decoder.decode(line)
            if event is not None:
                events.append({"event": event.event, "id": event.id, "data": event.data})

    for start, end in itertools.pairwise(bounds):
        text = text_decoder.decode(stream[start:end])
        if text:
            feed(lines.decode(text))
    feed(lines.flush())
    return events


def normalised(data: str) -> str:
    return data.replace("\r\n", "\n").replace("\r", "\n")


@FUZZ
@given(
    st.lists(
        st.tuples(st.text(UNICODE_CHAR), one_line, event_names | st.none()),
        min_size=1,
        max_size=5,
    ),
    st.lists(st.integers(0, 10_000), max_size=8),
    st.booleans(),
)
def test_framed_events_are_read_back_exactly_by_a_spec_parser(
    events: list[tuple[str, str, str | None]], cuts: list[int], comments: bool
) -> None:
    stream = b"".join(
        (frame_comment("keepalive") if comments else b"")
        + frame_event(data, event_id=event_id, event=event)
        for data, event_id, event in events
    )
    cuts = [cut for cut in cuts if cut < len(stream)]
    assert decode_stream(stream, cuts) == [
        {"event": event or "message", "id": event_id, "data": normalised(data)}
        for data, event_id, event in events
    ]


@FUZZ
@given(st.text(), st.text(), st.text())
def test_frame_event_frames_any_content(data: str, event_id: str, event: str) -> None:
    """Never raises on content: an id SSE cannot carry is left out, a line break in a name
    becomes U+FFFD."""
    [read] = decode_stream(frame_event(data, event_id=event_id, event=event or None), [])
    assert read["id"] == (event_id if not re.search(r"[\r\n\0]", event_id) else "")
    assert read["event"] == (re.sub(r"\r\n|\r|\n", "\ufffd", event) or "message")
    assert read["data"] == normalised(data)


@FUZZ
@given(st.text())
def test_a_comment_is_never_an_event(text: str) -> None:
    stream = frame_comment(text) + frame_event("after", event_id="1")
    assert decode_stream(stream, []) == [{"event": "message", "id": "1", "data": "after"}]


# -- the mediation.v1 envelope ------------------------------------------------------------------

metadata_maps = st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4)


@FUZZ
@given(st.text(min_size=1), st.binary(), metadata_maps)
def test_downstream_envelope_round_trips(
    event_id: str, payload: bytes, metadata: dict[str, str]
) -> None:
    document = json.loads(encode_event(event_id, payload, metadata))
    assert document["id"] == event_id
    assert document["metadata"] == metadata
    if document.get("encoding") == "base64":
        assert base64.b64decode(document["payload"], validate=True) == payload
        with pytest.raises(UnicodeDecodeError):
            payload.decode("utf-8")  # base64 only when the payload is not text
    else:
        assert set(document) == {"id", "payload", "metadata"}
        assert document["payload"].encode("utf-8") == payload


@FUZZ
@given(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=256),
    st.binary() | st.text(),
    metadata_maps,
    st.booleans(),
)
def test_upstream_envelope_round_trips(
    event_id: str, payload: bytes | str, metadata: dict[str, str], ascii_only: bool
) -> None:
    document: dict[str, Any] = {"id": event_id, "metadata": metadata}
    if isinstance(payload, bytes):
        document.update(payload=base64.b64encode(payload).decode(), encoding="base64")
        expected = payload
    else:
        document["payload"] = payload
        expected = payload.encode("utf-8")
    message = json.dumps(document, ensure_ascii=ascii_only)
    assert decode_client_message(message) == Publication(event_id, expected, metadata)
    assert decode_client_message(message.encode()) == Publication(event_id, expected, metadata)


@FUZZ
@given(st.text(), st.one_of(st.none(), st.text()))
def test_replies_round_trip(event_id: str, error: str | None) -> None:
    reply = json.loads(encode_reply(event_id, error=error))
    if error is None:
        assert reply == {"ack": event_id}
        assert decode_client_message(encode_reply(event_id)) == Confirmation(event_id, True)
    else:
        assert reply == {"nack": event_id, "error": error}


def check_client_message(message: str | bytes) -> None:
    try:
        decoded = decode_client_message(message)
    except BadRequest:
        return
    # Whatever is accepted can travel on: every string encodes as UTF-8.
    if isinstance(decoded, Publication):
        decoded.event_id.encode("utf-8")
        for key, value in decoded.metadata.items():
            (key + value).encode("utf-8")
    else:
        decoded.event_id.encode("utf-8")


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(ANY_CHAR, max_size=10)),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "payload", "metadata", "encoding", "ack", "nack"])
            | st.text(ANY_CHAR, max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@FUZZ
@given(json_values, st.booleans())
@example({"id": "a", "payload": "é", "encoding": "base64"}, True)
@example({"id": "a", "payload": "\ud800"}, True)
@example({"id": "\udfff", "payload": "x"}, True)
@example({"id": "a", "payload": "x", "metadata": {"k": "\ud800"}}, True)
@example({"nack": "\ud800"}, True)
def test_any_json_from_a_client_is_an_envelope_or_a_bad_request(
    document: Any, ascii_only: bool
) -> None:
    check_client_message(json.dumps(document, ensure_ascii=ascii_only))


@FUZZ
@given(st.text(ANY_CHAR) | st.binary())
def test_any_message_from_a_client_is_an_envelope_or_a_bad_request(message: str | bytes) -> None:
    check_client_message(message)


@pytest.mark.parametrize("opening", ["[", '{"a":', '{"id": "x", "payload": "y", "metadata": ['])
def test_deeply_nested_json_is_a_bad_request(opening: str) -> None:
    # json recurses per level: before the fix a client's "[[[[..." ended the whole engine.
    with pytest.raises(BadRequest):
        decode_client_message(opening * 100_000)


# -- identity and admission ---------------------------------------------------------------------

header_text = st.text(st.characters(max_codepoint=0xFF), max_size=140)
client_ids = st.text(string.ascii_letters + string.digits + "._:@-", min_size=1, max_size=128)
SECRET = "s" * 32
VERIFIER = BearerVerifier(
    key=SECRET,
    algorithms=("HS256",),
    audience="mediation",
    issuer=None,
    identity_claim="sub",
    query_token=True,
)


@FUZZ
@given(
    st.one_of(st.none(), header_text, client_ids),
    st.one_of(st.none(), st.text(ANY_CHAR), client_ids),
)
def test_client_identity_is_a_valid_id_or_a_bad_request(
    header: str | None, query: str | None
) -> None:
    headers = {} if header is None else {"x-client-id": header}
    try:
        client_id = client_identity(headers, query)
    except BadRequest:
        given_id = header if header is not None else query
        assert given_id is not None and not CLIENT_ID.fullmatch(given_id)
        return
    assert CLIENT_ID.fullmatch(client_id)
    if header is not None:
        assert client_id == header  # the header wins
    elif query is not None:
        assert client_id == query


# A request's query string as it arrives: raw bytes, or parameters percent-encoded.
query_strings = st.one_of(
    st.binary(max_size=40),
    st.lists(
        st.tuples(st.sampled_from(["client_id", "access_token", "other"]), st.text(max_size=20)),
        max_size=3,
    ).map(lambda pairs: urlencode(pairs).encode()),
)
claim_values = st.one_of(
    junk,
    client_ids,
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.just(int(time.time()) + 3600),
    st.just("mediation"),
)
claims = st.dictionaries(
    st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "iss", "jti"]), claim_values, max_size=6
)


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """A token: junk, a JWT with any claims signed with the right key, or with a wrong one."""
    kind = draw(st.sampled_from(["junk", "signed", "wrong key", "none alg"]))
    if kind == "junk":
        return draw(header_text)
    payload = draw(claims)
    try:
        if kind == "none alg":
            return jwt.encode(payload, "", algorithm="none")
        key = SECRET if kind == "signed" else "w" * 32
        return jwt.encode(payload, key, algorithm="HS256")
    except (TypeError, ValueError):
        assume(False)  # PyJWT refuses to sign some claim values at all (iss not a string)
        raise


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["x-client-id", "origin", "authorization", "x-other"]),
        header_text,
        max_size=4,
    ),
    query_strings,
    st.lists(st.sampled_from(["https://a.example", "*", ""]), max_size=2),
    st.booleans(),
    st.booleans(),
    st.one_of(st.none(), tokens()),
)
def test_admission_is_an_id_or_a_documented_refusal(
    headers: dict[str, str],
    query_string: bytes,
    allowed_origins: list[str],
    bearer: bool,
    header_required: bool,
    token: str | None,
) -> None:
    if token is not None:
        headers = {**headers, "authorization": f"Bearer {token}"}
    try:
        client_id = admit_client(
            headers,
            parse_qs(query_string.decode("latin-1")),  # as the entrypoints read a query
            allowed_origins=tuple(allowed_origins),
            verifier=VERIFIER if bearer else None,
            client_id_header_required=header_required,
        ).id
    except (BadRequest, OriginNotAllowed, Unauthorized) as refusal:
        assert 400 <= refusal.http_status < 500
        return
    assert CLIENT_ID.fullmatch(client_id)


# -- metadata ----------------------------------------------------------------------------------

item_names = st.one_of(
    st.text(UNICODE_CHAR, max_size=70),
    st.sampled_from([*sorted(RESERVED), "x-client-id", "Content-Type", "X-Trace", "x-"]),
    st.text("abcXYZ-_.0", min_size=1, max_size=70).map(lambda s: "x-" + s),
)
item_values = st.one_of(
    st.text(UNICODE_CHAR, max_size=40),
    st.text("ab \t\r\n\x00\x7f\x85", max_size=40),
    st.integers(MAX_VALUE - 2, MAX_VALUE + 2).map(lambda n: "v" * n),
)
items = st.lists(st.tuples(item_names, item_values), max_size=60)


@FUZZ
@given(items, st.booleans())
def test_client_metadata_is_always_safe(entries: list[tuple[str, str]], header_names: bool) -> None:
    metadata = client_metadata(entries, header_names=header_names)
    assert len(metadata) <= MAX_ENTRIES
    given_names = {name.lower() for name, _ in entries}
    for name, value in metadata.items():
        assert name in given_names and name == name.lower()
        assert name not in RESERVED and name != "x-client-id"
        assert 0 < len(name) <= MAX_NAME and len(value) <= MAX_VALUE
        assert not re.search(r"[\x00-\x1f\x7f]", name + value)
        assert (name, value) in {(n.lower(), v) for n, v in entries}
        if header_names:
            assert name == "content-type" or name.startswith("x-")


@FUZZ
@given(items)
def test_header_safe_metadata_can_be_a_header(entries: list[tuple[str, str]]) -> None:
    for name, value in header_safe(entries):
        assert re.fullmatch(r"[!#$%&'*+.^_`|~0-9a-z-]{1,64}", name)
        assert len(value) <= MAX_VALUE and value == value.strip()
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value)
        value.encode("latin-1")  # an HTTP/1.1 header value as h11 writes it


# -- config bugs the properties above found (regressions) -----------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        {"a\nb": 1},
        {"engine": {"x\r": 1}},
        {"entrypoints": [{"name": "w", "port": 0, "type": "web\nsocket"}]},
        {"endpoints": [{"name": "m", "type": "\n"}]},
    ],
    ids=["top-key", "engine-key", "entrypoint-type", "endpoint-type"],
)
def test_a_line_break_in_a_key_or_type_is_quoted_on_one_line(document: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(document, filename=FILENAME)
    assert_config_error(caught.value)


@pytest.mark.parametrize("value", ["[]", "{}", '["websocket"]'])
def test_entrypoint_type_that_is_not_a_string_is_a_config_error(value: str) -> None:
    # The type is looked up in a dict: an unhashable value once raised TypeError.
    with pytest.raises(ConfigError):
        parse_config(f"[[entrypoints]]\nname = 'w'\nport = 0\ntype = {value}\n")


@pytest.mark.parametrize("where", ["top", "engine", "entrypoint"])
def test_deeply_nested_document_is_a_config_error(where: str) -> None:
    # build_config (the embedding API, and what parse_config calls) must refuse deep nesting
    # itself: _substitute_env recurses per level, so it once raised RecursionError.
    nested: Any = "x"
    for _ in range(5000):
        nested = {"a": nested}
    document = {
        "top": nested,
        "engine": {"engine": nested},
        "entrypoint": {"entrypoints": [{"type": "websocket", "name": "w", "port": 0, "x": nested}]},
    }[where]
    with pytest.raises(ConfigError):
        build_config(document)


def test_public_key_path_with_nul_is_a_config_error() -> None:
    # Path.read_text raises ValueError ("embedded null byte"), not OSError.
    with pytest.raises(ConfigError):
        parse_config(
            "[[entrypoints]]\nname = 'p'\ntype = 'http_post'\nport = 0\nauth = 'bearer'\n"
            'jwt_public_key = "key\\u0000.pem"\n'
        )


@pytest.mark.parametrize("value", ["[]", '""', "false", "0"])
def test_endpoint_config_that_is_not_a_table_is_a_config_error(value: str) -> None:
    # ``endpoint.config or {}`` once took any falsy value for "no config table".
    with pytest.raises(ConfigError):
        parse_config(f"[[endpoints]]\nname = 'm'\ntype = 'memory'\nconfig = {value}\n")
