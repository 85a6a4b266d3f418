"""Typed callback data and the inline keyboards that carry it."""

from __future__ import annotations

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.keyboard import InlineKeyboardBuilder

from storebot.ledger import CENT, format_usd
from storebot.plans import Plan, format_price


class PlanChosen(CallbackData, prefix="plan"):
    name: str


class TermsAccepted(CallbackData, prefix="terms"):
    plan: str


class Menu(CallbackData, prefix="menu"):
    action: str  # newbot | mybots | help


def menu() -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    kb.button(text="Create my assistant", callback_data=Menu(action="newbot"))
    kb.button(text="My bots", callback_data=Menu(action="mybots"))
    kb.button(text="Help", callback_data=Menu(action="help"))
    kb.adjust(1)
    return kb.as_markup()


def plans(options: list[Plan], currency: str) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    for p in options:
        credit = p.llm_credit_cents * CENT
        included = f", {format_usd(credit)} LLM credit" if credit else ""
        kb.button(
            text=f"{p.title}: {format_price(p.price_cents, currency)}/month{included}",
            callback_data=PlanChosen(name=p.name),
        )
    kb.adjust(1)
    return kb.as_markup()


def accept_terms(plan: str) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    kb.button(text="I accept", callback_data=TermsAccepted(plan=plan))
    return kb.as_markup()


def confirm_destroy(yes: CallbackData, no: CallbackData) -> InlineKeyboardMarkup:
    """The last question before a bot is destroyed."""
    kb = InlineKeyboardBuilder()
    kb.button(text="Yes, destroy it", callback_data=yes)
    kb.button(text="Keep it", callback_data=no)
    return kb.as_markup()


def pay(url: str) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    kb.button(text="Pay with Stripe", url=url)
    return kb.as_markup()


class TopupBot(CallbackData, prefix="tub"):
    bot_id: str


class TopupAmount(CallbackData, prefix="tua"):
    bot_id: str
    cents: int  # 0: the customer types the amount


def topup_bots(bots: list[tuple[str, str]]) -> InlineKeyboardMarkup:
    """One button per (bot id, label)."""
    kb = InlineKeyboardBuilder()
    for bot_id, label in bots:
        kb.button(text=label, callback_data=TopupBot(bot_id=bot_id))
    kb.adjust(1)
    return kb.as_markup()


def topup_amounts(bot_id: str, presets_micro: list[int]) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    for micro in presets_micro:
        kb.button(
            text=format_usd(micro), callback_data=TopupAmount(bot_id=bot_id, cents=micro // CENT)
        )
    kb.button(text="Other amount", callback_data=TopupAmount(bot_id=bot_id, cents=0))
    kb.adjust(len(presets_micro), 1)
    return kb.as_markup()


def topup_button(bot_id: str) -> InlineKeyboardMarkup:
    kb = InlineKeyboardBuilder()
    kb.button(text="Top up", callback_data=TopupBot(bot_id=bot_id))
    return kb.as_markup()
