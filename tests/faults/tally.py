"""Sequence-numbered payloads, counted at both ends (no I/O).

The sending end records what the broker confirmed; the receiving end records every payload it was
given, in order. ``lost`` is what was confirmed and never received; ``duplicated`` is how many
receipts were of a number already received.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

WIDTH = 6


def payload(seq: int) -> bytes:
    return b"%0*d" % (WIDTH, seq)


def seq_of(text: str | bytes) -> int:
    return int(text)


@dataclass
class Tally:
    confirmed: set[int] = field(default_factory=set)
    received: list[int] = field(default_factory=list)

    def confirm(self, seqs: Iterable[int]) -> None:
        self.confirmed.update(seqs)

    @property
    def lost(self) -> int:
        return len(self.confirmed - set(self.received))

    @property
    def duplicated(self) -> int:
        return sum(n - 1 for n in Counter(self.received).values())

    @property
    def missing(self) -> list[int]:
        return sorted(self.confirmed - set(self.received))
