"""Hot reload: an engine on a config file picks up route changes and survives bad edits.

Time is Trio's autojump clock, so the watcher's interval costs nothing. The watcher reads the file
in a worker thread, and the autojump clock does not wait for threads: a virtual ``fail_after``
could fire while a read is still under way. So the tests wait for what the watcher logs (an event,
not a deadline), with a real-time limit that only turns a broken watcher into a failure instead
of a hang.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock
from trio_util import AsyncValue

from mediation import MediationEngine, load_config, open_mediation_engine
from mediation.config import RouteConfig

INTERVAL = 2.0
REAL_TIME_LIMIT = 30.0

BASE = """
[engine]
host = "127.0.0.1"
health_port = 0
packet_log = false
reload_interval = {interval}

[[entrypoints]]
name = "hook"
type = "http_post"
port = 0

[[entrypoints]]
name = "feed"
type = "sse"
port = 0

[[endpoints]]
name = "bus"
type = "memory"
"""

UP = '\n[[routes]]\nsource = "hook"\ntarget = "bus"\n'
DOWN = '\n[[routes]]\nsource = "bus"\ntarget = "feed"\n'


def config_text(*routes: str, interval: float = INTERVAL) -> str:
    return BASE.format(interval=interval) + "".join(routes)


def remove(path: Path) -> None:
    path.unlink()


def edit(path: Path, text: str | bytes) -> None:
    """Replace the file's content (sync on purpose: the engine is not involved)."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


class LogWatch(logging.Handler):
    """Collects the engine's log records; tasks can wait for the next one that matches."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._token = trio.lowlevel.current_trio_token()
        self._count = AsyncValue(0)
        self._cursor = 0

    def emit(self, record: logging.LogRecord) -> None:
        # Records may come from worker threads too; the count is only touched in Trio's thread.
        self.records.append(record)
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._update)

    def _update(self) -> None:
        self._count.value = len(self.records)

    async def next(self, predicate: Callable[[logging.LogRecord], bool]) -> logging.LogRecord:
        """The first record after the last one returned that matches ``predicate``."""
        while True:
            await self._count.wait_value(lambda n: n > self._cursor)
            record = self.records[self._cursor]
            self._cursor += 1
            if predicate(record):
                return record

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextmanager
def real_time_limit(seconds: float) -> Iterator[None]:
    """Fail (rather than hang) if the block takes ``seconds`` of wall-clock time."""
    token = trio.lowlevel.current_trio_token()
    done = threading.Event()
    with trio.CancelScope() as scope:

        def watchdog() -> None:
            if not done.wait(seconds):
                with suppress(trio.RunFinishedError):
                    token.run_sync_soon(scope.cancel)

        thread = threading.Thread(target=watchdog, name="test-watchdog", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
    if scope.cancelled_caught:
        pytest.fail(f"the watcher did not react within {seconds} s of real time")


@contextmanager
def watching_logs(level: int) -> Iterator[LogWatch]:
    """A :class:`LogWatch` on the ``mediation`` logger, which logs from ``level`` meanwhile."""
    logger = logging.getLogger("mediation")
    watch = LogWatch()
    before = logger.level
    logger.setLevel(level)
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(before)


@asynccontextmanager
async def engine_on(path: Path) -> AsyncIterator[tuple[MediationEngine, LogWatch]]:
    with watching_logs(logging.DEBUG) as watch, real_time_limit(REAL_TIME_LIMIT):
        async with open_mediation_engine(load_config(path)) as engine:
            yield engine, watch


def reloaded(record: logging.LogRecord) -> bool:
    return record.getMessage() == "routes reloaded"


def watcher_error(record: logging.LogRecord) -> bool:
    return record.name == "mediation.watcher" and record.levelno >= logging.ERROR


def unchanged(record: logging.LogRecord) -> bool:
    return record.getMessage() == "config file changed, routes unchanged"


def downstream_of(engine: MediationEngine, entrypoint: str) -> tuple[RouteConfig, ...]:
    return engine._context.routes.for_entrypoint(entrypoint).downstream


def upstream_of(engine: MediationEngine, entrypoint: str) -> tuple[RouteConfig, ...]:
    return engine._context.routes.for_entrypoint(entrypoint).upstream


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mediation.toml"
    edit(path, config_text(UP))
    return path


async def test_route_added_and_removed(config_file: Path, autojump_clock: MockClock) -> None:
    async with engine_on(config_file) as (engine, logs):
        assert downstream_of(engine, "feed") == ()
        assert [r.name for r in upstream_of(engine, "hook")] == ["hook->bus"]
        start = trio.current_time()

        edit(config_file, config_text(UP, DOWN))
        await logs.next(reloaded)
        assert [r.name for r in downstream_of(engine, "feed")] == ["bus->feed"]
        assert engine.config.routes == load_config(config_file).routes
        assert trio.current_time() - start >= INTERVAL

        edit(config_file, config_text(DOWN))
        await logs.next(reloaded)
        assert upstream_of(engine, "hook") == ()
        assert [r.name for r in downstream_of(engine, "feed")] == ["bus->feed"]


async def test_route_setting_changed(config_file: Path, autojump_clock: MockClock) -> None:
    async with engine_on(config_file) as (engine, logs):
        edit(config_file, config_text(UP.replace('"bus"\n', '"bus"\nchannel_size = 8\n')))
        await logs.next(reloaded)
        [route] = upstream_of(engine, "hook")
        assert route.channel_size == 8


async def test_untouched_file_and_comment_edits_do_not_reload(
    config_file: Path, autojump_clock: MockClock
) -> None:
    async with engine_on(config_file) as (engine, logs):
        routes = engine._context.routes
        # The first look compares the file with what the engine runs.
        await logs.next(unchanged)
        edit(config_file, "# a comment\n" + config_text(UP))
        await logs.next(unchanged)
        assert engine._context.routes is routes
        assert "routes reloaded" not in logs.messages()


async def test_invalid_edit_keeps_the_old_routes(
    config_file: Path, autojump_clock: MockClock
) -> None:
    async with engine_on(config_file) as (engine, logs):
        routes = engine._context.routes
        edit(config_file, config_text(UP, '\n[[routes]]\nsource = "bus"\ntarget = "x"\n'))
        record = await logs.next(watcher_error)
        assert record.levelno == logging.ERROR
        assert record.getMessage() == "config reload failed; the running routes stay"
        assert record.error == (  # type: ignore[attr-defined]
            f'{config_file}: routes[1].target: no entrypoint or endpoint named "x"'
        )
        assert engine._context.routes is routes
        assert [r.name for r in upstream_of(engine, "hook")] == ["hook->bus"]

        # The same bad content is not reported again at every look (the clock may not get
        # through all ten intervals while the watcher's reads are in threads: a weaker check,
        # never a false failure)...
        await trio.sleep(10 * INTERVAL)
        edit(config_file, config_text(UP, DOWN))
        await logs.next(reloaded)
        assert len([r for r in logs.records if watcher_error(r)]) == 1
        # ...and the watcher is still there for the fix.
        assert [r.name for r in downstream_of(engine, "feed")] == ["bus->feed"]


@pytest.mark.parametrize(
    "content",
    [
        "a = " + "[" * 100_000,
        "a = " + "{a = " * 100_000,
        # Parses, then overflows the stack while being validated (a RecursionError, not a
        # ConfigError, from mediation.config): the watcher survives that too.
        "a" + ".a" * 600 + " = 1",
        b"\xff\xfe not utf-8",
        "",
    ],
    ids=["deep-arrays", "deep-tables", "deep-dotted-keys", "not-utf8", "empty"],
)
async def test_pathological_file_does_not_kill_the_watcher(
    config_file: Path, autojump_clock: MockClock, content: str | bytes
) -> None:
    async with engine_on(config_file) as (engine, logs):
        routes = engine._context.routes
        edit(config_file, content)
        record = await logs.next(watcher_error)
        assert "the running routes stay" in record.getMessage()
        assert engine._context.routes is routes

        edit(config_file, config_text(UP, DOWN))
        await logs.next(reloaded)
        assert [r.name for r in downstream_of(engine, "feed")] == ["bus->feed"]


async def test_changed_entrypoints_are_refused(
    config_file: Path, autojump_clock: MockClock
) -> None:
    async with engine_on(config_file) as (engine, logs):
        routes = engine._context.routes
        edit(config_file, config_text(UP).replace('name = "feed"', 'name = "feed2"'))
        record = await logs.next(watcher_error)
        assert "entrypoints and endpoints cannot change" in record.error  # type: ignore[attr-defined]
        assert engine._context.routes is routes
        assert engine.config.entrypoints[1].name == "feed"


async def test_file_missing_for_a_while(config_file: Path, autojump_clock: MockClock) -> None:
    async with engine_on(config_file) as (engine, logs):
        remove(config_file)
        record = await logs.next(watcher_error)
        assert "cannot read" in record.getMessage()
        edit(config_file, config_text(UP, DOWN))
        await logs.next(reloaded)
        assert [r.name for r in downstream_of(engine, "feed")] == ["bus->feed"]


async def test_no_watcher_when_reload_interval_is_0(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    path = tmp_path / "mediation.toml"
    edit(path, config_text(UP, interval=0))
    async with engine_on(path) as (engine, logs):
        edit(path, config_text(UP, DOWN, interval=0))
        await trio.sleep(3600)  # virtual time; no thread is involved without a watcher
        assert downstream_of(engine, "feed") == ()
        assert not [r for r in logs.records if r.name == "mediation.watcher"]
