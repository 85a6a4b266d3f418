"""The ops chat's kill switch end to end: a bot deployed on the real Docker engine
behind the real Traefik, the real meter and the management bot running in this loop,
an admin's `/suspend` in the ops group through the Telegram fake. Its container is
stopped, Traefik answers 404 for it, the meter refuses its LLM token (403) and its
owner has been told why and whom to write to (how fast: `python -m bench.killswitch`).

Then /bot's card (resources now), Resume and Destroy from its buttons.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable

import docker
import pytest
from sqlmodel import select

from storebot.chat.ops import Act, CardAction, DestroyConfirmed, OpenCard
from storebot.db import make_engine, session
from storebot.models import BotEvent
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services
from tests.ops_stack import (
    ADMIN,
    OWNER,
    STRANGER,
    Stack,
    elapsed_until,
    kill_switch,
    ops_stack,
)

pytestmark = [pytest.mark.docker, pytest.mark.traefik]


@pytest.fixture
async def stack(
    services: Services,
    telegram: FakeTelegram,
    migrated_db: str,
    docker_client: docker.DockerClient,
) -> AsyncIterator[Stack]:
    # the meter's own sync every 30 s: what counts at once is what storebot asked for
    async with ops_stack(services, telegram, migrated_db, docker_client, 30) as st:
        yield st


async def test_suspend_in_the_ops_chat_stops_unroutes_refuses_and_tells(stack: Stack) -> None:
    bot = stack.bot.id
    assert stack.container_status() == "running"
    assert await stack.health() == 200
    assert await stack.llm() == 200  # no credit: the top-up answer, but served

    measured = await kill_switch(stack, "spam reports")
    # the 2 s target is measured by bench.killswitch; a timed assert here would be noise
    print(
        "\nkill switch, seconds after /suspend: "
        + ", ".join(f"{what} {seconds:.2f}" for what, seconds in measured.items())
    )

    notice = (await stack.says("suspended by our team", chat=OWNER))["text"]
    assert "spam reports" in notice and stack.settings.SUPPORT_EMAIL in notice
    await stack.says(f"Bot {bot} suspended. The owner ({OWNER}) was told.")
    engine = make_engine(stack.settings.DATABASE_URL)
    with session(engine) as s:
        last = s.exec(select(BotEvent).where(BotEvent.bot_id == bot)).all()[-1]
    engine.dispose()
    assert (last.to_status, last.actor, last.reason) == (
        "suspended",
        f"ops:{ADMIN} @root_op",
        "spam reports",
    )

    stack.send(f"/suspend {bot} twice")
    await stack.says(f"Bot {bot} was already suspended.")
    await asyncio.sleep(1.5)  # stays down: nothing restarts it
    assert stack.container_status() == "exited"
    assert await stack.health() == 404 and await stack.llm() == 403


async def test_card_resume_and_destroy_from_the_ops_chat(stack: Stack) -> None:
    bot, name = stack.bot.id, stack.bot.telegram_username
    stack.send(f"/find @{name.upper()}")  # no need to know the id: found, then opened
    found = await stack.says(f"Bots matching '@{name.upper()}'")
    assert found["text"].splitlines()[1].startswith(f"{bot}  running  @{name}  owner {OWNER}")
    stack.press(found, OpenCard(bot_id=bot))
    card = await stack.says(f"Bot {bot} @{name}: running")
    text = card["text"]
    assert f"Owner: {OWNER}" in text and "Plan: standard, no paid period" in text
    assert "LLM balance: $0.00" in text
    assert "Container: running, CPU " in text and " of 1, memory " in text
    assert "MiB of 512 MiB" in text
    assert "deploying -> running by test" in text
    labels = {
        b["text"]: b["callback_data"] for r in card["reply_markup"]["inline_keyboard"] for b in r
    }
    assert labels == {
        "Suspend": CardAction(act=Act.suspend, bot_id=bot).pack(),
        "Destroy": CardAction(act=Act.destroy, bot_id=bot).pack(),
    }

    stack.press(card, CardAction(act=Act.suspend, bot_id=bot))
    await stack.says(f"Bot {bot} suspended.")
    stack.send(f"/bot {bot}")
    card = await stack.says(f"Bot {bot} @{stack.bot.telegram_username}: suspended (no reason")
    assert "Container: exited" in card["text"]
    stack.press(card, CardAction(act=Act.resume, bot_id=bot))
    await stack.says(f"Bot {bot} resumed. The owner ({OWNER}) was told.")
    await stack.says("is running again", chat=OWNER)
    assert stack.container_status() == "running" and await stack.health() == 200
    assert await stack.llm() == 200  # at once: the resume had the meter sync

    stack.press(card, CardAction(act=Act.destroy, bot_id=bot))
    ask = await stack.says(f"Destroy bot {bot}")
    yes = DestroyConfirmed(bot_id=bot, yes=True)
    ignored = stack.press(ask, yes, user=STRANGER)  # forged: not an admin
    await asyncio.sleep(1)
    assert stack.tg.callback_answer(ignored) is None
    assert stack.container_status() == "running"
    stack.press(ask, yes)
    await stack.says(f"Bot {bot} destroyed.")
    assert stack.container_status() == "gone"
    assert await elapsed_until(time.monotonic(), lambda: _is(stack.health(), 404)) < 10


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected
