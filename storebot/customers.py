"""Customers and their bots: the lookups every service needs (plain functions over a
session, no commit unless said)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storebot.models import Bot, BotStatus, Customer


def customer_for(session: Session, telegram_id: int) -> Customer:
    """The customer with this Telegram id, created (and committed) on first sight."""
    found = session.exec(select(Customer).where(Customer.telegram_id == telegram_id)).first()
    if found is not None:
        return found
    customer = Customer(telegram_id=telegram_id)
    session.add(customer)
    try:
        session.commit()
    except IntegrityError:  # created meanwhile by a concurrent update of the same user
        session.rollback()
        return session.exec(select(Customer).where(Customer.telegram_id == telegram_id)).one()
    return customer


def bots_in(session: Session, telegram_id: int, *statuses: BotStatus) -> list[Bot]:
    """The customer's bots in any of `statuses`, oldest first."""
    stmt = (
        select(Bot)
        .join(Customer, col(Customer.id) == col(Bot.customer_id))
        .where(Customer.telegram_id == telegram_id, col(Bot.status).in_(statuses))
        .order_by(col(Bot.created_at))
    )
    return list(session.exec(stmt))


def owner_of(session: Session, bot_id: str | None) -> int | None:
    """The Telegram id of the bot's owner, or None for an unknown bot."""
    bot = session.get(Bot, bot_id) if bot_id else None
    owner = session.get(Customer, bot.customer_id) if bot else None
    return owner.telegram_id if owner else None
