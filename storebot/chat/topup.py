"""/topup and /balance: prepaid LLM credit, from the customer's side.

/topup -> the bot (skipped when there is one) -> a preset amount or "Other amount" ->
a Stripe payment link. The credit arrives with Stripe's webhook (`storebot.topups`),
and the customer is told from there. "Other amount" asks with a ForceReply message
that names the bot, so the typed answer carries its own context: no conversation
state is kept here, and a restart in between loses nothing.
"""

from __future__ import annotations

import re

from aiogram import Bot as TgBot
from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, ForceReply, Message

from storebot import ledger, topups
from storebot.chat import keyboards as kb
from storebot.chat import texts
from storebot.errors import StorebotError
from storebot.hosting import Hosting
from storebot.stripe_gateway import StripeGateway

_ASKED_FOR = re.compile(re.escape(texts.ASK_AMOUNT_PREFIX) + r"([a-z0-9]+)\?")


async def topup(message: Message, hosting: Hosting) -> None:
    bots = topups.fundable_bots(hosting, message.chat.id)
    if not bots:
        await message.answer(texts.NO_FUNDABLE_BOT)
    elif len(bots) == 1:
        await _offer_amounts(message, hosting, bots[0].id)
    else:
        labels = [(b.id, f"{b.id} @{b.telegram_username or '?'}") for b in bots]
        await message.answer(texts.CHOOSE_TOPUP_BOT, reply_markup=kb.topup_bots(labels))


async def bot_chosen(query: CallbackQuery, callback_data: kb.TopupBot, hosting: Hosting) -> None:
    try:
        topups.owned_bot(hosting, query.from_user.id, callback_data.bot_id)
    except StorebotError as exc:
        await query.answer(str(exc), show_alert=True)
        return
    await query.answer()
    if isinstance(query.message, Message):
        await _offer_amounts(query.message, hosting, callback_data.bot_id)


async def _offer_amounts(message: Message, hosting: Hosting, bot_id: str) -> None:
    s = hosting.settings
    with hosting.session() as session:
        balance = ledger.balance(session, bot_id)
    presets = [ledger.usd_to_micro(p) for p in s.topup_presets()]
    await message.answer(
        texts.choose_amount(bot_id, balance), reply_markup=kb.topup_amounts(bot_id, presets)
    )


async def amount_chosen(
    query: CallbackQuery,
    callback_data: kb.TopupAmount,
    hosting: Hosting,
    payments: StripeGateway,
    bot: TgBot,
) -> None:
    await query.answer()
    if not isinstance(query.message, Message):
        return
    bot_id = callback_data.bot_id
    if callback_data.cents == 0:
        await _ask_amount(query.message, hosting, bot_id)
        return
    await _pay(
        query.message,
        hosting,
        payments,
        bot,
        query.from_user.id,
        bot_id,
        callback_data.cents * ledger.CENT,
    )


async def _ask_amount(message: Message, hosting: Hosting, bot_id: str) -> None:
    s = hosting.settings
    await message.answer(
        texts.ask_amount(bot_id, s.TOPUP_MIN_USD, s.TOPUP_MAX_USD),
        reply_markup=ForceReply(input_field_placeholder="20"),
    )


async def amount_typed(
    message: Message, hosting: Hosting, payments: StripeGateway, bot: TgBot
) -> None:
    asked = message.reply_to_message
    found = _ASKED_FOR.search(asked.text or "") if asked else None
    if found is None:
        return
    bot_id, s = found.group(1), hosting.settings
    try:
        micro = ledger.parse_usd(message.text or "", s.TOPUP_MIN_USD, s.TOPUP_MAX_USD)
    except StorebotError as exc:
        await message.answer(f"Sorry, {exc}.")
        await _ask_amount(message, hosting, bot_id)
        return
    await _pay(message, hosting, payments, bot, message.chat.id, bot_id, micro)


async def _pay(
    message: Message,
    hosting: Hosting,
    payments: StripeGateway,
    bot: TgBot,
    user: int,
    bot_id: str,
    micro: int,
) -> None:
    me = await bot.me()
    try:
        url = await topups.start_topup(
            hosting,
            payments,
            telegram_id=user,
            bot_id=bot_id,
            micro=micro,
            return_url=f"https://t.me/{me.username}",
        )
    except StorebotError as exc:
        await message.answer(f"Sorry, {exc}.")
        return
    await message.answer(texts.pay_topup(bot_id, micro), reply_markup=kb.pay(url))


async def balance(message: Message, hosting: Hosting) -> None:
    reports = topups.customer_reports(hosting, message.chat.id)
    if not reports:
        await message.answer(texts.NO_FUNDABLE_BOT)
        return
    for b, report in reports:
        await message.answer(
            texts.balance_report(b.id, b.telegram_username, report),
            reply_markup=kb.topup_button(b.id),
        )


def make_topup_router() -> Router:
    r = Router(name="topup")
    r.message.register(topup, Command("topup"))
    r.message.register(balance, Command("balance"))
    r.callback_query.register(bot_chosen, kb.TopupBot.filter())
    r.callback_query.register(amount_chosen, kb.TopupAmount.filter())
    # an answer to our "how many dollars" question (before the customer router, whose
    # text handler would take it for a token); a command typed then (ForceReply makes
    # it a reply too) goes to its own handler: /cancel, /mybots, ... still work
    r.message.register(
        amount_typed,
        F.text,
        ~F.text.startswith("/"),
        F.reply_to_message.text.startswith(texts.ASK_AMOUNT_PREFIX),
    )
    return r
