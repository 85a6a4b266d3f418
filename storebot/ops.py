"""What operators see and do, for the ops chat (`storebot.chat.ops`) and `storebot admin`:
pages of bots with their owner and balance, a search, one bot's card with its resources now,
the kill switch and the other actions, and the figures of /stats.

Actions go through `storebot.bot_ops`, which records each with its actor and reason;
an operator's actor is `ops:<telegram id>` (and @username when they have one). Each
action returns whom to tell: the owner of a bot that was actually suspended, resumed
or destroyed. Nothing here knows Telegram.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from storebot import bot_ops, customers, ledger, orders
from storebot.bot_ops import Outcome
from storebot.container_spec import LABEL_BOT, LABEL_INSTANCE
from storebot.docker_engine import ContainerStats
from storebot.errors import StorebotError
from storebot.hosting import Hosting
from storebot.ledger import Report
from storebot.models import (
    Bot,
    BotStatus,
    Customer,
    LedgerEntry,
    LedgerKind,
    LlmAccount,
    utcnow,
)
from storebot.plans import load_plans
from storebot.reconciler import repair_counts
from storebot.stripe_gateway import StripeGateway

PAGE_SIZE = 10
NO_REASON = "no reason given"
CPU_SAMPLE_SECONDS = 0.5
MEMINFO = Path("/proc/meminfo")


def actor_of(user_id: int, username: str | None) -> str:
    return f"ops:{user_id}" + (f" @{username}" if username else "")


def parse_status(text: str) -> BotStatus:
    try:
        return BotStatus(text.strip().lower())
    except ValueError:
        known = ", ".join(s.value for s in BotStatus)
        raise StorebotError(f"unknown status {text.strip()[:30]!r}; one of: {known}") from None


# Lists -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BotLine:
    id: str
    status: str
    username: str | None
    owner: int | None
    balance_micro: int


@dataclass(frozen=True)
class Page:
    bots: list[BotLine]
    page: int  # from 0, within range
    pages: int
    total: int
    status: BotStatus | None  # None: every status but destroyed


def bots_page(
    h: Hosting, *, status: BotStatus | None = None, page: int = 0, size: int = PAGE_SIZE
) -> Page:
    """One page of bots in `status`, oldest first, with owner and LLM balance."""
    where = Bot.status == status if status else Bot.status != BotStatus.destroyed
    with h.session() as s:
        total = int(s.exec(select(func.count()).select_from(Bot).where(where)).one())
        pages = max(1, math.ceil(total / size))
        page = min(max(page, 0), pages - 1)
        lines = _bot_lines(s, where, offset=page * size, limit=size)
    return Page(lines, page, pages, total, status)


FIND_LIMIT = 10


def find_bots(h: Hosting, text: str, *, limit: int | None = FIND_LIMIT) -> list[BotLine]:
    """Bots, destroyed ones too, whose id starts with `text`, whose @username contains
    it (any case; a leading @ is ignored) or whose owner's Telegram id it is; oldest
    first, at most `limit`. LIKE's wildcards in `text` are plain characters."""
    q = text.strip().removeprefix("@").lower()
    if not q:
        raise StorebotError("say what to look for: part of an @username, an id, an owner")
    matches = [
        col(Bot.id).startswith(q, autoescape=True),
        func.lower(col(Bot.telegram_username)).contains(q, autoescape=True),
    ]
    if q.isdigit() and len(q) < 19:  # a Telegram id fits in 64 bits
        matches.append(col(Customer.telegram_id) == int(q))
    with h.session() as s:
        return _bot_lines(s, or_(*matches), limit=limit)


def _bot_lines(
    s: Session, where: Any, *, offset: int = 0, limit: int | None = None
) -> list[BotLine]:
    """Bots matching `where` (which may name the owner), oldest first, as list lines."""
    rows = s.exec(
        select(Bot, Customer.telegram_id, LlmAccount.balance_micro)
        .join(Customer, col(Customer.id) == col(Bot.customer_id), isouter=True)
        .join(LlmAccount, col(LlmAccount.bot_id) == col(Bot.id), isouter=True)
        .where(where)
        .order_by(col(Bot.created_at), col(Bot.id))
        .offset(offset)
        .limit(limit)
    )
    return [
        BotLine(b.id, str(b.status), b.telegram_username, owner, int(balance or 0))
        for b, owner, balance in rows
    ]


# One bot -----------------------------------------------------------------------------


def find(h: Hosting, bot_id: str) -> Bot:
    with h.session() as s:
        return h.get_bot(s, bot_id)


@dataclass(frozen=True)
class Usage:
    cpus: float | None  # CPUs busy over the sample (1.0 = one core); None: unknown
    cpu_limit: float | None
    mem_bytes: int
    mem_limit: int | None


@dataclass(frozen=True)
class Card:
    info: dict[str, Any]  # bot_ops.show
    paid_until: datetime | None
    balance: Report
    usage: Usage | None  # None: no running container


async def bot_card(h: Hosting, bot_id: str, *, sample: float = CPU_SAMPLE_SECONDS) -> Card:
    info = await bot_ops.show(h, bot_id)
    with h.session() as s:
        bot = h.get_bot(s, info["id"])
        paid_until, report = bot.paid_until, ledger.report(s, bot.id)
    running = (info["container_state"] or {}).get("status") == "running"
    usage = await usage_now(h, bot.id, sample) if running else None
    return Card(info, paid_until, report, usage)


async def usage_now(h: Hosting, bot_id: str, sample: float) -> Usage | None:
    """CPU (two readings `sample` seconds apart) and memory of the bot's container."""
    first = await _reading(h, bot_id)
    if first is None:
        return None
    await asyncio.sleep(sample)
    second = await _reading(h, bot_id)
    if second is None:
        return None
    return Usage(cpu_rate(first, second), second.cpu_limit, second.mem_bytes, second.mem_limit)


async def _reading(h: Hosting, bot_id: str) -> ContainerStats | None:
    name = h.container_name(bot_id)
    found = await h.docker.stats_all(f"{LABEL_BOT}={bot_id}")
    return next((st for st in found if st.name == name), None)


def cpu_rate(a: ContainerStats, b: ContainerStats) -> float | None:
    """CPUs busy between two readings of one container; None if it restarted between."""
    seconds = (b.read_at - a.read_at).total_seconds()
    if seconds <= 0 or b.cpu_ns < a.cpu_ns or a.id != b.id:
        return None
    return (b.cpu_ns - a.cpu_ns) / 1e9 / seconds


# Actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    outcome: Outcome
    owner: int | None  # whom to tell: the owner, when the bot's state changed
    reason: str = ""  # as recorded


def owner_of(h: Hosting, bot_id: str) -> int | None:
    with h.session() as s:
        return customers.owner_of(s, bot_id)


async def suspend(h: Hosting, bot_id: str, *, actor: str, reason: str = "") -> Done:
    """The kill switch: status suspended, the meter told (it refuses the bot's calls),
    container stopped (its route goes with it); see bot_ops.suspend."""
    reason = reason.strip() or NO_REASON
    out = await bot_ops.suspend(h, bot_id, actor=actor, reason=reason)
    return Done(out, owner_of(h, out.id) if out.changed else None, reason)


async def resume(h: Hosting, bot_id: str, *, actor: str) -> Done:
    out = await bot_ops.resume(h, bot_id, actor=actor, reason="resumed by an operator")
    return Done(out, owner_of(h, out.id) if out.changed else None)


@dataclass(frozen=True)
class Destroyed:
    done: Done
    billing: str  # what happened to the hosting subscription


async def destroy(h: Hosting, gw: StripeGateway, bot_id: str, *, actor: str) -> Destroyed:
    """Remove the bot and its data, then end its subscription (no more charges)."""
    out = await bot_ops.destroy(h, bot_id, actor=actor, reason="destroyed by an operator")
    done = Done(out, owner_of(h, out.id) if out.changed else None)
    try:
        ended = await orders.end_hosting(h, gw, out.id)
    except StorebotError as exc:
        return Destroyed(done, f"cancelling its subscription FAILED: {exc}; cancel it in Stripe")
    return Destroyed(done, "its subscription is cancelled" if ended else "it had no subscription")


# Figures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    bots: dict[str, int]  # by status
    topups_today: int  # micro-USD of paid top-ups
    topups_30d: int
    paid_bots: int  # with a paid hosting period running now
    hosting_monthly_cents: int  # what those pay a month, in `currency`
    currency: str
    llm_today: int  # micro-USD debited for LLM use
    llm_7d: int
    repairs_today: int
    repairs_7d: int
    load: tuple[float, float, float] | None
    mem_total: int | None  # bytes
    mem_available: int | None
    containers: int | None  # running bot containers; None: Docker did not answer


async def stats(h: Hosting, now: datetime | None = None) -> Stats:
    now = now or utcnow()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week, month = now - timedelta(days=7), now - timedelta(days=30)
    prices = {p.name: p.price_cents for p in load_plans(h.settings).values()}
    with h.session() as s:
        counts = s.exec(select(Bot.status, func.count()).group_by(col(Bot.status))).all()
        paid = s.exec(
            select(Bot.plan).where(Bot.status != BotStatus.destroyed, col(Bot.paid_until) > now)
        ).all()
        figures = {
            "topups_today": ledger_total(s, LedgerKind.credit, midnight),
            "topups_30d": ledger_total(s, LedgerKind.credit, month),
            "llm_today": -ledger_total(s, LedgerKind.debit, midnight),
            "llm_7d": -ledger_total(s, LedgerKind.debit, week),
            "repairs_today": repairs(s, midnight),
            "repairs_7d": repairs(s, week),
        }
    mem = host_memory()
    return Stats(
        bots={str(BotStatus(st)): int(n) for st, n in counts},
        paid_bots=len(paid),
        hosting_monthly_cents=sum(prices.get(plan, 0) for plan in paid),
        currency=h.settings.CURRENCY,
        load=_load(),
        mem_total=mem[0] if mem else None,
        mem_available=mem[1] if mem else None,
        containers=await running_containers(h),
        **figures,
    )


def ledger_total(s: Session, kind: LedgerKind, since: datetime) -> int:
    """The sum of every bot's ledger entries of `kind` since `since` (signed)."""
    total = s.exec(
        select(func.coalesce(func.sum(LedgerEntry.amount_micro), 0)).where(
            LedgerEntry.kind == kind, col(LedgerEntry.at) >= since
        )
    ).one()
    return int(total)


def repairs(s: Session, since: datetime) -> int:
    """Repairs the reconciler made since `since` (its `repair` table)."""
    return sum(repair_counts(s, since).values())


def host_memory(path: Path = MEMINFO) -> tuple[int, int] | None:
    """(total, available) bytes from /proc/meminfo; None where there is none."""
    try:
        fields = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
        return _kib(fields["MemTotal"]), _kib(fields["MemAvailable"])
    except (OSError, KeyError, ValueError):
        return None


def _kib(value: str) -> int:
    return int(value.split()[0]) * 1024


def _load() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


async def running_containers(h: Hosting) -> int | None:
    try:
        return len(await h.docker.stats_all(f"{LABEL_INSTANCE}={h.settings.STOREBOT_INSTANCE}"))
    except StorebotError:
        return None
