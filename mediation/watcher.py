"""Hot reload: watch the configuration file and hand changed routes to the running engine.

::

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_config, engine, "mediation.toml", 5.0)

The engine starts this itself when ``engine.reload_interval`` is above 0 and the configuration came
from a file. Every ``interval`` seconds the watcher reads the file and compares a hash of its bytes
with the last one it saw; only when they differ does it parse and validate the file and call
:meth:`MediationEngine.reload`. An invalid file, one that changes entrypoints or endpoints, or one
that cannot be read (an editor that replaces it while we look) is logged as an error and the running
routes stay as they are: the watcher tries again when the file changes next. Nothing the file holds
can end the watcher, and so the engine.

Polling rather than inotify: it works the same on every platform and in containers with a mounted
ConfigMap (where the file is swapped through a symlink), and a check every few seconds costs one
small read.

Cancellation: the watcher runs until cancelled; a reload in progress when it is cancelled is
either complete or not begun (``engine.reload`` swaps the route table in one step).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import trio

from .config import Config, load_config
from .errors import ConfigError

if TYPE_CHECKING:
    from .engine import MediationEngine

log = logging.getLogger(__name__)


async def watch_config(engine: MediationEngine, path: str, interval: float) -> None:
    """Reload ``engine`` from ``path`` whenever the file's content changes; runs until cancelled."""
    # The first look has nothing to compare with: the file is loaded and compared with the
    # running configuration instead, so an edit made while the engine was starting is not missed
    # and an untouched file does not cause a reload.
    last_digest: bytes | None = None
    while True:
        await trio.sleep(interval)
        try:
            content = await trio.Path(path).read_bytes()
        except OSError as error:
            log.error(
                "config reload failed: cannot read the file; the running routes stay",
                extra={"path": path, "error": error.strerror or str(error)},
            )
            continue
        digest = hashlib.sha256(content).digest()
        if digest == last_digest:
            continue
        last_digest = digest
        await _reload(engine, path)


async def _reload(engine: MediationEngine, path: str) -> None:
    try:
        # Read again rather than parse the bytes hashed above, so the watcher validates exactly
        # what ``mediation check`` would. If the file changed in between, the next look sees a
        # new hash and loads it once more: a reload with unchanged routes touches no session.
        config: Config = await trio.to_thread.run_sync(load_config, path)
        if config == engine.config:
            # Comments or formatting only (or the first look at an untouched file).
            log.debug("config file changed, routes unchanged", extra={"path": path})
            return
        log.info("config changed, reloading", extra={"path": path})
        await engine.reload(config)
    except ConfigError as error:
        log.error("config reload failed; the running routes stay", extra={"error": str(error)})
    except Exception as error:
        # A bug (in validation or in reload), not the operator's: say so loudly, but an engine
        # serving clients must not go down because its configuration file was edited.
        # ``trio.Cancelled`` is a BaseException and passes through.
        log.exception(
            "config reload failed with an unexpected error; the running routes stay",
            extra={"path": path, "error": repr(error)},
        )
