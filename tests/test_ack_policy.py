"""The ack policy: each guarantee's plan, row by row, and the rules that tie the fields together.

The table below is written out again on purpose (not read from the module): changing a guarantee
means changing both, knowingly. The invariants say what any table must keep.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import mediation.ack_policy
from mediation.ack_policy import AckPlan, BridgeAck, Guarantee, Step, plan_for
from mediation.config import RouteConfig

# guarantee: (ack_step, keeps_until_confirmed, writes_in_batches, ack_awaits_broker,
#             drops_acked_redeliveries, redelivers_unconfirmed, drops_when_behind,
#             upstream_awaits_confirm, bridge_acks)
EXPECTED = {
    Guarantee.NONE: (
        Step.RECEIVED, False, True, False, False, False, True, False,
        BridgeAck.BEFORE_PUBLISH,
    ),
    Guarantee.AUTO: (
        Step.CHANNEL_ENTERED, False, True, False, False, False, False, False,
        BridgeAck.PUBLISHED,
    ),
    Guarantee.AT_MOST_ONCE: (
        Step.BEFORE_WRITE, False, False, True, True, False, True, False,
        BridgeAck.BEFORE_PUBLISH,
    ),
    Guarantee.AT_LEAST_ONCE: (
        Step.CONFIRMED, True, True, False, False, True, False, True,
        BridgeAck.CONFIRMED,
    ),
}  # fmt: skip

PLANS = [plan_for(g) for g in Guarantee]
by_guarantee = pytest.mark.parametrize("plan", PLANS, ids=[p.guarantee.value for p in PLANS])


@pytest.mark.parametrize("guarantee", list(Guarantee), ids=[g.value for g in Guarantee])
def test_each_guarantees_row(guarantee: Guarantee) -> None:
    plan = plan_for(guarantee)
    fields = [f.name for f in dataclasses.fields(AckPlan)]
    assert fields[0] == "guarantee" and plan.guarantee is guarantee
    assert tuple(getattr(plan, name) for name in fields[1:]) == EXPECTED[guarantee]


def test_every_guarantee_has_a_plan_and_a_route_reaches_it() -> None:
    assert set(EXPECTED) == set(Guarantee)
    for guarantee in Guarantee:
        route = RouteConfig(source="a", target="b", delivery_guarantee=guarantee)
        assert route.ack_plan is plan_for(guarantee)
    assert RouteConfig(source="a", target="b").ack_plan.guarantee is Guarantee.AUTO


@by_guarantee
def test_a_plan_acks_at_exactly_one_step(plan: AckPlan) -> None:
    assert [step for step in Step if plan.acks_at(step)] == [plan.ack_step]


def test_the_guarantees_ack_at_successive_steps() -> None:
    """none, auto, at_most_once, at_least_once: each acks one step later than the one before."""
    assert [plan_for(g).ack_step for g in Guarantee] == list(Step)


@by_guarantee
def test_waiting_for_the_client_means_acking_at_confirmed(plan: AckPlan) -> None:
    assert plan.keeps_until_confirmed == (plan.ack_step is Step.CONFIRMED)


@by_guarantee
def test_only_acks_right_before_the_write_forbid_batches(plan: AckPlan) -> None:
    # A batch's acks would all come before its first write.
    assert plan.writes_in_batches == (plan.ack_step is not Step.BEFORE_WRITE)


@by_guarantee
def test_the_ack_before_the_write_is_the_one_that_must_not_be_lost(plan: AckPlan) -> None:
    """The writer acks right before the write: that ack must have gone to the broker, and a
    redelivery of an event whose ack got lost anyway must not reach the client a second time.
    Earlier acks (none, auto) promise nothing about a lost ack; a later one (at_least_once)
    wants the redelivery."""
    before_write = plan.ack_step is Step.BEFORE_WRITE
    assert plan.ack_awaits_broker == before_write
    assert plan.drops_acked_redeliveries == before_write
    assert not (plan.drops_acked_redeliveries and plan.keeps_until_confirmed)


@by_guarantee
def test_what_waits_for_the_client_must_be_deliverable_again(plan: AckPlan) -> None:
    assert plan.redelivers_unconfirmed == plan.keeps_until_confirmed
    # Nothing that must come back can be dropped for being behind.
    assert not (plan.redelivers_unconfirmed and plan.drops_when_behind)


def test_only_auto_and_at_least_once_refuse_to_drop_a_slow_clients_events() -> None:
    keeps = {g for g in Guarantee if not plan_for(g).drops_when_behind}
    assert keeps == {Guarantee.AUTO, Guarantee.AT_LEAST_ONCE}


@by_guarantee
def test_upstream_and_bridges_wait_for_the_broker_together(plan: AckPlan) -> None:
    assert plan.upstream_awaits_confirm == plan.keeps_until_confirmed
    assert (plan.bridge_acks is BridgeAck.CONFIRMED) == plan.upstream_awaits_confirm


@by_guarantee
def test_a_bridge_acks_before_publishing_where_a_session_acks_before_writing(
    plan: AckPlan,
) -> None:
    """The target's publish takes the place of the client write: guarantees that ack by the
    time of the write ack before the publish; auto, whose ack is the channel's, once the
    producer took the event."""
    before = plan.ack_step in (Step.RECEIVED, Step.BEFORE_WRITE)
    assert (plan.bridge_acks is BridgeAck.BEFORE_PUBLISH) == before
    assert (plan.bridge_acks is BridgeAck.PUBLISHED) == (plan.ack_step is Step.CHANNEL_ENTERED)


def test_plans_are_frozen_values() -> None:
    plan = plan_for(Guarantee.AUTO)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.writes_in_batches = False  # type: ignore[misc]
    assert plan_for(Guarantee.AUTO) is plan


def test_the_module_is_pure() -> None:
    source = Path(mediation.ack_policy.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "enum", "dataclasses"}
