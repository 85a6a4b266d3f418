"""Prepaid LLM credit as customers and operators see it: top-up payments (Stripe
Checkout, one-off, in USD), their crediting, operator credits and balance reports.

A top-up is tied to its bot by the Checkout Session's `metadata.bot_id` and to its
payer by `client_reference_id` (their Telegram id). It is credited once: the Stripe
event id and the session id (the ledger entry's unique `ref`) are both written in
the transaction that credits it. What was paid (`amount_total`) is what is credited.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from storebot import ledger
from storebot.customers import bots_in
from storebot.effects import Effect
from storebot.errors import BotNotFound, StorebotError
from storebot.hosting import Hosting
from storebot.ledger import CENT, BadAmount, Report, format_usd
from storebot.models import Bot, BotStatus, Customer
from storebot.stripe_gateway import StripeGateway

KIND = "topup"
#: bots that can hold credit (an order not yet deployed has no LLM token to spend it)
FUNDABLE = (BotStatus.deploying, BotStatus.running, BotStatus.suspended, BotStatus.failed)


@dataclass(frozen=True)
class Credited:
    id: str
    balance_micro: int
    message: str


def fundable_bots(h: Hosting, telegram_id: int) -> list[Bot]:
    with h.session() as s:
        return bots_in(s, telegram_id, *FUNDABLE)


def owned_bot(h: Hosting, telegram_id: int, bot_id: str) -> Bot:
    """The customer's fundable bot `bot_id`; BotNotFound for anyone else's (buttons can
    be forged)."""
    found = next((b for b in fundable_bots(h, telegram_id) if b.id == bot_id), None)
    if found is None:
        raise BotNotFound("that is not one of your assistants")
    return found


def check_amount(h: Hosting, micro: int) -> None:
    s = h.settings
    if not ledger.usd_to_micro(s.TOPUP_MIN_USD) <= micro <= ledger.usd_to_micro(s.TOPUP_MAX_USD):
        raise BadAmount(f"the amount must be between ${s.TOPUP_MIN_USD} and ${s.TOPUP_MAX_USD}")
    if micro % CENT:
        raise BadAmount("the amount must be whole cents")


async def start_topup(
    h: Hosting,
    gw: StripeGateway,
    *,
    telegram_id: int,
    bot_id: str,
    micro: int,
    return_url: str,
) -> str:
    """A payment link for `micro` of credit on the customer's bot."""
    owned_bot(h, telegram_id, bot_id)
    check_amount(h, micro)
    link = await gw.topup_checkout(
        bot_id=bot_id,
        telegram_id=telegram_id,
        cents=micro // CENT,
        success_url=return_url,
        cancel_url=return_url,
    )
    return link.url


def apply_paid_topup(s: Session, obj: dict[str, Any]) -> tuple[list[Effect], str]:
    """A completed top-up Checkout Session, inside the Stripe event's transaction."""
    meta = obj.get("metadata") or {}
    bot = s.get(Bot, meta.get("bot_id")) if isinstance(meta.get("bot_id"), str) else None
    owner = s.get(Customer, bot.customer_id) if bot else None
    alert = {"session": obj.get("id"), "bot": meta.get("bot_id"), "amount": obj.get("amount_total")}
    if (
        bot is None
        or owner is None
        or str(obj.get("client_reference_id")) != str(owner.telegram_id)
    ):
        why = "a top-up for a bot that is unknown or not the payer's"
        return [Effect("ops_alert", detail={**alert, "why": why})], f"rejected: {why}"
    if obj.get("payment_status") != "paid":
        return [], f"ignored: payment_status {obj.get('payment_status')}"
    if bot.status not in FUNDABLE:  # destroyed between the checkout and the payment
        why = f"a top-up paid for bot {bot.id}, which is {bot.status}: refund it"
        return [Effect("ops_alert", bot_id=bot.id, detail={**alert, "why": why})], why
    cents = obj.get("amount_total")
    if obj.get("currency") != "usd" or not isinstance(cents, int) or cents <= 0:
        why = f"a top-up of {cents} {obj.get('currency')}: not a USD amount"
        return [Effect("ops_alert", bot_id=bot.id, detail={**alert, "why": why})], why
    new = ledger.credit_topup(s, bot.id, cents * CENT, ref=str(obj["id"]), actor="stripe")
    if new is None:
        return [], "ignored: this session was credited before"
    detail = {"amount": cents * CENT, "balance": new}
    return [Effect("topped_up", owner.telegram_id, bot.id, detail)], "applied"


def admin_credit(h: Hosting, bot_id: str, amount: str, *, actor: str, note: str) -> Credited:
    """An operator's credit (or, negative, debit) of `amount` dollars, with a note."""
    try:
        value = Decimal(amount.strip().removeprefix("$"))
    except ArithmeticError:
        raise BadAmount(f"{amount!r} is not an amount in dollars, like 5 or -2.50") from None
    if not value.is_finite() or abs(value) > 10_000:
        raise BadAmount("an adjustment must be a number of dollars up to 10000")
    micro = int(value * ledger.MICRO)
    with h.session() as s:
        bot = h.get_bot(s, bot_id)
        if bot.status is BotStatus.destroyed:
            raise StorebotError(f"bot {bot.id} is destroyed: its credit cannot change")
        new = ledger.adjust(s, bot.id, micro, actor=actor, note=note)
    return Credited(
        bot.id, new, f"bot {bot.id}: {format_usd(micro)} ({note}); balance {format_usd(new)}"
    )


def bot_report(h: Hosting, bot_id: str) -> Report:
    with h.session() as s:
        return ledger.report(s, h.get_bot(s, bot_id).id)


def customer_reports(h: Hosting, telegram_id: int) -> list[tuple[Bot, Report]]:
    bots = fundable_bots(h, telegram_id)
    with h.session() as s:
        return [(b, ledger.report(s, b.id)) for b in bots]
