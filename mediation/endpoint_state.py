"""An endpoint's connection state, as it publishes it for ``/readyz`` and ``/metrics``.

Pure (no trio), so that telemetry and health can name the states without importing the endpoint
interface; :mod:`mediation.endpoints.base` re-exports it.
"""

from __future__ import annotations

import enum


class EndpointState(enum.StrEnum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
