"""Figures measured by the fault and resilience tests, printed together at the end of the run.

A test asks for ``report_figures`` and calls it with named values (lost, duplicated, reconnect
seconds, memory...). They are printed in a "measured figures" section after the test summary and
written to ``.pytest-figures.json`` (in the working directory), so the README can quote a run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

_FIGURES: list[dict[str, object]] = []
_OUTPUT = Path(".pytest-figures.json")


@pytest.fixture
def report_figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``report_figures(lost=0, duplicated=0, reconnect_s=1.4)``: record this test's figures."""

    def record(**values: object) -> None:
        _FIGURES.append({"test": request.node.nodeid, **values})

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("measured figures")
    for figures in _FIGURES:
        values = ", ".join(f"{k}={_format(v)}" for k, v in figures.items() if k != "test")
        terminalreporter.write_line(f"{figures['test']}: {values}")
    _OUTPUT.write_text(json.dumps(_FIGURES, indent=1) + "\n")


def _format(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
