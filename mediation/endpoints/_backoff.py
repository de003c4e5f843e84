"""Reconnect delays: exponential backoff with jitter (no I/O).

Every endpoint's connection task waits ``next()`` seconds after a failed attempt and calls
``reset()`` once it was up again. The delay doubles per failure from ``initial`` up to
``maximum``; the wait handed out is drawn uniformly between half and all of it, so gateways (or
endpoints) that lost the same broker do not all knock on it again at the same instant.

>>> backoff = Backoff(1.0, 8.0)
>>> [0.5 <= backoff.next() <= 1.0, 1.0 <= backoff.next() <= 2.0]
[True, True]
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = max(initial, maximum)
        self._rng = rng or random.Random()
        self._delay = initial

    @property
    def delay(self) -> float:
        """The ceiling of the next wait (before jitter)."""
        return self._delay

    def next(self) -> float:
        """The wait after this failure, in seconds; the next one's ceiling doubles."""
        ceiling = self._delay
        self._delay = min(self._delay * 2, self.maximum)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """The connection was up: the next failure starts from ``initial`` again."""
        self._delay = self.initial
