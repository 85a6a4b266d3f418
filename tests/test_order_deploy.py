"""A paid hosting order receives its token and becomes a running bot (real Docker, Traefik)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from storebot.app import build_hosting, build_payments
from storebot.deploy import deploy
from storebot.errors import (
    BotNotFound,
    DockerUnavailable,
    InvalidTransition,
    TokenAlreadyHosted,
    TokenFormatError,
)
from storebot.hosting import Hosting
from storebot.models import Bot, BotStatus
from storebot.orders import apply_event, start_hosting_order
from storebot.settings import Settings
from storebot.stripe_gateway import StripeGateway
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services

pytestmark = [pytest.mark.docker, pytest.mark.traefik]
KEY, HOOK = "sk_test_orders0123456789", "whsec_orders"
ALICE, BOB = 5550301, 5550302


@dataclass
class Store:
    h: Hosting
    gw: StripeGateway
    stripe: FakeStripe
    settings: Settings

    async def paid_order(self, telegram_id: int) -> str:
        order = await start_hosting_order(
            self.h,
            self.gw,
            telegram_id=telegram_id,
            plan_name="standard",
            success_url="https://t.me/x",
            cancel_url="https://t.me/x",
            actor="test",
        )
        session_id = self.status(order.bot_id).checkout_session_id
        assert session_id is not None
        apply_event(self.h, self.stripe.complete_checkout(session_id))
        return order.bot_id

    def status(self, bot_id: str) -> Bot:
        with self.h.session() as s:
            bot = s.get(Bot, bot_id)
            assert bot is not None
            return bot


@pytest.fixture
async def store(
    services: Services, telegram: FakeTelegram, migrated_db: str
) -> AsyncIterator[Store]:
    with FakeStripe(api_key=KEY) as fake:
        env = services.env(
            telegram,
            migrated_db,
            STRIPE_SECRET_KEY=KEY,
            STRIPE_WEBHOOK_SECRET=HOOK,
            STRIPE_API_BASE=fake.base_url,
        )
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        h, gw = build_hosting(settings), build_payments(settings)
        try:
            yield Store(h, gw, fake, settings)
        finally:
            await gw.aclose()
            await h.aclose()


async def test_paid_order_becomes_a_running_bot(
    store: Store, telegram: FakeTelegram, services: Services
) -> None:
    order = await store.paid_order(ALICE)
    steps: list[str] = []

    async def progress(step: str) -> None:
        steps.append(step)

    token = telegram.add_bot().token
    out = await deploy(
        store.h,
        token=token,
        owner_telegram_id=ALICE,
        actor="telegram:alice",
        order_id=order,
        progress=progress,
    )
    assert out.id == order and out.status == "running"
    assert len(steps) == 3
    async with httpx.AsyncClient() as client:
        health = await client.get(
            f"{services.web_url}/health", headers={"Host": f"{order}.bots.storebot.test"}
        )
    assert health.status_code == 200
    bot = store.status(order)
    assert bot.paid_until is not None and bot.token_claim == int(token.split(":")[0])


async def test_token_before_paying_is_refused(store: Store, telegram: FakeTelegram) -> None:
    order = await start_hosting_order(
        store.h,
        store.gw,
        telegram_id=ALICE,
        plan_name="standard",
        success_url="https://t.me/x",
        cancel_url="https://t.me/x",
        actor="test",
    )
    with pytest.raises(InvalidTransition, match="not paid yet"):
        await deploy(
            store.h,
            token=telegram.add_bot().token,
            owner_telegram_id=ALICE,
            actor="t",
            order_id=order.bot_id,
        )
    assert store.status(order.bot_id).status is BotStatus.awaiting_payment


async def test_bad_tokens_keep_the_paid_order(store: Store, telegram: FakeTelegram) -> None:
    order = await store.paid_order(ALICE)
    taken = telegram.add_bot().token
    await deploy(store.h, token=taken, owner_telegram_id=BOB, actor="t")  # Bob hosts it
    with pytest.raises(TokenAlreadyHosted, match="another customer"):
        await deploy(store.h, token=taken, owner_telegram_id=ALICE, actor="t", order_id=order)
    with pytest.raises(TokenFormatError):
        await deploy(store.h, token="hello", owner_telegram_id=ALICE, actor="t", order_id=order)
    with pytest.raises(BotNotFound, match="no order"):
        await deploy(
            store.h,
            token=telegram.add_bot().token,
            owner_telegram_id=BOB,
            actor="t",
            order_id=order,
        )  # Bob cannot use Alice's order
    assert store.status(order).status is BotStatus.awaiting_token  # still paid, still waiting


async def test_docker_down_then_the_same_order_deploys(
    store: Store, telegram: FakeTelegram, tmp_path: Path
) -> None:
    order = await store.paid_order(ALICE)
    token = telegram.add_bot().token
    down = store.settings.model_copy(update={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    h_down = build_hosting(down)
    try:
        with pytest.raises(DockerUnavailable):
            await deploy(h_down, token=token, owner_telegram_id=ALICE, actor="t", order_id=order)
    finally:
        await h_down.aclose()
    assert store.status(order).status is BotStatus.awaiting_token
    out = await deploy(store.h, token=token, owner_telegram_id=ALICE, actor="t", order_id=order)
    assert out.status == "running" and out.id == order
