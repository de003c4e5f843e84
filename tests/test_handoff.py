"""The thread -> Trio hand-off every endpoint with a thread uses (mediation/endpoints/_handoff.py)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import trio

from mediation.endpoints._handoff import ToTrio


class _CountingToken:
    """A TrioToken that counts ``run_sync_soon`` calls (wraps the real one)."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.calls = 0

    def run_sync_soon(self, fn: Any, *args: Any) -> None:
        self.calls += 1
        self.token.run_sync_soon(fn, *args)


def _counting(to_trio: ToTrio) -> _CountingToken:
    token = _CountingToken(to_trio._token)
    to_trio._token = token  # type: ignore[assignment]
    return token


async def _until(condition: Any) -> None:
    # Callables run from run_sync_soon's system task: a few scheduling rounds at most.
    for _ in range(100):
        if condition():
            return
        await trio.lowlevel.checkpoint()
    raise AssertionError("never happened")


async def test_from_a_thread_in_order_and_on_the_trio_thread() -> None:
    to_trio = ToTrio("test")
    seen: list[tuple[int, threading.Thread]] = []

    def produce() -> None:
        for i in range(1000):
            to_trio.call_soon(lambda i=i: seen.append((i, threading.current_thread())))

    await trio.to_thread.run_sync(produce)
    await _until(lambda: len(seen) == 1000)
    assert [i for i, _ in seen] == list(range(1000))
    assert {thread for _, thread in seen} == {threading.current_thread()}
    assert to_trio.failed == to_trio.dropped == 0


async def test_arguments_are_passed() -> None:
    to_trio = ToTrio("test")
    seen: list[tuple[int, str]] = []
    to_trio.call_soon(lambda a, b: seen.append((a, b)), 1, "x")
    await _until(lambda: seen)
    assert seen == [(1, "x")]


async def test_a_burst_is_one_wake_up_of_trio() -> None:
    to_trio = ToTrio("test")
    token = _counting(to_trio)
    seen: list[int] = []
    produced = threading.Event()

    def produce() -> None:
        for i in range(500):
            to_trio.call_soon(seen.append, i)
        produced.set()

    threading.Thread(target=produce).start()
    produced.wait()  # the Trio thread is blocked meanwhile: the whole burst is one batch
    await _until(lambda: len(seen) == 500)
    assert token.calls == 1
    to_trio.call_soon(seen.append, 500)  # the batch ran: the next call schedules a new one
    await _until(lambda: len(seen) == 501)
    assert token.calls == 2
    assert seen == list(range(501))


async def test_a_raising_callable_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    to_trio = ToTrio("test")
    seen: list[str] = []

    def boom() -> None:
        raise RuntimeError("a bug in a hand-off")

    with caplog.at_level(logging.ERROR, logger="mediation.endpoints._handoff"):
        to_trio.call_soon(seen.append, "before")
        to_trio.call_soon(boom)
        to_trio.call_soon(seen.append, "after")
        await _until(lambda: len(seen) == 2)
        await trio.lowlevel.checkpoint()  # the run is still alive, and so is this task
    assert seen == ["before", "after"]
    assert to_trio.failed == 1
    records = [r for r in caplog.records if r.name == "mediation.endpoints._handoff"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert "a bug in a hand-off" in str(records[0].exc_info[1])


def test_after_the_run_finished_a_hand_off_is_dropped_safely() -> None:
    seen: list[int] = []

    async def main() -> ToTrio:
        return ToTrio("test")

    to_trio = trio.run(main)
    to_trio.call_soon(seen.append, 1)  # from the thread that ran Trio
    errors: list[BaseException] = []

    def from_a_thread() -> None:
        try:
            to_trio.call_soon(seen.append, 2)
        except BaseException as error:  # pragma: no cover (the failure being tested for)
            errors.append(error)

    thread = threading.Thread(target=from_a_thread)
    thread.start()
    thread.join()
    assert errors == []
    assert seen == []
    assert to_trio.dropped == 2
    assert to_trio.failed == 0


def test_what_was_accepted_before_the_run_ended_runs() -> None:
    seen: list[int] = []

    async def main() -> None:
        to_trio = ToTrio("test")
        for i in range(3):
            to_trio.call_soon(seen.append, i)
        # return without a checkpoint: Trio runs accepted callables before trio.run returns

    trio.run(main)
    assert seen == [0, 1, 2]
