"""The anomaly watch on real containers behind the real Traefik: a CPU-burning bot, a
memory hog, an OOM loop, a request flood and an LLM spend spree are each suspended with
the right evidence; a bot whose token was revoked is suspended, its owner asked for
the new token, and sending it brings the bot back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import docker
import httpx
import pytest
from sqlmodel import select

from storebot import ledger
from storebot.app import build_hosting
from storebot.bot_ops import TOKEN_REVOKED
from storebot.db import make_engine, session
from storebot.deploy import DeployResult, deploy
from storebot.effects import Effect
from storebot.hosting import Hosting
from storebot.ledger import Debit
from storebot.models import Bot, BotEvent, BotStatus, utcnow
from storebot.settings import Settings
from storebot.watch import Watch
from tests.chat_helpers import Chat, buttons, shop_env, storebot
from tests.fakes.telegram import FakeTelegram, make_token
from tests.harness import Services, deployed

pytestmark = [pytest.mark.docker, pytest.mark.traefik]
OWNER = 5550801
WATCH = {
    "DEFAULT_CPU_LIMIT": "0.25",
    "DEFAULT_MEM_LIMIT": "24m",
    "ANOMALY_INTERVAL_SECONDS": "0.5",
    "ANOMALY_CPU_PERCENT": "80",
    "ANOMALY_CPU_MINUTES": "0.05",  # 3 s
    "ANOMALY_MEM_PERCENT": "80",
    "ANOMALY_MEM_MINUTES": "0.05",
    "ANOMALY_OOM_KILLS": "2",
    "ANOMALY_OOM_MINUTES": "1",
    "ANOMALY_RPS": "10",
    "ANOMALY_RPS_MINUTES": "0.05",
    "ANOMALY_SPEND_USD_PER_HOUR": "1",
    "ANOMALY_SPEND_MINUTES": "1",
    "TOKEN_CHECK_MINUTES": "60",
}


@dataclass
class Bench:
    h: Hosting
    services: Services
    telegram: FakeTelegram
    client: docker.DockerClient

    async def bot(self) -> tuple[DeployResult, str]:
        token = self.telegram.add_bot().token
        result = await deploy(self.h, token=token, owner_telegram_id=OWNER, actor="test")
        return result, token

    def exec(self, result: DeployResult, script: str) -> None:
        self.client.containers.get(result.container).exec_run(["sh", "-c", script], detach=True)

    def status(self, bot_id: str) -> tuple[BotStatus, str]:
        with self.h.session() as s:
            bot = s.get(Bot, bot_id)
            assert bot is not None
            return bot.status, bot.status_reason or ""

    def running(self, result: DeployResult) -> bool:
        return (
            bool(self.client.containers.get(result.container).status == "running")
            and (self.client.containers.get(result.container).attrs["State"]["Running"])
        )


@pytest.fixture
async def bench(
    services: Services,
    telegram: FakeTelegram,
    migrated_db: str,
    docker_client: docker.DockerClient,
) -> AsyncIterator[Bench]:
    env = services.env(telegram, migrated_db, **WATCH)
    h = build_hosting(Settings(_env_file=None, **env))  # type: ignore[arg-type]
    try:
        yield Bench(h, services, telegram, docker_client)
    finally:
        await h.aclose()


async def watch_until(
    watch: Watch, bot_id: str, timeout: float = 25, every: float = 0.5
) -> list[Effect]:
    """Run sweeps until one acts on `bot_id`; its effects."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        effects = [e for e in await watch.run() if e.bot_id == bot_id]
        if effects:
            return effects
        await asyncio.sleep(every)
    raise AssertionError(f"the watch never acted on bot {bot_id} within {timeout}s")


def evidence(effects: list[Effect]) -> list[str]:
    [ops] = [e for e in effects if e.kind == "anomaly"]
    assert ops.detail["suspended"] is True
    return list(ops.detail["evidence"])


async def test_a_cpu_burning_bot_is_suspended_and_a_quiet_one_is_not(bench: Bench) -> None:
    burner, _ = await bench.bot()
    quiet, _ = await bench.bot()
    watch = Watch(bench.h)
    bench.exec(burner, "while :; do :; done")
    effects = await watch_until(watch, burner.id)
    [line] = evidence(effects)
    assert line.startswith("cpu: CPU ") and "of its 0.25-CPU limit" in line
    assert [e.kind for e in effects] == ["anomaly", "suspended_for_abuse"]
    status, reason = bench.status(burner.id)
    assert status is BotStatus.suspended and reason.startswith("auto-suspended: cpu:")
    assert not bench.running(burner)  # stopped: its route is gone too
    assert bench.status(quiet.id)[0] is BotStatus.running
    with bench.h.session() as s:
        [event] = s.exec(
            select(BotEvent).where(
                BotEvent.bot_id == burner.id, BotEvent.to_status == BotStatus.suspended
            )
        ).all()
        assert event.actor == "watch"


async def test_a_cpu_spin_from_a_revoked_token_asks_for_the_new_token(bench: Bench) -> None:
    """A revoked token makes nullclawd spin at full CPU, long before the next periodic
    getMe (an hour here): the CPU rule fires first, and the watch asks Telegram then,
    so the owner is asked for the new token instead of being told of abuse."""
    spinner, token = await bench.bot()
    watch = Watch(bench.h)
    await watch.run()  # every token checked once: the next check is an hour away
    bench.telegram.revoke(token)
    bench.exec(spinner, "while :; do :; done")  # what nullclawd then does
    effects = await watch_until(watch, spinner.id)
    assert [e.kind for e in effects] == ["anomaly", "token_revoked"]
    lines = evidence(effects)
    assert lines[0].startswith("cpu: ") and lines[-1].startswith("token: Telegram rejects")
    status, reason = bench.status(spinner.id)
    assert status is BotStatus.suspended and reason.startswith(TOKEN_REVOKED)


async def test_watch_only_reports_a_finding_once_per_window(
    services: Services,
    telegram: FakeTelegram,
    migrated_db: str,
    docker_client: docker.DockerClient,
) -> None:
    """ANOMALY_AUTO_SUSPEND=false: the ops chat hears of a burner once, not at every
    sweep while the same window of samples is still in memory."""
    env = services.env(telegram, migrated_db, **(WATCH | {"ANOMALY_AUTO_SUSPEND": "false"}))
    h = build_hosting(Settings(_env_file=None, **env))  # type: ignore[arg-type]
    bench = Bench(h, services, telegram, docker_client)
    burner, _ = await bench.bot()
    try:
        watch = Watch(h)
        bench.exec(burner, "while :; do :; done")
        [ops] = await watch_until(watch, burner.id)
        assert ops.kind == "anomaly" and ops.detail["suspended"] is False
        assert bench.status(burner.id)[0] is BotStatus.running
        for _ in range(3):  # within the 3 s window: no second report of the same
            await asyncio.sleep(0.5)
            assert [e for e in await watch.run() if e.bot_id == burner.id] == []
    finally:
        docker_client.containers.get(burner.container).stop(timeout=1)
        await h.aclose()


async def test_a_memory_hog_is_suspended_with_memory_or_oom_evidence(bench: Bench) -> None:
    hog, _ = await bench.bot()
    watch = Watch(bench.h)
    # holds ~22 MB of its 24 MB (sort keeps its input until the reader takes it), and
    # keeps getting OOM-killed when it asks for more
    bench.exec(
        hog,
        "while :; do head -c 30000000 /dev/zero | sort | sleep 2; done",
    )
    effects = await watch_until(watch, hog.id)
    lines = evidence(effects)
    assert any(line.startswith(("memory:", "oom:")) for line in lines), lines
    assert bench.status(hog.id)[0] is BotStatus.suspended


async def test_a_request_flood_through_traefik_is_suspended(bench: Bench) -> None:
    flooded, _ = await bench.bot()
    watch = Watch(bench.h)
    await watch.run()  # a baseline of the router's counter
    host = f"{flooded.id}.bots.storebot.test"
    async with httpx.AsyncClient(timeout=5) as http:

        async def hit() -> int:
            resp = await http.get(f"{bench.services.web_url}/health", headers={"Host": host})
            return resp.status_code

        codes = await asyncio.gather(*(hit() for _ in range(150)))
    assert 429 in codes  # Traefik's rate limit held the gateway safe meanwhile
    effects = await watch_until(watch, flooded.id)
    [line] = evidence(effects)
    assert line.startswith("requests:"), line
    assert bench.status(flooded.id)[0] is BotStatus.suspended


async def test_an_llm_spend_spree_is_suspended(bench: Bench) -> None:
    spender, _ = await bench.bot()
    watch = Watch(bench.h)
    await watch.run()
    with bench.h.session() as s:  # what the meter writes: $0.50 in a few seconds
        ledger.write_debits(s, [Debit(spender.id, 50_000, utcnow())] * 10)
        s.commit()
    effects = await watch_until(watch, spender.id)
    [line] = evidence(effects)
    assert line.startswith("spend:"), line


async def test_a_revoked_token_suspends_and_a_new_token_brings_the_bot_back(
    services: Services,
    telegram: FakeTelegram,
    migrated_db: str,
    docker_client: docker.DockerClient,
) -> None:
    shop = telegram.add_bot(username="storebot_shop_bot")
    env = services.env(
        telegram,
        migrated_db,
        **(WATCH | {"TOKEN_CHECK_MINUTES": "0.005"}),
        OPS_CHAT_ID=-100777,
        **shop_env(shop.token),
    )
    settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
    tg_bot = telegram.add_bot(username="alice_helper_bot")
    result = await deployed(settings, tg_bot.token, OWNER)
    alice = Chat(telegram, shop.token, OWNER)
    async with storebot(settings):
        telegram.revoke(tg_bot.token)  # in @BotFather: /revoke
        told: dict[str, Any] = await alice.says(
            "Telegram no longer accepts the token of @alice_helper_bot"
        )
        assert "send me the current token" in told["text"]
        ops = await telegram.await_message(shop.token, -100777, "token:")
        assert f"bot {result.id}" in ops["text"]
        assert [b["text"] for b in buttons(ops)] == ["Resume", "Destroy"]
        engine = make_engine(migrated_db)
        with session(engine) as s:
            bot = s.get(Bot, result.id)
            assert bot is not None and bot.status is BotStatus.suspended
            assert (bot.status_reason or "").startswith(TOKEN_REVOKED)
        engine.dispose()
        assert docker_client.containers.get(result.container).status != "running"

        other = telegram.add_bot()
        alice.send(other.token)  # not the same Telegram bot
        await alice.says("That token belongs to @")
        new = telegram.add_bot(token=make_token(tg_bot.id), username="alice_helper_bot")
        alice.send(new.token)
        back = await alice.says("runs again with its new Telegram token", timeout=40)
        assert "New gateway token: sbgw_" in back["text"]
    engine = make_engine(migrated_db)
    with session(engine) as s:
        row = s.get(Bot, result.id)
        assert row is not None and row.status is BotStatus.running
    engine.dispose()
