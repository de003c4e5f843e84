"""Every example, tried the way its header comment tells a new user to (issue 18); and the
README's "Try it" section, the same way, on the embedded default (mediation.toml).

Each file in ``examples/`` runs against one set of test brokers, one after another, first in
alphabetical order and then in reverse, so that every example also meets what the others (and its
own first run) left in the brokers. For each:

- The configuration is loaded as TOML, its engine put on 127.0.0.1 with port 0 everywhere (and
  reloading off), each endpoint's broker address pointed at the harness's broker, and written to
  a temp file (inline tables: same content, other layout) that ``python -m mediation run
  --config`` runs, as ``just run examples/NAME.toml`` would. The ports come from its "listening"
  log line; once ``/readyz`` answers 200 the user's commands start (the ``just brokers`` and
  ``just run`` lines are what the harness and this test do instead).
- Every command line of the header (``#   curl ...``, ``#   .venv/bin/python ...``,
  ``#   export ...``), or of the README section's ``sh`` blocks, is run by bash in the
  repository (with the virtualenv first on PATH, as an activated one would be), after replacing
  each ``localhost:PORT`` of the file by the address the engine or broker got, and in an ack line
  ``ID`` by the X-Event-ID the poll before it answered. ``curl -N`` and ``examples/ws_client.py``
  keep running in the background, as in terminals of their own, and what they print is read as
  it comes.
- The outcome documented next to each line (the status, "event: session", "connected", the event
  showing on the streams) is checked, in the order the header's text gives, including the line
  typed into the WebSocket client where the header says what it does.

``seed.toml`` has no commands: it runs without its Solace endpoint and the bridge to it (those run
against the Solace fake in tests/test_seed.py) and must become ready.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.brokers import Mosquitto, RabbitMQ, Tansu

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
README = REPO / "README.md"
WAIT = 30.0  # for one outcome; a Kafka session on a new topic takes a few seconds

# A command line of a header: four characters of indent, then the command, then an optional
# comment two or more spaces on.
_COMMAND = re.compile(r"^#   (?P<command>(curl|\.venv/bin/python|export|just) \S.*?)(\s{2,}#.*)?$")


def try_it_commands() -> list[str]:
    """The command lines of the README's "Try it" section (its ``sh`` blocks)."""
    text = README.read_text()
    section = text[text.index("\n## Try it\n") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines()]
    return [re.sub(r"\s{2,}#.*$", "", line) for line in lines if line.strip()]


def header_commands(path: Path) -> list[str]:
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break  # the header is the leading comment block
        if match := _COMMAND.match(line):
            commands.append(match["command"])
    return commands


# -- what the headers promise ------------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """A curl line that answers: its status, and what the body holds."""

    command: str
    status: int
    body: str | None = None


@dataclass(frozen=True)
class Terminal:
    """A line that keeps running (``curl -N``, ws_client.py): what it prints first."""

    name: str
    command: str
    shows: str


@dataclass(frozen=True)
class Command:
    """Any other line: it succeeds (``export`` keeps the variable for the lines after it)."""

    command: str


@dataclass(frozen=True)
class Shows:
    """A terminal started before shows this, within WAIT."""

    name: str
    text: str


@dataclass(frozen=True)
class Type:
    """A line typed into a WebSocket client (the example's plain one unless named)."""

    text: str
    terminal: str = "ws"


Step = Http | Terminal | Command | Shows | Type

SSE = "curl -N -H 'Accept: text/event-stream' http://localhost:8067/"
WS = ".venv/bin/python examples/ws_client.py ws://localhost:8066/"
SUBSCRIBE = "curl -i -X POST -H 'X-Client-ID: worker-1' http://localhost:8069/subscribe"
POLL = "curl -i -H 'X-Client-ID: worker-1' http://localhost:8069/poll"
ACK = "curl -i -X POST -H 'X-Client-ID: worker-1' -H 'X-Event-ID: ID' http://localhost:8069/ack"


PRICES_POST = "curl -i -H \"Authorization: Bearer $PRICES\" -d '{}' http://localhost:8071/prices/{}"


def broadcast_and_jobs(post: str) -> list[Step]:
    """kafka.toml and rabbitmq.toml: streams, a worker, a POST; a typed line is the next job."""
    return [
        Terminal("sse", SSE, "event: session"),
        Terminal("ws", WS, "connected to"),
        Http(SUBSCRIBE, 201),
        Http(post, 202),
        Shows("sse", "data: hello"),
        Shows("ws", "hello"),
        Http(POLL, 200, "hello"),
        Http(ACK, 204),
        Type("typed in the websocket"),
        Shows("sse", "data: typed in the websocket"),
        Http(POLL, 200, "typed in the websocket"),
        Http(ACK, 204),
    ]


SCENARIOS: dict[str, list[Step]] = {
    "auth.toml": [
        Command("export MEDIATION_JWT_SECRET=$(openssl rand -hex 32)"),
        Command("export TOKEN=$(.venv/bin/python examples/jwt_token.py alice)"),
        Terminal(
            "sse",
            "curl -N -H 'Accept: text/event-stream' \"http://localhost:8067/?access_token=$TOKEN\"",
            "event: session",
        ),
        Shows("sse", '"client_id": "alice"'),
        Terminal(
            "ws",
            '.venv/bin/python examples/ws_client.py "ws://localhost:8066/?access_token=$TOKEN"',
            "connected to",
        ),
        Http('curl -i -H "Authorization: Bearer $TOKEN" -d hello http://localhost:8068/', 202),
        Http("curl -i -d hello http://localhost:8068/", 401),
        Shows("sse", "data: hello"),
        Shows("ws", "hello"),
        Type("typed in the websocket"),
        Shows("sse", "data: typed in the websocket"),
        # authorize = true: a token with a "mediation" claim, a parameterised entrypoint
        Command(
            "export PRICES=$(.venv/bin/python examples/jwt_token.py bob --subscribe 'prices.A'"
            " --subscribe 'prices.B' --publish 'prices.*')"
        ),
        Terminal(
            "prices",
            ".venv/bin/python examples/ws_client.py"
            ' "ws://localhost:8070/prices?symbol=A&access_token=$PRICES" --envelope',
            "connected to",
        ),
        Http(PRICES_POST.format("A at 10", "A"), 202),
        Shows("prices", '"subscription":"prices.A"'),  # the envelope names it
        Shows("prices", '"A at 10"'),
        Http(
            "curl -i -H 'Accept: text/event-stream'"
            ' "http://localhost:8072/prices?symbol=C&access_token=$PRICES"',
            403,
        ),
        Type("/subscribe symbol=B", "prices"),
        Shows("prices", '{"ack": "prices.B"}'),
        Http(PRICES_POST.format("B at 20", "B"), 202),
        Shows("prices", '"B at 20"'),
        Type("/unsubscribe symbol=B", "prices"),
        Shows("prices", '{"ack": "prices.B"}'),
        Type("/subscribe symbol=C", "prices"),
        Shows("prices", '{"nack": "prices.C"'),
    ],
    "jms.toml": [
        Http("curl -i -d 'job 1' -H 'X-Trace-ID: t-1' http://localhost:8068/", 202),
        Http(SUBSCRIBE, 201),
        Http(POLL, 200, "job 1"),
        Http(ACK, 204),
        Terminal("ws", WS, "connected to"),
        Terminal(
            "sse",
            "curl -N -H 'Accept: text/event-stream' 'http://localhost:8067/?client_id=alice'",
            "event: session",
        ),
    ],
    "kafka.toml": broadcast_and_jobs(
        "curl -i -d 'hello' -H 'X-Trace-ID: t-1' http://localhost:8068/"
    ),
    "mqtt.toml": [
        Terminal("sse", SSE, "event: session"),
        Terminal("ws", WS, "connected to"),
        Http(SUBSCRIBE, 201),
        Http("curl -i -d '21.5' -H 'X-Client-ID: probe-7' http://localhost:8068/", 202),
        Shows("sse", "data: 21.5"),
        Shows("ws", "21.5"),
        Command(
            ".venv/bin/python examples/mqtt_pub.py localhost:1883 examples/mqtt/inbox/worker-1 'job 1'"
        ),
        Http(POLL, 200, "job 1"),
        Http(ACK, 204),
        Type("typed in the websocket"),
        Shows("sse", "data: typed in the websocket"),
    ],
    "rabbitmq.toml": broadcast_and_jobs(
        "curl -i -d 'hello' -H 'X-Trace-ID: t-1' http://localhost:8068/"
    ),
    "seed.toml": [],
}


# README "Try it", on the embedded default (mediation.toml, the memory broker).
TRY_IT: list[Step] = [
    Terminal("sse", SSE, "event: session"),
    Command("curl -d 'hello, world' http://localhost:8068/"),
    Shows("sse", "data: hello, world"),
    Terminal("ws", WS, "connected to"),
    Terminal("ws-envelope", WS + " --envelope", "connected to"),
    Type("typed in the websocket"),
    Shows("sse", "data: typed in the websocket"),
    Shows("ws-envelope", "typed in the websocket"),
    Http("curl -i -X POST -H 'X-Client-ID: me' http://localhost:8069/subscribe", 201),
    Http("curl -i -d 'a job' http://localhost:8068/", 202),
    Http("curl -i -H 'X-Client-ID: me' http://localhost:8069/poll", 200, "a job"),
    Http("curl -i -X DELETE -H 'X-Client-ID: me' http://localhost:8069/unsubscribe", 200),
    Shows("ws", "a job"),
]


def commands_of(steps: list[Step]) -> list[str]:
    run = [s.command for s in steps if isinstance(s, Http | Terminal | Command)]
    return list(dict.fromkeys(run))


def test_the_readme_try_it_section_is_the_scenario() -> None:
    assert commands_of(TRY_IT) == try_it_commands()


def test_every_example_has_a_scenario_following_its_header() -> None:
    """The commands a header shows are the ones the scenario runs, in the header's order."""
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == sorted(SCENARIOS)
    for name, steps in SCENARIOS.items():
        shown = [c for c in header_commands(EXAMPLES / name) if not c.startswith("just ")]
        assert commands_of(steps) == shown, name
        if steps:
            assert f"just run examples/{name}" in header_commands(EXAMPLES / name)


# -- the example's configuration, on the test brokers --------------------------------------------


@dataclass
class Brokers:
    tansu: Tansu
    rabbitmq: RabbitMQ
    mosquitto: Mosquitto

    def address(self, kind: str) -> dict[str, str]:
        return {
            "kafka": {"brokers": self.tansu.bootstrap_servers},
            "rabbitmq": {"url": self.rabbitmq.amqp_url},
            "jms": {"url": self.rabbitmq.amqp1_url},
            "mqtt5": {"broker": f"tcp://{self.mosquitto.host}:{self.mosquitto.port}"},
        }[kind]


def on_test_brokers(document: dict[str, Any], brokers: Brokers) -> dict[str, Any]:
    document["engine"].update(host="127.0.0.1", health_port=0, reload_interval=0)
    for entrypoint in document["entrypoints"]:
        entrypoint["port"] = 0
    solace = {e["name"] for e in document["endpoints"] if e["type"] == "solace"}
    document["endpoints"] = [e for e in document["endpoints"] if e["name"] not in solace]
    document["routes"] = [r for r in document["routes"] if not {r["source"], r["target"]} & solace]
    for endpoint in document["endpoints"]:
        if endpoint["type"] != "memory":
            endpoint["config"].update(brokers.address(endpoint["type"]))
    return document


def toml_value(value: object) -> str:
    """TOML for what tomllib loaded, with inline tables (JSON strings are TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"not in an example: {value!r}")


def toml_document(document: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in document.items())


def replacements(
    document: dict[str, Any], ports: dict[str, int], brokers: Brokers
) -> dict[str, str]:
    """``localhost:PORT`` of the example file -> where the engine or broker listens now."""
    mapping = {
        f"localhost:{e['port']}": f"127.0.0.1:{ports[e['name']]}" for e in document["entrypoints"]
    }
    mapping[f"localhost:{document['engine']['health_port']}"] = f"127.0.0.1:{ports['health']}"
    mapping["localhost:1883"] = f"{brokers.mosquitto.host}:{brokers.mosquitto.port}"
    return mapping


# -- processes -------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Output:
    """What a background process prints, read as it comes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = ""
        self._changed = trio.Event()

    async def read(self, stream: trio.abc.ReceiveStream) -> None:
        async with stream:
            async for chunk in stream:
                self.text += chunk.decode(errors="replace")
                self._changed.set()
                self._changed = trio.Event()

    async def shows(self, text: str, start: int = 0) -> int:
        """Wait until ``text`` appears after ``start``; where it ends."""
        with trio.fail_after(WAIT):
            while (found := self.text.find(text, start)) < 0:
                await self._changed.wait()
        return found + len(text)


@asynccontextmanager
async def background(
    nursery: trio.Nursery, command: list[str], env: dict[str, str], name: str
) -> AsyncIterator[tuple[trio.Process, Output]]:
    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # curl's progress meter is not what a terminal shows; Python's errors are
        stderr=subprocess.DEVNULL if command[-1].startswith("curl") else subprocess.STDOUT,
        cwd=str(REPO),
        env=env,
        start_new_session=True,  # bash and what it runs, stopped together
    )
    output = Output(name)
    assert process.stdout is not None
    nursery.start_soon(output.read, process.stdout)
    try:
        yield process, output
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await process.wait()
            if process.stdin is not None:
                await process.stdin.aclose()


def parse_response(text: str) -> tuple[int, dict[str, str], str]:
    """``curl -i`` output: the last status line, its headers, the body."""
    head, _, body = text.rpartition("\r\n\r\n") if "\r\n\r\n" in text else (text, "", "")
    lines = head.split("\r\n")
    status_lines = [i for i, line in enumerate(lines) if line.startswith("HTTP/")]
    assert status_lines, text
    status = int(lines[status_lines[-1]].split()[1])
    headers = {}
    for line in lines[status_lines[-1] + 1 :]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def run_example(
    name: str, steps: list[Step], file: Path, brokers: Brokers, tmp_path: Path
) -> None:
    source = tomllib.loads(await trio.Path(file).read_text())
    original = copy.deepcopy(source)  # the ports of the file, before port 0
    config = tmp_path / file.name
    await trio.Path(config).write_text(toml_document(on_test_brokers(source, brokers)))
    env = environment()
    terminals: dict[str, tuple[trio.Process, Output]] = {}
    seen: dict[str, int] = {}
    event_id: str | None = None
    async with trio.open_nursery() as nursery:
        # The engine's own variables (auth.toml: the JWT secret, exported before its run line).
        for step in steps:
            if isinstance(step, Command) and step.command.startswith("export MEDIATION_"):
                await export(step.command, env)
        async with (
            background(
                nursery,
                [sys.executable, "-m", "mediation", "run", "--config", str(config)],
                env,
                "engine",
            ) as (engine, engine_output),
            AsyncExitStack() as stack,
        ):
            ports = await listening(engine_output)
            mapping = replacements(original, ports, brokers)
            await ready(ports["health"])

            def local(command: str) -> str:
                for old, new in mapping.items():
                    command = command.replace(old, new)
                return command

            for step in steps:
                context = f"{name}: {step}"
                if isinstance(step, Command):
                    if step.command.startswith("export "):
                        if not step.command.startswith("export MEDIATION_"):
                            await export(local(step.command), env)
                        continue
                    result = await bash(local(step.command), env)
                    assert result.returncode == 0, (context, result.stdout)
                elif isinstance(step, Http):
                    command = local(step.command)
                    if "X-Event-ID: ID" in command:
                        assert event_id is not None, context
                        command = command.replace("X-Event-ID: ID", f"X-Event-ID: {event_id}")
                    result = await bash(command, env)
                    assert result.returncode == 0, (context, result.stdout)
                    status, headers, body = parse_response(result.stdout)
                    assert status == step.status, (context, result.stdout)
                    if step.body is not None:
                        assert body == step.body, (context, result.stdout)
                    event_id = headers.get("x-event-id", event_id)
                elif isinstance(step, Terminal):
                    argv = ["bash", "-c", local(step.command)]
                    terminal = await stack.enter_async_context(
                        background(nursery, argv, env, step.name)
                    )
                    terminals[step.name] = terminal
                    seen[step.name] = await shown(terminal[1], step.shows, 0, context)
                elif isinstance(step, Shows):
                    output = terminals[step.name][1]
                    seen[step.name] = await shown(output, step.text, seen[step.name], context)
                else:
                    ws = terminals[step.terminal][0]
                    assert ws.stdin is not None
                    await ws.stdin.send_all(step.text.encode() + b"\n")
            await stack.aclose()  # the terminals first: their sessions end
            engine.send_signal(signal.SIGTERM)
            with trio.fail_after(WAIT):
                assert await engine.wait() == 0, engine_output.text[-3000:]
        nursery.cancel_scope.cancel()


async def shown(output: Output, text: str, start: int, context: str) -> int:
    try:
        return await output.shows(text, start)
    except trio.TooSlowError:
        raise AssertionError(
            f"{context}: not shown; {output.name} printed {output.text!r}"
        ) from None


async def bash(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A line that ends, as bash runs it; what it printed on stdout."""
    with trio.move_on_after(WAIT + 5):
        result = await trio.run_process(
            ["bash", "-c", command],
            capture_stdout=True,
            stderr=subprocess.DEVNULL,
            cwd=str(REPO),
            env=env,
            check=False,
        )
        return subprocess.CompletedProcess(command, result.returncode, result.stdout.decode())
    raise AssertionError(f"no answer within {WAIT + 5} s: {command}")


async def export(command: str, env: dict[str, str]) -> None:
    name = command.removeprefix("export ").split("=", 1)[0]
    result = await bash(f'{command}; printf %s "${name}"', env)
    assert result.returncode == 0 and result.stdout, command
    env[name] = str(result.stdout)


async def listening(output: Output) -> dict[str, int]:
    """The ports of the engine's "listening" log line (its stdout is JSON lines)."""
    start = 0
    while True:
        try:
            end = await output.shows("\n", start)
        except trio.TooSlowError:
            raise AssertionError(f"the engine did not start: {output.text[-3000:]}") from None
        line, start = output.text[start:end], end
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "listening":
            ports: dict[str, int] = record["ports"]
            return ports


async def ready(health_port: int) -> None:
    """``/readyz`` 200: every endpoint connected (what a user sees as the engine's startup)."""
    async with httpx.AsyncClient() as client:
        answer = None
        with trio.move_on_after(WAIT):
            while True:  # nothing tells a user when it is ready but asking
                answer = await client.get(f"http://127.0.0.1:{health_port}/readyz")
                if answer.status_code == 200:
                    return
                await trio.sleep(0.1)
        raise AssertionError(f"the engine did not become ready: {answer and answer.text}")


async def test_every_example_works_in_sequence_and_in_reverse(
    tansu: Tansu, rabbitmq: RabbitMQ, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    for broker in (tansu, rabbitmq, mosquitto):
        broker.ensure_running()  # a test before may have stopped one and failed
    brokers = Brokers(tansu, rabbitmq, mosquitto)
    await run_example("README Try it", TRY_IT, REPO / "mediation.toml", brokers, tmp_path)
    names = sorted(SCENARIOS)
    for round_, order in enumerate([names, names[::-1]]):
        for name in order:
            directory = tmp_path / f"{round_}-{name}"
            directory.mkdir()
            await run_example(name, SCENARIOS[name], EXAMPLES / name, brokers, directory)
