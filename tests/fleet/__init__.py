"""Helpers of the deploy and fleet tests: HAProxy from examples/deploy/haproxy.cfg on loopback."""
