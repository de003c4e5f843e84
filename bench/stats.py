"""Figures -> rows -> tables: medians, spreads, ratios, targets; pure (no I/O)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def spread(values: Sequence[float]) -> float | None:
    """(max - min) / median, the relative spread of the rounds (None below two rounds)."""
    if len(values) < 2:
        return None
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else None


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Row:
    """One line of the table: a scenario's figure for the engine and for its baseline.

    ``engine`` and ``baseline`` hold every round's figure; the table shows their medians.
    ``target`` is a predicate text ("ratio >= 1.5", "value <= 50") checked by :func:`met`.
    ``higher_is_better`` decides which way the ratio reads for the reader (the ratio itself is
    always engine / baseline).
    """

    scenario: str
    broker: str
    params: str
    metric: str
    engine: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    baseline_name: str = ""
    target: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def engine_median(self) -> float | None:
        return median(self.engine)

    @property
    def baseline_median(self) -> float | None:
        return median(self.baseline)

    @property
    def ratio(self) -> float | None:
        e, b = self.engine_median, self.baseline_median
        if e is None or b is None or b == 0:
            return None
        return e / b

    def met(self) -> bool | None:
        """True/False against the target, None when it cannot be judged (a figure is missing)."""
        if not self.target:
            return None
        kind, op, bound_text = self.target.split()
        bound = float(bound_text)
        value = self.ratio if kind == "ratio" else self.engine_median
        if value is None:
            return None
        return value >= bound if op == ">=" else value <= bound

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            engine_median=self.engine_median,
            baseline_median=self.baseline_median,
            engine_spread=spread(self.engine),
            baseline_spread=spread(self.baseline),
            ratio=self.ratio,
            met=self.met(),
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


def human(value: float | None) -> str:
    """12345.6 -> '12.3 k'; small figures keep decimals; None -> 'n/a'."""
    if value is None:
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.2f} M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.1f} k"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def figure(values: Sequence[float]) -> str:
    """The median, with the spread when there are several rounds: '12.3 k ±8%'."""
    middle = median(values)
    text = human(middle)
    s = spread(values)
    if s is not None:
        text += f" ±{s * 50:.0f}%"  # half the relative range: the usual "±" reading
    return text


def _met_text(row: Row) -> str:
    result = row.met()
    return "n/a" if result is None else ("yes" if result else "**no**")


COLUMNS = ("scenario", "broker", "params", "metric", "engine", "baseline", "ratio", "target", "met")


def cells(row: Row) -> list[str]:
    baseline = figure(row.baseline) if row.baseline else "n/a"
    if row.baseline_name:
        baseline += f" ({row.baseline_name})"
    ratio = row.ratio
    return [
        row.scenario,
        row.broker,
        row.params,
        row.metric,
        figure(row.engine) if row.engine else "failed" if row.note.startswith("failed") else "n/a",
        baseline,
        f"{ratio:.2f}x" if ratio is not None else "n/a",
        row.target or "-",
        _met_text(row),
    ]


def text_table(rows: Iterable[Row]) -> str:
    """A plain-text table for the terminal."""
    lines = [list(COLUMNS)] + [cells(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = []
    for n, line in enumerate(lines):
        text = "  ".join(c.replace("**", "").ljust(w) for c, w in zip(line, widths, strict=True))
        out.append(text.rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: Iterable[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells(row)) + " |")
    return "\n".join(lines)
