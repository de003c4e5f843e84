"""Hostile bytes for every entrypoint while bystanders keep working (issue 12).

One engine process, one fixed seed, about a minute: see :mod:`tests.fuzz.driver` for the inputs
and the oracle. ``just fuzz`` runs the same with random seeds for as long as asked. A failure
lists the offending inputs; ``python scripts/fuzz.py --seed SEED --index I`` sends one again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuzz.driver import run_fuzz

SEED = 20250612
# Bounded by time, not by count, so that a slow machine does not make `just test` slower: the
# inputs are the same sequence on every run (input i depends on the seed and i only), and a
# fast run tries at most MAX_INPUTS of them.
SECONDS = 50
MAX_INPUTS = 3000
# Over TLS (issue 15): the same inputs through TLS, and three in eight at the TLS layer itself
# (cleartext, a handshake cut short, garbage records; tests.fuzz.driver.tls_mode). Shorter: the
# plaintext run covers the HTTP inputs, this one what TLS adds.
TLS_SECONDS = 25
TLS_MAX_INPUTS = 1500


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("seed", [SEED], ids=lambda seed: f"seed={seed}")
async def test_fuzz_every_entrypoint(
    tmp_path: Path, seed: int, tls: bool, report_figures: Callable[..., None]
) -> None:
    print(f"fuzz seed {seed}{' over TLS' if tls else ''}")
    result = await run_fuzz(
        seed,
        workdir=tmp_path,
        seconds=TLS_SECONDS if tls else SECONDS,
        max_inputs=TLS_MAX_INPUTS if tls else MAX_INPUTS,
        tls=tls,
    )
    report_figures(
        seed=seed,
        tls=tls,
        inputs=result.inputs,
        seconds=round(result.elapsed, 1),
        failures=len(result.failures),
        engine_deaths=sum("not alive" in f.what or "exited" in f.what for f in result.failures),
        connection_errors=result.connection_errors,
    )
    assert result.inputs > 0, result.report()
    assert not result.failures, result.report()
