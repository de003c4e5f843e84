"""Test data kept as Python modules (with where it came from)."""
