"""The ops chat's stack, for its tests and the kill-switch benchmark: storebot and the
meter running in the caller's loop, one bot deployed on the real Docker engine behind
the real Traefik, and an admin writing in the ops group through the Telegram fake."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import docker
import httpx
from aiogram.filters.callback_data import CallbackData

from storebot.bot_files import data_dir
from storebot.deploy import DeployResult
from storebot.meter import build_meter
from storebot.meter import serve as serve_meter
from storebot.settings import Settings
from tests.chat_helpers import SHOP_KEY, shop_env, storebot
from tests.fakes.openrouter import FakeOpenRouter
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services, deployed, free_port, until_answers

OPS = -100777
ADMIN, STRANGER, OWNER = 5550911, 5550912, 5550913
UPSTREAM_KEY = "sk-or-v1-" + "o" * 24
#: the kill switch's target: each of its effects within this many seconds of /suspend
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

    async def health(self, timeout: float = 0.5) -> int:
        try:
            r = await self.http.get(
                f"{self.web_url}/health",
                headers={"Host": self.settings.bot_host(self.bot.id)},
                timeout=timeout,
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


@asynccontextmanager
async def ops_stack(
    services: Services,
    telegram: FakeTelegram,
    db: str,
    docker_client: docker.DockerClient,
    meter_sync_seconds: float = 1.0,
) -> AsyncIterator[Stack]:
    """storebot (management bot and ops chat) and the meter running in this loop, with
    one bot deployed on Docker behind Traefik and no LLM credit. The meter syncs every
    `meter_sync_seconds` (1: the default) and when storebot asks."""
    shop = telegram.add_bot(username="storebot_ops_e2e_bot")
    meter_port = free_port()
    with (
        FakeOpenRouter(api_key=UPSTREAM_KEY) as upstream,
        FakeStripe(api_key=SHOP_KEY) as stripe,
    ):
        env = services.env(
            telegram,
            db,
            # where the bots reach it, and storebot asks it to sync (the bot's own LLM
            # calls are not needed)
            METER_SYNC_SECONDS=meter_sync_seconds,
            METER_HOST=services.gateway,
            METER_PORT=meter_port,
            LLM_METER_URL=f"http://{services.gateway}:{meter_port}/v1",
            OPENROUTER_API_KEY=UPSTREAM_KEY,
            OPENROUTER_BASE_URL=upstream.base_url,
            **shop_env(shop.token, stripe),
            THROTTLE_PER_MINUTE=600,
            OPS_CHAT_ID=OPS,
            ADMIN_USER_IDS=str(ADMIN),
        )
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        result = await deployed(settings, telegram.add_bot().token, OWNER)
        config = data_dir(settings.DATA_ROOT, result.id) / ".nullclaw" / "config.json"
        llm_token = json.loads(config.read_text())["models"]["providers"]["meter"]["api_key"]

        meter = build_meter(settings)
        stop_meter = asyncio.Event()
        metering = asyncio.create_task(serve_meter(meter, stop_meter))
        meter_url = f"http://{services.gateway}:{meter_port}"
        try:
            async with httpx.AsyncClient() as http, storebot(settings):
                await until_answers(http, f"{meter_url}/healthz")
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


async def elapsed_until(
    start: float, done: Callable[[], Awaitable[bool]], limit: float = 15
) -> float:
    """Seconds from `start` until `done()` holds (polled); fails after `limit`."""
    while not await done():
        if time.monotonic() - start > limit:
            raise AssertionError(f"not done within {limit}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def kill_switch(stack: Stack, reason: str) -> dict[str, float]:
    """An admin's `/suspend` of the stack's bot; seconds until each of its effects."""
    start = time.monotonic()
    stack.send(f"/suspend {stack.bot.id} {reason}")

    async def stopped() -> bool:
        return await asyncio.to_thread(stack.container_status) != "running"

    async def route_gone() -> bool:  # a stale route hangs: a short timeout, finer figures
        return await stack.health(timeout=0.1) == 404

    async def refused() -> bool:
        return await stack.llm() == 403

    told_before = len(stack.tg.sent(stack.token, OWNER))

    async def told() -> bool:
        said = stack.tg.sent(stack.token, OWNER)[told_before:]
        return any("suspended by our team" in t for t in said)

    checks = {"container stopped": stopped, "Traefik 404": route_gone}
    checks |= {"meter 403": refused, "owner told": told}
    times = await asyncio.gather(*(elapsed_until(start, done) for done in checks.values()))
    return dict(zip(checks, times, strict=True))
