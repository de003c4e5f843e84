"""``python -m bench [--quick] [--scenario S1,S2] [--render docs/benchmarks.md]``.

Runs the scenarios (all by default), prints the table, writes
``bench/results/<date>-<scenario>.json`` per scenario (rows with every round's figure, the raw
measurements, machine info, config), and with ``--render`` writes the table as Markdown.
``--from-results DATE`` renders the files of an earlier run instead of running anything.
Exit status: 0 when every scenario ran (whatever the targets say), 1 when one could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .procs import ROOT

RESULTS = ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.from_results:
        results = load_results(args.from_results)
        if not results:
            print(f"no results for {args.from_results} in {RESULTS}", file=sys.stderr)
            return 1
        render(results, Path(args.render or ROOT / "docs" / "benchmarks.md"))
        return 0
    from .scenarios import SCENARIOS

    names = (
        [s.strip().upper() for s in args.scenario.split(",")] if args.scenario else list(SCENARIOS)
    )
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(
            f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    results, failed = run(
        names,
        quick=args.quick,
        rounds=args.rounds,
        kafka_fetch=args.kafka_fetch,
        only=tuple(b.strip() for b in args.broker.split(",")) if args.broker else None,
        command=" ".join(["python -m bench", *map(shlex.quote, argv or sys.argv[1:])]),
    )
    if args.render:
        render(results, Path(args.render))
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 round, 100 B, small counts (under 3 minutes)",
    )
    parser.add_argument("--scenario", help="comma-separated: S1,S2,... (default: all)")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 3; quick 1)")
    parser.add_argument(
        "--kafka-fetch",
        choices=("per_session", "shared"),
        help="KafkaConfig.fetch of the engine's Kafka endpoints (default: the config default)",
    )
    parser.add_argument(
        "--broker",
        help="comma-separated: kafka,rabbitmq,mqtt: only these brokers' rows (S1-S3, S8)",
    )
    parser.add_argument("--render", metavar="PATH", help="write the table as Markdown to PATH")
    parser.add_argument(
        "--from-results", metavar="DATE", help="render bench/results/DATE-*.json instead of running"
    )
    return parser


def run(
    names: list[str],
    *,
    quick: bool,
    rounds: int | None,
    command: str,
    kafka_fetch: str | None = None,
    only: tuple[str, ...] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    from .brokers import Brokers
    from .machine import describe, machine_info
    from .procs import workdir
    from .scenarios import DESCRIPTIONS, Context, run_scenario
    from .stats import Row, text_table

    info = machine_info()
    print(f"machine: {describe(info)}", flush=True)
    rounds = rounds or (1 if quick else 3)
    sizes = (100,) if quick else (100, 4096)
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    all_rows: list[Row] = []
    failed = False
    with contextlib.ExitStack() as stack, workdir() as work:
        brokers = Brokers(stack, kafka_fetch=kafka_fetch)
        for name in names:
            print(f"\n== {name}: {DESCRIPTIONS[name]}", flush=True)
            ctx = Context(
                brokers,
                work,
                quick,
                rounds,
                sizes,
                log=lambda text: print(text, flush=True),
                only=only,
            )
            t0 = time.monotonic()
            rows, error = run_scenario(ctx, name)
            seconds = time.monotonic() - t0
            if error:
                failed = True
                print(f"{name} FAILED to run:\n{error}", flush=True)
            all_rows.extend(rows)
            if rows:
                print(text_table(rows), flush=True)
            print(f"({name}: {seconds:.0f} s)", flush=True)
            result = {
                "scenario": name,
                "description": DESCRIPTIONS[name],
                "date": date,
                "command": command,
                "config": {
                    "quick": quick,
                    "rounds": rounds,
                    "payload_sizes": sizes,
                    "kafka_fetch": kafka_fetch,
                    "brokers": only,
                },
                "machine": info,
                "brokers": brokers.versions(),
                "seconds": round(seconds, 1),
                "error": error,
                "rows": [row.as_dict() for row in rows],
                "raw": ctx.raw,
            }
            results.append(result)
            path = RESULTS / f"{date}-{name}.json"
            path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print("\n== all scenarios\n" + text_table(all_rows))
    missing = sorted({m for r in results for m in r["raw"].get("missing", [])})
    if missing:
        print("\nmissing sides (n/a in the table): " + "; ".join(missing))
    failures = [f for r in results for f in r["raw"].get("failures", [])]
    if failures:
        print(f"\n{len(failures)} side(s) failed (n/a in the table); first: {failures[0][:500]}")
    return results, failed


def load_results(date: str) -> list[dict[str, Any]]:
    from .scenarios import SCENARIOS

    found = []
    for name in SCENARIOS:
        path = RESULTS / f"{date}-{name}.json"
        if path.exists():
            found.append(json.loads(path.read_text()))
    return found


def render(results: list[dict[str, Any]], path: Path) -> None:
    from .machine import describe
    from .stats import Row, markdown_table

    first = results[0]
    rows = [Row.from_dict(row) for result in results for row in result["rows"]]
    lines = [
        "# Benchmarks",
        "",
        f"Command: `{first['command']}` ({'quick' if first['config']['quick'] else 'full'} run, "
        f"{first['config']['rounds']} round(s) per scenario), date {first['date']}.",
        "",
        f"Machine: {describe(first['machine'])}.",
        "",
        f"Run time: {sum(r['seconds'] for r in results) / 60:.1f} min ("
        + ", ".join(f"{r['scenario']} {r['seconds']:.0f} s" for r in results)
        + ").",
        "",
        "Each figure is the median of the rounds, with ± half the relative range of the rounds; "
        "the ratio is engine ÷ baseline (medians). Sides alternate within each round. "
        "`n/a`: that side did not run (see the JSON files in `bench/results/` for why). "
        "How to run and read it: [bench/README.md](../bench/README.md).",
        "",
        markdown_table(rows),
        "",
    ]
    if first["config"]["quick"]:
        lines[3:3] = [
            "**A quick run (1 round, small counts): orientation only, not the figures "
            "to quote.** Run `just bench --render docs/benchmarks.md` for those.",
            "",
        ]
    errors = [r for r in results if r.get("error")]
    if errors:
        lines.append("Scenarios that failed to run: " + ", ".join(r["scenario"] for r in errors))
        lines.append("")
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
