"""What runs on a schedule (APScheduler): hosting expiry, deploys waiting for Docker,
balance alerts, the anomaly watch (`storebot.watch`) and the reconciler (at start-up
too: every job runs once when the scheduler starts).

Each job is a plain async function over `Hosting` that returns Effects for the chat
layer; `start_jobs` puts them on an AsyncIOScheduler every JOBS_INTERVAL_SECONDS.
The rules themselves (`hosting_expired`) are pure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlmodel import col, select

from storebot import bot_ops
from storebot.balance_alerts import due_alerts
from storebot.customers import owner_of
from storebot.deploy import deploy
from storebot.effects import Effect
from storebot.errors import DockerUnavailable, StorebotError
from storebot.hosting import Hosting
from storebot.models import Bot, BotStatus, Customer, utcnow
from storebot.orders import queued_deploys
from storebot.reconciler import reconcile
from storebot.watch import Watch

log = logging.getLogger(__name__)
EXPIRED = "hosting expired"
OnEffects = Callable[[list[Effect]], Awaitable[None]]


def hosting_expired(paid_until: datetime | None, now: datetime, grace: timedelta) -> bool:
    """A bot with a paid period runs until that period plus the grace has passed."""
    return paid_until is not None and now > paid_until + grace


async def expire_hosting(h: Hosting) -> list[Effect]:
    """Suspend running bots whose paid period (plus grace) is over; tell their owners."""
    grace, now = timedelta(days=h.settings.RENEWAL_GRACE_DAYS), utcnow()
    with h.session() as s:
        rows = s.exec(
            select(Bot, Customer)
            .join(Customer, col(Customer.id) == col(Bot.customer_id))
            .where(Bot.status == BotStatus.running, col(Bot.paid_until).is_not(None))
        ).all()
    due = [(b, c) for b, c in rows if hosting_expired(b.paid_until, now, grace)]
    effects = []
    for bot, owner in due:
        try:
            await bot_ops.suspend(h, bot.id, actor="scheduler", reason=EXPIRED)
        except StorebotError as exc:
            log.warning("could not suspend expired bot %s: %s", bot.id, exc)
            continue
        effects.append(
            Effect("hosting_expired", owner.telegram_id, bot.id, {"paid_until": bot.paid_until})
        )
    return effects


async def resume_renewed(h: Hosting, effects: list[Effect]) -> list[Effect]:
    """A renewal payment brings a bot suspended for expiry back (never one an operator
    suspended for another reason)."""
    out = []
    for effect in effects:
        if effect.kind != "renewed" or effect.bot_id is None:
            continue
        with h.session() as s:
            bot = s.get(Bot, effect.bot_id)
            expired = (
                bot is not None
                and bot.status is BotStatus.suspended
                and (bot.status_reason == EXPIRED)
            )
        if expired:
            try:
                await bot_ops.resume(h, effect.bot_id, actor="stripe", reason="hosting renewed")
                out.append(Effect("resumed", effect.telegram_id, effect.bot_id))
            except StorebotError as exc:
                log.warning("renewed bot %s did not resume: %s", effect.bot_id, exc)
    return out


async def retry_queued_deploys(h: Hosting) -> list[Effect]:
    """Deploy tokens that arrived while Docker was down, now that it may be back."""
    effects = []
    for order_id, owner, token in queued_deploys(h):
        try:
            result = await deploy(
                h, token=token, owner_telegram_id=owner, actor="scheduler", order_id=order_id
            )
        except DockerUnavailable:
            continue  # still down: the next run tries again
        except StorebotError as exc:
            effects.append(Effect("deploy_failed", owner, order_id, {"why": str(exc)}))
            continue
        effects.append(Effect("deployed", owner, order_id, {"result": result}))
    return effects


async def balance_alerts(h: Hosting) -> list[Effect]:
    """Tell owners whose LLM credit fell past an alert level (once per crossing)."""
    return await asyncio.to_thread(due_alerts, h)


async def reconcile_drift(h: Hosting) -> list[Effect]:
    """Repair drift between the database and Docker; tell the ops chat what was
    repaired and owners whose interrupted deploy was finished or failed."""
    done = [r for r in await reconcile(h) if r.ok]
    if not done:
        return []
    lines = [f"{r.bot_id or r.container}: {r.detail}" for r in done]
    effects = [Effect("repairs", detail={"lines": lines})]
    kinds = {"finish_deploy": "deploy_recovered", "fail": "deploy_interrupted"}
    with h.session() as s:
        for r in done:
            owner = owner_of(s, r.bot_id) if r.action in kinds else None
            if owner is not None:
                effects.append(Effect(kinds[r.action], owner, r.bot_id))
    return effects


def start_jobs(h: Hosting, on_effects: OnEffects) -> AsyncIOScheduler:
    async def run(job: Callable[[Hosting], Awaitable[list[Effect]]]) -> None:
        try:
            effects = await job(h)
            if effects:
                await on_effects(effects)
        except asyncio.CancelledError:  # shutdown while it ran: its work is idempotent
            log.info("job %s interrupted by shutdown", job.__name__)
        except Exception:  # one bad run must not stop the schedule
            log.exception("job %s failed", job.__name__)

    watch = Watch(h)

    async def watch_anomalies(h: Hosting) -> list[Effect]:
        try:
            return await watch.run()
        except DockerUnavailable as exc:
            log.warning("anomaly watch skipped: %s", exc)
            return []

    s = h.settings
    every = s.JOBS_INTERVAL_SECONDS
    schedule: list[tuple[Callable[[Hosting], Awaitable[list[Effect]]], float]] = [
        (expire_hosting, every),
        (retry_queued_deploys, every),
        (balance_alerts, every),
        (watch_anomalies, s.ANOMALY_INTERVAL_SECONDS),
    ]
    if s.RECONCILER:
        schedule.append((reconcile_drift, s.RECONCILE_INTERVAL_SECONDS))  # also at start-up
    scheduler = AsyncIOScheduler()
    for job, seconds in schedule:
        scheduler.add_job(
            run,
            "interval",
            seconds=seconds,
            args=[job],
            id=job.__name__,
            max_instances=1,
            coalesce=True,
            next_run_time=utcnow(),
        )
    scheduler.start()
    return scheduler
