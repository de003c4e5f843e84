"""docs/openapi.yaml against a running engine: ``schemathesis run --checks all``.

Schemathesis generates requests from the document (its examples, a coverage phase that walks
every documented constraint, random fuzzing, and, for the polling entrypoint, stateful sequences
that follow the document's links: subscribe -> poll -> ack, subscribe -> unsubscribe) and checks
every response: never a 5xx, a documented status, content type, headers and body schema, invalid
requests rejected, valid ones accepted, a 405 with ``Allow`` for undocumented methods, and no
resource used after it was deleted.

Each listener (webhook, polling, health) has its own port, so schemathesis runs once per listener
(``--url`` applies to a whole run), each time on the operations of that listener's tag.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import schemathesis
import trio
from schemathesis.core.result import Ok

from mediation.engine import MediationEngine

from .conftest import EngineFactory

DOCUMENT = Path(__file__).parent.parent / "docs" / "openapi.yaml"
# Per listener; the coverage phase adds its own deterministic cases on top.
MAX_EXAMPLES = 25
RUN_TIMEOUT = 120.0

ENTRYPOINTS = {
    "webhook": "http_post",
    # Only feeds events to the polling clients, so that /poll answers 200 and /ack has ids to
    # confirm; kept apart from the webhook under test so that no fuzzed publish has to wait
    # for a polling session that nobody polls.
    "feeder": "http_post",
    "polling": {"type": "http_get", "poll_timeout": 0.2, "session_idle_timeout": 5},
}
ENDPOINTS = {
    "sink": {"type": "memory", "config": {"topic_in": "nothing", "topic_out": "webhook"}},
    # Room for every event the feeder sends during a run, so sessions that schemathesis
    # abandons never make the feeder wait.
    "feed": {
        "type": "memory",
        "config": {"topic_in": "feed", "topic_out": "feed", "capacity": 5000},
    },
}
ROUTES = [
    {"source": "webhook", "target": "sink"},
    {"source": "feeder", "target": "feed"},
    {
        "source": "feed",
        "target": "polling",
        "delivery_guarantee": "at_least_once",
        "channel_size": 2,
    },
]

# The webhook's ``client_id`` query parameter is consulted only when there is no X-Client-ID
# header (behind Envoy the header is the authenticated identity, and a query string cannot
# override or invalidate it). OpenAPI cannot say "validated only without that header", so
# schemathesis would call a malformed query beside a good header "accepted invalid data": the
# query parameter is pinned to a well-formed id, and the header is fuzzed in full.
SCHEMATHESIS_CONFIG = """
[[operations]]
include-path = "/"
parameters = { "query.client_id" = "from-query" }
"""

# Which tag's operations each listener serves, and the schemathesis phases that apply (only the
# polling operations are linked, so only they have stateful sequences).
LISTENERS = {
    "webhook": ("webhook", "examples,coverage,fuzzing"),
    "polling": ("polling", "examples,coverage,fuzzing,stateful"),
    "health": ("health", "examples,coverage,fuzzing"),
}


def _schemathesis() -> str:
    beside_python = Path(sys.executable).with_name("schemathesis")
    found = str(beside_python) if beside_python.exists() else shutil.which("schemathesis")
    assert found, "schemathesis is not installed (it is a dev dependency)"
    return found


def test_document_is_valid_openapi() -> None:
    schema = schemathesis.openapi.from_path(str(DOCUMENT))
    schema.validate()  # against the OpenAPI 3.0 meta-schema
    operations = set()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation parses
        operations.add((result.ok().method.upper(), result.ok().path))
    assert operations == {
        ("POST", "/"),
        ("POST", "/subscribe"),
        ("GET", "/poll"),
        ("POST", "/ack"),
        ("DELETE", "/unsubscribe"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    }


async def _feed(engine: MediationEngine) -> None:
    """Publish numbered events with metadata, at a modest pace, until cancelled."""
    async with httpx.AsyncClient(timeout=None) as client:
        number = 0
        while True:
            number += 1
            response = await client.post(
                f"http://127.0.0.1:{engine.ports['feeder']}/",
                content=f"event {number}\nsecond line".encode(),
                headers={"content-type": "text/plain", "x-sequence": str(number)},
            )
            assert response.status_code == 202
            await trio.sleep(0.02)  # pacing only: the run needs some events, not a flood


@pytest.mark.parametrize("listener", list(LISTENERS))
async def test_schemathesis_finds_nothing(
    listener: str,
    engine_with: EngineFactory,
    tmp_path: Path,
    report_figures: Callable[..., None],
) -> None:
    tag, phases = LISTENERS[listener]
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(SCHEMATHESIS_CONFIG)
    async with (
        engine_with(entrypoints=ENTRYPOINTS, endpoints=ENDPOINTS, routes=ROUTES) as engine,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_feed, engine)
        command = [
            _schemathesis(),
            "--config-file",
            str(config_file),
            "run",
            str(DOCUMENT),
            "--url",
            f"http://127.0.0.1:{engine.ports[listener]}",
            "--include-tag",
            tag,
            "--checks",
            "all",
            "--phases",
            phases,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "5",  # the same requests every run; change it to explore
            "--generation-database",
            "none",
            "--workers",
            "1",
            "--no-color",
        ]
        with trio.fail_after(RUN_TIMEOUT):
            finished = await trio.run_process(
                command, check=False, capture_stdout=True, capture_stderr=True, cwd=tmp_path
            )
        nursery.cancel_scope.cancel()
    output = finished.stdout.decode(errors="replace") + finished.stderr.decode(errors="replace")
    print(output)  # shown with -s, and on failure
    generated = re.search(r"(\d+) generated", output)
    report_figures(schemathesis_cases=int(generated.group(1)) if generated else None)
    assert finished.returncode == 0, output
    assert generated and int(generated.group(1)) > 0, output
