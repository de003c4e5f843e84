"""Process plumbing shared by the broker harnesses: ports, logs, start/stop/pause."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Self

LOOPBACK = "127.0.0.1"


class BrokerStartError(RuntimeError):
    """A broker did not come up; the message ends with the tail of its log."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on `host` right now (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def tail(path: Path | str, lines: int = 40, max_bytes: int = 16_384) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the process group led by `proc` (each broker runs in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


# Every live Managed process, so that an interpreter exit without the context
# manager's exit (e.g. an error during fixture setup) still stops them.
_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


class ManagedProcess:
    """One child process in its own session, its output appended to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        if self.running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while it runs
        self._log.write(
            f"\n==== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode()
        )
        self._log.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # own process group: signals reach its children too
        )
        _LIVE.add(self)

    def send_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc, sig)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM, then SIGKILL after `timeout`) and reap it. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc, signal.SIGCONT)  # a paused process cannot handle SIGTERM
            _signal_group(proc, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        # Leftovers of the group (children that ignored the signal) go too.
        _signal_group(proc, signal.SIGKILL)
        self.proc = None
        _LIVE.discard(self)
        self._close_log()

    def kill(self) -> None:
        """Stop it abruptly (SIGKILL to the whole group)."""
        self.stop(timeout=5.0, sig=signal.SIGKILL)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _stop_all_live() -> None:
    for p in list(_LIVE):
        with contextlib.suppress(Exception):
            p.kill()


atexit.register(_stop_all_live)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    alive: Callable[[], bool],
    what: str,
    interval: float = 0.05,
) -> None:
    """Poll `check` until true; raise TimeoutError / ChildProcessError with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if not alive():
            raise ChildProcessError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(interval)


class Broker:
    """Base of the harness objects: one broker on loopback, restartable on the same port.

    Subclasses set `kind`, implement `_spawn()` (start the process(es)) and
    `_ready()` (True when clients can use it), and may extend `_after_stop()`/`close()`.
    """

    kind = "broker"
    start_timeout = 30.0

    def __init__(self, port: int | None = None, host: str = LOOPBACK, keep_dir: bool = False):
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mediation-{self.kind}-"))
        self.keep_dir = keep_dir
        self.log_path = self.workdir / f"{self.kind}.log"
        self.process: ManagedProcess | None = None
        self.start_seconds: float | None = None  # how long the last start() took
        self._paused = False
        self._closed = False

    # -- to implement ------------------------------------------------------------
    def _spawn(self) -> ManagedProcess:
        raise NotImplementedError

    def _ready(self) -> bool:
        return port_accepts(self.host, self.port)

    def _log_tail(self) -> str:
        return tail(self.log_path)

    # -- public API ----------------------------------------------------------------
    @property
    def address(self) -> str:
        """'host:port'."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.running()

    def start(self, timeout: float | None = None) -> None:
        """Start the broker (again) on the same port and wait until it serves clients."""
        if self._closed:
            raise RuntimeError(f"{self.kind} harness is closed")
        if self.is_running():
            return
        timeout = self.start_timeout if timeout is None else timeout
        t0 = time.monotonic()
        # After a stop(), the old process's listening socket may linger for a moment.
        deadline = t0 + (5.0 if self.start_seconds is not None else 0.0)
        while not port_is_free(self.host, self.port):
            if time.monotonic() >= deadline:
                # Checked first, or a readiness probe could be answered by that other listener.
                raise BrokerStartError(
                    f"{self.kind}: port {self.address} is already in use by another process"
                )
            time.sleep(0.05)
        try:
            self.process = self._spawn()
            wait_until(
                self._ready,
                timeout,
                alive=lambda: self.process is not None and self.process.running(),
                what=f"{self.kind} on {self.address}",
            )
        except BaseException as exc:
            detail = self._log_tail()
            self._stop_process(kill=True)
            if isinstance(exc, (TimeoutError, ChildProcessError, OSError)):
                raise BrokerStartError(
                    f"{self.kind} failed to start on {self.address}: {exc}\n"
                    f"--- tail of {self.log_path} ---\n{detail}"
                ) from exc
            raise
        self._paused = False
        self.start_seconds = time.monotonic() - t0

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the broker gracefully (SIGTERM, SIGKILL after `timeout`); start() brings it back."""
        self._stop_process(kill=False, timeout=timeout)

    def kill(self) -> None:
        """Stop the broker abruptly (SIGKILL), as in a crash; start() brings it back."""
        self._stop_process(kill=True)

    def restart(self, timeout: float | None = None) -> None:
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        if self.process is None or not self.process.running():
            raise RuntimeError(f"{self.kind} is not running")
        self.process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Undo pause() (SIGCONT)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    @contextlib.contextmanager
    def stopped(self, kill: bool = False) -> Iterator[None]:
        """`with broker.stopped(): ...` - an outage; the broker is started again on exit."""
        self.kill() if kill else self.stop()
        try:
            yield
        finally:
            self.start()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """`with broker.frozen(): ...` - pause() for the block, resume() on exit."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def ensure_running(self) -> None:
        """Resume it if paused, start it if stopped (e.g. after a test's outage)."""
        if self._paused:
            self.resume()
        if not self.is_running():
            self.start()

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def close(self) -> None:
        """Stop everything and remove the temp dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_process(kill=False, timeout=10.0)
            self._close_extra()
        finally:
            if not self.keep_dir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _close_extra(self) -> None:
        """Subclass hook: stop helper processes (e.g. epmd)."""

    def _stop_process(self, kill: bool, timeout: float = 15.0) -> None:
        if self.process is not None:
            if kill:
                self.process.kill()
            else:
                self.process.stop(timeout)
        self._paused = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.is_running() else "stopped")
        return f"<{type(self).__name__} {self.address} {state} pid={self.pid}>"
