"""The ops chat: operators' commands, heard only in OPS_CHAT_ID and only from
ADMIN_USER_IDS.

Everything said in the ops chat stops at this router. An admin's command is handled;
anything else (a stranger, an admin chatting, an unknown command, a button pressed
by someone else) gets no answer at all and never reaches the customer handlers.
Outside the ops chat these handlers do not exist: an admin's /suspend in a private
chat is a customer's message like any other.

Buttons carry typed callback data, which a client can forge: their handlers sit
behind the same two filters as the commands, and the services re-read the bot.
"""

from __future__ import annotations

import contextlib
from enum import StrEnum

from aiogram import Bot as TgBot
from aiogram import F, Router
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.filters.callback_data import CallbackData
from aiogram.types import (
    BotCommand,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    User,
)
from aiogram.utils.keyboard import InlineKeyboardBuilder

from storebot import ops, topups
from storebot.chat import keyboards as kb
from storebot.chat import texts
from storebot.errors import BotNotFound, StorebotError
from storebot.hosting import Hosting
from storebot.models import BotStatus
from storebot.stripe_gateway import StripeGateway

COMMANDS = [
    BotCommand(command="bots", description="Bots, a page at a time: /bots [status]"),
    BotCommand(command="bot", description="One bot: /bot ID"),
    BotCommand(command="find", description="Find bots: /find @name, id or owner"),
    BotCommand(command="suspend", description="Kill switch: /suspend ID [reason]"),
    BotCommand(command="resume", description="Start again: /resume ID"),
    BotCommand(command="destroy", description="Remove a bot and its data: /destroy ID"),
    BotCommand(command="credit", description="LLM credit: /credit ID AMOUNT [note]"),
    BotCommand(command="stats", description="Bots, revenue, spend, load, repairs"),
    BotCommand(command="help", description="The ops commands"),
]


class Act(StrEnum):
    suspend = "suspend"
    resume = "resume"
    destroy = "destroy"


class BotsPage(CallbackData, prefix="opsl"):
    page: int
    status: str  # "": every status but destroyed


class OpenCard(CallbackData, prefix="opso"):
    bot_id: str


class CardAction(CallbackData, prefix="opsa"):
    act: Act
    bot_id: str


class DestroyConfirmed(CallbackData, prefix="opsd"):
    bot_id: str
    yes: bool


S = BotStatus
FILTERS = ("", S.running, S.suspended, S.failed, S.deploying, S.awaiting_token, S.destroyed)
# What the card offers in each state (the services refuse the rest anyway).
ACTIONS = {
    S.running: (Act.suspend, Act.destroy),
    S.deploying: (Act.suspend, Act.destroy),
    S.failed: (Act.suspend, Act.resume, Act.destroy),
    S.suspended: (Act.resume, Act.destroy),
    S.awaiting_token: (Act.destroy,),
    S.awaiting_payment: (Act.destroy,),
}


# Keyboards ---------------------------------------------------------------------------


def page_keyboard(page: ops.Page) -> InlineKeyboardMarkup:
    status = str(page.status or "")
    b = InlineKeyboardBuilder()
    nav = []
    if page.page > 0:
        nav.append(_button("« Prev", BotsPage(page=page.page - 1, status=status)))
    if page.page < page.pages - 1:
        nav.append(_button("Next »", BotsPage(page=page.page + 1, status=status)))
    if nav:
        b.row(*nav)
    filters = [
        _button(("• " if f == status else "") + (f or "all"), BotsPage(page=0, status=f))
        for f in FILTERS
    ]
    for i in range(0, len(filters), 4):
        b.row(*filters[i : i + 4])
    return b.as_markup()


def _button(text: str, data: CallbackData) -> InlineKeyboardButton:
    return InlineKeyboardButton(text=text, callback_data=data.pack())


def card_keyboard(bot_id: str, status: BotStatus) -> InlineKeyboardMarkup | None:
    acts = ACTIONS.get(status, ())
    if not acts:
        return None
    b = InlineKeyboardBuilder()
    for act in acts:
        b.button(text=act.value.title(), callback_data=CardAction(act=act, bot_id=bot_id))
    return b.as_markup()


def destroy_keyboard(bot_id: str) -> InlineKeyboardMarkup:
    return kb.confirm_destroy(
        DestroyConfirmed(bot_id=bot_id, yes=True), DestroyConfirmed(bot_id=bot_id, yes=False)
    )


# Helpers -----------------------------------------------------------------------------


def _actor(user: User) -> str:
    return ops.actor_of(user.id, user.username)


def _who(user: User) -> str:
    return f"@{user.username}" if user.username else str(user.id)


def _failed(exc: StorebotError, bot_id: str) -> str:
    if isinstance(exc, BotNotFound):
        return texts.ops_no_bot(bot_id)
    return str(exc).split("\n")[0]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _chat(query: CallbackQuery) -> int:
    assert query.message is not None  # the router's filter reads its chat
    return query.message.chat.id


async def _tell_owner(tg: TgBot, owner: int | None, text: str) -> str:
    """Tell the owner; what to add to the operator's answer."""
    if owner is None:
        return ""
    try:
        await tg.send_message(owner, text)
    except TelegramAPIError as exc:  # e.g. they blocked the bot
        return f" The owner ({owner}) could NOT be told: {exc.message}"
    return f" The owner ({owner}) was told."


# Actions shared by commands and buttons, answered in the ops chat ---------------------


async def _suspend(tg: TgBot, h: Hosting, chat: int, user: User, bot_id: str, why: str) -> None:
    try:
        done = await ops.suspend(h, bot_id, actor=_actor(user), reason=why)
    except StorebotError as exc:
        await tg.send_message(chat, _failed(exc, bot_id))
        return
    notice = texts.owner_suspended(done.outcome.id, done.reason, h.settings.SUPPORT_EMAIL)
    told = await _tell_owner(tg, done.owner, notice)
    await tg.send_message(chat, _sentence(done.outcome.message) + told)


async def _resume(tg: TgBot, h: Hosting, chat: int, user: User, bot_id: str) -> None:
    status = await tg.send_message(chat, f"Resuming bot {bot_id}: waiting for its /health...")
    try:
        done = await ops.resume(h, bot_id, actor=_actor(user))
    except StorebotError as exc:
        await status.edit_text(f"Bot {bot_id} was not resumed: {_failed(exc, bot_id)}")
        return
    told = await _tell_owner(tg, done.owner, texts.owner_resumed(done.outcome.id))
    await status.edit_text(_sentence(done.outcome.message) + told)


async def _ask_destroy(tg: TgBot, h: Hosting, chat: int, bot_id: str) -> None:
    try:
        info = ops.find(h, bot_id)
    except StorebotError as exc:
        await tg.send_message(chat, _failed(exc, bot_id))
        return
    await tg.send_message(
        chat, texts.ops_confirm_destroy(info), reply_markup=destroy_keyboard(info.id)
    )


# Handlers ----------------------------------------------------------------------------


async def help_(message: Message) -> None:
    await message.answer(texts.OPS_HELP)


async def bots(message: Message, command: CommandObject, hosting: Hosting) -> None:
    try:
        status = ops.parse_status(command.args) if command.args else None
    except StorebotError as exc:
        await message.answer(f"{exc}\n{texts.OPS_USAGE['bots']}")
        return
    page = ops.bots_page(hosting, status=status)
    await message.answer(texts.ops_page(page), reply_markup=page_keyboard(page))


async def bots_page(query: CallbackQuery, callback_data: BotsPage, hosting: Hosting) -> None:
    await query.answer()
    try:
        status = ops.parse_status(callback_data.status) if callback_data.status else None
    except StorebotError:
        return  # forged
    page = ops.bots_page(hosting, status=status, page=callback_data.page)
    if isinstance(query.message, Message):
        with contextlib.suppress(TelegramBadRequest):  # "not modified": same page again
            await query.message.edit_text(texts.ops_page(page), reply_markup=page_keyboard(page))


async def bot_card(message: Message, command: CommandObject, hosting: Hosting) -> None:
    if not command.args:
        await message.answer(texts.OPS_USAGE["bot"])
        return
    await _send_card(message, hosting, command.args.split()[0])


async def open_card(query: CallbackQuery, callback_data: OpenCard, hosting: Hosting) -> None:
    await query.answer()
    if isinstance(query.message, Message):
        await _send_card(query.message, hosting, callback_data.bot_id)


async def _send_card(message: Message, hosting: Hosting, bot_id: str) -> None:
    try:
        card = await ops.bot_card(hosting, bot_id)
    except StorebotError as exc:
        await message.answer(_failed(exc, bot_id))
        return
    keyboard = card_keyboard(card.info["id"], BotStatus(card.info["status"]))
    await message.answer(texts.ops_card(card), reply_markup=keyboard)


async def find(message: Message, command: CommandObject, hosting: Hosting) -> None:
    text = (command.args or "").strip()
    if not text:
        await message.answer(texts.OPS_USAGE["find"])
        return
    try:
        found = ops.find_bots(hosting, text)
    except StorebotError as exc:
        await message.answer(f"{exc}\n{texts.OPS_USAGE['find']}")
        return
    b = InlineKeyboardBuilder()
    for line in found:
        name = f" @{line.username}" if line.username else ""
        b.row(_button(f"{line.id}{name}", OpenCard(bot_id=line.id)))
    await message.answer(texts.ops_found(text, found, ops.FIND_LIMIT), reply_markup=b.as_markup())


async def suspend(message: Message, command: CommandObject, hosting: Hosting, bot: TgBot) -> None:
    if not command.args or message.from_user is None:
        await message.answer(texts.OPS_USAGE["suspend"])
        return
    bot_id, *why = command.args.split(maxsplit=1)
    await _suspend(bot, hosting, message.chat.id, message.from_user, bot_id, " ".join(why))


async def resume(message: Message, command: CommandObject, hosting: Hosting, bot: TgBot) -> None:
    if not command.args or message.from_user is None:
        await message.answer(texts.OPS_USAGE["resume"])
        return
    await _resume(bot, hosting, message.chat.id, message.from_user, command.args.split()[0])


async def destroy(message: Message, command: CommandObject, hosting: Hosting, bot: TgBot) -> None:
    if not command.args:
        await message.answer(texts.OPS_USAGE["destroy"])
        return
    await _ask_destroy(bot, hosting, message.chat.id, command.args.split()[0])


async def credit(message: Message, command: CommandObject, hosting: Hosting) -> None:
    parts = (command.args or "").split(maxsplit=2)
    if len(parts) < 2 or message.from_user is None:
        await message.answer(texts.OPS_USAGE["credit"])
        return
    user = message.from_user
    note = parts[2] if len(parts) > 2 else f"by {_who(user)}"
    try:
        out = topups.admin_credit(hosting, parts[0], parts[1], actor=_actor(user), note=note)
    except StorebotError as exc:
        await message.answer(f"{_failed(exc, parts[0])}\n{texts.OPS_USAGE['credit']}")
        return
    await hosting.tell_meter()
    await message.answer(_sentence(out.message))


async def stats(message: Message, hosting: Hosting) -> None:
    await message.answer(texts.ops_stats(await ops.stats(hosting)))


async def card_action(
    query: CallbackQuery, callback_data: CardAction, hosting: Hosting, bot: TgBot
) -> None:
    await query.answer()
    chat, bot_id = _chat(query), callback_data.bot_id
    if callback_data.act is Act.suspend:
        await _suspend(bot, hosting, chat, query.from_user, bot_id, "")
    elif callback_data.act is Act.resume:
        await _resume(bot, hosting, chat, query.from_user, bot_id)
    else:
        await _ask_destroy(bot, hosting, chat, bot_id)


async def destroy_confirmed(
    query: CallbackQuery,
    callback_data: DestroyConfirmed,
    hosting: Hosting,
    payments: StripeGateway,
    bot: TgBot,
) -> None:
    await query.answer()
    bot_id = callback_data.bot_id
    if isinstance(query.message, Message):
        status = query.message
    else:  # too old to edit: say it anew
        status = await bot.send_message(_chat(query), f"Bot {bot_id}:")
    if not callback_data.yes:
        await status.edit_text(f"Kept: bot {bot_id} was not touched.")
        return
    await status.edit_text(f"Destroying bot {bot_id}...")
    try:
        gone = await ops.destroy(hosting, payments, bot_id, actor=_actor(query.from_user))
    except StorebotError as exc:
        await status.edit_text(f"Bot {bot_id} was not destroyed: {_failed(exc, bot_id)}")
        return
    done = gone.done
    notice = texts.owner_destroyed(done.outcome.id, hosting.settings.SUPPORT_EMAIL)
    told = await _tell_owner(bot, done.owner, notice)
    await status.edit_text(f"{_sentence(done.outcome.message)} {_sentence(gone.billing)}{told}")


async def ignore() -> None:
    """Anything else said or pressed in the ops chat: no answer, and no customer handler."""


def make_ops_router(chat_id: int, admins: frozenset[int]) -> Router:
    """A new router for the ops chat `chat_id` (one per dispatcher); include it first."""
    chat = Router(name="ops-chat")
    chat.message.filter(F.chat.id == chat_id)
    chat.callback_query.filter(F.message.chat.id == chat_id)
    admin = Router(name="ops")
    admin.message.filter(F.from_user.id.in_(admins))
    admin.callback_query.filter(F.from_user.id.in_(admins))
    admin.message.register(help_, Command("help", "start"))
    admin.message.register(bots, Command("bots"))
    admin.message.register(bot_card, Command("bot"))
    admin.message.register(find, Command("find"))
    admin.message.register(suspend, Command("suspend"))
    admin.message.register(resume, Command("resume"))
    admin.message.register(destroy, Command("destroy"))
    admin.message.register(credit, Command("credit"))
    admin.message.register(stats, Command("stats"))
    admin.callback_query.register(bots_page, BotsPage.filter())
    admin.callback_query.register(card_action, CardAction.filter())
    admin.callback_query.register(open_card, OpenCard.filter())
    admin.callback_query.register(destroy_confirmed, DestroyConfirmed.filter())
    quiet = Router(name="ops-quiet")
    quiet.message.register(ignore)
    quiet.callback_query.register(ignore)
    chat.include_routers(admin, quiet)
    return chat
