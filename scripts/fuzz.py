#!/usr/bin/env python3
"""Fuzz the entrypoints for as long as asked (`just fuzz`): hostile bytes, bystanders, oracle.

    python scripts/fuzz.py [--seconds 600] [--round 60] [--seed S]   # rounds of random seeds
    python scripts/fuzz.py --seed S --index I [--index J ...]         # send inputs again, alone

The same run as ``tests/test_fuzz.py`` (see ``tests/fuzz/driver.py`` for the inputs and the
oracle), in rounds of ``--round`` seconds, each with a fresh engine process and a new random
seed (or ``--seed`` for the first), until ``--seconds`` are up. Prints every round's seed and
failures, then how many inputs were tried. With ``--index``, only those inputs of ``--seed``
are sent, one batch, each outcome printed: how to look at a failure again.

Exit status 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.brokers import start_tansu  # noqa: E402
from tests.fuzz.driver import FuzzResult, run_fuzz  # noqa: E402


async def _rounds(args: argparse.Namespace) -> list[FuzzResult]:
    results: list[FuzzResult] = []
    start = trio.current_time()
    seed = args.seed
    while True:
        left = args.seconds - (trio.current_time() - start)
        if left <= 0 or (results and results[-1].inputs == 0):
            break
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        with tempfile.TemporaryDirectory(prefix="fuzz-") as workdir:
            result = await run_fuzz(
                seed,
                kafka=args.kafka,
                workdir=Path(workdir),
                seconds=min(args.round, left),
                batch_size=args.batch_size,
                tls=args.tls,
            )
        results.append(result)
        seed = None
    return results


async def _again(args: argparse.Namespace) -> list[FuzzResult]:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as workdir:
        result = await run_fuzz(
            args.seed,
            kafka=args.kafka,
            workdir=Path(workdir),
            seconds=args.seconds,
            indices=args.index,
            batch_size=len(args.index),
            verbose=True,
            tls=args.tls,
        )
    return [result]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long in all")
    parser.add_argument("--round", type=float, default=60.0, help="seconds per seed and engine")
    parser.add_argument("--seed", type=int, default=None, help="the first round's seed")
    parser.add_argument("--batch-size", type=int, default=50, help="connections at once")
    parser.add_argument(
        "--index", type=int, action="append", help="send only this input of --seed (repeatable)"
    )
    parser.add_argument(
        "--tls", action="store_true", help="every entrypoint on TLS, and inputs at the TLS layer"
    )
    args = parser.parse_args()
    if args.index and args.seed is None:
        parser.error("--index needs --seed")
    with start_tansu() as tansu:  # the Kafka broker of the resume entrypoint (ws-k)
        args.kafka = tansu.bootstrap_servers
        results = trio.run(_again if args.index else _rounds, args)
    inputs = sum(r.inputs for r in results)
    failures = sum(len(r.failures) for r in results)
    seeds = ", ".join(str(r.seed) for r in results)
    print(f"fuzz: {inputs} inputs tried, {failures} failures, seeds {seeds}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
