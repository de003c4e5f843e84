"""What ``at_most_once`` sessions acked, so that a redelivery of it can be dropped (no I/O).

An ``at_most_once`` session acks just before it writes an event to its client. Neither AMQP
0-9-1's ``basic.ack`` nor MQTT's PUBACK is answered, so an ack still on its way when the
connection broke (or that a broker killed with SIGKILL had not yet written down) is lost, and the
broker delivers the message again, flagged (``redelivered``, DUP). An endpoint remembers the
last ``size`` messages its ``at_most_once`` sessions acked, by a digest of what identifies them,
and acks such a flagged redelivery without handing it out. Memory only: an engine restart
forgets it.

>>> written = Written(2)
>>> key = Written.key("queue", "message-id", b"payload")
>>> written.add(key); key in written
True
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

# Messages remembered per endpoint.
WRITTEN_MEMORY = 8192


class Written:
    def __init__(self, size: int = WRITTEN_MEMORY) -> None:
        self.size = size
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    @staticmethod
    def key(*parts: str | bytes) -> bytes:
        """A digest of the parts (each length-prefixed, so no two splits collide)."""
        digest = hashlib.blake2b(digest_size=16)
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
        return digest.digest()

    def add(self, key: bytes) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys
