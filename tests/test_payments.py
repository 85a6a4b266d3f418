"""Hosting orders paid through Stripe Checkout, and the signed webhook that applies them.

The real stripe library and our aiohttp app talk over HTTP to a stateful fake of
Stripe's API; every webhook is signed with the stripe library's own helper.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer
from sqlmodel import select

from storebot import ledger
from storebot.app import build_hosting, build_payments
from storebot.effects import Effect
from storebot.hosting import Hosting
from storebot.models import Bot, BotEvent, BotStatus, LedgerEntry, StripeEvent, utcnow
from storebot.orders import end_hosting, paid_order_awaiting_token, start_hosting_order
from storebot.stripe_gateway import StripeGateway
from storebot.web import build_web_app
from tests.cli_helpers import cli_json
from tests.conftest import base_env, make_settings
from tests.fakes.stripe import FakeStripe
from tests.rows import add_bot

API_KEY = "sk_test_storebot0123456789"
WEBHOOK_SECRET = "whsec_storebot_test_secret"
ALICE, BOB = 5550101, 5550202


@dataclass
class Shop:
    h: Hosting
    gw: StripeGateway
    stripe: FakeStripe
    url: str  # our webhook
    effects: list[Effect]

    async def order(self, telegram_id: int, plan: str = "standard") -> tuple[str, str]:
        o = await start_hosting_order(
            self.h,
            self.gw,
            telegram_id=telegram_id,
            plan_name=plan,
            success_url="https://t.me/storebot_test",
            cancel_url="https://t.me/storebot_test",
            actor=f"telegram:{telegram_id}",
        )
        with self.h.session() as s:
            bot = s.get(Bot, o.bot_id)
            assert bot is not None and bot.checkout_session_id
            return o.bot_id, bot.checkout_session_id

    def bot(self, bot_id: str) -> Bot:
        with self.h.session() as s:
            bot = s.get(Bot, bot_id)
            assert bot is not None
            return bot

    def stripe_rows(self) -> list[StripeEvent]:
        with self.h.session() as s:
            return list(s.exec(select(StripeEvent)))


# the default plan as it is without a PLANS_FILE, and one that includes LLM credit
PLANS = """
[[plan]]
name = "standard"
price_cents = 900

[[plan]]
name = "pro"
price_cents = 1500
llm_credit_cents = 300
"""


@pytest.fixture
async def shop(migrated_db: str, tmp_path: Path) -> AsyncIterator[Shop]:
    effects: list[Effect] = []

    async def collect(new: list[Effect]) -> None:
        effects.extend(new)

    (tmp_path / "plans.toml").write_text(PLANS)
    with FakeStripe(api_key=API_KEY) as fake:
        settings = make_settings(
            PLANS_FILE=tmp_path / "plans.toml",
            DATABASE_URL=migrated_db,
            STRIPE_SECRET_KEY=API_KEY,
            STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            STRIPE_API_BASE=fake.base_url,
        )
        h = build_hosting(settings)
        gw = build_payments(settings)
        server = TestServer(build_web_app(h, gw, collect), host="127.0.0.1")
        await server.start_server()
        try:
            yield Shop(h, gw, fake, str(server.make_url("/stripe/webhook")), effects)
        finally:
            await server.close()
            await gw.aclose()
            await h.aclose()


async def test_checkout_carries_order_and_customer(shop: Shop) -> None:
    bot_id, session_id = await shop.order(ALICE)
    session = shop.stripe.sessions[session_id]
    assert session["mode"] == "subscription"
    assert session["client_reference_id"] == str(ALICE)
    assert session["metadata"]["order_id"] == bot_id
    assert shop.bot(bot_id).status is BotStatus.awaiting_payment


async def test_paid_once_however_often_delivered(shop: Shop) -> None:
    bot_id, session_id = await shop.order(ALICE)
    event = shop.stripe.complete_checkout(session_id)
    for _ in range(5):
        status, _body = await shop.stripe.adeliver(event, shop.url, WEBHOOK_SECRET)
        assert status == 200
    bot = shop.bot(bot_id)
    assert bot.status is BotStatus.awaiting_token
    assert bot.paid_until is not None and bot.paid_until > utcnow() + timedelta(days=27)
    assert bot.stripe_subscription_id
    assert [e.kind for e in shop.effects] == ["ask_token"]
    assert shop.effects[0].telegram_id == ALICE
    assert [(r.id, r.outcome) for r in shop.stripe_rows()] == [(event["id"], "applied")]


async def test_forged_tampered_and_stale_webhooks_change_nothing(shop: Shop) -> None:
    bot_id, session_id = await shop.order(ALICE)
    event = shop.stripe.complete_checkout(session_id)
    forged = await shop.stripe.adeliver(event, shop.url, WEBHOOK_SECRET, sign_secret="whsec_x")
    tampered = await shop.stripe.adeliver(event, shop.url, WEBHOOK_SECRET, tamper=True)
    stale = await shop.stripe.adeliver(
        event, shop.url, WEBHOOK_SECRET, timestamp=int(utcnow().timestamp()) - 3600
    )
    assert [forged[0], tampered[0], stale[0]] == [400, 400, 400]
    assert shop.bot(bot_id).status is BotStatus.awaiting_payment
    assert shop.stripe_rows() == [] and shop.effects == []
    # the genuine delivery still works afterwards
    assert (await shop.stripe.adeliver(event, shop.url, WEBHOOK_SECRET))[0] == 200
    assert shop.bot(bot_id).status is BotStatus.awaiting_token


async def test_payment_naming_another_customers_order_is_refused(shop: Shop) -> None:
    alice_bot, alice_session = await shop.order(ALICE)
    await shop.order(BOB)
    event = copy.deepcopy(shop.stripe.complete_checkout(alice_session))
    event["id"] = event["id"] + "x"
    event["data"]["object"]["client_reference_id"] = str(BOB)  # Bob's payment, Alice's order
    status, _ = await shop.stripe.adeliver(event, shop.url, WEBHOOK_SECRET)
    assert status == 200  # acknowledged, so Stripe stops retrying; reported, not applied
    assert shop.bot(alice_bot).status is BotStatus.awaiting_payment
    assert [e.kind for e in shop.effects] == ["ops_alert"]
    assert "another customer" in shop.effects[0].detail["why"]
    assert shop.stripe_rows()[0].outcome.startswith("rejected")


async def test_unknown_events_are_acknowledged_and_ignored(shop: Shop) -> None:
    event = {
        "id": "evt_unknown_1",
        "object": "event",
        "type": "customer.created",
        "data": {"object": {"id": "cus_1", "object": "customer"}},
    }
    assert (await shop.stripe.adeliver(event, shop.url, WEBHOOK_SECRET))[0] == 200
    assert [(r.type, r.outcome) for r in shop.stripe_rows()] == [("customer.created", "ignored")]


async def test_each_paid_month_adds_the_llm_credit_its_plan_includes(shop: Shop) -> None:
    bot_id, session_id = await shop.order(ALICE, plan="pro")
    shop.stripe.complete_checkout(session_id)
    [first] = shop.stripe.events_of("invoice.paid")
    for _ in range(2):  # Stripe retries: credited once per invoice
        assert (await shop.stripe.adeliver(first, shop.url, WEBHOOK_SECRET))[0] == 200
    [sub_id] = list(shop.stripe.subscriptions)
    renewal = shop.stripe.renew(sub_id)
    assert (await shop.stripe.adeliver(renewal, shop.url, WEBHOOK_SECRET))[0] == 200
    with shop.h.session() as s:
        assert ledger.balance(s, bot_id) == 2 * 3_000_000
        notes = [e.note for e in s.exec(select(LedgerEntry).where(LedgerEntry.bot_id == bot_id))]
    assert notes == ["included with the Pro plan"] * 2
    renewed = [e for e in shop.effects if e.kind == "renewed"]
    assert [e.detail.get("included_credit") for e in renewed] == [3_000_000, 3_000_000]
    standard, standard_session = await shop.order(BOB)  # no credit included
    shop.stripe.complete_checkout(standard_session)
    paid = shop.stripe.events_of("invoice.paid")[-1]
    assert (await shop.stripe.adeliver(paid, shop.url, WEBHOOK_SECRET))[0] == 200
    with shop.h.session() as s:
        assert ledger.balance(s, standard) == 0


async def test_a_bot_that_ran_then_failed_is_not_an_order_waiting_for_a_token(
    shop: Shop,
) -> None:
    """Only a paid order whose first deploy failed takes the next token: a bot that ran
    and later failed is one to restart (its owner's texts are not its new token)."""
    for bot_id, owner, history in (
        ("payf0001", ALICE, [BotStatus.deploying, BotStatus.running, BotStatus.failed]),
        ("payf0002", BOB, [BotStatus.deploying, BotStatus.failed]),
    ):
        add_bot(shop.h.db, bot_id, owner, status=BotStatus.failed)
        with shop.h.session() as s:
            bot = s.get(Bot, bot_id)
            assert bot is not None
            bot.paid_until = utcnow() + timedelta(days=20)
            s.add(bot)
            before = BotStatus.awaiting_token
            for to in history:
                s.add(BotEvent(bot_id=bot_id, from_status=before, to_status=to, actor="t"))
                before = to
            s.commit()
    assert paid_order_awaiting_token(shop.h, ALICE) is None
    waiting = paid_order_awaiting_token(shop.h, BOB)
    assert waiting is not None and waiting.id == "payf0002"


async def test_a_new_link_expires_the_previous_one(shop: Shop) -> None:
    first_bot, first_session = await shop.order(ALICE)
    second_bot, second_session = await shop.order(ALICE)
    assert first_bot == second_bot  # one open order per customer
    assert first_session != second_session
    assert shop.stripe.sessions[first_session]["status"] == "expired"
    assert shop.stripe.sessions[second_session]["status"] == "open"


async def test_renewal_failure_cancel_refund_dispute(shop: Shop) -> None:
    bot_id, session_id = await shop.order(ALICE)
    await shop.stripe.adeliver(shop.stripe.complete_checkout(session_id), shop.url, WEBHOOK_SECRET)
    sub = shop.bot(bot_id).stripe_subscription_id
    assert sub is not None
    before = shop.bot(bot_id).paid_until
    assert before is not None
    renewed = shop.stripe.renew(sub)
    assert (await shop.stripe.adeliver(renewed, shop.url, WEBHOOK_SECRET))[0] == 200
    after = shop.bot(bot_id).paid_until
    assert after is not None and after > before
    for event in (
        shop.stripe.fail_payment(sub),
        shop.stripe.cancel(sub),
        shop.stripe.refund(session_id),
        shop.stripe.dispute(session_id),
    ):
        assert (await shop.stripe.adeliver(event, shop.url, WEBHOOK_SECRET))[0] == 200
    kinds = [e.kind for e in shop.effects]
    assert kinds == [
        "ask_token",
        "renewed",
        "payment_failed",
        "subscription_ended",
        "ops_alert",
        "ops_alert",
    ]
    assert all(e.telegram_id == ALICE for e in shop.effects[:4])


async def test_healthz(shop: Shop) -> None:
    app = build_web_app(shop.h, shop.gw, lambda effects: _none())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient() as client:
            resp = await client.get(str(server.make_url("/healthz")))
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    finally:
        await server.close()


async def _none() -> None:
    return None


async def test_ending_hosting_cancels_the_subscription(shop: Shop) -> None:
    bot_id, session_id = await shop.order(ALICE)
    await shop.stripe.adeliver(shop.stripe.complete_checkout(session_id), shop.url, WEBHOOK_SECRET)
    sub = shop.bot(bot_id).stripe_subscription_id
    assert sub is not None and shop.stripe.subscriptions[sub]["status"] == "active"
    assert await end_hosting(shop.h, shop.gw, bot_id) is True
    assert shop.stripe.subscriptions[sub]["status"] == "canceled"
    assert await end_hosting(shop.h, shop.gw, bot_id) is True  # again: no error
    other, _ = await shop.order(BOB)
    assert await end_hosting(shop.h, shop.gw, other) is False  # never paid: nothing to end


async def test_admin_destroy_also_ends_the_hosting_subscription(shop: Shop, tmp_path: Path) -> None:
    bot_id, session_id = await shop.order(ALICE)
    await shop.stripe.adeliver(shop.stripe.complete_checkout(session_id), shop.url, WEBHOOK_SECRET)
    sub = shop.bot(bot_id).stripe_subscription_id
    assert sub is not None
    env = base_env(
        DATABASE_URL=shop.h.settings.DATABASE_URL,
        DATA_ROOT=tmp_path / "bots",
        STRIPE_SECRET_KEY=API_KEY,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STRIPE_API_BASE=shop.stripe.base_url,
    )
    gone = await asyncio.to_thread(cli_json, env, "admin", "destroy", bot_id, "--yes")
    assert (gone["status"], gone["billing"]) == ("destroyed", "its subscription is cancelled")
    assert shop.stripe.subscriptions[sub]["status"] == "canceled"
    # Stripe then says the subscription ended: nothing to tell about a destroyed bot
    [ended] = shop.stripe.events_of("customer.subscription.deleted")
    told_before = len(shop.effects)
    assert (await shop.stripe.adeliver(ended, shop.url, WEBHOOK_SECRET))[0] == 200
    assert shop.effects[told_before:] == []
    no_keys = {k: v for k, v in env.items() if not k.startswith("STRIPE_")}
    other, _ = await shop.order(BOB)
    told = await asyncio.to_thread(cli_json, no_keys, "admin", "destroy", other, "--yes")
    assert "cancel it in Stripe" in told["billing"]
