"""/topup and /balance through the real dispatcher, the Telegram fake and the Stripe
fake: presets, a typed amount, amounts out of range, a replayed webhook, forged
buttons, and the balance report."""

from __future__ import annotations

import copy

from sqlmodel import select

from storebot import ledger
from storebot.chat import keyboards as kb
from storebot.db import make_engine, session
from storebot.ledger import Debit
from storebot.models import BotStatus, LedgerEntry, utcnow
from tests.chat_helpers import SHOP_HOOK, Chat, Shop, buttons
from tests.rows import add_bot, set_status

ALICE, BOB = 5550601, 5550602
OPS = -100777  # the shop fixture's ops chat


def session_id(pay_message: dict) -> str:  # type: ignore[type-arg]
    [button] = buttons(pay_message)
    return str(button["url"]).rsplit("/", 1)[-1]


async def open_checkout(chat: Chat, bot: str, cents: int) -> str:
    """/topup of a customer with one bot, a preset amount: the Checkout Session's id."""
    chat.send("/topup")
    menu = await chat.says(f"LLM credit for bot {bot}")
    chat.press(menu, kb.TopupAmount(bot_id=bot, cents=cents))
    return session_id(await chat.says(f"${cents / 100:.2f} of LLM credit for bot {bot}"))


async def test_topup_with_a_preset_is_credited_once(shop: Shop) -> None:
    engine = make_engine(shop.settings.DATABASE_URL)
    bot = add_bot(engine, "tup00001", ALICE, username="alice_ai_bot")
    alice = shop.chat(ALICE)
    alice.send("/topup")  # one bot: straight to the amounts
    menu = await alice.says("LLM credit for bot tup00001 (balance now $0.00)")
    labels = [b["text"] for b in buttons(menu)]
    assert labels == ["$5.00", "$10.00", "$25.00", "Other amount"]
    alice.press(menu, kb.TopupAmount(bot_id=bot, cents=1000))
    pay = await alice.says("$10.00 of LLM credit for bot tup00001")
    sid = session_id(pay)
    checkout = shop.stripe.sessions[sid]
    assert (checkout["mode"], checkout["amount_total"], checkout["currency"]) == (
        "payment",
        1000,
        "usd",
    )
    event = await shop.pay(sid)
    await alice.says("Thank you! $10.00 of LLM credit added to bot tup00001. Balance: $10.00")
    for _ in range(3):  # Stripe retries: acknowledged, never credited again
        assert (await shop.stripe.adeliver(event, shop.webhook, SHOP_HOOK))[0] == 200
    with session(engine) as s:
        assert ledger.balance(s, bot) == 10_000_000
        assert len(s.exec(select(LedgerEntry)).all()) == 1
    assert sum("credit added" in t for t in alice.transcript()) == 1
    engine.dispose()


async def test_other_amount_is_typed_and_checked(shop: Shop) -> None:
    engine = make_engine(shop.settings.DATABASE_URL)
    add_bot(engine, "tup00002", ALICE)
    add_bot(engine, "tup00003", ALICE)
    alice = shop.chat(ALICE)
    alice.send("/topup")
    which = await alice.says("Which assistant gets the credit?")
    assert [b["text"].split()[0] for b in buttons(which)] == ["tup00002", "tup00003"]
    alice.press(which, kb.TopupBot(bot_id="tup00003"))
    menu = await alice.says("LLM credit for bot tup00003")
    alice.press(menu, kb.TopupAmount(bot_id="tup00003", cents=0))
    question = await alice.says("How many dollars of LLM credit for bot tup00003?")
    asked = shop.telegram.calls_for("sendMessage", shop.token)[-1].params
    assert asked["reply_markup"]["force_reply"] is True  # the app opens a reply to it
    for typed, why in [
        ("3", "between $5 and $500"),
        ("1000", "between $5 and $500"),
        ("twenty", "not an amount"),
        ("7.123", "at most two decimals"),
    ]:
        shop.telegram.send_text(shop.token, ALICE, typed, reply_to=question["message_id"])
        await alice.says(why)
        question = await alice.says("How many dollars of LLM credit for bot tup00003?")
    # a command typed as the reply (the app opens one) is that command, not an amount
    shop.telegram.send_text(shop.token, ALICE, "/balance", reply_to=question["message_id"])
    await alice.says("Bot tup00002")  # /balance answered, one message per bot
    assert not any("not an amount" in t for t in shop.telegram.sent(shop.token, ALICE)[-3:])
    shop.telegram.send_text(shop.token, ALICE, "12.50", reply_to=question["message_id"])
    pay = await alice.says("$12.50 of LLM credit for bot tup00003")
    assert shop.stripe.sessions[session_id(pay)]["amount_total"] == 1250
    assert len(shop.stripe.sessions) == 1  # nothing was opened for the bad amounts
    engine.dispose()


async def test_forged_buttons_cannot_fund_someone_elses_bot(shop: Shop) -> None:
    engine = make_engine(shop.settings.DATABASE_URL)
    add_bot(engine, "tup00004", ALICE)
    add_bot(engine, "tup00005", BOB)
    bob = shop.chat(BOB)
    bob.send("/topup")
    menu = await bob.says("LLM credit for bot tup00005")

    def forge(data: kb.TopupAmount | kb.TopupBot) -> str:
        return shop.telegram.press_button(
            shop.token, BOB, menu["message_id"], data.pack(), strict=False
        )

    forge(kb.TopupAmount(bot_id="tup00004", cents=1000))
    await bob.says("that is not one of your assistants")
    query = forge(kb.TopupBot(bot_id="tup00004"))
    answer = await shop.telegram.await_for(lambda: shop.telegram.callback_answer(query))
    assert "not one of your assistants" in answer["text"]
    forge(kb.TopupAmount(bot_id="tup00005", cents=1))  # $0.01: below the minimum
    await bob.says("the amount must be between $5 and $500")
    assert shop.stripe.sessions == {}
    engine.dispose()


async def test_topup_without_a_bot_and_a_forged_payment(shop: Shop) -> None:
    carol = shop.chat(5550603)
    carol.send("/topup")
    await carol.says("no assistant to top up yet")
    carol.send("/balance")
    await carol.says("no assistant to top up yet")
    # a session naming a bot of someone else than its payer: not credited, ops told
    engine = make_engine(shop.settings.DATABASE_URL)
    add_bot(engine, "tup00006", ALICE)
    from storebot.stripe_gateway import StripeGateway

    key, _ = shop.settings.stripe_keys()
    gw = StripeGateway(key, SHOP_HOOK, shop.stripe.base_url, "usd")
    link = await gw.topup_checkout(
        bot_id="tup00006", telegram_id=5550603, cents=500, success_url="x:", cancel_url="x:"
    )
    await gw.aclose()
    await shop.pay(link.session_id)
    await shop.telegram.await_message(shop.token, -100777, "not the payer's")
    with session(engine) as s:
        assert ledger.balance(s, "tup00006") == 0
    engine.dispose()


async def test_balance_shows_spend_and_a_forecast(shop: Shop) -> None:
    engine = make_engine(shop.settings.DATABASE_URL)
    bot = add_bot(engine, "tup00007", ALICE, username="alice_ai_bot")
    with session(engine) as s:
        ledger.credit_topup(s, bot, 10_000_000, ref="cs_bal", actor="stripe")
        ledger.write_debits(s, [Debit(bot, 700_000, utcnow())])
        s.commit()
    alice = shop.chat(ALICE)
    alice.send("/balance")
    report = await alice.says("Bot tup00007 (@alice_ai_bot)")
    assert "Balance: $9.30" in report["text"]
    assert "Spent today: $0.70; last 7 days: $0.70" in report["text"]
    assert "lasts about 93 more day(s)" in report["text"]
    [top_up] = buttons(report)
    alice.press(report, kb.TopupBot.unpack(top_up["callback_data"]))
    await alice.says("LLM credit for bot tup00007 (balance now $9.30)")
    engine.dispose()


async def test_mybots_shows_the_llm_credit(shop: Shop) -> None:
    engine = make_engine(shop.settings.DATABASE_URL)
    bot = add_bot(engine, "tup00008", ALICE, username="alice_ai_bot")
    with session(engine) as s:
        ledger.credit_topup(s, bot, 2_500_000, ref="cs_mb", actor="stripe")
        s.commit()
    alice = shop.chat(ALICE)
    alice.send("/mybots")
    card = await alice.says("Bot tup00008: @alice_ai_bot")
    assert "LLM credit: $2.50 (/topup adds some)" in card["text"]
    engine.dispose()


async def test_a_balance_alert_reaches_the_owner_with_a_top_up_button(shop: Shop) -> None:
    from aiogram import Bot as TgBot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    from storebot.app import build_hosting
    from storebot.balance_alerts import due_alerts
    from storebot.chat.notify import send_effects

    engine = make_engine(shop.settings.DATABASE_URL)
    bot = add_bot(engine, "tup00009", ALICE)
    with session(engine) as s:
        ledger.credit_topup(s, bot, 10_000_000, ref="cs_al", actor="stripe")
        ledger.write_debits(s, [Debit(bot, 8_500_000, utcnow())])  # 15% left
        s.commit()
    engine.dispose()
    h = build_hosting(shop.settings)
    api = TelegramAPIServer.from_base(shop.settings.TELEGRAM_API_BASE)
    tg = TgBot(shop.token, session=AiohttpSession(api=api))
    try:
        effects = due_alerts(h)  # what the scheduled job sends
        await send_effects(tg, shop.settings, effects)
        assert due_alerts(h) == []  # once per crossing
    finally:
        await tg.session.close()
        await h.aclose()
    alice = shop.chat(ALICE)
    alert = await alice.says("Bot tup00009 has $1.50 of LLM credit left, 20% or less")
    [button] = buttons(alert)
    assert button["text"] == "Top up"
    alice.press(alert, kb.TopupBot.unpack(button["callback_data"]))
    await alice.says("LLM credit for bot tup00009 (balance now $1.50)")


async def test_an_owner_who_blocked_the_bot_does_not_stop_the_other_alerts(shop: Shop) -> None:
    from aiogram import Bot as TgBot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    from storebot.app import build_hosting
    from storebot.balance_alerts import due_alerts
    from storebot.chat.notify import send_effects

    engine = make_engine(shop.settings.DATABASE_URL)
    for bot, owner in (("tup00010", ALICE), ("tup00011", BOB)):
        add_bot(engine, bot, owner)
        with session(engine) as s:
            ledger.credit_topup(s, bot, 10_000_000, ref=f"cs_{bot}", actor="stripe")
            ledger.write_debits(s, [Debit(bot, 8_500_000, utcnow())])
            s.commit()
    engine.dispose()
    h = build_hosting(shop.settings)
    api = TelegramAPIServer.from_base(shop.settings.TELEGRAM_API_BASE)
    tg = TgBot(shop.token, session=AiohttpSession(api=api))
    try:
        effects = due_alerts(h)
        assert len(effects) == 2
        shop.telegram.fail_next(
            "sendMessage", 403, description="Forbidden: bot was blocked by the user"
        )
        assert await send_effects(tg, shop.settings, effects) == 1  # not an exception
    finally:
        await tg.session.close()
        await h.aclose()
    refused, delivered = effects[0].telegram_id, effects[1].telegram_id
    assert delivered is not None and refused is not None
    await shop.chat(delivered).says("of LLM credit left, 20% or less")
    assert shop.telegram.sent(shop.token, refused) == []


async def test_a_payment_that_settles_later_is_credited_when_it_does(shop: Shop) -> None:
    """A bank debit: checkout.session.completed comes unpaid (nothing credited), then
    checkout.session.async_payment_succeeded credits it, once."""
    engine = make_engine(shop.settings.DATABASE_URL)
    bot = add_bot(engine, "tup00012", ALICE)
    alice = shop.chat(ALICE)
    sid = await open_checkout(alice, bot, 1000)
    paid = shop.stripe.complete_checkout(sid)
    pending = copy.deepcopy(paid)
    pending["id"] = "evt_pending_" + sid[-8:]
    pending["data"]["object"]["payment_status"] = "unpaid"
    assert (await shop.stripe.adeliver(pending, shop.webhook, SHOP_HOOK))[0] == 200
    with session(engine) as s:
        assert ledger.balance(s, bot) == 0
    settled = copy.deepcopy(paid) | {"type": "checkout.session.async_payment_succeeded"}
    for _ in range(2):
        assert (await shop.stripe.adeliver(settled, shop.webhook, SHOP_HOOK))[0] == 200
    await alice.says("$10.00 of LLM credit added to bot tup00012. Balance: $10.00")
    with session(engine) as s:
        assert ledger.balance(s, bot) == 10_000_000
    engine.dispose()


async def test_a_top_up_paid_for_a_destroyed_bot_goes_to_ops_for_a_refund(
    shop: Shop,
) -> None:
    engine = make_engine(shop.settings.DATABASE_URL)
    bot = add_bot(engine, "tup00013", ALICE)
    sid = await open_checkout(shop.chat(ALICE), bot, 500)
    set_status(engine, bot, BotStatus.destroyed)  # destroyed while the page was open
    event = shop.stripe.complete_checkout(sid)
    assert (await shop.stripe.adeliver(event, shop.webhook, SHOP_HOOK))[0] == 200
    alert = await shop.telegram.await_message(shop.token, OPS, "Payment alert")
    assert "tup00013, which is destroyed: refund it" in alert["text"]
    with session(engine) as s:
        assert ledger.balance(s, bot) == 0
        assert s.exec(select(LedgerEntry).where(LedgerEntry.bot_id == bot)).all() == []
    engine.dispose()
