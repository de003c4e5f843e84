"""proton's event loop, raw C events vs proton's public Collector.peek()/pop(), in memory.

Two proton engines (client and server) joined by memory transports; the client sends N
pre-settled 100-byte messages on one link, the server receives (credit N) and settles them.
Both sides dispatch their events with the loop under test; time per message (best of R).
    python -m bench.proton_events [-n 20000] [-r 5]
"""

from __future__ import annotations

import argparse
import time

from cproton import isnull, pn_collector_peek, pn_collector_pop, pn_event_type
from proton import Collector, Connection, Event, Message, Transport

HANDLED = frozenset(
    k.number
    for k in (
        Event.DELIVERY,
        Event.LINK_FLOW,
        Event.LINK_REMOTE_OPEN,
        Event.LINK_REMOTE_CLOSE,
        Event.LINK_REMOTE_DETACH,
        Event.SESSION_REMOTE_CLOSE,
        Event.CONNECTION_REMOTE_OPEN,
        Event.CONNECTION_REMOTE_CLOSE,
        Event.TRANSPORT_ERROR,
        Event.TRANSPORT_CLOSED,
        Event.SESSION_REMOTE_OPEN,
    )
)


def raw(collector: Collector, dispatch) -> None:
    impl = collector._impl
    while not isnull(ev := pn_collector_peek(impl)):
        try:
            if pn_event_type(ev) in HANDLED:
                dispatch(Event.wrap(ev))
        finally:
            pn_collector_pop(impl)


def public(collector: Collector, dispatch) -> None:
    while (ev := collector.peek()) is not None:
        try:
            if ev.type.number in HANDLED:
                dispatch(ev)
        finally:
            collector.pop()


def run(n: int, process) -> float:
    sides = []
    for server in (False, True):
        conn, coll = Connection(), Collector()
        transport = Transport(Transport.SERVER) if server else Transport()
        conn.collect(coll)
        transport.bind(conn)
        sides.append((conn, transport, coll))
    (c1, t1, k1), (c2, t2, k2) = sides
    got = [0]

    def server(ev: Event) -> None:
        if ev.type == Event.CONNECTION_REMOTE_OPEN:
            c2.open()
        elif ev.type == Event.SESSION_REMOTE_OPEN:
            ev.session.open()
        elif ev.type == Event.LINK_REMOTE_OPEN:
            ev.link.open()
            ev.link.flow(n)
        elif ev.type == Event.DELIVERY:
            d = ev.delivery
            if d.readable and not d.partial:
                link = d.link
                link.recv(d.pending)
                link.advance()
                d.settle()
                got[0] += 1

    def client(ev: Event) -> None:
        pass

    def pump() -> None:
        for a, b in ((t1, t2), (t2, t1)):
            while (p := a.pending()) > 0 and (room := b.capacity()) > 0:
                k = min(p, room)
                b.push(a.peek(k))
                a.pop(k)

    c1.open()
    ssn = c1.session()
    ssn.open()
    snd = ssn.sender("s")
    snd.target.address = "q"
    snd.open()
    for _ in range(10):
        pump()
        process(k1, client)
        process(k2, server)
    body = Message(body=b"x" * 100).encode()
    start = time.perf_counter()
    sent = 0
    while got[0] < n:
        while sent < n and snd.credit > 0 and sent - got[0] < 100:
            d = snd.delivery(str(sent))
            snd.send(body)
            d.settle()
            snd.advance()
            sent += 1
            process(k1, client)
        pump()
        process(k2, server)
        pump()
        process(k1, client)
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("-r", type=int, default=5)
    a = ap.parse_args()
    for name, process in (("raw C events", raw), ("public peek/pop", public)) * 2:
        best = min(run(a.n, process) for _ in range(a.r))
        print(f"{name:16s} {best * 1e6:6.2f} us/message")


if __name__ == "__main__":
    main()
