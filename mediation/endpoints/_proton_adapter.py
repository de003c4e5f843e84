"""Every use of python-qpid-proton's private API, for the AMQP 1.0 (JMS) endpoint.

proton is pinned (pyproject.toml) to the version these were written and tested against, and
``tests/test_proton_internals.py`` fails loudly when one of them moves. Nothing here changes
proton for anyone else: these are reads of one object's C handle.

- :func:`content_type` reads ``Message._msg`` with ``cproton.pn_message_get_content_type``:
  proton's ``Message.content_type`` reads a message without one as ``symbol("None")``, which
  cannot be told apart from a content type of ``"None"``.
- :func:`dispatch_events` reads ``Collector._impl`` with ``cproton``'s ``pn_collector_peek``,
  ``pn_event_type`` and ``pn_collector_pop``: the type of each event is read from the C event,
  and only the events the endpoint acts on pay for proton's Python wrapper (``Event.wrap``).
  proton's public ``Collector.peek()`` wraps every event (output ready, local state changes...);
  the measured gain: docs/performance.md, "The AMQP 1.0 endpoint".
"""

from __future__ import annotations

from collections.abc import Callable

from cproton import (  # type: ignore[import-untyped]
    isnull,
    pn_collector_peek,
    pn_collector_pop,
    pn_event_type,
    pn_message_get_content_type,
)
from proton import Collector, Message
from proton import Event as ProtonEvent


def content_type(message: Message) -> str | None:
    """The message's content type, None when it has none."""
    value: str | None = pn_message_get_content_type(message._msg)
    return value


def dispatch_events(
    collector: Collector, handled: frozenset[int], dispatch: Callable[[ProtonEvent], None]
) -> None:
    """Pop every pending event of ``collector``; those whose type number is in ``handled`` are
    wrapped and given to ``dispatch`` first, in order. An event is popped even if ``dispatch``
    raises (the exception propagates)."""
    impl = collector._impl
    while not isnull(raw := pn_collector_peek(impl)):
        try:
            if pn_event_type(raw) in handled:
                dispatch(ProtonEvent.wrap(raw))  # type: ignore[no-untyped-call]
        finally:
            pn_collector_pop(impl)
