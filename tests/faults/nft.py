"""Network faults between the engine and a broker on loopback, with nftables.

Each fault is a table of its own (``inet mediation_fault_<random>``) holding one ``output`` chain
whose rules match only TCP to or from the broker's port on 127.0.0.1 (on loopback every packet
passes ``output`` once, so one chain sees both directions). The table is deleted when the block
ends, however it ends, and any still live at interpreter exit are deleted then. A run killed
with SIGKILL can leave one behind: :func:`remove_leftovers` deletes every such table (call it by
hand only: it would also delete the tables of a test run going on beside this one).

- ``drop``: each packet either way is dropped with probability ``1/every`` (``numgen random``);
  TCP retransmits, so connections live on, slower.
- ``reset``: every packet to the broker is answered with a TCP reset: established connections
  break at their next send, new ones are refused, until the block ends.
- ``partition``: every packet either way is dropped: connections hang silently until a keepalive
  or heartbeat gives up on them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Literal

PREFIX = "mediation_fault_"
Kind = Literal["drop", "reset", "partition"]

_live: set[str] = set()


def nft(*args: str, script: str | None = None) -> str:
    """Run ``nft`` (a script on stdin with ``-f -``); raise with its message when it fails."""
    argv = ["nft", *args] if script is None else ["nft", "-f", "-"]
    done = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def rules(kind: Kind, port: int, every: int = 10) -> list[str]:
    """The rules for ``kind`` on TCP port ``port`` of 127.0.0.1 (both directions)."""
    to_broker = f"ip daddr 127.0.0.1 tcp dport {port}"
    from_broker = f"ip saddr 127.0.0.1 tcp sport {port}"
    if kind == "drop":
        return [f"{match} numgen random mod {every} 0 drop" for match in (to_broker, from_broker)]
    if kind == "reset":
        return [f"{to_broker} reject with tcp reset"]
    if kind == "partition":
        return [f"{to_broker} drop", f"{from_broker} drop"]
    raise ValueError(kind)


def tables() -> list[str]:
    listed = json.loads(nft("-j", "list", "tables"))
    return [
        item["table"]["name"]
        for item in listed["nftables"]
        if "table" in item and item["table"]["family"] == "inet"
    ]


def remove_leftovers() -> None:
    """Delete every fault table (this process's and those a killed test run left)."""
    for name in tables():
        if name.startswith(PREFIX):
            with contextlib.suppress(RuntimeError):
                nft("delete", "table", "inet", name)
    _live.clear()


@contextlib.contextmanager
def fault(kind: Kind, port: int, every: int = 10) -> Iterator[str]:
    """``with fault("partition", broker.port):`` the fault holds for the block; yields the table."""
    name = f"{PREFIX}{uuid.uuid4().hex[:12]}"
    body = "\n".join(f"    {rule}" for rule in rules(kind, port, every))
    script = (
        f"table inet {name} {{\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"{body}\n"
        "  }\n"
        "}\n"
    )
    _live.add(name)
    try:
        nft(script=script)
        yield name
    finally:
        with contextlib.suppress(RuntimeError):  # it may not have been created
            nft("delete", "table", "inet", name)
        _live.discard(name)


def _remove_live() -> None:
    for name in list(_live):
        with contextlib.suppress(Exception):
            nft("delete", "table", "inet", name)


atexit.register(_remove_live)
