"""Fuzzing the entrypoints: hostile bytes for every entrypoint while bystander clients keep
working (issue 12). :mod:`.mutations` makes the inputs (pure, seeded), :mod:`.driver` runs an
engine process, sends them and checks the oracle; ``tests/test_fuzz.py`` (``just test``) and
``scripts/fuzz.py`` (``just fuzz``) run it.
"""
