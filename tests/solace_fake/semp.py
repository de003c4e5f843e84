"""A fake of the broker's management API (SEMP v2), the part the engine's sweep uses.

No Solace broker can run here; as the messaging API is faked at the library boundary
(``tests.solace_fake``), SEMP is faked at its HTTP boundary, on loopback, over the same
:class:`~._broker.FakeBroker`: the queues the engine's receivers created are the ones listed,
``bindCount`` is their bound flows, a delete removes one. What it serves:

- ``GET /SEMP/v2/monitor/msgVpns/{vpn}/queues`` with ``select``, ``count``, ``where=queueName==
  prefix*`` and ``cursor`` (pages linked by ``meta.paging.nextPageUri``), and
  ``GET .../queues/{name}``;
- ``DELETE /SEMP/v2/config/msgVpns/{vpn}/queues/{name}`` (a queue with flows is deleted too, as
  the real broker does; its flows are left on a queue nobody can reach);
- HTTP basic authentication (``401`` otherwise); an unknown queue is ``400`` ``NOT_FOUND``.

``answer`` lets a test replace every answer with raw bytes (a hostile or broken broker).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ._broker import FakeBroker

_MONITOR = "/SEMP/v2/monitor/msgVpns/"
_CONFIG = "/SEMP/v2/config/msgVpns/"


class FakeSemp:
    def __init__(self, broker: FakeBroker, vpn: str, username: str, password: str) -> None:
        self.broker = broker
        self.vpn = vpn
        self.url = ""  # set once serving
        self._credentials = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.deleted: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (method, path and query)
        self.answer: bytes | None = None  # raw bytes to answer everything with, instead

    def handle(self, method: str, target: str, authorization: str | None) -> tuple[int, Any]:
        self.requests.append((method, target))
        if authorization != self._credentials:
            return 401, _error(401, "UNAUTHORIZED")
        split = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        for base, verb in ((_MONITOR, "GET"), (_CONFIG, "DELETE")):
            if method != verb or not split.path.startswith(base):
                continue
            vpn, _, rest = split.path[len(base) :].partition("/")
            if unquote(vpn) != self.vpn or not (rest == "queues" or rest.startswith("queues/")):
                return 400, _error(400, "NOT_FOUND")
            name = unquote(rest[len("queues/") :]) if rest != "queues" else None
            if method == "DELETE":
                return self._delete(name)
            return self._queue(name) if name is not None else self._queues(split.path, query)
        return 400, _error(400, "INVALID_PATH")

    def _queues(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        with self.broker.lock:
            rows = sorted((q.name, len(q.flows)) for q in self.broker.queues.values())
        where = query.get("where")
        if where is not None:
            prefix = where.removeprefix("queueName==").removesuffix("*")
            rows = [row for row in rows if row[0].startswith(prefix)]
        start = int(query.get("cursor", "0"))
        count = int(query.get("count", "10"))
        page = rows[start : start + count]
        meta: dict[str, Any] = {"responseCode": 200}
        if start + count < len(rows):
            rest = {**query, "cursor": str(start + count)}
            link = "&".join(f"{k}={v}" for k, v in rest.items())
            meta["paging"] = {
                "cursorQuery": str(start + count),
                "nextPageUri": f"{self.url}{path}?{link}",
            }
        return 200, {"data": [{"queueName": n, "bindCount": b} for n, b in page], "meta": meta}

    def _queue(self, name: str) -> tuple[int, Any]:
        with self.broker.lock:
            queue = self.broker.queues.get(name)
            if queue is None:
                return 400, _error(400, "NOT_FOUND")
            data = {"queueName": name, "bindCount": len(queue.flows)}
        return 200, {"data": data, "meta": {"responseCode": 200}}

    def _delete(self, name: str | None) -> tuple[int, Any]:
        with self.broker.lock:
            if name is None or self.broker.queues.pop(name, None) is None:
                return 400, _error(400, "NOT_FOUND")
        self.deleted.append(name)
        return 200, {"meta": {"responseCode": 200}}


def _error(code: int, status: str) -> dict[str, Any]:
    return {"meta": {"responseCode": code, "error": {"status": status}}}


@contextmanager
def serving_semp(
    broker: FakeBroker, vpn: str = "default", username: str = "admin", password: str = "secret"
) -> Iterator[FakeSemp]:
    """SEMP for ``broker`` on 127.0.0.1 (a port from the OS) while the block runs."""
    semp = FakeSemp(broker, vpn, username, password)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            status, document = semp.handle(
                self.command, self.path, self.headers.get("authorization")
            )
            body = semp.answer if semp.answer is not None else json.dumps(document).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests look at semp.requests

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    semp.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="semp-fake", daemon=True)
    thread.start()
    try:
        yield semp
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
