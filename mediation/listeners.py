"""Many entrypoints on one port: which entrypoints share a listener, which paths each claims,
the checks that keep a port unambiguous, and which entrypoint a request is for. Pure.

::

    for listener in plan_listeners(config.entrypoints):     # one per port in use
        router = Router(listener.entrypoints)
        router.pick(websocket=False, raw_path="/orders/42")   # "orders-sse", or None: 404

The rules (docs/design.md, "Configuration" and "The edge"):

- Entrypoints with the same ``port`` share one listener (one socket, one HTTP server). Port 0
  (the OS picks) always means a listener of its own: two entrypoints on port 0 never share.
- Each entrypoint claims path templates: its ``path`` (websocket, sse, http_post), or for
  polling (http_get) its four routes ``{path}/subscribe``, ``/poll``, ``/ack``, ``/unsubscribe``
  (``/subscribe`` and so on for ``path = "/"``).
- A listener's entrypoints form two groups: WebSocket entrypoints get the WebSocket handshakes
  (``Upgrade: websocket``), the others (sse, http_post, http_get) every other request. So a
  WebSocket entrypoint may share its path with an SSE entrypoint (or any other HTTP one).
- Within a group no two claimed templates may overlap, whatever their parameters' patterns: two
  templates overlap when they have as many segments and, at every position, the two segments
  are the same literal or one of them is a ``{parameter}``. ``/orders/{id}`` and
  ``/orders/latest`` overlap (no literal-beats-parameter precedence: refused, not guessed);
  ``/orders/{id}`` and ``/orders/{id}/items`` do not. Patterns are not consulted: whether two
  regular expressions can match one value is not something to decide at load time.
- Entrypoints sharing a listener agree on its settings (:data:`LISTENER_KEYS`: the TLS files
  and the head and body limits, which apply before any entrypoint is chosen).
- The health port is not an entrypoint's port (0 excepted).

Dispatch (:meth:`Router.pick`): a group of one entrypoint gets all of its group's requests, as
when every entrypoint had its port (it answers 404 itself for a path it does not serve). In a
larger group, the entrypoint with a template of the request path's shape (as many segments,
literals equal after percent-decoding) gets it; failing that, the one entrypoint (if only one)
whose template's literal start the path has, which then answers its own 400 or 404; else
nobody (404).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .params import PathTemplate, Slot

if TYPE_CHECKING:
    from .config import EntrypointConfig

# The keys of an entrypoint that are its listener's: entrypoints sharing a port must agree on
# each (the TLS context, and the limits the HTTP server applies before it knows the entrypoint).
LISTENER_KEYS = (
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "max_header_bytes",
    "header_timeout",
    "body_timeout",
)

POLLING_ACTIONS = ("subscribe", "poll", "ack", "unsubscribe")


def claimed_paths(entrypoint: EntrypointConfig) -> tuple[PathTemplate, ...]:
    """The path templates an entrypoint serves (valid: the config checked its ``path``)."""
    if entrypoint.type != "http_get":
        return (PathTemplate.parse(entrypoint.path),)
    base = "" if entrypoint.path == "/" else entrypoint.path
    return tuple(PathTemplate.parse(f"{base}/{action}") for action in POLLING_ACTIONS)


def overlap(a: PathTemplate, b: PathTemplate) -> bool:
    """Whether one request path could match both templates (see the module docstring)."""
    if len(a.segments) != len(b.segments):
        return False
    return all(
        isinstance(x, Slot) or isinstance(y, Slot) or x == y
        for x, y in zip(a.segments, b.segments, strict=True)
    )


def is_websocket(entrypoint: EntrypointConfig) -> bool:
    return entrypoint.type == "websocket"


@dataclass(frozen=True)
class Listener:
    """One listening socket and the entrypoints it serves (in config order)."""

    port: int
    entrypoints: tuple[EntrypointConfig, ...]

    @property
    def label(self) -> str:
        """What a connection error not tied to one entrypoint is counted as: the entrypoint's
        name, or the names joined by ``+`` on a shared port."""
        return "+".join(e.name for e in self.entrypoints)


def plan_listeners(entrypoints: Iterable[EntrypointConfig]) -> list[Listener]:
    """The listeners the entrypoints need, in the order of their first entrypoint."""
    shared: dict[int, list[EntrypointConfig]] = {}
    groups: list[list[EntrypointConfig]] = []
    for entrypoint in entrypoints:
        if entrypoint.port == 0:
            groups.append([entrypoint])
        elif entrypoint.port in shared:
            shared[entrypoint.port].append(entrypoint)
        else:
            shared[entrypoint.port] = [entrypoint]
            groups.append(shared[entrypoint.port])
    return [Listener(group[0].port, tuple(group)) for group in groups]


@dataclass(frozen=True)
class Problem:
    """What makes a set of entrypoints impossible to serve: the entrypoint (its index in the
    config) and the key at fault."""

    index: int
    key: str
    reason: str


def listener_problem(entrypoints: Sequence[EntrypointConfig], health_port: int) -> Problem | None:
    """The first reason the entrypoints cannot share their ports as configured, or None."""
    index = {id(e): i for i, e in enumerate(entrypoints)}
    for i, entrypoint in enumerate(entrypoints):
        if entrypoint.port != 0 and entrypoint.port == health_port:
            return Problem(
                i, "port", f"{entrypoint.port} is also [engine] health_port (the health server)"
            )
    for listener in plan_listeners(entrypoints):
        first = listener.entrypoints[0]
        for other in listener.entrypoints[1:]:
            for key in LISTENER_KEYS:
                if getattr(other, key) != getattr(first, key):
                    return Problem(
                        index[id(other)],
                        key,
                        f'differs from entrypoint "{first.name}" on port {listener.port} '
                        "(entrypoints sharing a port share its TLS and request limits)",
                    )
        seen: list[EntrypointConfig] = []
        for entrypoint in listener.entrypoints:
            for earlier in seen:
                if is_websocket(earlier) != is_websocket(entrypoint):
                    continue  # told apart by the upgrade
                clash = _clash(earlier, entrypoint)
                if clash is not None:
                    return Problem(
                        index[id(entrypoint)],
                        "path",
                        f"{clash[1]} overlaps {clash[0]} of entrypoint "
                        f'"{earlier.name}" on port {listener.port} (a request path could be '
                        "either's; entrypoints sharing a port need paths no request can confuse)",
                    )
            seen.append(entrypoint)
    return None


def _clash(a: EntrypointConfig, b: EntrypointConfig) -> tuple[str, str] | None:
    for x in claimed_paths(a):
        for y in claimed_paths(b):
            if overlap(x, y):
                return x.text, y.text
    return None


class Router:
    """Which of a listener's entrypoints a request is for (see the module docstring)."""

    def __init__(self, entrypoints: Sequence[EntrypointConfig]) -> None:
        self._groups: dict[bool, list[tuple[str, tuple[PathTemplate, ...]]]] = {
            True: [],
            False: [],
        }
        for entrypoint in entrypoints:
            self._groups[is_websocket(entrypoint)].append(
                (entrypoint.name, claimed_paths(entrypoint))
            )

    def serves(self, *, websocket: bool) -> bool:
        """Whether any entrypoint takes WebSocket handshakes (``websocket``) or other requests."""
        return bool(self._groups[websocket])

    def sole(self, *, websocket: bool) -> str | None:
        """The entrypoint that gets every WebSocket handshake (``websocket``) or every other
        request, whatever its path: the only one of its kind on the listener; else None."""
        group = self._groups[websocket]
        return group[0][0] if len(group) == 1 else None

    def pick(self, *, websocket: bool, raw_path: str) -> str | None:
        """The name of the entrypoint for a request to ``raw_path`` (as received: still
        percent-encoded), a WebSocket handshake or not; None: no entrypoint serves it (404)."""
        sole = self.sole(websocket=websocket)
        if sole is not None:
            return sole
        group = self._groups[websocket]
        given = [unquote(segment) for segment in raw_path.split("/")[1:]]
        exact = [name for name, paths in group if any(_shaped(p, given) for p in paths)]
        if len(exact) == 1:
            return exact[0]
        if exact:
            return None  # only a configuration the checks refuse could get here
        loose = [name for name, paths in group if any(_begins(p, raw_path) for p in paths)]
        return loose[0] if len(loose) == 1 else None


def _shaped(template: PathTemplate, given: list[str]) -> bool:
    """The path (split, each segment decoded) has the template's shape."""
    if len(given) != len(template.segments):
        return False
    return all(isinstance(s, Slot) or s == g for s, g in zip(template.segments, given, strict=True))


def _begins(template: PathTemplate, raw_path: str) -> bool:
    """The path is one the template's entrypoint answers itself (as
    :meth:`PathTemplate.match` sees it: its literal start, or the whole path decoded)."""
    if not template.parameters:
        return unquote(raw_path) == template.text
    prefix = template.prefix
    return raw_path.startswith(prefix) or raw_path + "/" == prefix
