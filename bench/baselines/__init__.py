"""Hand-rolled bridges: what a Python team writes instead of adopting a gateway.

``python -m bench.baselines.bridge --broker {kafka,rabbitmq,mqtt} ...`` (see
:mod:`bench.baselines.bridge`, whose docstring is the fairness review).
"""
