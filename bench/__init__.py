"""``just bench``: the engine side by side with what users would otherwise run (issue 6).

``python -m bench [--quick] [--scenario S1,S2] [--render docs/benchmarks.md]``; see bench/README.md.
The harness (this package) starts the brokers as the tests do, the engine and the hand-rolled
baseline (``bench/baselines``) as separate processes, and drives load from other processes
(``bench.load``), so the engine gets a core of its own.
"""
