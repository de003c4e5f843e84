"""The Kafka admin API's group requests, made by a child process: librdkafka may abort on them.

librdkafka (2.16, the newest the confluent-kafka wheels bundle) aborts its whole process on an
assertion, ``rd_kafka_enq_once_del_source_return: eonce->refcnt > 0``, when a request the admin
API sends to a group coordinator (ListConsumerGroupOffsets, AlterConsumerGroupOffsets,
DescribeConsumerGroups, DeleteGroups) cannot be sent because its connection just dropped: a
use-after-free in its error path (confluentinc/librdkafka#5397, not in a release yet). The
engine's TCP-reset fault test aborted that way with ``fetch = "shared"``, whose
positions are written and read with those requests (the sweep of departed clients' groups
makes the other two, in both designs). Nothing a broker or a network does may end the engine,
so those requests are made by a child process that owns the ``AdminClient``
(``_kafka_admin_child.py``, run as a script: it imports only the standard library and
confluent-kafka): when it dies, only its requests fail (as
:class:`~mediation.errors.BrokerUnavailable`, a broker failure), and the next child takes the
next ones.

The two sides speak JSON lines over the child's stdin and stdout:

- parent to child: the client configuration first, then ``{"id", "op", ...}`` requests: ``list``
  (``group``, ``topic``, ``partitions``) and ``alter`` (``group``, ``topic``, ``offsets``:
  ``[[partition, offset], ...]``) for ``fetch = "shared"``'s positions; ``groups``,
  ``describe`` and ``delete`` (``groups``) for the sweep of departed clients' groups;
- child to parent: ``{"id", "partitions": [[partition, offset, code, reason], ...]}`` (``code``
  and ``reason`` null unless that partition failed), ``{"id", "groups": [...]}``, ``{"id",
  "empty": {group: bool}}``, ``{"id", "deleted": [...]}``, ``{"id", "error": reason}``, and
  ``{"log": [level, message]}`` for librdkafka's log lines (logged by the parent).

Threads and tasks: :meth:`AdminProcess.run` is the endpoint's task owning the child (started
again after it ends, at once when :meth:`AdminProcess.restart` asked, else after a backoff); a
request is queued by :meth:`AdminProcess.request` on the Trio thread and answered there, by the
task reading the child's output (no thread of the engine's). In the child, the main thread reads
requests and librdkafka's threads write answers (one lock).
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ._backoff import Backoff

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("_kafka_admin_child.py")
# An answer line longer than this is not the child's (it writes a few bytes per partition).
MAX_LINE = 1 << 20
RESTART_MIN, RESTART_MAX = 0.1, 5.0  # backoff between children that ended on their own

# A request's answer on the Trio thread: the child's JSON object, or why there is none.
Answer = dict[str, Any]
Done = Callable[[Answer | str], None]


class AdminProcess:
    """The child process making one endpoint's group requests (see module doc)."""

    def __init__(self, config: dict[str, Any], librdkafka_log: logging.Logger) -> None:
        # Only what JSON carries: librdkafka's settings are strings, numbers and booleans;
        # the logger object stays here (the child forwards its lines).
        self._config = {k: v for k, v in config.items() if k != "logger"}
        self._librdkafka_log = librdkafka_log
        self.command = [sys.executable, str(CHILD)]  # a test may run another child
        # Between children that ended on their own (a test may wait less).
        self.backoff = Backoff(RESTART_MIN, RESTART_MAX)
        self._ids = itertools.count()
        self._queued: dict[int, tuple[bytes, Done]] = {}  # not written to a child yet
        self._sent: dict[int, Done] = {}  # written to the current child, not answered
        self._wake = trio.lowlevel.ParkingLot()
        self._child: trio.CancelScope | None = None
        self._restarting = False
        self.pid: int | None = None  # the running child's
        self.children = 0  # started so far

    @property
    def sent(self) -> int:
        """Requests written to the running child and not answered."""
        return len(self._sent)

    def request(self, request: dict[str, Any], done: Done) -> None:
        """Send ``request`` (``op`` and its fields) to the child; ``done`` gets its answer on
        the Trio thread, or a reason (the child ended first)."""
        n = next(self._ids)
        self._queued[n] = (json.dumps({**request, "id": n}).encode() + b"\n", done)
        self._wake.unpark_all()

    def restart(self) -> None:
        """End the current child (its requests fail); the next one takes what is queued."""
        if self._child is not None:
            self._restarting = True
            self._child.cancel()

    async def run(self) -> None:
        """Keep a child running (the endpoint's task); requests wait for it while none is."""
        backoff = self.backoff
        try:
            while True:
                started = trio.current_time()
                reason = "kafka admin process restarted after an outage"
                with trio.CancelScope() as self._child:
                    reason = await self._run_child()
                self._child = None
                self.pid = None
                restarted, self._restarting = self._restarting, False
                self._fail_sent(reason)
                if restarted or trio.current_time() - started > RESTART_MAX:
                    backoff.reset()
                if not restarted:
                    log.warning("kafka admin process ended", extra={"reason": reason})
                    await trio.sleep(backoff.next())
        finally:
            self._fail_sent("kafka endpoint stopped")
            queued, self._queued = self._queued, {}
            for _, done in queued.values():
                done("kafka endpoint stopped")

    def _fail_sent(self, reason: str) -> None:
        sent, self._sent = self._sent, {}
        for done in sent.values():
            done(reason)

    async def _run_child(self) -> str:
        """One child, until it ends (the reason) or the scope around this is cancelled."""
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    self.command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    check=False,
                    deliver_cancel=_kill,
                )
            )
            assert process.stdin is not None and process.stdout is not None
            self.pid = process.pid
            self.children += 1
            await process.stdin.send_all(json.dumps(self._config).encode() + b"\n")
            nursery.start_soon(self._send_requests, process.stdin)
            reason = await self._read_answers(process.stdout)
            nursery.cancel_scope.cancel()
        return reason

    async def _send_requests(self, stdin: trio.abc.SendStream) -> None:
        while True:
            while not self._queued:
                await self._wake.park()
            queued, self._queued = self._queued, {}
            for n, (_, done) in queued.items():
                self._sent[n] = done
            await stdin.send_all(b"".join(line for line, _ in queued.values()))

    async def _read_answers(self, stdout: trio.abc.ReceiveStream) -> str:
        buffer = bytearray()
        while True:
            data = await stdout.receive_some()
            if not data:
                return "kafka admin process exited"
            buffer += data
            *lines, rest = buffer.split(b"\n")
            buffer = bytearray(rest)
            if len(buffer) > MAX_LINE:
                return "kafka admin process wrote a line too long"
            for line in lines:
                if not self._answered(line):
                    return f"kafka admin process wrote an unreadable line: {line[:100]!r}"

    def _answered(self, line: bytes | bytearray) -> bool:
        """Hand one line of the child's to its request's ``done``; False if it is not one."""
        try:
            message = json.loads(line)
        except ValueError:
            return False
        if not isinstance(message, dict):
            return False
        entry = message.get("log")
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int):
            self._librdkafka_log.log(entry[0], "%s", entry[1])
            return True
        n = message.get("id")
        done = self._sent.pop(n, None) if isinstance(n, int) else None
        if done is None:
            return False
        done(message)
        return True


def refusal(answer: Answer | str) -> str | None:
    """Why a request got no answer (the child ended) or an error answer; None for an answer."""
    if isinstance(answer, str):
        return answer
    error = answer.get("error")
    return None if error is None else str(error)


async def _kill(process: trio.Process) -> None:
    process.kill()  # the child holds nothing to flush: its requests are failed by the parent
