"""Which bot state may follow which: pure, no I/O, tested directly."""

from __future__ import annotations

from storebot.errors import InvalidTransition
from storebot.models import BotStatus as S

ALLOWED: dict[S | None, frozenset[S]] = {
    None: frozenset({S.awaiting_payment, S.deploying}),
    S.awaiting_payment: frozenset({S.awaiting_token, S.destroyed}),
    S.awaiting_token: frozenset({S.deploying, S.destroyed}),
    S.deploying: frozenset({S.running, S.failed, S.suspended, S.destroyed}),
    S.running: frozenset({S.suspended, S.failed, S.destroyed}),
    S.suspended: frozenset({S.running, S.failed, S.destroyed}),
    S.failed: frozenset({S.deploying, S.running, S.suspended, S.destroyed}),
    S.destroyed: frozenset(),
}

# What each operator action leads to, and from where it is a no-op.
ACTIONS: dict[str, tuple[S, frozenset[S]]] = {
    "suspend": (S.suspended, frozenset({S.suspended})),
    "resume": (S.running, frozenset({S.running})),
    "restart": (S.running, frozenset()),
    "destroy": (S.destroyed, frozenset({S.destroyed})),
}


def can_transition(current: S | None, target: S) -> bool:
    return target in ALLOWED[current]


def check_transition(current: S | None, target: S) -> None:
    if not can_transition(current, target):
        raise InvalidTransition(_why_not(current, target))


def plan_action(action: str, current: S) -> S | None:
    """The status `action` leads to from `current`, None if already there.

    Raises InvalidTransition with a reason fit for an operator when not allowed.
    """
    target, noop_from = ACTIONS[action]
    if current in noop_from:
        return None
    if action == "restart":
        # A restart must never lift a suspension (that is `resume`, a decision).
        if current in (S.running, S.failed):
            return S.running
        raise InvalidTransition(
            f"only a running or failed bot can be restarted; this one is {current}"
            + (" (use resume)" if current is S.suspended else "")
        )
    check_transition(current, target)
    return target


def _why_not(current: S | None, target: S) -> str:
    if current is S.destroyed:
        return "the bot is destroyed; nothing can be done with it any more"
    if current in (S.awaiting_payment, S.awaiting_token):
        return f"the bot has not been deployed yet (status {current}); it cannot become {target}"
    return f"a bot that is {current} cannot become {target}"
