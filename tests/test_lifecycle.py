from __future__ import annotations

import itertools

import pytest

from storebot.errors import InvalidTransition
from storebot.lifecycle import ALLOWED, can_transition, plan_action
from storebot.models import BotStatus as S


def test_customer_path() -> None:
    path = [
        None,
        S.awaiting_payment,
        S.awaiting_token,
        S.deploying,
        S.running,
        S.suspended,
        S.running,
        S.destroyed,
    ]
    for a, b in itertools.pairwise(path):
        assert can_transition(a, b), (a, b)


def test_destroyed_is_final() -> None:
    assert ALLOWED[S.destroyed] == frozenset()
    for action in ("suspend", "resume", "restart"):
        with pytest.raises(InvalidTransition, match="destroyed"):
            plan_action(action, S.destroyed)


def test_idempotent_actions_are_noops() -> None:
    assert plan_action("suspend", S.suspended) is None
    assert plan_action("resume", S.running) is None
    assert plan_action("destroy", S.destroyed) is None


def test_actions() -> None:
    assert plan_action("suspend", S.running) is S.suspended
    assert plan_action("resume", S.suspended) is S.running
    assert plan_action("resume", S.failed) is S.running
    assert plan_action("restart", S.running) is S.running
    assert plan_action("destroy", S.awaiting_payment) is S.destroyed
    with pytest.raises(InvalidTransition, match="not been deployed"):
        plan_action("resume", S.awaiting_token)
    with pytest.raises(InvalidTransition):
        plan_action("suspend", S.awaiting_payment)
    for state in (S.suspended, S.deploying, S.awaiting_token):
        with pytest.raises(InvalidTransition, match="only a running or failed"):
            plan_action("restart", state)


def test_every_state_has_a_way_out_but_destroyed() -> None:
    for state in S:
        if state is not S.destroyed:
            assert S.destroyed in ALLOWED[state]
