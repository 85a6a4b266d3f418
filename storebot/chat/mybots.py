"""/mybots: the customer's bots, one message each, with buttons to restart one, give it a
new gateway token, read its recent logs or destroy it (after a confirmation).

Callback data carries only an action and a bot id, and a client can forge it: every
button first checks that the bot belongs to whoever pressed it. The work itself is
done by `storebot.bot_ops`; a `StorebotError` is shown to the customer as it is.
"""

from __future__ import annotations

from enum import StrEnum

from aiogram import Bot as TgBot
from aiogram import F, Router
from aiogram.filters import Command
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

from storebot import bot_ops, ledger, orders
from storebot.chat import keyboards as kb
from storebot.customers import bots_in
from storebot.errors import StorebotError
from storebot.hosting import Hosting
from storebot.ledger import format_usd
from storebot.models import Bot, BotStatus
from storebot.settings import Settings
from storebot.stripe_gateway import StripeGateway

LOG_LINES = 30
MESSAGE_LIMIT = 4096  # Telegram's, in UTF-16 code units
LISTED = (
    BotStatus.awaiting_token,
    BotStatus.deploying,
    BotStatus.running,
    BotStatus.suspended,
    BotStatus.failed,
)


class Act(StrEnum):
    restart = "restart"
    token = "token"  # noqa: S105 (a button, not a secret)
    logs = "logs"
    destroy = "destroy"


class BotAction(CallbackData, prefix="mb"):
    act: Act
    bot_id: str


class DestroyConfirmed(CallbackData, prefix="mbdel"):
    bot_id: str
    yes: bool


# Texts -------------------------------------------------------------------------------

NO_BOTS = "You have no assistants yet. Send /newbot to create one."
NOT_YOURS = "That is not your bot."
BUTTONS = {
    Act.restart: "Restart",
    Act.token: "New gateway token",
    Act.logs: "Recent logs",
    Act.destroy: "Destroy",
}
# What each state allows; the services refuse the rest anyway (forged buttons).
ACTIONS = {
    BotStatus.running: (Act.restart, Act.token, Act.logs, Act.destroy),
    BotStatus.failed: (Act.restart, Act.logs, Act.destroy),
    BotStatus.suspended: (Act.logs, Act.destroy),
    BotStatus.deploying: (Act.logs,),
}
NOTES = {
    BotStatus.awaiting_token: "Waiting for your bot's token from @BotFather: send it here.",
    BotStatus.deploying: "Starting up...",
    BotStatus.suspended: "Suspended by us: write to support to know more.",
    BotStatus.failed: "It stopped working: try Restart, or write to support.",
}


def card(bot: Bot, settings: Settings, balance: int | None = None) -> str:
    username = f"@{bot.telegram_username}" if bot.telegram_username else "(no Telegram bot yet)"
    paid = f"{bot.paid_until:%Y-%m-%d}" if bot.paid_until else "-"
    lines = [
        f"Bot {bot.id}: {username}",
        f"Status: {bot.status}",
        f"Plan: {bot.plan}",
        f"Paid until: {paid}",
    ]
    if balance is not None:
        lines.append(f"LLM credit: {format_usd(balance)} (/topup adds some)")
    if bot.status is not BotStatus.awaiting_token:
        lines.append(f"URL: {settings.bot_url(bot.id)}")
    note = NOTES.get(bot.status)
    return "\n".join(lines + ([f"\n{note}"] if note else []))


def new_token(bot_id: str, token: str, url: str) -> str:
    return (
        f"New gateway token for bot {bot_id}:\n{token}\n\n"
        "Store it now: it is shown only this once. The old token no longer works.\n"
        f"Gateway URL: {url}"
    )


def confirm_destroy(bot: Bot, support: str) -> str:
    name = f" (@{bot.telegram_username})" if bot.telegram_username else ""
    return (
        f"Destroy bot {bot.id}{name}? Its container and its data (memory, workspace) are "
        "deleted; this cannot be undone.\n"
        "Its hosting subscription ends with it: no further charges."
    )


def fit(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` within Telegram's limit: its first line, then its newest whole lines."""
    if _units(text) <= limit:
        return text
    head, _, body = text.partition("\n")
    budget = limit - _units(head) - len("\n...\n")
    # a surrogate pair cut in half at the start is dropped by errors="ignore"
    tail = body.encode("utf-16-le")[-2 * budget :].decode("utf-16-le", errors="ignore")
    whole_lines = tail.partition("\n")[2]
    return f"{head}\n...\n{whole_lines}"


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# Keyboards ---------------------------------------------------------------------------


def actions(bot: Bot) -> InlineKeyboardMarkup | None:
    acts = ACTIONS.get(bot.status, ())
    if not acts:
        return None
    b = InlineKeyboardBuilder()
    for act in acts:
        b.button(text=BUTTONS[act], callback_data=BotAction(act=act, bot_id=bot.id))
    b.adjust(2)
    return b.as_markup()


def destroy_keyboard(bot_id: str) -> InlineKeyboardMarkup:
    return kb.confirm_destroy(
        DestroyConfirmed(bot_id=bot_id, yes=True), DestroyConfirmed(bot_id=bot_id, yes=False)
    )


# Handlers ----------------------------------------------------------------------------


def _actor(user_id: int) -> str:
    return f"telegram:{user_id}"


def _reason(exc: StorebotError) -> str:
    return str(exc).split("\n")[0]


def customer_bots(h: Hosting, telegram_id: int) -> list[Bot]:
    with h.session() as s:
        return bots_in(s, telegram_id, *LISTED)


def _owned(h: Hosting, telegram_id: int, bot_id: str) -> Bot | None:
    with h.session() as s:
        return next((b for b in bots_in(s, telegram_id, *BotStatus) if b.id == bot_id), None)


async def _mine(query: CallbackQuery, h: Hosting, bot_id: str) -> Bot | None:
    """Answer the button; the bot if it is the presser's, else None (and they are told)."""
    bot = _owned(h, query.from_user.id, bot_id)
    await query.answer(None if bot else NOT_YOURS, show_alert=bot is None)
    return bot


async def mybots(message: Message, hosting: Hosting, bot: TgBot) -> None:
    await _show(bot, hosting, message.chat.id)


async def mybots_button(query: CallbackQuery, hosting: Hosting, bot: TgBot) -> None:
    await query.answer()
    await _show(bot, hosting, query.from_user.id)


async def _show(tg: TgBot, h: Hosting, user_id: int) -> None:
    bots = customer_bots(h, user_id)
    if not bots:
        await tg.send_message(user_id, NO_BOTS)
        return
    with h.session() as s:
        balances = {b.id: ledger.balance(s, b.id) for b in bots}
    for bot in bots:
        funded = None if bot.status is BotStatus.awaiting_token else balances[bot.id]
        await tg.send_message(user_id, card(bot, h.settings, funded), reply_markup=actions(bot))


async def restart(
    query: CallbackQuery, callback_data: BotAction, hosting: Hosting, bot: TgBot
) -> None:
    if not (mine := await _mine(query, hosting, callback_data.bot_id)):
        return
    user = query.from_user.id
    status = await bot.send_message(user, f"Restarting bot {mine.id}...")
    try:
        await bot_ops.restart(hosting, mine.id, actor=_actor(user), reason="restarted by owner")
    except StorebotError as exc:
        await status.edit_text(f"Bot {mine.id} was not restarted: {_reason(exc)}")
    else:
        await status.edit_text(f"Bot {mine.id} restarted and answering again.")


async def rotate(
    query: CallbackQuery, callback_data: BotAction, hosting: Hosting, bot: TgBot
) -> None:
    if not (mine := await _mine(query, hosting, callback_data.bot_id)):
        return
    user = query.from_user.id
    status = await bot.send_message(
        user, f"Making a new gateway token for bot {mine.id}; it restarts meanwhile..."
    )
    try:
        token = await bot_ops.rotate_gateway_token(hosting, mine.id, actor=_actor(user))
    except StorebotError as exc:
        await status.edit_text(f"No new token for bot {mine.id}: {_reason(exc)}")
    else:
        await status.edit_text(new_token(mine.id, token, hosting.settings.bot_url(mine.id)))


async def logs(
    query: CallbackQuery, callback_data: BotAction, hosting: Hosting, bot: TgBot
) -> None:
    if not (mine := await _mine(query, hosting, callback_data.bot_id)):
        return
    try:
        text = await bot_ops.logs(hosting, mine.id, tail=LOG_LINES)
    except StorebotError as exc:
        await bot.send_message(query.from_user.id, _reason(exc))
        return
    header = f"Recent logs of bot {mine.id} (tokens hidden):"
    await bot.send_message(query.from_user.id, fit(f"{header}\n{text.strip() or '(empty)'}"))


async def destroy(
    query: CallbackQuery, callback_data: BotAction, hosting: Hosting, bot: TgBot
) -> None:
    if not (mine := await _mine(query, hosting, callback_data.bot_id)):
        return
    await bot.send_message(
        query.from_user.id,
        confirm_destroy(mine, hosting.settings.SUPPORT_EMAIL),
        reply_markup=destroy_keyboard(mine.id),
    )


async def destroy_confirmed(
    query: CallbackQuery,
    callback_data: DestroyConfirmed,
    hosting: Hosting,
    payments: StripeGateway,
    bot: TgBot,
) -> None:
    if not (mine := await _mine(query, hosting, callback_data.bot_id)):
        return
    user = query.from_user.id
    if isinstance(query.message, Message):
        status = query.message
    else:  # too old to edit: say it anew
        status = await bot.send_message(user, f"Bot {mine.id}:")
    if not callback_data.yes:
        await status.edit_text(f"Kept: bot {mine.id} was not touched.")
        return
    await status.edit_text(f"Destroying bot {mine.id}...")
    try:
        outcome = await bot_ops.destroy(
            hosting, mine.id, actor=_actor(user), reason="destroyed by owner"
        )
    except StorebotError as exc:
        await status.edit_text(f"Bot {mine.id} was not destroyed: {_reason(exc)}")
        return
    done = outcome.message[:1].upper() + outcome.message[1:] + "."
    try:
        if await orders.end_hosting(hosting, payments, mine.id):
            done += " Its subscription is cancelled."
    except StorebotError as exc:  # the bot is gone; tell them billing needs a hand
        done += f" Cancelling its subscription failed ({exc}); write to {_support(hosting)}."
    await status.edit_text(done)


def _support(hosting: Hosting) -> str:
    return hosting.settings.SUPPORT_EMAIL


def make_mybots_router() -> Router:
    """A new router for /mybots and its buttons (one per dispatcher)."""
    r = Router(name="mybots")
    r.message.register(mybots, Command("mybots"))
    r.callback_query.register(mybots_button, kb.Menu.filter(F.action == "mybots"))
    r.callback_query.register(restart, BotAction.filter(F.act == Act.restart))
    r.callback_query.register(rotate, BotAction.filter(F.act == Act.token))
    r.callback_query.register(logs, BotAction.filter(F.act == Act.logs))
    r.callback_query.register(destroy, BotAction.filter(F.act == Act.destroy))
    r.callback_query.register(destroy_confirmed, DestroyConfirmed.filter())
    return r
