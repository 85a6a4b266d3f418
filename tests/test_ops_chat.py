"""The ops chat's kill switch end to end: a bot deployed on the real Docker engine
behind the real Traefik, the real meter and the management bot running in this loop,
an admin's `/suspend` in the ops group through the Telegram fake. Within 2 seconds
of the command its container is stopped, Traefik answers 404 for it, the meter
refuses its LLM token (403) and its owner has been told why and whom to write to.

Then /bot's card (resources now), Resume and Destroy from its buttons.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import httpx
import pytest
from aiogram.filters.callback_data import CallbackData
from sqlmodel import select

from storebot.app import build_hosting
from storebot.bot_files import data_dir
from storebot.chat.ops import Act, CardAction, DestroyConfirmed
from storebot.db import make_engine, session
from storebot.deploy import DeployResult, deploy
from storebot.meter import build_meter
from storebot.meter import serve as serve_meter
from storebot.models import BotEvent
from storebot.settings import Settings
from tests.chat_helpers import SHOP_KEY, shop_env, storebot
from tests.fakes.openrouter import FakeOpenRouter
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services, free_port

pytestmark = [pytest.mark.docker, pytest.mark.traefik]
OPS = -100777
ADMIN, STRANGER, OWNER = 5550911, 5550912, 5550913
UPSTREAM_KEY = "sk-or-v1-" + "o" * 24
KILL_SWITCH_SECONDS = 2.0


@dataclass
class Stack:
    """storebot, the meter and one deployed bot, seen by the test."""

    settings: Settings
    tg: FakeTelegram
    token: str  # the management bot's
    web_url: str  # Traefik's web entrypoint
    meter_url: str
    bot: DeployResult
    llm_token: str
    docker: docker.DockerClient
    http: httpx.AsyncClient
    seen: dict[int, int] = field(default_factory=dict)

    def send(self, text: str, user: int = ADMIN) -> None:
        self.tg.send_group_text(self.token, OPS, user, text, username="root_op")

    def press(self, msg: dict[str, Any], data: CallbackData, user: int = ADMIN) -> str:
        return self.tg.press_group_button(self.token, OPS, user, msg["message_id"], data.pack())

    async def says(self, snippet: str, chat: int = OPS, timeout: float = 40) -> dict[str, Any]:
        msg = await self.tg.await_message(
            self.token, chat, snippet, since=self.seen.get(chat, 0), timeout=timeout
        )
        self.seen[chat] = len(self.tg.sent(self.token, chat))
        return msg

    def container_status(self) -> str:
        try:
            return str(self.docker.containers.get(self.bot.container).status)
        except docker.errors.NotFound:
            return "gone"

    async def health(self) -> int:
        try:
            r = await self.http.get(
                f"{self.web_url}/health",
                headers={"Host": self.settings.bot_host(self.bot.id)},
                timeout=0.5,
            )
        except httpx.HTTPError:  # Traefik may still forward to the stopped address
            return -1
        return r.status_code

    async def llm(self) -> int:
        body = {"model": "meter/x", "messages": [{"role": "user", "content": "hi"}]}
        r = await self.http.post(
            f"{self.meter_url}/v1/chat/completions",
            content=json.dumps(body),
            headers={"Authorization": f"Bearer {self.llm_token}"},
            timeout=5,
        )
        return r.status_code


async def elapsed_until(
    start: float, done: Callable[[], Awaitable[bool]], limit: float = 15
) -> float:
    """Seconds from `start` until `done()` holds (polled); fails after `limit`."""
    while not await done():
        if time.monotonic() - start > limit:
            raise AssertionError(f"not done within {limit}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
async def stack(
    services: Services,
    telegram: FakeTelegram,
    migrated_db: str,
    docker_client: docker.DockerClient,
) -> AsyncIterator[Stack]:
    shop = telegram.add_bot(username="storebot_ops_e2e_bot")
    meter_port = free_port()
    with (
        FakeOpenRouter(api_key=UPSTREAM_KEY) as upstream,
        FakeStripe(api_key=SHOP_KEY) as stripe,
    ):
        env = services.env(
            telegram,
            migrated_db,
            # only this test calls the meter (the bot's own LLM calls are not needed);
            # METER_SYNC_SECONDS stays at its default, as in production
            METER_HOST="127.0.0.1",
            METER_PORT=meter_port,
            OPENROUTER_API_KEY=UPSTREAM_KEY,
            OPENROUTER_BASE_URL=upstream.base_url,
            **shop_env(shop.token, stripe),
            THROTTLE_PER_MINUTE=600,
            OPS_CHAT_ID=OPS,
            ADMIN_USER_IDS=str(ADMIN),
        )
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        assert settings.METER_SYNC_SECONDS == 1.0
        h = build_hosting(settings)
        try:
            result = await deploy(
                h, token=telegram.add_bot().token, owner_telegram_id=OWNER, actor="test"
            )
        finally:
            await h.aclose()
        config = data_dir(settings.DATA_ROOT, result.id) / ".nullclaw" / "config.json"
        llm_token = json.loads(config.read_text())["models"]["providers"]["meter"]["api_key"]

        meter = build_meter(settings)
        stop_meter = asyncio.Event()
        metering = asyncio.create_task(serve_meter(meter, stop_meter))
        meter_url = f"http://127.0.0.1:{meter_port}"
        try:
            async with httpx.AsyncClient() as http, storebot(settings):
                for _ in range(200):
                    try:
                        if (await http.get(f"{meter_url}/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        await asyncio.sleep(0.02)
                yield Stack(
                    settings,
                    telegram,
                    shop.token,
                    services.web_url,
                    meter_url,
                    result,
                    llm_token,
                    docker_client,
                    http,
                )
        finally:
            stop_meter.set()
            await metering


async def test_suspend_in_the_ops_chat_takes_effect_within_two_seconds(stack: Stack) -> None:
    bot = stack.bot.id
    assert stack.container_status() == "running"
    assert await stack.health() == 200
    assert await stack.llm() == 200  # no credit: the top-up answer, but served

    start = time.monotonic()
    stack.send(f"/suspend {bot} spam reports")

    async def stopped() -> bool:
        return await asyncio.to_thread(stack.container_status) != "running"

    async def route_gone() -> bool:
        return await stack.health() == 404

    async def refused() -> bool:
        return await stack.llm() == 403

    async def told() -> bool:
        return any("suspended by our team" in t for t in stack.tg.sent(stack.token, OWNER))

    checks = {"container stopped": stopped, "Traefik 404": route_gone}
    checks |= {"meter 403": refused, "owner told": told}
    times = await asyncio.gather(*(elapsed_until(start, done) for done in checks.values()))
    measured = dict(zip(checks, times, strict=True))
    print(
        "\nkill switch, seconds after /suspend: "
        + ", ".join(f"{what} {seconds:.2f}" for what, seconds in measured.items())
    )
    assert all(s <= KILL_SWITCH_SECONDS for s in measured.values()), measured

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
    bot = stack.bot.id
    stack.send(f"/bot {bot}")
    card = await stack.says(f"Bot {bot} @{stack.bot.telegram_username}: running")
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
    await asyncio.sleep(stack.settings.METER_SYNC_SECONDS + 0.5)
    assert await stack.llm() == 200

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
