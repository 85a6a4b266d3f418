"""Scheduled jobs: hosting expiry and renewal, and deploys that wait for Docker."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import docker
import pytest

from storebot import bot_ops
from storebot.app import build_hosting
from storebot.deploy import deploy
from storebot.effects import Effect
from storebot.hosting import Hosting
from storebot.jobs import expire_hosting, hosting_expired, resume_renewed
from storebot.models import Bot, BotStatus, utcnow
from storebot.settings import Settings
from tests.chat_helpers import Chat, storebot
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services, free_port

OWNER = 5550601


def test_expiry_rule() -> None:
    now, grace = utcnow(), timedelta(days=3)
    assert hosting_expired(now - timedelta(days=4), now, grace)
    assert not hosting_expired(now - timedelta(days=2), now, grace)
    assert not hosting_expired(None, now, grace)  # admin-deployed bots have no paid period


@pytest.fixture
async def hosting(
    services: Services, telegram: FakeTelegram, migrated_db: str
) -> AsyncIterator[Hosting]:
    h = build_hosting(Settings(_env_file=None, **services.env(telegram, migrated_db)))  # type: ignore[arg-type]
    try:
        yield h
    finally:
        await h.aclose()


def _set_paid_until(h: Hosting, bot_id: str, days_ago: float) -> None:
    with h.session() as s:  # time passes: the only clock here is the row's paid_until
        bot = s.get(Bot, bot_id)
        assert bot is not None
        bot.paid_until = utcnow() - timedelta(days=days_ago)
        s.add(bot)
        s.commit()


def _status(h: Hosting, bot_id: str) -> BotStatus:
    with h.session() as s:
        bot = s.get(Bot, bot_id)
        assert bot is not None
        return bot.status


@pytest.mark.docker
async def test_expired_hosting_suspends_and_renewal_resumes(
    hosting: Hosting, telegram: FakeTelegram, docker_client: docker.DockerClient
) -> None:
    lapsed = await deploy(
        hosting, token=telegram.add_bot().token, owner_telegram_id=OWNER, actor="t"
    )
    current = await deploy(
        hosting, token=telegram.add_bot().token, owner_telegram_id=OWNER, actor="t"
    )
    _set_paid_until(hosting, lapsed.id, days_ago=4)
    _set_paid_until(hosting, current.id, days_ago=1)  # within the 3-day grace
    effects = await expire_hosting(hosting)
    assert [(e.kind, e.bot_id) for e in effects] == [("hosting_expired", lapsed.id)]
    assert _status(hosting, lapsed.id) is BotStatus.suspended
    assert _status(hosting, current.id) is BotStatus.running
    assert docker_client.containers.get(lapsed.container).status == "exited"
    assert await expire_hosting(hosting) == []  # already suspended: nothing twice

    renewed = [Effect("renewed", OWNER, lapsed.id), Effect("renewed", OWNER, current.id)]
    resumed = await resume_renewed(hosting, renewed)
    assert [(e.kind, e.bot_id) for e in resumed] == [("resumed", lapsed.id)]
    assert _status(hosting, lapsed.id) is BotStatus.running


@pytest.mark.docker
async def test_renewal_never_lifts_an_operators_suspension(
    hosting: Hosting, telegram: FakeTelegram
) -> None:
    bot = await deploy(hosting, token=telegram.add_bot().token, owner_telegram_id=OWNER, actor="t")
    await bot_ops.suspend(hosting, bot.id, actor="ops", reason="abuse")
    assert await resume_renewed(hosting, [Effect("renewed", OWNER, bot.id)]) == []
    assert _status(hosting, bot.id) is BotStatus.suspended


@pytest.mark.docker
@pytest.mark.traefik
async def test_docker_down_during_chat_deploy_completes_when_it_returns(
    services: Services, telegram: FakeTelegram, migrated_db: str, tmp_path: Path
) -> None:
    key, hook, ops = "sk_test_jobs0123456789", "whsec_jobs", -100555
    shop = telegram.add_bot()
    sock = tmp_path / "docker.sock"  # nothing there yet: Docker is "down"
    with FakeStripe(api_key=key) as stripe:
        env = services.env(
            telegram,
            migrated_db,
            STOREBOT_BOT_TOKEN=shop.token,
            STRIPE_SECRET_KEY=key,
            STRIPE_WEBHOOK_SECRET=hook,
            STRIPE_API_BASE=stripe.base_url,
            WEB_PORT=free_port(),
            OPS_CHAT_ID=ops,
            JOBS_INTERVAL_SECONDS=0.5,
            DOCKER_HOST=f"unix://{sock}",
        )
        async with storebot(Settings(_env_file=None, **env)) as webhook:  # type: ignore[arg-type]
            alice = Chat(telegram, shop.token, OWNER)
            await alice.order_hosting()
            [session] = stripe.sessions
            await stripe.adeliver(stripe.complete_checkout(session), webhook, hook)
            await alice.says("Payment received")
            alice.send(telegram.add_bot().token)
            await alice.says("I keep your token and retry by myself")
            await telegram.await_message(shop.token, ops, "Docker is unreachable", timeout=10)
            os.symlink("/var/run/docker.sock", sock)  # Docker is back
            await alice.says("Your assistant is live", timeout=60)
