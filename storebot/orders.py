"""Hosting orders and the Stripe events that pay for them.

A hosting order is a bot row in `awaiting_payment`; its id is the Checkout Session's
`metadata.order_id`. Each Stripe event is applied at most once: its id is inserted
in the same transaction as its effect, so a redelivery changes nothing. Effects that
someone must hear about (ask the customer for the token, tell the ops chat) come
back as `Effect`s for the chat layer to send after the commit; the database state
alone is enough to pick up again after a crash (a paid order is `awaiting_token`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storebot import ledger, topups
from storebot.bot_ops import awaiting_new_token
from storebot.customers import bots_in, customer_for
from storebot.effects import Effect
from storebot.hosting import Hosting
from storebot.models import Bot, BotEvent, BotStatus, Customer, StripeEvent, utcnow
from storebot.plans import get_plan, load_plans
from storebot.stripe_gateway import StripeGateway
from storebot.tokens import new_bot_id

# Until the first invoice.paid says otherwise, a paid checkout covers this long.
FIRST_PERIOD = timedelta(days=31)


@dataclass(frozen=True)
class Order:
    bot_id: str
    plan: str
    checkout_url: str


async def start_hosting_order(
    h: Hosting,
    gw: StripeGateway,
    *,
    telegram_id: int,
    plan_name: str,
    success_url: str,
    cancel_url: str,
    actor: str,
) -> Order:
    """The customer's open order (reused: one unpaid order at a time) with a fresh
    Checkout link. The previous link is expired first, so no order is paid twice."""
    plan = get_plan(h.settings, plan_name)
    # No database connection is held while Stripe answers: under load, connections
    # held across awaits exhaust the pool and a waiting checkout blocks the loop.
    with h.session() as s:
        customer = customer_for(s, telegram_id)
        assert customer.id is not None
        open_orders = bots_in(s, telegram_id, BotStatus.awaiting_payment)
        bot = open_orders[0] if open_orders else None
        if bot is None:
            bot = Bot(
                id=new_bot_id(),
                customer_id=customer.id,
                status=BotStatus.awaiting_payment,
                cpu_limit=plan.limits.cpus,
                mem_limit=plan.limits.mem_bytes,
                pids_limit=plan.limits.pids,
            )
            s.add(
                BotEvent(
                    bot_id=bot.id,
                    to_status=BotStatus.awaiting_payment,
                    actor=actor,
                    reason=f"order opened (plan {plan.name})",
                )
            )
        bot.plan = plan.name
        bot.cpu_limit, bot.mem_limit = plan.limits.cpus, plan.limits.mem_bytes
        bot.pids_limit = plan.limits.pids
        s.add(bot)
        s.commit()  # ends the transaction: the connection goes back to the pool
        order_id, previous = bot.id, bot.checkout_session_id
    if previous:
        await gw.expire_checkout(previous)
    link = await gw.hosting_checkout(
        order_id=order_id,
        telegram_id=telegram_id,
        plan=plan,
        success_url=success_url,
        cancel_url=cancel_url,
    )
    with h.session() as s:
        row = s.get(Bot, order_id)
        if row is not None:
            row.checkout_session_id = link.session_id
            s.add(row)
            s.commit()
    return Order(bot_id=order_id, plan=plan.name, checkout_url=link.url)


def paid_order_awaiting_token(h: Hosting, telegram_id: int) -> Bot | None:
    """The customer's paid order that waits for a token, or whose first deploy failed
    (a bot that ran, then failed, is a bot to restart, not an order: its owner's next
    text is not its new token, and /newbot may order another)."""
    with h.session() as s:
        found = bots_in(s, telegram_id, BotStatus.awaiting_token, BotStatus.failed)
        return next(
            (
                b
                for b in found
                if b.paid_until is not None
                and (b.status is BotStatus.awaiting_token or not _ever_ran(s, b.id))
            ),
            None,
        )


def _ever_ran(s: Session, bot_id: str) -> bool:
    ran = select(BotEvent.id).where(
        BotEvent.bot_id == bot_id, BotEvent.to_status == BotStatus.running
    )
    return s.exec(ran.limit(1)).first() is not None


def bot_awaiting_new_token(h: Hosting, telegram_id: int) -> str | None:
    """The id of the customer's bot suspended because its Telegram token was revoked."""
    with h.session() as s:
        found = bots_in(s, telegram_id, BotStatus.suspended)
        return next((b.id for b in found if awaiting_new_token(b)), None)


DOCKER_DOWN = "Docker is not reachable"  # how DockerUnavailable messages begin


def queue_token(h: Hosting, order_id: str, token: str) -> None:
    """Keep the token (encrypted) on the paid order so a job deploys it once Docker is
    back, even after a restart."""
    with h.session() as s:
        bot = s.get(Bot, order_id)
        if bot is not None and bot.status in (BotStatus.awaiting_token, BotStatus.failed):
            bot.token_encrypted = h.tokens.seal(token)
            bot.status_reason = f"{DOCKER_DOWN}: deploy queued"
            s.add(bot)
            s.commit()


def queued_deploys(h: Hosting) -> list[tuple[str, int, str]]:
    """(order id, owner, token) of paid orders waiting for Docker to come back."""
    with h.session() as s:
        stmt = (
            select(Bot, Customer)
            .join(Customer, col(Customer.id) == col(Bot.customer_id))
            .where(
                col(Bot.status).in_((BotStatus.awaiting_token, BotStatus.failed)),
                col(Bot.paid_until).is_not(None),
                col(Bot.token_encrypted).is_not(None),
                col(Bot.status_reason).startswith(DOCKER_DOWN),
            )
        )
        return [
            (b.id, c.telegram_id, h.tokens.open(b.token_encrypted or "")) for b, c in s.exec(stmt)
        ]


def unpaid_order(h: Hosting, telegram_id: int) -> Bot | None:
    with h.session() as s:
        found = bots_in(s, telegram_id, BotStatus.awaiting_payment)
        return found[0] if found else None


async def cancel_unpaid_order(h: Hosting, gw: StripeGateway, telegram_id: int) -> bool:
    """Close the customer's unpaid order and its payment page; False if there is none."""
    with h.session() as s:
        found = bots_in(s, telegram_id, BotStatus.awaiting_payment)
        if not found:
            return False
        bot = found[0]
        h.release(s)  # not across Stripe's answer
        if bot.checkout_session_id:
            await gw.expire_checkout(bot.checkout_session_id)
        h.transition(
            s,
            bot,
            BotStatus.destroyed,
            actor=f"telegram:{telegram_id}",
            reason="order cancelled by the customer",
        )
        return True


async def end_hosting(h: Hosting, gw: StripeGateway, bot_id: str) -> bool:
    """Cancel the hosting subscription of a destroyed bot (no more charges); False if it
    had none. Idempotent: an already cancelled subscription is fine."""
    with h.session() as s:
        bot = s.get(Bot, bot_id)
        sub = bot.stripe_subscription_id if bot else None
    if not sub:
        return False
    await gw.cancel_subscription(sub)
    return True


def apply_event(h: Hosting, event: dict[str, Any]) -> list[Effect]:
    """Apply one verified Stripe event exactly once; [] if it was applied before."""
    with h.session() as s:
        if s.get(StripeEvent, event["id"]) is not None:
            return []
        try:
            record = StripeEvent(id=event["id"], type=str(event.get("type", "")))
            s.add(record)
            s.flush()  # a concurrent delivery of the same event collides here, or at commit
            obj = (event.get("data") or {}).get("object") or {}
            handler = _HANDLERS.get(record.type)
            effects, record.outcome = handler(h, s, obj) if handler else ([], "ignored")
            s.commit()  # the event row and its effect, together
        except IntegrityError:  # the same event, applied concurrently: theirs counts
            s.rollback()
            return []
        return effects


Outcome = tuple[list[Effect], str]
Handler = Callable[[Hosting, Session, dict[str, Any]], Outcome]


def _order(s: Session, obj: dict[str, Any]) -> tuple[Bot | None, Customer | None]:
    order_id = (obj.get("metadata") or {}).get("order_id")
    bot = s.get(Bot, order_id) if isinstance(order_id, str) else None
    return bot, (s.get(Customer, bot.customer_id) if bot else None)


def _checkout_completed(h: Hosting, s: Session, obj: dict[str, Any]) -> Outcome:
    if (obj.get("metadata") or {}).get("kind") == topups.KIND:
        return topups.apply_paid_topup(s, obj)
    bot, owner = _order(s, obj)
    ref = str(obj.get("client_reference_id") or "")
    alert = {"session": obj.get("id"), "order": (obj.get("metadata") or {}).get("order_id")}
    if bot is None or owner is None:
        return [Effect("ops_alert", detail={**alert, "why": "payment for an unknown order"})], (
            "rejected: unknown order"
        )
    if ref != str(owner.telegram_id):
        why = "payment names an order of another customer"
        return [Effect("ops_alert", bot_id=bot.id, detail={**alert, "why": why})], (
            f"rejected: {why}"
        )
    if obj.get("payment_status") not in ("paid", "no_payment_required"):
        return [], f"ignored: payment_status {obj.get('payment_status')}"
    if not _move(s, bot, BotStatus.awaiting_payment, BotStatus.awaiting_token, "hosting paid"):
        s.refresh(bot)
        why = f"a payment for order {bot.id}, which is {bot.status}: refund it"
        return [Effect("ops_alert", bot_id=bot.id, detail={**alert, "why": why})], why
    bot.stripe_customer_id = obj.get("customer")
    bot.stripe_subscription_id = obj.get("subscription")
    bot.paid_until = max(bot.paid_until or utcnow(), utcnow() + FIRST_PERIOD)
    s.add(bot)
    return [Effect("ask_token", telegram_id=owner.telegram_id, bot_id=bot.id)], "applied"


def _by_subscription(
    s: Session, sub: Any, metadata: dict[str, Any] | None
) -> tuple[Bot | None, Customer | None]:
    bot = None
    if isinstance(sub, str):
        bot = s.exec(select(Bot).where(Bot.stripe_subscription_id == sub)).first()
    if bot is None:  # an invoice may arrive before checkout.session.completed
        bot, _ = _order(s, {"metadata": metadata or {}})
    return bot, (s.get(Customer, bot.customer_id) if bot else None)


def _invoice_subscription(obj: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """(subscription id, its metadata) of an invoice, in old and new API shapes."""
    details = obj.get("subscription_details") or (
        (obj.get("parent") or {}).get("subscription_details") or {}
    )
    return obj.get("subscription") or details.get("subscription"), details.get("metadata")


def _invoice_paid(h: Hosting, s: Session, obj: dict[str, Any]) -> Outcome:
    bot, owner = _by_subscription(s, *_invoice_subscription(obj))
    if bot is None or owner is None:
        return [], "ignored: no bot for this subscription"
    lines = ((obj.get("lines") or {}).get("data")) or [{}]
    end = (lines[0].get("period") or {}).get("end")
    if isinstance(end, int):
        until = datetime.fromtimestamp(end, UTC)
        bot.paid_until = max(bot.paid_until or until, until)
        s.add(bot)
    detail: dict[str, Any] = {"paid_until": bot.paid_until}
    plan = load_plans(h.settings).get(bot.plan)
    if plan is not None and plan.llm_credit_cents and obj.get("id"):
        # the LLM credit the plan includes, once per paid month (the invoice)
        micro = plan.llm_credit_cents * ledger.CENT
        note = f"included with the {plan.title} plan"
        ref = f"plan:{obj['id']}"
        if ledger.credit_topup(s, bot.id, micro, ref=ref, actor="stripe", note=note):
            detail["included_credit"] = micro
    effect = Effect("renewed", owner.telegram_id, bot.id, detail)
    return [effect], "applied"


def _payment_failed(h: Hosting, s: Session, obj: dict[str, Any]) -> Outcome:
    bot, owner = _by_subscription(s, *_invoice_subscription(obj))
    if bot is None or owner is None:
        return [], "ignored: no bot for this subscription"
    effect = Effect("payment_failed", owner.telegram_id, bot.id, {"paid_until": bot.paid_until})
    return [effect], "applied"


def _subscription_deleted(h: Hosting, s: Session, obj: dict[str, Any]) -> Outcome:
    bot, owner = _by_subscription(s, obj.get("id"), obj.get("metadata"))
    if bot is None or owner is None:
        return [], "ignored: no bot for this subscription"
    if bot.status is BotStatus.destroyed:  # ended by the destroy itself: nothing to say
        return [], "ignored: the bot is destroyed"
    effect = Effect("subscription_ended", owner.telegram_id, bot.id, {"paid_until": bot.paid_until})
    return [effect], "applied"


def _ops(why: str) -> Handler:
    def handle(h: Hosting, s: Session, obj: dict[str, Any]) -> Outcome:
        detail = {"why": why, "object": obj.get("id"), "amount": obj.get("amount")}
        return [Effect("ops_alert", detail=detail)], "reported"

    return handle


def _move(s: Session, bot: Bot, frm: BotStatus, to: BotStatus, reason: str) -> bool:
    """Compare-and-set status change inside the caller's transaction (committed with
    the event row); False if the bot is no longer `frm` (someone acted meanwhile)."""
    moved = s.execute(
        update(Bot)
        .where(col(Bot.id) == bot.id, col(Bot.status) == frm)
        .values(status=to, status_reason=reason, updated_at=utcnow())
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False
    s.add(BotEvent(bot_id=bot.id, from_status=frm, to_status=to, actor="stripe", reason=reason))
    return True


_HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": _checkout_completed,
    # a payment method that settles later (a bank debit): "completed" came unpaid
    "checkout.session.async_payment_succeeded": _checkout_completed,
    "invoice.paid": _invoice_paid,
    "invoice.payment_failed": _payment_failed,
    "customer.subscription.deleted": _subscription_deleted,
    "charge.refunded": _ops("a charge was refunded"),
    "charge.dispute.created": _ops("a payment is disputed"),
}
