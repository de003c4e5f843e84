"""TLS to the brokers (issue 15): MQTT 5, RabbitMQ (AMQP 0-9-1) and AMQP 1.0 over TLS.

Against the harness's private Mosquitto (``mosquitto_tls``: a TLS listener, and one requiring a
client certificate) and RabbitMQ node (a TLS listener requiring a client certificate, for AMQP
0-9-1 and 1.0, with SASL EXTERNAL), with certificates made for this run by trustme
(``tls_files``, tests/brokers/tls.py). Each endpoint runs the conformance suite's basic cases
over TLS with a client certificate; a refused certificate (another CA, another name, none, or
one the broker does not trust) leaves the endpoint ``down`` with the reason, retrying, while the
engine and its other endpoints go on.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mediation.cli import main
from mediation.config import JMSConfig, MQTT5Config, RabbitMQConfig, load_config, parse_config
from mediation.endpoints.base import EndpointState
from mediation.endpoints.jms import JMSEndpoint
from mediation.endpoints.mqtt5 import MQTT5Endpoint
from mediation.endpoints.rabbitmq import RabbitMQEndpoint
from mediation.errors import ConfigError

from .brokers import Mosquitto, RabbitMQ
from .brokers.tls import TLSFiles
from .conformance import EndpointConformance, EndpointUnderTest
from .conftest import EngineFactory, url
from .test_conformance_jms import CLIENTS, fanout
from .test_conformance_mqtt5 import open_probe, running
from .test_conformance_rabbitmq import (
    TestRabbitMQSharedQueueConformance,
    consumers_of,
    running_endpoint,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

Endpoint = MQTT5Endpoint | RabbitMQEndpoint | JMSEndpoint


def client_cert(tls: TLSFiles) -> dict[str, Any]:
    return {
        "ca_file": str(tls.ca),
        "cert_file": str(tls.client_cert),
        "key_file": str(tls.client_key),
    }


async def refused(endpoint: Endpoint) -> str:
    """Run ``endpoint`` until it has failed to connect twice (it retries); its reason."""
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        with trio.fail_after(20):
            for _ in range(2):
                await endpoint.state.wait_value(EndpointState.DOWN)
                await endpoint.state.wait_value(lambda s: s is not EndpointState.DOWN)
                assert endpoint.state.value is EndpointState.CONNECTING  # never up
        nursery.cancel_scope.cancel()
    assert endpoint.down_reason is not None
    return endpoint.down_reason


# -- MQTT 5 ------------------------------------------------------------------------------------


class TestMQTT5OverTLSConformance(EndpointConformance):
    """A client certificate, on the listener that requires one."""

    @pytest.fixture
    async def under_test(
        self, mosquitto_tls: Mosquitto, tls_files: TLSFiles
    ) -> AsyncIterator[EndpointUnderTest]:
        topic = f"conformance/{uuid.uuid4().hex}"
        config = MQTT5Config(
            broker=mosquitto_tls.mtls_url, topic_in=topic, topic_out=topic, **client_cert(tls_files)
        )
        endpoint = MQTT5Endpoint(f"mqtt-{uuid.uuid4().hex[:8]}", config)
        # The probe publishes on the plain listener: the topics are the broker's, not a listener's.
        async with running(endpoint), open_probe(mosquitto_tls) as has_subscribers:

            async def subscriptions() -> int:
                if not await has_subscribers(topic):
                    return 0
                return max(endpoint.subscription_count(topic), 1)

            yield EndpointUnderTest(
                endpoint, subscriptions, redelivers_in_session=True, resumes_for_client=True
            )


async def test_mqtt_server_certificate_only_and_tls_server_name(
    mosquitto_tls: Mosquitto, tls_files: TLSFiles
) -> None:
    """No client certificate where none is asked for; the URL's host is an address, the name
    checked (and sent as SNI) is ``tls_server_name``."""
    config = MQTT5Config(
        broker=f"ssl://127.0.0.1:{mosquitto_tls.tls_port}",
        ca_file=str(tls_files.ca),
        tls_server_name="localhost",
        topic_out="tls/plain",
    )
    async with running(MQTT5Endpoint("mqtt", config)) as endpoint:
        assert endpoint.down_reason is None


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("other CA", "certificate verify failed"),
        ("other name", "certificate verify failed: Hostname mismatch"),
        ("no client certificate", "TLS: "),
        ("client certificate of another CA", "TLS: "),
        ("expired client certificate", "TLS: "),
    ],
)
async def test_mqtt_refused_certificates_leave_the_endpoint_down_retrying(
    mosquitto_tls: Mosquitto, tls_files: TLSFiles, case: str, expected: str
) -> None:
    settings: dict[str, Any] = {
        "other CA": {"broker": mosquitto_tls.tls_url, "ca_file": str(tls_files.other_ca)},
        "other name": {
            "broker": mosquitto_tls.tls_url,
            "ca_file": str(tls_files.ca),
            "tls_server_name": "mqtt.example.org",
        },
        "no client certificate": {"broker": mosquitto_tls.mtls_url, "ca_file": str(tls_files.ca)},
        "client certificate of another CA": {
            "broker": mosquitto_tls.mtls_url,
            "ca_file": str(tls_files.ca),
            "cert_file": str(tls_files.other_client_cert),
            "key_file": str(tls_files.other_client_key),
        },
        "expired client certificate": {
            "broker": mosquitto_tls.mtls_url,
            "ca_file": str(tls_files.ca),
            "cert_file": str(tls_files.expired_client_cert),
            "key_file": str(tls_files.expired_client_key),
        },
    }[case]
    config = MQTT5Config(**settings, retry_interval=0.05, connect_timeout=5)
    reason = await refused(MQTT5Endpoint("mqtt", config))
    assert expected in reason, reason


async def test_a_refused_broker_certificate_shows_in_readyz_and_the_log_only(
    engine_with: EngineFactory,
    mosquitto_tls: Mosquitto,
    tls_files: TLSFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The engine runs on: the other endpoint is up and serves its route; /readyz says 503 with
    the TLS endpoint ``down`` and why; the log says it once per attempt."""
    caplog.set_level(logging.WARNING, logger="mediation.endpoints.mqtt5")
    async with engine_with(
        entrypoints={"post": "http_post", "mqtt-post": "http_post"},
        endpoints={
            "mem": {"type": "memory"},
            "mqtt": {
                "type": "mqtt5",
                "config": {
                    "broker": mosquitto_tls.tls_url,
                    "ca_file": str(tls_files.other_ca),
                    "topic_out": "tls/refused",
                    "retry_interval": 0.05,
                },
            },
        },
        routes=[{"source": "post", "target": "mem"}, {"source": "mqtt-post", "target": "mqtt"}],
    ) as engine:
        health = f"http://127.0.0.1:{engine.ports['health']}/readyz"
        async with httpx.AsyncClient() as http:
            with trio.fail_after(20):
                while True:
                    ready = await http.get(health)
                    body = ready.json()
                    if body["endpoints"]["mqtt"] == "down" and "reasons" in body:
                        break
                    await trio.sleep(0.05)
            assert ready.status_code == 503
            assert body["endpoints"]["mem"] == "up"
            assert "certificate verify failed" in body["reasons"]["mqtt"]
            assert "mem" not in body["reasons"]
            accepted = await http.post(url(engine, "post"), content=b"hello")
            assert accepted.status_code == 202
            refused_post = await http.post(url(engine, "mqtt-post"), content=b"hello")
            assert refused_post.status_code == 503
    lines = [r for r in caplog.records if r.getMessage() == "mqtt5 endpoint down"]
    assert lines and "certificate verify failed" in lines[0].__dict__["error"]


# -- RabbitMQ (AMQP 0-9-1) ---------------------------------------------------------------------


class TestRabbitMQOverTLSConformance(EndpointConformance):
    """amqps:// with a client certificate (the node's TLS listener requires one)."""

    @pytest.fixture
    async def under_test(
        self, rabbitmq: RabbitMQ, tls_files: TLSFiles
    ) -> AsyncIterator[EndpointUnderTest]:
        queue = rabbitmq.unique_name("tls")
        config = RabbitMQConfig(
            url=rabbitmq.amqps_url, queue_in=queue, queue_out=queue, **client_cert(tls_files)
        )
        try:
            async with running_endpoint(config) as endpoint:
                yield EndpointUnderTest(
                    endpoint,
                    lambda: consumers_of(rabbitmq, queue),
                    redelivers_in_session=True,
                    resumes_for_client=True,
                )
        finally:
            await trio.to_thread.run_sync(rabbitmq.delete_queue, queue)

    # Competing consumers share one stream: the shared-queue suite's version of this case.
    test_one_clients_consumer_does_not_hold_up_another = (
        TestRabbitMQSharedQueueConformance.test_one_clients_consumer_does_not_hold_up_another
    )


@pytest.mark.parametrize("case", ["other CA", "no client certificate"])
async def test_rabbitmq_refused_certificates_leave_the_endpoint_down(
    rabbitmq: RabbitMQ, tls_files: TLSFiles, case: str
) -> None:
    settings = {
        "other CA": {**client_cert(tls_files), "ca_file": str(tls_files.other_ca)},
        "no client certificate": {"ca_file": str(tls_files.ca)},
    }[case]
    endpoint = RabbitMQEndpoint("rabbit", RabbitMQConfig(url=rabbitmq.amqps_url, **settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        with trio.fail_after(20):
            await endpoint.state.wait_value(EndpointState.DOWN)
        nursery.cancel_scope.cancel()
    assert endpoint.down_reason is not None
    assert "TLS" in endpoint.down_reason or "certificate" in endpoint.down_reason, (
        endpoint.down_reason
    )


# -- AMQP 1.0 ----------------------------------------------------------------------------------


@pytest.fixture
async def jms_over_tls(
    rabbitmq: RabbitMQ, tls_files: TLSFiles
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    with fanout(rabbitmq, CLIENTS) as base:
        yield (
            base,
            {
                "queue_in": f"/amq/queue/{base}-{{client_id}}",
                "queue_out": f"/exchange/{base}",
                **client_cert(tls_files),
            },
        )


class TestJMSOverTLSConformance(EndpointConformance):
    """amqps:// with SASL PLAIN (the URL's user) and a client certificate."""

    @pytest.fixture
    async def under_test(
        self, rabbitmq: RabbitMQ, jms_over_tls: tuple[str, dict[str, Any]]
    ) -> AsyncIterator[EndpointUnderTest]:
        base, settings = jms_over_tls
        endpoint = JMSEndpoint("jms", JMSConfig(url=rabbitmq.amqp1s_url, **settings))
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            with trio.fail_after(20):
                await endpoint.state.wait_value(EndpointState.UP)

            async def subscriptions() -> int:
                counts = await trio.to_thread.run_sync(rabbitmq.queue_counts, f"{base}-c1")
                assert counts is not None
                return counts.consumers

            yield EndpointUnderTest(
                endpoint, subscriptions, redelivers_in_session=True, resumes_for_client=True
            )
            nursery.cancel_scope.cancel()


async def test_jms_sasl_external_is_the_client_certificate(
    rabbitmq: RabbitMQ, jms_over_tls: tuple[str, dict[str, Any]]
) -> None:
    """No user in the URL: the broker takes the user from the certificate (CN ``guest``)."""
    _, settings = jms_over_tls
    config = JMSConfig(
        url=f"amqps://localhost:{rabbitmq.tls_port}", sasl_mechanisms="EXTERNAL", **settings
    )
    endpoint = JMSEndpoint("jms", config)
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        with trio.fail_after(20):
            await endpoint.state.wait_value(EndpointState.UP)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("case", ["other CA", "other name", "no client certificate"])
async def test_jms_refused_certificates_leave_the_endpoint_down_retrying(
    rabbitmq: RabbitMQ, jms_over_tls: tuple[str, dict[str, Any]], tls_files: TLSFiles, case: str
) -> None:
    _, settings = jms_over_tls
    settings = {**settings, "retry_interval": 0.05, "open_timeout": 5}
    if case == "other CA":
        settings["ca_file"] = str(tls_files.other_ca)
    elif case == "other name":
        settings["tls_server_name"] = "amqp.example.org"
    else:
        del settings["cert_file"], settings["key_file"]
    reason = await refused(JMSEndpoint("jms", JMSConfig(url=rabbitmq.amqp1s_url, **settings)))
    assert "SSL" in reason or "TLS" in reason or "closed" in reason, reason


# -- the configuration ---------------------------------------------------------------------------


def tls_config(tmp_path: Path, tls: TLSFiles, **config: str | bool) -> str:
    lines = [f"{key} = {value!r}".replace("'", '"') for key, value in config.items()]
    lines = [line.replace("True", "true").replace("False", "false") for line in lines]
    path = tmp_path / "mediation.toml"
    path.write_text(
        '[[endpoints]]\nname = "mqtt"\ntype = "mqtt5"\n[endpoints.config]\n' + "\n".join(lines)
    )
    return str(path)


def test_config_resolves_tls_files_relative_to_the_config_file(
    tmp_path: Path, tls_files: TLSFiles
) -> None:
    for source in (tls_files.ca, tls_files.client_cert, tls_files.client_key):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    path = tls_config(
        tmp_path,
        tls_files,
        broker="mqtts://broker.example:8883",
        ca_file="ca.pem",
        cert_file="client.pem",
        key_file="${KEY}",
    )
    config = load_config(path, env={"KEY": "client.key"}).endpoints[0].config
    assert config.ca_file == str(tmp_path / "ca.pem")
    assert config.key_file == str(tmp_path / "client.key")


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (
            {"broker": "tcp://localhost", "ca_file": "CA"},
            "endpoints[0].config.ca_file: is only used over TLS (a mqtts:// or ssl:// URL)",
        ),
        (
            {"broker": "mqtts://localhost", "ca_file": "missing.pem"},
            "endpoints[0].config.ca_file: cannot read ",
        ),
        (
            {"broker": "mqtts://localhost", "ca_file": "KEY"},
            "endpoints[0].config.ca_file: no PEM certificate in ",
        ),
        (
            {"broker": "mqtts://localhost", "cert_file": "CERT", "key_file": "OTHER_KEY"},
            "endpoints[0].config.key_file: does not match the certificate in ",
        ),
        (
            {"broker": "mqtts://localhost", "cert_file": "CERT"},
            "endpoints[0].config.cert_file: no PEM private key in ",
        ),
        (
            {"broker": "mqtts://localhost", "key_file": "KEY"},
            "endpoints[0].config.key_file: needs cert_file",
        ),
    ],
)
def test_config_refuses_tls_keys_that_cannot_work(
    tmp_path: Path, tls_files: TLSFiles, settings: dict[str, str], problem: str
) -> None:
    files = {
        "CA": tls_files.ca,
        "CERT": tls_files.client_cert,
        "KEY": tls_files.client_key,
        "OTHER_KEY": tls_files.other_client_key,
    }
    settings = {k: str(files.get(v, v)) for k, v in settings.items()}
    problem = problem.replace("OTHER_KEY:", f"{tls_files.other_client_key}:")
    problem = problem.replace(" KEY:", f" {tls_files.client_key}:")
    problem = problem.replace("CERT:", f"{tls_files.client_cert}:")
    table = "\n".join(f'{k} = "{v}"' for k, v in settings.items())
    text = f'[[endpoints]]\nname = "mqtt"\ntype = "mqtt5"\n[endpoints.config]\n{table}\n'
    with pytest.raises(ConfigError) as refused_config:
        parse_config(text, filename=str(tmp_path / "m.toml"))
    assert str(refused_config.value).startswith(f"{tmp_path / 'm.toml'}: ")
    assert problem in str(refused_config.value)


def test_config_sasl_external_needs_a_client_certificate() -> None:
    text = (
        '[[endpoints]]\nname = "amqp"\ntype = "jms"\n[endpoints.config]\n'
        'url = "amqps://broker"\nsasl_mechanisms = "EXTERNAL"\n'
    )
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\.config\.sasl_mechanisms: EXTERNAL"):
        parse_config(text)


def test_check_names_the_endpoint_whose_key_does_not_match(
    tmp_path: Path, tls_files: TLSFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mediation.toml"
    path.write_text(
        '[[endpoints]]\nname = "rabbit"\ntype = "rabbitmq"\n[endpoints.config]\n'
        'url = "amqps://broker"\n'
        f'cert_file = "{tls_files.client_cert}"\nkey_file = "{tls_files.other_client_key}"\n'
    )
    assert main(["check", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"{path}: endpoints[0].config.key_file: ")
    assert "does not match the certificate in" in error


@pytest.mark.parametrize("name", sorted(p.name for p in (EXAMPLES / "tls").glob("*.toml")))
def test_tls_examples_are_valid(name: str, tls_files: TLSFiles) -> None:
    """examples/tls/ (brokers this machine cannot run, or TLS shapes of the ones it can)
    validate, with made-up values for their variables and this run's certificate files."""
    files = {
        "MQTT_CA_FILE": tls_files.ca,
        "MQTT_CERT_FILE": tls_files.client_cert,
        "MQTT_KEY_FILE": tls_files.client_key,
    }
    path = EXAMPLES / "tls" / name
    env = {v: str(files.get(v, "example")) for v in re.findall(r"\$\{(\w+)\}", path.read_text())}
    config = load_config(path, env=env)
    assert config.endpoints
