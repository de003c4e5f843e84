"""Helpers for the fault tests (tests/test_faults.py): counting, clients, probes, network faults.

- :mod:`.tally`: sequence-numbered payloads and the lost / duplicated arithmetic (pure).
- :mod:`.receiver`: a ``mediation.v1`` WebSocket client that reconnects after the engine closed
  its session and records every sequence number it got.
- :mod:`.health`: a thread that polls ``/healthz`` and keeps the latencies (p99).
- :mod:`.nft`: nftables rules in a private table, for one loopback port, removed on exit.
"""
