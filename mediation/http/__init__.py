"""The HTTP/1.1 and WebSocket edge every port is served on, shared by the entrypoints and the
health server. It knows nothing of sessions, endpoints or entrypoints (an import-linter contract
in ``pyproject.toml`` keeps it so).

- :mod:`.server`: the HTTP/1.1 server on Trio over httptools (llhttp), with its head rules and
  limits, serving ASGI-shaped apps and handing WebSocket handshakes over as an ``Upgrade``.
- :mod:`.asgi`: requests and responses for those apps.
- :mod:`.websocket`: one accepted WebSocket connection, wsproto through its public API.
- :mod:`.wsframes`: WebSocket frames at the edges of wsproto. Pure: no I/O, no trio.

This module imports none of them, so that importing the pure one does not import trio.
"""
