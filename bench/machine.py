"""What the figures were measured on: CPU, cores, kernel, Python, library versions, load."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

LIBRARIES = (
    "trio",
    "trio-websocket",
    "httptools",
    "h11",
    "wsproto",
    "confluent-kafka",
    "pika",
    "paho-mqtt",
    "python-qpid-proton",
    "websockets",
    "httpx",
    "starlette",
    "uvicorn",
    "aiokafka",
    "aio-pika",
    "aiomqtt",
    "uvloop",
    "psutil",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    import psutil

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mib": psutil.virtual_memory().total // 2**20,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "commit": _git(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "mediation": _version("mediation"),
    }


def describe(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory_mib']} MiB, Linux "
        f"{info['kernel']}, Python {info['python']}, load average "
        f"{info['load_average'][0]:.2f} at the start, commit {info['commit']}"
    )
