"""The child process of ``_kafka_admin_process``: an ``AdminClient`` answering JSON lines.

Run as a script (``python _kafka_admin_child.py``), not as a module of the package, so that it
imports only the standard library and confluent-kafka. What it reads and writes, and why it is a
process of its own: ``_kafka_admin_process``. Threads: the main thread reads requests; answers
are written by librdkafka's threads (position requests) or by a thread per sweep request, one
lock around stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

REQUEST_TIMEOUT = 10.0  # seconds for each admin request (librdkafka's request_timeout)


class _Forward(logging.Handler):
    """librdkafka's log lines, to the parent."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        self._send({"log": [record.levelno, record.getMessage()]})


def _issue(admin: Any, request: dict[str, Any]) -> Any:
    """The future of one request's group."""
    group, topic = str(request["group"]), str(request["topic"])
    if request["op"] == "list":
        partitions = [TopicPartition(topic, int(p)) for p in request["partitions"]]
        call = admin.list_consumer_group_offsets
    elif request["op"] == "alter":
        partitions = [TopicPartition(topic, int(p), int(o)) for p, o in request["offsets"]]
        call = admin.alter_consumer_group_offsets
    else:
        raise ValueError(f"unknown op {request['op']!r}")
    futures = call(
        [ConsumerGroupTopicPartitions(group, partitions)], request_timeout=REQUEST_TIMEOUT
    )
    return futures[group]


def _answer(n: int, future: Any) -> dict[str, Any]:
    try:
        result = future.result()
    except Exception as error:
        return {"id": n, "error": str(error) or type(error).__name__}
    partitions = [
        [
            tp.partition,
            tp.offset,
            None if tp.error is None else tp.error.code(),
            None if tp.error is None else tp.error.str(),
        ]
        for tp in result.topic_partitions or ()
    ]
    return {"id": n, "partitions": partitions}


def _sweep_answer(admin: Any, request: dict[str, Any]) -> dict[str, Any]:
    """A sweep's request (``_kafka_sweep``), blocking: the group ids of the cluster
    (``groups``), whether each of ``groups`` is empty (``describe``: those not answerable now
    left out), or the ones of ``groups`` deleted (``delete``: the refused left out)."""
    n, op = request["id"], request["op"]
    try:
        if op == "groups":
            listed = admin.list_consumer_groups(request_timeout=REQUEST_TIMEOUT).result()
            return {"id": n, "groups": [g.group_id for g in listed.valid]}
        names = [str(g) for g in request["groups"]]
        if op == "describe":
            empty: dict[str, bool] = {}
            for group, future in admin.describe_consumer_groups(
                names, request_timeout=REQUEST_TIMEOUT
            ).items():
                try:
                    description = future.result()
                except Exception:
                    continue  # gone meanwhile, or not answerable now: the next sweep
                empty[group] = (
                    description.state == ConsumerGroupState.EMPTY and not description.members
                )
            return {"id": n, "empty": empty}
        deleted = []
        for group, future in admin.delete_consumer_groups(
            names, request_timeout=REQUEST_TIMEOUT
        ).items():
            try:
                future.result()
            except Exception:
                continue  # not empty any more, or gone: the next sweep decides again
            deleted.append(group)
        return {"id": n, "deleted": deleted}
    except Exception as error:
        return {"id": n, "error": str(error) or type(error).__name__}


SWEEP_OPS = ("groups", "describe", "delete")


def main() -> None:
    lock = threading.Lock()
    out = sys.stdout.buffer

    def send(message: dict[str, Any]) -> None:
        line = json.dumps(message).encode() + b"\n"
        with lock:
            out.write(line)
            out.flush()

    librdkafka = logging.getLogger("librdkafka")
    librdkafka.addHandler(_Forward(send))
    librdkafka.setLevel(logging.DEBUG)
    librdkafka.propagate = False
    config: dict[str, Any] = {**json.loads(sys.stdin.buffer.readline()), "logger": librdkafka}
    admin = AdminClient(config)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        n = request["id"]
        if request["op"] in SWEEP_OPS:  # several futures, waited for: a thread of its own
            threading.Thread(
                target=lambda r=request: send(_sweep_answer(admin, r)), daemon=True
            ).start()
            continue
        try:
            future = _issue(admin, request)
        except Exception as error:  # refused locally (a bad argument)
            send({"id": n, "error": str(error) or type(error).__name__})
            continue
        future.add_done_callback(lambda f, n=n: send(_answer(n, f)))
    # The parent closed the pipe: leave without destroying the client (requests may be in
    # flight, and destroying it then is what this process exists to keep from the engine).
    os._exit(0)


if __name__ == "__main__":
    main()
