"""A deployed bot's LLM calls, end to end: the stand-in nullclawd (real container, real
Docker network and firewall) sends nullclawd's exact request to the real `storebot
meter` process, which forwards to the OpenRouter fake until the balance runs out, then
answers with the top-up text; the owner tops up through the management bot (Telegram
and Stripe fakes) and the answers resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import docker
import httpx
import pytest

from storebot import ledger
from storebot.chat import keyboards as kb
from storebot.db import make_engine, session
from storebot.deploy import DeployResult
from storebot.settings import Settings
from tests.chat_helpers import SHOP_HOOK, SHOP_KEY, Chat, buttons, shop_env, storebot
from tests.fakes.openrouter import FakeOpenRouter
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services, deployed, free_port, until_answers

pytestmark = [pytest.mark.docker, pytest.mark.traefik]
ALICE = 5550701
UPSTREAM_KEY = "sk-or-v1-" + "e" * 24
COST = Decimal("2")  # USD per call: $2.50 charged with the 1.25 markup


@asynccontextmanager
async def meter_process(env: dict[str, str]) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "storebot",
        "meter",
        env=os.environ | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{env['METER_PORT']}/healthz"
    try:
        async with httpx.AsyncClient() as http:
            await until_answers(http, url)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, out.decode()


class Assistant:
    """The deployed bot, talked to as its owner would through the gateway."""

    def __init__(self, services: Services, result: DeployResult, client: docker.DockerClient):
        self.services, self.result = services, result
        self.container = client.containers.get(result.container)
        self.said = 0

    async def ask(self, text: str) -> None:
        headers = {
            "Authorization": f"Bearer {self.result.gateway_token}",
            "Host": f"{self.result.id}.bots.storebot.test",
        }
        body = json.dumps({"message": text}).encode()
        async with httpx.AsyncClient(timeout=5) as http:
            resp = await http.post(
                f"{self.services.web_url}/webhook", headers=headers, content=body
            )
        assert resp.status_code == 200, resp.text

    async def answer(self, timeout: float = 20) -> str:
        """The bot's next LLM outcome, from its log (`llm reply:` / `llm error:`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [
                line
                for line in self.container.logs().decode(errors="replace").splitlines()
                if line.startswith(("llm reply:", "llm error:"))
            ]
            if len(lines) > self.said:
                self.said += 1
                return lines[self.said - 1]
            await asyncio.sleep(0.1)
        raise AssertionError(f"the bot gave no LLM answer within {timeout}s")


async def top_up(alice: Chat, stripe: FakeStripe, webhook: str, bot_id: str) -> None:
    alice.send("/topup")
    menu = await alice.says(f"LLM credit for bot {bot_id}")
    alice.press(menu, kb.TopupAmount(bot_id=bot_id, cents=500))
    pay = await alice.says("of LLM credit for bot")
    [button] = buttons(pay)
    event = stripe.complete_checkout(str(button["url"]).rsplit("/", 1)[-1])
    assert (await stripe.adeliver(event, webhook, SHOP_HOOK))[0] == 200
    await alice.says("of LLM credit added")
    # no wait: storebot had the meter sync before it told Alice (it syncs every 30 s)


async def test_llm_answers_until_the_balance_runs_out_and_resume_after_a_topup(
    services: Services,
    telegram: FakeTelegram,
    migrated_db: str,
    docker_client: docker.DockerClient,
) -> None:
    shop = telegram.add_bot(username="storebot_shop_bot")
    meter_port = free_port()
    with (
        FakeOpenRouter(api_key=UPSTREAM_KEY, cost=COST, reply="real answer") as upstream,
        FakeStripe(api_key=SHOP_KEY) as stripe,
    ):
        env = services.env(
            telegram,
            migrated_db,
            # the meter where bots reach it: the bridge gateway, a port of its own
            LLM_METER_URL=f"http://{services.gateway}:{meter_port}/v1",
            METER_HOST="0.0.0.0",  # noqa: S104 (the bridge gateway may not exist yet)
            METER_PORT=meter_port,
            METER_SYNC_SECONDS=30,  # what counts at once must be asked for (POST /sync)
            OPENROUTER_API_KEY=UPSTREAM_KEY,
            OPENROUTER_BASE_URL=upstream.base_url,
            LLM_MARKUP="1.25",
            **shop_env(shop.token, stripe),
        )
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        result = await deployed(settings, telegram.add_bot().token, ALICE)
        bot = Assistant(services, result, docker_client)
        alice = Chat(telegram, shop.token, ALICE)

        async with meter_process(env), storebot(settings) as webhook:
            await bot.ask("hello?")  # no credit yet: the top-up text, as a normal answer
            first = await bot.answer()
            assert first.startswith("llm reply: My LLM credit has run out")
            assert "@storebot_shop_bot with /topup" in first
            assert upstream.count == 0

            await top_up(alice, stripe, webhook, result.id)  # $5.00: two calls at $2.50
            for n in (1, 2):
                await bot.ask(f"question {n}")
                assert await bot.answer() == "llm reply: real answer"
            await bot.ask("one more")
            assert "My LLM credit has run out" in await bot.answer()
            assert upstream.count == 2
            sent = upstream.requests[0]
            assert sent.model == settings.OPENROUTER_MODEL
            assert sent.body["messages"][-1]["content"] == "question 1"
            assert len(sent.body["tools"]) == 14  # nullclawd's whole request went through

            await top_up(alice, stripe, webhook, result.id)
            await bot.ask("and now?")
            assert await bot.answer() == "llm reply: real answer"

    engine = make_engine(migrated_db)
    with session(engine) as s:
        assert ledger.balance(s, result.id) == 2 * 5_000_000 - 3 * 2_500_000
        assert ledger.check_sums(s) == {}
    engine.dispose()
