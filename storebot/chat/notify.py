"""Tells people what a payment event changed (after it is committed)."""

from __future__ import annotations

import logging

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import InlineKeyboardMarkup

from storebot.chat import keyboards as kb
from storebot.chat import texts
from storebot.chat.ops import card_keyboard
from storebot.effects import Effect
from storebot.ledger import format_usd
from storebot.models import BotStatus
from storebot.settings import Settings

log = logging.getLogger(__name__)


def render(effect: Effect, settings: Settings) -> tuple[int | None, str]:
    """(chat id, text) for one effect; chat None means nobody to tell."""
    until = effect.detail.get("paid_until")
    day = f"{until:%Y-%m-%d}" if until else "the end of the paid period"
    support = settings.SUPPORT_EMAIL
    match effect.kind:
        case "ask_token":
            return effect.telegram_id, texts.ask_token(support)
        case "renewed":
            credit = effect.detail.get("included_credit")
            extra = f" {format_usd(credit)} of LLM credit included was added." if credit else ""
            return effect.telegram_id, f"Hosting of bot {effect.bot_id} renewed until {day}.{extra}"
        case "payment_failed":
            return effect.telegram_id, (
                f"The renewal payment for bot {effect.bot_id} failed. Update your card in the "
                f"Stripe e-mail; the bot keeps running until {day}."
            )
        case "subscription_ended":
            return effect.telegram_id, (
                f"The hosting subscription of bot {effect.bot_id} has ended; the bot stops "
                f"after {day}. Questions: {support}"
            )
        case "hosting_expired":
            return effect.telegram_id, (
                f"Your hosting of bot {effect.bot_id} ended on {day}, so the bot is suspended. "
                "Pay the open invoice from Stripe's e-mail (or update your card) and it "
                f"starts again by itself. Questions: {support}"
            )
        case "resumed":
            return effect.telegram_id, f"Thank you! Bot {effect.bot_id} is running again."
        case "deployed":
            return effect.telegram_id, texts.ready(effect.detail["result"], support)
        case "deploy_failed":
            return effect.telegram_id, texts.deploy_failed(effect.detail["why"], support)
        case "docker_down":
            return settings.OPS_CHAT_ID, (
                f"Docker is unreachable: the deploy of order {effect.bot_id} is queued and "
                "retried by the scheduler. Check the Docker daemon."
            )
        case "ops_alert":
            return settings.OPS_CHAT_ID, f"Payment alert: {effect.detail}"
        case "anomaly":
            what = "suspended" if effect.detail["suspended"] else "NOT suspended (watch only)"
            name = f" @{effect.detail['username']}" if effect.detail.get("username") else ""
            return settings.OPS_CHAT_ID, (
                f"Anomaly: bot {effect.bot_id}{name} (owner {effect.telegram_id}), {what}.\n"
                + "\n".join(f"- {e}" for e in effect.detail["evidence"])
            )
        case "repairs":
            lines = effect.detail["lines"]
            return settings.OPS_CHAT_ID, (
                f"Reconciler: {len(lines)} repair(s)\n" + "\n".join(f"- {x}" for x in lines[:30])
            )
        case "deploy_recovered":
            return effect.telegram_id, (
                f"Your assistant {effect.bot_id} is live: its setup was interrupted on our "
                "side and has now finished. Its gateway token could not be shown to you: "
                "open /mybots and tap 'New gateway token'."
            )
        case "deploy_interrupted":
            return effect.telegram_id, (
                f"Setting up your assistant {effect.bot_id} was interrupted on our side. "
                "Send me your bot's token again and I finish it; your order stays paid."
            )
        case "token_revoked":
            return effect.telegram_id, texts.token_revoked(
                effect.bot_id or "", effect.detail.get("username"), support
            )
        case "suspended_for_abuse":
            return effect.telegram_id, texts.suspended_for_abuse(
                effect.bot_id or "", effect.detail["evidence"], support
            )
        case "topped_up":
            return effect.telegram_id, texts.topped_up(
                effect.bot_id or "", effect.detail["amount"], effect.detail["balance"]
            )
        case "balance_alert":
            return effect.telegram_id, texts.balance_alert(
                effect.bot_id or "", effect.detail["percent"], effect.detail["balance"]
            )
    return None, ""


def keyboard(effect: Effect) -> InlineKeyboardMarkup | None:
    if effect.kind == "balance_alert" and effect.bot_id:
        return kb.topup_button(effect.bot_id)
    if effect.kind == "anomaly" and effect.bot_id and effect.detail.get("suspended"):
        return card_keyboard(effect.bot_id, BotStatus.suspended)  # Resume, Destroy
    return None


async def send_effects(bot: Bot, settings: Settings, effects: list[Effect]) -> int:
    """Send each effect's message; one that Telegram refuses (an owner who blocked the
    bot, a flood limit) is logged and skipped, never the rest. Returns how many went."""
    sent = 0
    for effect in effects:
        chat, text = render(effect, settings)
        if chat is None:
            log.warning("no chat for effect %s: %s", effect.kind, effect.detail)
            continue
        try:
            await bot.send_message(chat, text, reply_markup=keyboard(effect))
        except TelegramAPIError as exc:
            log.warning("%s for chat %s not sent: %s", effect.kind, chat, exc)
            continue
        sent += 1
    return sent
