"""The Solace endpoint's sweep (``_sweep``): queues the engine created for clients gone for
``client_state_ttl`` are deleted through SEMP v2, the broker's management API.

The Python messaging API (``solace-pubsubplus``) can create a queue but not delete one, so the
engine needs the broker's management endpoint for this (``semp_url`` with a management user,
``semp_username`` / ``semp_password``); without it, queues stay until an administrator removes
them. Only queues the engine creates are swept: ``create_queues`` on, ``queue_in`` a template
with ``{client_id}``, and the name matching it whole.

A queue is unused when no flow is bound to it (``bindCount`` 0 in the monitor API). SEMP deletes
a queue with flows bound too (the broker unbinds them), unlike Kafka, which refuses to delete a
group with members: so each due queue's ``bindCount`` is read again just before its delete, and
one that has a flow again is left. A client that binds through another instance between that
read and the delete loses its queue, and what the queue held; the window is one request long
and only ever opens for a client gone for the whole ttl.

Requests (blocking, from a worker thread): ``GET
{semp_url}/SEMP/v2/monitor/msgVpns/{vpn}/queues?select=queueName,bindCount&count=100`` (with a
``where=queueName==prefix*`` when the template starts with plain characters; paged through
``meta.paging.nextPageUri``), ``GET .../queues/{name}?select=bindCount`` and ``DELETE
{semp_url}/SEMP/v2/config/msgVpns/{vpn}/queues/{name}``, each with HTTP basic authentication
and a :data:`REQUEST_TIMEOUT`. TLS (an ``https://`` ``semp_url``) verifies against the system's
trust store.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

from ..client_state import Sweep

REQUEST_TIMEOUT = 10.0  # seconds for each SEMP request
PAGE = 100  # queues per monitor page
MAX_PAGES = 10_000  # a broker that pages for ever is a failed sweep, not a hang

# A template prefix SEMP's where-clause can take as it is (its wildcards and separators are not).
_PLAIN_PREFIX = re.compile(r"[A-Za-z0-9_./-]+")


class SempError(Exception):
    """A SEMP request failed (unreachable, refused, or an answer that is not SEMP's)."""


class SempQueues:
    """The queues of a message VPN, for :func:`~._sweep.run_sweep` (blocking calls)."""

    what = "solace queues"
    failures: tuple[type[Exception], ...] = (SempError,)

    def __init__(self, url: str, vpn: str, username: str, password: str, *, template: str) -> None:
        self._base = url.rstrip("/") + "/SEMP/v2"
        self._vpn = quote(vpn, safe="")
        credentials = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._headers = {"authorization": f"Basic {credentials}", "accept": "application/json"}
        prefix = template.split("{", 1)[0]
        self._where = f"queueName=={prefix}*" if _PLAIN_PREFIX.fullmatch(prefix) else None

    def list_matching(self, sweep: Sweep) -> dict[str, bool]:
        query = {"select": "queueName,bindCount", "count": str(PAGE)}
        if self._where is not None:
            query["where"] = self._where
        url: str | None = f"{self._base}/monitor/msgVpns/{self._vpn}/queues?{urlencode(query)}"
        found: dict[str, bool] = {}
        for _ in range(MAX_PAGES):
            if url is None:
                return found
            answer = self._request("GET", url)
            for queue in _list(answer.get("data")):
                name = queue.get("queueName") if isinstance(queue, dict) else None
                if isinstance(name, str) and sweep.matches(name):
                    found[name] = queue.get("bindCount") == 0
            paging = _dict(_dict(answer.get("meta")).get("paging"))
            next_page = paging.get("nextPageUri")
            # Only ever further pages of the same listing: never a request elsewhere.
            if isinstance(next_page, str) and next_page.startswith(f"{self._base}/monitor/"):
                url = next_page
            else:
                url = None
        raise SempError("the queue listing did not end")

    def delete(self, names: list[str]) -> list[str]:
        deleted = []
        for name in names:
            queue = f"msgVpns/{self._vpn}/queues/{quote(name, safe='')}"
            try:
                bound = self._request("GET", f"{self._base}/monitor/{queue}?select=bindCount")
                if _dict(bound.get("data")).get("bindCount") != 0:
                    continue  # a flow bound meanwhile: in use again
                self._request("DELETE", f"{self._base}/config/{queue}")
            except SempError:
                continue  # gone meanwhile, or refused: the next sweep decides again
            deleted.append(name)
        return deleted

    def _request(self, method: str, url: str) -> dict[str, Any]:
        request = urllib.request.Request(url, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            error.close()  # it holds the response, and so the connection
            raise SempError(f"SEMP {method} answered {error.code}") from None
        except (OSError, ValueError) as error:  # unreachable, timed out, not JSON
            raise SempError(f"SEMP {method} failed: {error}") from None
        if not isinstance(answer, dict):
            raise SempError(f"SEMP {method} answered something that is not SEMP's")
        return answer


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
