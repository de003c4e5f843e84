"""A minimal WebSocket client for trying the engine: prints what arrives, sends what you type.

    .venv/bin/python examples/ws_client.py ws://localhost:8066/
    .venv/bin/python examples/ws_client.py ws://localhost:8066/ --envelope   # mediation.v1, acks

It prints "connected to URL" once the engine accepted the connection (on a broker: once the
session's consumer is subscribed, from then on nothing published is missed), then "< ..." for each
message. With ``--envelope`` every event arrives as ``{"id", "payload", "metadata"}`` (and
``"subscription"`` on an entrypoint with parameters) and is acked back, and each line you type is
sent as ``{"id", "payload"}`` and answered ``{"ack": id}``, except two commands that change the
session's subscriptions (README, "Choosing streams"):

    /subscribe symbol=B       sends {"subscribe": {"symbol": "B"}}, answered {"ack": "<name>"}
    /unsubscribe symbol=B     sends {"unsubscribe": {"symbol": "B"}}, likewise

(several ``name=value`` pairs may follow, separated by spaces; a refusal is answered
``{"nack": "<name>", "error": ...}``).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

COMMANDS = ("/subscribe", "/unsubscribe")


def envelope_for(line: str) -> str:
    """What a typed line sends on ``mediation.v1``: a subscription change or an event."""
    command, _, rest = line.partition(" ")
    if command in COMMANDS:
        params = dict(pair.partition("=")[::2] for pair in rest.split())
        return json.dumps({command.removeprefix("/"): params})
    return json.dumps({"id": str(uuid.uuid4()), "payload": line})


async def main(url: str, envelope: bool) -> None:
    subprotocols = ["mediation.v1"] if envelope else None
    async with (
        open_websocket_url(url, subprotocols=subprotocols) as ws,
        trio.open_nursery() as nursery,
    ):
        # The engine answers 101 once the session's consumer is subscribed: from here on,
        # nothing published is missed.
        print(f"connected to {url}", flush=True)

        async def show() -> None:
            try:
                while True:
                    message = await ws.get_message()
                    print(f"< {message!r}", flush=True)
                    if envelope and isinstance(message, str) and '"payload"' in message:
                        await ws.send_message(json.dumps({"ack": json.loads(message)["id"]}))
            except ConnectionClosed as closed:
                print(f"closed: {closed.reason}", flush=True)
                nursery.cancel_scope.cancel()

        nursery.start_soon(show)
        stdin = trio.wrap_file(sys.stdin)
        async for line in stdin:
            text = line.rstrip("\n")
            await ws.send_message(envelope_for(text) if envelope else text)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--envelope", action="store_true", help="use the mediation.v1 subprotocol")
    arguments = parser.parse_args()
    trio.run(main, arguments.url, arguments.envelope)
