"""Docstrings say what a module does and why, not what it measured once.

Measured figures go stale with the next commit and cannot be reproduced from the file they stand
in; they belong in docs/performance.md with the command that reproduces them (issue 13). This
test reads every docstring of the package (module, class, function) and fails on the shapes
benchmark figures take: rates, CPU times per unit, percentages, percentiles, medians and
before -> after pairs. Timeouts and sizes that are settings ("30 s", "64 KiB") are not figures.
It also keeps the docstrings pointing inside the repository (docs/design.md), not to a
specification outside it.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "mediation"

NUMBER = r"(?<![\w.])\d[\d,]*(?:\.\d+)?"
FIGURES = re.compile(
    "|".join(
        (
            NUMBER + r"\s?k?\s?(?:msgs?|events?|req(?:uest)?s?|records?|messages?)?/s\b",  # rates
            NUMBER + r"\s?(?:us|µs|ns)\b",  # CPU or latency per unit
            NUMBER + r"\s?%",  # shares of CPU, spreads
            r"\bp(?:50|90|95|99)\b",  # percentiles
            r"\bmedians?\b",
            NUMBER + r"\s?(?:k|us|ms|%|x)?\s?->\s?" + NUMBER,  # before -> after
            NUMBER + r"(?:-" + NUMBER + r")?\s?ms\b",  # latencies
            NUMBER + r"(?:\s?-\s?" + NUMBER + r")?\s?k\b",  # counts and rates in thousands
        )
    )
)
OUTSIDE = re.compile(r"\bDESIGN(?:\.md)?\s+(?:section\s+)?\d|\.\./shared")


def _docstrings() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes: list[ast.AST] = [tree]
        nodes += [
            node
            for node in ast.walk(tree)
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        for node in nodes:
            doc = ast.get_docstring(node, clean=False)  # type: ignore[arg-type]
            if doc:
                where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'name', '<module>')}"
                found.append((where, doc))
    return found


def test_the_scan_reads_the_package() -> None:
    docs = dict(_docstrings())
    assert "mediation/session.py:<module>" in docs
    assert len(docs) > 200


@pytest.mark.parametrize(
    "text",
    [
        "WebSocket auto credit 1 11.4 k -> 16.0 k/s",
        "the poller thread 5-7 us per event",
        "a quarter of a consumer's CPU time: 25 %",
        "p99 at 50 % of max 43 -> 26 ms",
        "medians of 3 runs",
        "a full collection took 250-400 ms",
        "publish + await accepted, one by one 2.5-3.3 k",
    ],
)
def test_figures_are_recognised(text: str) -> None:
    assert FIGURES.search(text)


@pytest.mark.parametrize(
    "text",
    ["within ``CLOSE_TIMEOUT`` (5 s)", "64 KiB fetches", "keepalive is 5 s", "RFC 9112", "UUIDv5"],
)
def test_settings_are_not_figures(text: str) -> None:
    assert not FIGURES.search(text)


def test_no_docstring_carries_benchmark_figures() -> None:
    offenders = [
        f"{where}: {match.group(0)!r}"
        for where, doc in _docstrings()
        for match in [FIGURES.search(doc)]
        if match
    ]
    assert offenders == [], "move these to docs/performance.md with their command:\n" + "\n".join(
        offenders
    )


def test_docstrings_point_inside_the_repository() -> None:
    offenders = [where for where, doc in _docstrings() if OUTSIDE.search(doc)]
    assert offenders == [], offenders
