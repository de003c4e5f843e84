"""The python-qpid-proton internals the AMQP 1.0 (JMS) endpoint relies on, all in
mediation/endpoints/_proton_adapter.py (proton pinned to the tested version in pyproject.toml):
this fails, rather than the endpoint misbehaving, when an upgrade moves one of them.

- ``Message._msg`` with ``cproton.pn_message_get_content_type`` (``content_type``);
- ``Collector._impl`` with ``cproton``'s ``isnull``, ``pn_collector_peek``, ``pn_event_type``,
  ``pn_collector_pop``, and ``Event.wrap`` (``dispatch_events``).

No other module of the engine may touch proton's private API (the last test checks the sources).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path

from proton import Collector, Connection, Message
from proton import Event as ProtonEvent

import mediation
from mediation.endpoints import _proton_adapter
from mediation.endpoints._proton_adapter import content_type, dispatch_events

# The python-qpid-proton versions the adapter was tested against (pyproject.toml pins the same).
TESTED = {"0.40.0"}


def test_proton_is_a_tested_version() -> None:
    version = importlib.metadata.version("python-qpid-proton")
    assert version in TESTED, version


def test_content_type_tells_none_from_a_content_type() -> None:
    assert content_type(Message()) is None
    message = Message()
    message.content_type = "text/plain"
    assert content_type(message) == "text/plain"
    decoded = Message()
    decoded.decode(message.encode())
    assert content_type(decoded) == "text/plain"
    # Why the adapter exists: proton's own property cannot say "none". The day it can, the
    # adapter's content_type can go (this assertion then fails, on purpose).
    assert Message().content_type == "None"


def test_dispatch_events_wraps_only_the_handled_ones_and_pops_every_event() -> None:
    collector = Collector()
    connection = Connection()
    connection.collect(collector)
    connection.open()  # CONNECTION_INIT, CONNECTION_LOCAL_OPEN
    session = connection.session()
    session.open()  # SESSION_INIT, SESSION_LOCAL_OPEN
    handled = frozenset({ProtonEvent.CONNECTION_LOCAL_OPEN.number, ProtonEvent.SESSION_INIT.number})
    seen: list[ProtonEvent] = []
    dispatch_events(collector, handled, seen.append)
    assert [event.type for event in seen] == [
        ProtonEvent.CONNECTION_LOCAL_OPEN,
        ProtonEvent.SESSION_INIT,
    ]
    assert seen[0].connection == connection and seen[1].session == session  # same C objects
    assert collector.peek() is None  # everything popped


def test_an_event_is_popped_even_when_dispatch_raises() -> None:
    collector = Collector()
    connection = Connection()
    connection.collect(collector)
    connection.open()

    def boom(event: ProtonEvent) -> None:
        raise RuntimeError("dispatch failed")

    kinds = frozenset({ProtonEvent.CONNECTION_INIT.number})
    try:
        dispatch_events(collector, kinds, boom)
    except RuntimeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("the exception was lost")
    first = collector.peek()
    assert first is not None and first.type is not ProtonEvent.CONNECTION_INIT


def test_the_private_names_are_where_the_adapter_expects_them() -> None:
    assert "_impl" in vars(Collector())
    assert "_msg" in vars(Message())
    assert callable(ProtonEvent.wrap)


def test_no_other_module_uses_protons_private_api() -> None:
    adapter = Path(inspect.getfile(_proton_adapter))
    private = re.compile(r"\bcproton\b|\bpn_\w+|\._impl\b|\._msg\b|\bEvent\.wrap\b")
    offenders = []
    for path in Path(inspect.getfile(mediation)).parent.rglob("*.py"):
        text = path.read_text()
        if path == adapter or "proton" not in text:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if private.search(line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
