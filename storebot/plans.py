"""Hosting plans: what a bot may use. Pure.

Until plans become operator-editable configuration (management bot issue), there is
one plan, `standard`, whose limits are the DEFAULT_* settings.
"""

from __future__ import annotations

from storebot.container_spec import Limits, default_limits
from storebot.errors import StorebotError
from storebot.settings import Settings


def plan_names(settings: Settings) -> list[str]:
    return ["standard"]


def plan_limits(settings: Settings, plan: str) -> Limits:
    if plan not in plan_names(settings):
        raise StorebotError(
            f"unknown plan {plan!r}; known plans: {', '.join(plan_names(settings))}"
        )
    return default_limits(settings)
