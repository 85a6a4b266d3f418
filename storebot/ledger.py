"""LLM credit: an append-only ledger per bot, in integer micro-USD.

Credits (paid top-ups), debits (usage, written by the meter in batches) and operator
adjustments are rows of `ledger_entry`; nothing is updated or deleted. A balance is
the sum of a bot's rows. `llm_account.balance_micro` keeps that sum, changed by an
atomic `balance = balance + x` in the same transaction as the rows it sums, so a
balance is one read and concurrent writers (storebot crediting, the meter debiting)
never lose an update. `check_sums` proves the two agree.

Functions take a session and leave committing to their caller, except where a
docstring says "commits".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel, col, select

from storebot.errors import StorebotError
from storebot.models import LedgerEntry, LedgerKind, LlmAccount, utcnow

MICRO = 1_000_000  # micro-USD per USD
CENT = 10_000  # micro-USD per cent


class BadAmount(StorebotError):
    """An amount that is not a positive sum of money in range."""


@dataclass(frozen=True)
class Debit:
    """One metered LLM call, not yet written."""

    bot_id: str
    micro: int  # > 0: what is taken from the balance
    at: datetime
    note: str = ""


# Money ----------------------------------------------------------------------------


def usd_to_micro(amount: Decimal) -> int:
    return int((amount * MICRO).to_integral_value(ROUND_CEILING))


def cost_to_micro(cost_usd: Decimal, markup: Decimal) -> int:
    """What an upstream cost (USD, as OpenRouter reports it) is charged: rounded up to
    a whole micro-USD, so many tiny calls never add up to free use."""
    return int((cost_usd * markup * MICRO).to_integral_value(ROUND_CEILING))


def format_usd(micro: int) -> str:
    """$12.34; below a cent, enough digits to show it is not zero ($0.0042)."""
    sign, micro = ("-" if micro < 0 else ""), abs(micro)
    if micro == 0 or micro >= CENT:
        return f"{sign}${micro // MICRO:,}.{micro % MICRO // CENT:02d}"
    return f"{sign}${Decimal(micro) / MICRO:.6f}".rstrip("0")


def parse_usd(text: str, low: Decimal, high: Decimal) -> int:
    """A typed amount ("12.50", "$12,50") to micro-USD, within [low, high] USD."""
    cleaned = text.strip().removeprefix("$").strip().replace(",", ".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise BadAmount(f"{text.strip()[:20]!r} is not an amount; write a number like 20") from None
    if not value.is_finite() or value != value.quantize(Decimal("0.01")):
        raise BadAmount("write the amount in dollars with at most two decimals, like 12.50")
    if not low <= value <= high:
        raise BadAmount(f"the amount must be between ${low} and ${high}")
    return usd_to_micro(value)


# Writing ----------------------------------------------------------------------------


def ensure_account(s: Session, *bot_ids: str) -> None:
    """The bots' account rows, each created once even when two writers race for it
    (one statement for all of them)."""
    if not bot_ids:
        return
    dialect = s.get_bind().dialect.name
    maker = postgresql.insert if dialect == "postgresql" else sqlite.insert
    rows = [{"bot_id": b, "balance_micro": 0, "reference_micro": 0} for b in bot_ids]
    s.execute(maker(LlmAccount).values(rows).on_conflict_do_nothing(index_elements=["bot_id"]))


def _add_to_balance(s: Session, bot_id: str, micro: int) -> None:
    s.execute(
        update(LlmAccount)
        .where(col(LlmAccount.bot_id) == bot_id)
        .values(balance_micro=col(LlmAccount.balance_micro) + micro, updated_at=utcnow())
    )


def post(
    s: Session,
    bot_id: str,
    micro: int,
    kind: LedgerKind,
    *,
    actor: str,
    note: str = "",
    ref: str | None = None,
) -> int:
    """Append one entry and return the new balance (not committed). A `ref` already
    on the ledger raises IntegrityError at flush: that payment was credited before."""
    ensure_account(s, bot_id)
    s.add(
        LedgerEntry(bot_id=bot_id, kind=kind, amount_micro=micro, ref=ref, actor=actor, note=note)
    )
    s.flush()
    _add_to_balance(s, bot_id, micro)
    return balance(s, bot_id)


def credit_topup(
    s: Session, bot_id: str, micro: int, *, ref: str, actor: str, note: str = "top-up"
) -> int | None:
    """Credit a payment once per `ref` (a top-up's Checkout Session, a paid hosting
    invoice's included credit) and re-arm the balance alerts, in the caller's
    transaction; the new balance, or None if this payment was credited before. The
    unique `ref` stops a racing duplicate at commit."""
    if micro <= 0:
        raise BadAmount("a top-up must be positive")
    if s.exec(select(LedgerEntry.id).where(LedgerEntry.ref == ref)).first() is not None:
        return None
    new = post(s, bot_id, micro, LedgerKind.credit, actor=actor, ref=ref, note=note)
    _rearm(s, bot_id, new)
    return new


def _rearm(s: Session, bot_id: str, reference: int) -> None:
    s.execute(
        update(LlmAccount)
        .where(col(LlmAccount.bot_id) == bot_id)
        .values(reference_micro=reference, alerted_percent=None)
    )


def adjust(s: Session, bot_id: str, micro: int, *, actor: str, note: str) -> int:
    """An operator's correction (either sign), with the reason. Commits; the new balance."""
    if micro == 0 or not note.strip():
        raise BadAmount("an adjustment needs a non-zero amount and a note saying why")
    new = post(s, bot_id, micro, LedgerKind.adjust, actor=actor, note=note.strip())
    if micro > 0:  # money given back counts like a top-up for the alerts
        _rearm(s, bot_id, new)
    s.commit()
    return new


def write_debits(s: Session, debits: Iterable[Debit]) -> None:
    """Append a batch of usage debits and take each bot's total off its balance, in
    the caller's transaction (the meter commits once per batch)."""
    rows: list[dict[str, object]] = []
    per_bot: defaultdict[str, int] = defaultdict(int)
    for d in debits:
        rows.append(
            {
                "bot_id": d.bot_id,
                "at": d.at,
                "kind": LedgerKind.debit.value,
                "amount_micro": -d.micro,
                "ref": None,
                "actor": "meter",
                "note": d.note,
            }
        )
        per_bot[d.bot_id] += d.micro
    if not rows:
        return
    ensure_account(s, *sorted(per_bot))
    s.execute(insert(LedgerEntry), rows)
    # one statement, many parameter sets, in one lock order (no deadlock between writers)
    table = SQLModel.metadata.tables[LlmAccount.__tablename__]  # Core: a plain executemany
    accounts = table.c
    s.connection().execute(
        update(table)
        .where(accounts.bot_id == bindparam("b"))
        .values(balance_micro=accounts.balance_micro - bindparam("d"), updated_at=utcnow()),
        [{"b": bot_id, "d": total} for bot_id, total in sorted(per_bot.items())],
    )


# Reading ----------------------------------------------------------------------------


def balance(s: Session, bot_id: str) -> int:
    found = s.exec(select(LlmAccount.balance_micro).where(LlmAccount.bot_id == bot_id)).first()
    return int(found or 0)


def account(s: Session, bot_id: str) -> LlmAccount:
    return s.get(LlmAccount, bot_id) or LlmAccount(bot_id=bot_id)


def spent_since(s: Session, bot_id: str, since: datetime) -> int:
    """Usage debited since `since`, as a positive number of micro-USD."""
    total = s.exec(
        select(func.coalesce(func.sum(LedgerEntry.amount_micro), 0)).where(
            LedgerEntry.bot_id == bot_id,
            LedgerEntry.kind == LedgerKind.debit,
            col(LedgerEntry.at) >= since,
        )
    ).one()
    return -int(total)


def check_sums(s: Session) -> dict[str, tuple[int, int]]:
    """Bots whose kept balance differs from the sum of their ledger: {bot: (kept, sum)}.
    Empty when the books are right."""
    sums = dict(
        s.exec(
            select(LedgerEntry.bot_id, func.sum(LedgerEntry.amount_micro)).group_by(
                col(LedgerEntry.bot_id)
            )
        ).all()
    )
    kept = dict(s.exec(select(LlmAccount.bot_id, LlmAccount.balance_micro)).all())
    return {
        b: (int(kept.get(b, 0)), int(sums.get(b, 0)))
        for b in set(sums) | set(kept)
        if int(kept.get(b, 0)) != int(sums.get(b, 0))
    }


@dataclass(frozen=True)
class Report:
    balance: int
    today: int
    week: int

    def days_left(self) -> float | None:
        """At the average daily spend of the last 7 days; None without recent use."""
        if self.week <= 0:
            return None
        return max(self.balance, 0) / (self.week / 7)


def report(s: Session, bot_id: str, now: datetime | None = None) -> Report:
    now = now or utcnow()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return Report(
        balance=balance(s, bot_id),
        today=spent_since(s, bot_id, midnight),
        week=spent_since(s, bot_id, now - timedelta(days=7)),
    )
