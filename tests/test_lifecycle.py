"""Bot lifecycle: the allowed transitions (pure), then actions on the real Docker
engine and Traefik that must leave a bot routed."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import pytest

from storebot import bot_ops
from storebot.deploy import deploy
from storebot.errors import InvalidTransition, StateChanged
from storebot.hosting import Hosting
from storebot.lifecycle import ALLOWED, can_transition, plan_action
from storebot.models import BotStatus as S
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services


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


# Against Docker and Traefik -----------------------------------------------------------

OWNER = 5550301
#: how long a bot must stay routed after an action said it is up
WATCH_SECONDS = 2.5


async def _answers(h: Hosting, bot_id: str) -> list[int]:
    """/health through Traefik every 50 ms for WATCH_SECONDS (-1: no answer in time)."""
    s = h.settings
    codes = []
    deadline = time.monotonic() + WATCH_SECONDS
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            try:
                r = await http.get(
                    f"{s.HEALTH_PROBE_URL}/health", headers={"Host": s.bot_host(bot_id)}, timeout=1
                )
                codes.append(r.status_code)
            except httpx.HTTPError:
                codes.append(-1)
            await asyncio.sleep(0.05)
    return codes


@pytest.mark.docker
@pytest.mark.traefik
async def test_a_bot_brought_back_stays_routed(
    hosting: Hosting, services: Services, telegram: FakeTelegram
) -> None:
    """Traefik follows Docker events late, over a second on a busy machine. A container
    stopped and started again before Traefik applied the stop answered /health through
    the stale route (same address), then lost its route when the stop landed: "resumed",
    then 404 (CI saw it). So a (re)start first waits until Traefik has dropped the old
    route: with Traefik frozen, a resume does not start the container."""
    bot = await deploy(hosting, token=telegram.add_bot().token, owner_telegram_id=OWNER, actor="t")
    name = hosting.container_name(bot.id)
    with services.traefik_frozen():
        await bot_ops.suspend(hosting, bot.id, actor="t")
        resuming = asyncio.create_task(bot_ops.resume(hosting, bot.id, actor="t"))
        deploying = asyncio.create_task(
            deploy(hosting, token=telegram.add_bot().token, owner_telegram_id=OWNER, actor="t")
        )
        await asyncio.sleep(1)
        state = await hosting.docker.state(name)
        assert state is not None and state.status == "exited" and not resuming.done()
        # both wait on Traefik holding no database connection (a pool of 5 + 10 would
        # run dry at 16 such waits, and the 16th checkout would block the event loop)
        assert not deploying.done() and hosting.db.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert (await resuming).status == "running"
    assert (await deploying).status == "running"
    codes = await _answers(hosting, bot.id)
    assert set(codes) == {200}, codes

    # a Resume pressed twice ends with the bot running and routed (Hosting's per-bot
    # start lock closes a narrow window where the second start's stop came after the
    # first one's start; this checks the outcome, it does not force that window)
    await bot_ops.suspend(hosting, bot.id, actor="t")
    both = await asyncio.gather(
        *(bot_ops.resume(hosting, bot.id, actor="t") for _ in range(2)), return_exceptions=True
    )
    assert any(isinstance(r, bot_ops.Outcome) and r.changed for r in both), both
    assert all(isinstance(r, bot_ops.Outcome | StateChanged) for r in both), both
    codes = await _answers(hosting, bot.id)
    assert set(codes) == {200}, codes

    await bot_ops.restart(hosting, bot.id, actor="t")
    codes = await _answers(hosting, bot.id)
    assert set(codes) == {200}, codes
    await bot_ops.rotate_gateway_token(hosting, bot.id, actor="t")  # a new container
    codes = await _answers(hosting, bot.id)
    assert set(codes) == {200}, codes
