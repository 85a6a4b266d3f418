"""The customer's conversation: /start, /newbot (plan, terms, payment, token), /cancel.

Handlers are thin: they read the update, call a service, and say what happened. There
is no conversation state of their own: every step is a button carrying its data,
and "waiting for a token" is the customer's paid order in the database, so a restart
at any point loses nothing.
"""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import CallbackQuery, Message

from storebot import bot_ops, deploy, orders
from storebot.chat import keyboards as kb
from storebot.chat import texts
from storebot.chat.notify import send_effects
from storebot.effects import Effect
from storebot.errors import DockerUnavailable, StorebotError, TokenError
from storebot.hosting import Hosting
from storebot.plans import load_plans
from storebot.stripe_gateway import StripeGateway


def _actor(user_id: int) -> str:
    return f"telegram:{user_id}"


async def start(message: Message, hosting: Hosting) -> None:
    cheapest = min(load_plans(hosting.settings).values(), key=lambda p: p.price_cents)
    await message.answer(texts.welcome(cheapest, hosting.settings.CURRENCY), reply_markup=kb.menu())


async def help_(message: Message) -> None:
    await message.answer(texts.HELP)


async def help_button(query: CallbackQuery) -> None:
    await query.answer()
    if query.message:
        await query.message.answer(texts.HELP)


async def newbot(message: Message, hosting: Hosting) -> None:
    await _offer_plans(message, hosting, message.chat.id)


async def newbot_button(query: CallbackQuery, hosting: Hosting) -> None:
    await query.answer()
    if isinstance(query.message, Message):
        await _offer_plans(query.message, hosting, query.from_user.id)


async def _offer_plans(message: Message, hosting: Hosting, user_id: int) -> None:
    if orders.paid_order_awaiting_token(hosting, user_id) is not None:
        # paid already: never charge twice, ask for what is missing
        await message.answer(texts.ask_token(hosting.settings.SUPPORT_EMAIL))
        return
    plans = list(load_plans(hosting.settings).values())
    await message.answer(texts.CHOOSE_PLAN, reply_markup=kb.plans(plans, hosting.settings.CURRENCY))


async def plan_chosen(query: CallbackQuery, callback_data: kb.PlanChosen, hosting: Hosting) -> None:
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.edit_text(
            texts.terms(hosting.settings), reply_markup=kb.accept_terms(callback_data.name)
        )


async def terms_accepted(
    query: CallbackQuery,
    callback_data: kb.TermsAccepted,
    hosting: Hosting,
    payments: StripeGateway,
    bot: Bot,
) -> None:
    await query.answer()
    me = await bot.me()
    link = f"https://t.me/{me.username}"
    try:
        order = await orders.start_hosting_order(
            hosting,
            payments,
            telegram_id=query.from_user.id,
            plan_name=callback_data.plan,
            success_url=link,
            cancel_url=link,
            actor=_actor(query.from_user.id),
        )
    except StorebotError as exc:
        if isinstance(query.message, Message):
            await query.message.answer(str(exc))
        return
    if isinstance(query.message, Message):
        await query.message.edit_text(texts.PAY, reply_markup=kb.pay(order.checkout_url))


async def cancel(message: Message, hosting: Hosting, payments: StripeGateway) -> None:
    user = message.chat.id
    if await orders.cancel_unpaid_order(hosting, payments, user):
        await message.answer(texts.CANCELLED)
    elif orders.paid_order_awaiting_token(hosting, user) is not None:
        await message.answer(texts.PAID_CANNOT_CANCEL)
    else:
        await message.answer(texts.NOTHING_TO_CANCEL)


async def token(message: Message, hosting: Hosting, bot: Bot) -> None:
    user, raw = message.chat.id, message.text or ""
    order = orders.paid_order_awaiting_token(hosting, user)
    if order is None and (revoked := orders.bot_awaiting_new_token(hosting, user)):
        await _replace_token(message, hosting, revoked, raw)
        return
    if order is None:
        unpaid = orders.unpaid_order(hosting, user) is not None
        await message.answer(texts.PAY_FIRST if unpaid else texts.HELP)
        return
    await message.delete()  # the token must not stay in the chat
    if raw.strip() == hosting.settings.bot_token():
        await message.answer("That is my own token. Send the token of YOUR bot from @BotFather.")
        return
    status = await message.answer(texts.progress("checking your token"))

    async def progress(step: str) -> None:
        await status.edit_text(texts.progress(step))

    support = hosting.settings.SUPPORT_EMAIL
    try:
        result = await deploy.deploy(
            hosting,
            token=raw,
            owner_telegram_id=user,
            actor=_actor(user),
            progress=progress,
            order_id=order.id,
        )
    except TokenError as exc:
        await status.edit_text(f"{exc}\n\nSend the token again when you have it.")
    except DockerUnavailable:
        orders.queue_token(hosting, order.id, raw)
        await status.edit_text(texts.QUEUED)
        await send_effects(bot, hosting.settings, [Effect("docker_down", bot_id=order.id)])
    except StorebotError as exc:
        await status.edit_text(texts.deploy_failed(str(exc).split("\n")[0], support))
    else:
        await status.edit_text(texts.ready(result, support))


async def _replace_token(message: Message, hosting: Hosting, revoked: str, raw: str) -> None:
    await message.delete()  # the token must not stay in the chat
    status = await message.answer(texts.progress("checking your new token"))
    try:
        gateway_token = await bot_ops.replace_token(
            hosting, revoked, raw, actor=_actor(message.chat.id)
        )
    except TokenError as exc:
        await status.edit_text(f"{exc}\n\nSend the new token again when you have it.")
    except StorebotError as exc:
        await status.edit_text(
            texts.deploy_failed(str(exc).split("\n")[0], hosting.settings.SUPPORT_EMAIL)
        )
    else:
        url = hosting.settings.bot_url(revoked)
        await status.edit_text(texts.token_replaced(revoked, gateway_token, url))


async def not_text(message: Message, hosting: Hosting) -> None:
    if orders.paid_order_awaiting_token(hosting, message.chat.id) is not None:
        await message.answer(texts.NOT_A_TOKEN)
    else:
        await message.answer(texts.HELP)


def make_router() -> Router:
    """A new router with every customer handler (one per dispatcher)."""
    r = Router(name="customer")
    r.message.register(start, CommandStart())
    r.message.register(help_, Command("help"))
    r.callback_query.register(help_button, kb.Menu.filter(F.action == "help"))
    r.message.register(newbot, Command("newbot"))
    r.callback_query.register(newbot_button, kb.Menu.filter(F.action == "newbot"))
    r.callback_query.register(plan_chosen, kb.PlanChosen.filter())
    r.callback_query.register(terms_accepted, kb.TermsAccepted.filter())
    r.message.register(cancel, Command("cancel"))
    r.message.register(token, F.text & ~F.text.startswith("/"))
    r.message.register(not_text, ~F.text)
    return r
