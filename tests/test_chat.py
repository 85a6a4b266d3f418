"""The management bot's conversation without deploying: cancel, repeats, floods."""

from __future__ import annotations

import httpx
import pytest

from storebot.chat.throttle import Throttle
from storebot.settings import Settings
from tests.chat_helpers import SHOP_HOOK as HOOK
from tests.chat_helpers import SHOP_KEY as KEY
from tests.chat_helpers import Shop, storebot
from tests.conftest import base_env
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import free_port


async def test_cancel_in_every_state(shop: Shop) -> None:
    chat = shop.chat(5550501)
    chat.send("/cancel")
    await chat.says("nothing to cancel")
    await shop.reach_payment(chat)
    chat.send("/cancel")
    await chat.says("Cancelled. Nothing was charged")
    [session] = shop.stripe.sessions.values()
    assert session["status"] == "expired"  # the payment page is closed too
    await shop.reach_payment(chat)
    paid = [s for s in shop.stripe.sessions.values() if s["status"] == "open"]
    event = shop.stripe.complete_checkout(paid[0]["id"])
    assert (await shop.stripe.adeliver(event, shop.webhook, HOOK))[0] == 200
    await chat.says("Payment received")
    chat.send("/cancel")
    await chat.says("Your order is paid and waits for a token")


async def test_two_newbot_flows_make_one_order(shop: Shop) -> None:
    chat = shop.chat(5550502)
    first = await shop.reach_payment(chat)
    second = await shop.reach_payment(chat)
    assert first["message_id"] != second["message_id"]
    sessions = list(shop.stripe.sessions.values())
    assert [s["status"] for s in sessions] == ["expired", "open"]
    assert sessions[0]["metadata"]["order_id"] == sessions[1]["metadata"]["order_id"]


async def test_photos_and_text_before_any_order(shop: Shop) -> None:
    chat = shop.chat(5550503)
    shop.telegram.send_photo(shop.token, chat.user)
    await chat.says("How it works")
    chat.send("123456789:" + "A" * 35)  # a token with no paid order
    await chat.says("How it works")


async def test_flood_gets_one_slow_down(shop: Shop) -> None:
    chat = shop.chat(5550504)
    for i in range(40):  # THROTTLE_PER_MINUTE=60: bursts of 15
        chat.send(f"/help {i}")
    await chat.says("Slow down")
    await chat.tg.await_for(lambda: len(chat.transcript()) >= 16, timeout=10)
    texts = chat.transcript()
    assert sum("Slow down" in t for t in texts) == 1
    assert sum("How it works" in t for t in texts) <= 17  # about the burst, not 40 answers


def test_throttle_bucket() -> None:
    t = Throttle(per_minute=60)  # 1/s, bursts of 15
    results = [t.allow(1, 0.0) for _ in range(17)]
    assert [ok for ok, _ in results] == [True] * 15 + [False] * 2
    assert [warn for _, warn in results] == [False] * 15 + [True, False]  # warned once
    assert t.allow(2, 0.0) == (True, False)  # other users are not affected
    assert t.allow(1, 1.0) == (True, False)  # refilled after a second


async def test_webhook_mode_takes_only_telegrams_signed_updates(
    migrated_db: str, telegram: FakeTelegram
) -> None:
    shop_bot, secret, user = telegram.add_bot(), "tg-webhook-secret-0123456789", 5550505
    with FakeStripe(api_key=KEY) as stripe:
        env = base_env(
            DATABASE_URL=migrated_db,
            TELEGRAM_API_BASE=telegram.base_url,
            STOREBOT_BOT_TOKEN=shop_bot.token,
            STRIPE_SECRET_KEY=KEY,
            STRIPE_WEBHOOK_SECRET=HOOK,
            STRIPE_API_BASE=stripe.base_url,
            WEB_PORT=free_port(),
            TELEGRAM_MODE="webhook",
            TELEGRAM_WEBHOOK_SECRET=secret,
        )
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        async with storebot(settings):
            [hook] = telegram.calls_for("setWebhook", token=shop_bot.token)
            assert hook.params["url"] == "https://storebot.test/telegram/webhook"
            assert hook.params["secret_token"] == secret
            update = {
                "update_id": 1,
                "message": {
                    "message_id": 1,
                    "date": 1,
                    "text": "/help",
                    "chat": {"id": user, "type": "private"},
                    "from": {"id": user, "is_bot": False, "first_name": "Ann"},
                    "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
                },
            }
            url = f"http://127.0.0.1:{settings.WEB_PORT}/telegram/webhook"
            async with httpx.AsyncClient() as client:
                forged = await client.post(url, json=update)
                header = {"X-Telegram-Bot-Api-Secret-Token": secret}
                genuine = await client.post(url, json=update, headers=header)
            assert forged.status_code == 401 and genuine.status_code == 200
            await telegram.await_message(shop_bot.token, user, "How it works", timeout=10)
            assert len(telegram.sent(shop_bot.token, user)) == 1  # only the genuine one


def test_webhook_mode_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="TELEGRAM_WEBHOOK_SECRET"):
        Settings(_env_file=None, **base_env(TELEGRAM_MODE="webhook"))  # type: ignore[arg-type]


async def test_refunds_and_disputes_reach_the_ops_chat(shop: Shop) -> None:
    chat = shop.chat(5550506)
    await shop.reach_payment(chat)
    [session_id] = shop.stripe.sessions
    assert (
        await shop.stripe.adeliver(shop.stripe.complete_checkout(session_id), shop.webhook, HOOK)
    )[0] == 200
    await chat.says("Payment received")
    for event in (shop.stripe.refund(session_id), shop.stripe.dispute(session_id)):
        assert (await shop.stripe.adeliver(event, shop.webhook, HOOK))[0] == 200
    await shop.telegram.await_message(shop.token, -100777, "refunded", timeout=10)
    await shop.telegram.await_message(shop.token, -100777, "disputed", timeout=10)
