"""Database tables: customers, their bots, and each bot's state transitions.

Times are aware UTC (`utcnow()`); SQLModel's datetime type stores them as UTC and
gives them back aware on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, Enum, Float, Index, Text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class BotStatus(StrEnum):
    awaiting_payment = "awaiting_payment"
    awaiting_token = "awaiting_token"  # noqa: S105
    deploying = "deploying"
    running = "running"
    suspended = "suspended"
    destroyed = "destroyed"
    failed = "failed"


class Customer(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    telegram_id: int = Field(sa_column=Column(BigInteger, unique=True, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Bot(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=16)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    plan: str = Field(default="standard", max_length=32)
    # VARCHAR in the database (not a native enum: new states need no type migration),
    # BotStatus members in Python.
    status: BotStatus = Field(
        default=BotStatus.awaiting_payment,
        sa_column=Column(
            Enum(BotStatus, native_enum=False, length=20, validate_strings=True),
            nullable=False,
            index=True,
        ),
    )
    status_reason: str | None = Field(default=None, sa_column=Column(Text))
    # The customer's bot: Telegram's numeric id is the part of the token before ':'.
    telegram_bot_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    # Equals telegram_bot_id while the bot is not destroyed; unique, so one token is
    # hosted once across all customers (NULLs never collide, in SQLite or PostgreSQL).
    token_claim: int | None = Field(default=None, sa_column=Column(BigInteger, unique=True))
    telegram_username: str | None = Field(default=None, max_length=64)
    token_encrypted: str | None = Field(default=None, sa_column=Column(Text))
    gateway_token_hash: str | None = Field(default=None, max_length=64)
    llm_token_hash: str | None = Field(default=None, max_length=64, unique=True)
    cpu_limit: float = Field(sa_column=Column(Float, nullable=False))
    mem_limit: int = Field(sa_column=Column(BigInteger, nullable=False))
    pids_limit: int
    last_log: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    destroyed_at: datetime | None = None
    data_purge_after: datetime | None = None
    # Hosting subscription (Stripe). The bot row doubles as the order: its id is the
    # Checkout Session's metadata.order_id.
    paid_until: datetime | None = None
    checkout_session_id: str | None = Field(default=None, max_length=255)
    stripe_customer_id: str | None = Field(default=None, max_length=255)
    stripe_subscription_id: str | None = Field(default=None, max_length=255, index=True)


class BotEvent(SQLModel, table=True):
    """Append-only: one row per state transition or operator action."""

    __tablename__ = "bot_event"

    id: int | None = Field(default=None, primary_key=True)
    bot_id: str = Field(foreign_key="bot.id", index=True, max_length=16)
    at: datetime = Field(default_factory=utcnow)
    from_status: str | None = Field(default=None, max_length=20)
    to_status: str = Field(max_length=20)
    actor: str = Field(max_length=64)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))


class StripeEvent(SQLModel, table=True):
    """Each Stripe event applied, by id, written in the same transaction as its effect:
    a redelivered event finds its row and changes nothing."""

    __tablename__ = "stripe_event"

    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=100)
    received_at: datetime = Field(default_factory=utcnow)
    outcome: str = Field(default="", sa_column=Column(Text, nullable=False))


class LedgerKind(StrEnum):
    credit = "credit"  # a paid top-up
    debit = "debit"  # LLM usage, charged by the meter
    adjust = "adjust"  # an operator's correction, with a note


class LedgerEntry(SQLModel, table=True):
    """Append-only LLM credit of one bot, in integer micro-USD (credits > 0, debits < 0).
    A bot's balance is the sum of its entries (kept summed in `LlmAccount`)."""

    __tablename__ = "ledger_entry"
    __table_args__ = (
        Index("ix_ledger_entry_bot_at", "bot_id", "at"),
        Index("ix_ledger_entry_at", "at"),  # recent spend of all bots (anomaly watch)
    )

    id: int | None = Field(default=None, primary_key=True)
    bot_id: str = Field(foreign_key="bot.id", max_length=16)
    at: datetime = Field(default_factory=utcnow)
    kind: str = Field(max_length=16)
    amount_micro: int = Field(sa_column=Column(BigInteger, nullable=False))
    # What paid for a credit (a Checkout Session id): unique, so it is credited once.
    ref: str | None = Field(default=None, max_length=255, unique=True)
    actor: str = Field(default="", max_length=64)
    note: str = Field(default="", sa_column=Column(Text, nullable=False))


class LlmAccount(SQLModel, table=True):
    """One bot's LLM credit: the running sum of its ledger, updated in the same
    transaction as each entry, and the state of its balance alerts."""

    __tablename__ = "llm_account"

    bot_id: str = Field(foreign_key="bot.id", primary_key=True, max_length=16)
    balance_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    # The balance right after the last top-up: alert levels are percentages of it.
    reference_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    # The lowest alert level (percent) already sent since that top-up; None: none yet.
    alerted_percent: int | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class RepairRecord(SQLModel, table=True):
    """Append-only: one row per repair the reconciler made (counted by /stats).
    `bot_id` is empty for a container of a bot the database does not know."""

    __tablename__ = "repair"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    bot_id: str | None = Field(default=None, foreign_key="bot.id", max_length=16)
    action: str = Field(max_length=32)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False))
