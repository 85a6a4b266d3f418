"""The reconciler: makes Docker agree with the database, at start-up and periodically.

One pass lists our containers (this STOREBOT_INSTANCE's labels) and the bot rows,
decides the repairs with `plan` (pure, tested directly), then carries each one out
against a fresh read of its row, through the same compare-and-set transitions the
operators use: a suspend or destroy that lands meanwhile wins, and a suspended bot is
never started. What `plan` decides:

    row running, no container                   -> recreate  (Hosting.start_and_wait)
    row running, container created/exited/dead  -> start     (same path)
    row running, nothing to start it from       -> fail      (no config.json)
    row suspended/failed/awaiting_*, container up -> stop
    row destroyed, or no row, or a name storebot never gives -> remove the container
    row deploying longer than DEPLOY_STALE_SECONDS (a crashed deploy)
        -> finish_deploy when its config.json is there, else fail; the failed order
           then accepts the customer's token again

Each repair made is written to the `repair` table (counted by /stats through
`repair_counts`) and, for a bot, as a BotEvent by actor "reconciler". When Docker
cannot be reached the pass changes nothing, logs that, and the next run retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from storebot import bot_files
from storebot.container_spec import LABEL_BOT, LABEL_INSTANCE, LABEL_MANAGED
from storebot.errors import DockerUnavailable, EngineError, HealthTimeout, InvalidTransition
from storebot.hosting import Hosting
from storebot.models import Bot, BotStatus, RepairRecord, utcnow

log = logging.getLogger(__name__)

ACTOR = "reconciler"
INTERRUPTED = "deploy interrupted; send the token again"
FINISHED = "deploy interrupted; finished by the reconciler"
NO_CONFIG = "its container is gone and it has no config.json to start from; send the token again"
# Bots brought up at once: each waits up to HEALTH_TIMEOUT_SECONDS for /health.
CONCURRENCY = 8

UP = frozenset({"running", "restarting", "paused"})  # Docker states of a live container
# Rows whose bot must not run.
HELD = frozenset(
    {BotStatus.suspended, BotStatus.failed, BotStatus.awaiting_payment, BotStatus.awaiting_token}
)


class Action(StrEnum):
    recreate = "recreate"
    start = "start"
    stop = "stop"
    remove = "remove"
    finish_deploy = "finish_deploy"
    fail = "fail"


@dataclass(frozen=True)
class BotFacts:
    id: str
    status: BotStatus
    updated_at: datetime
    has_config: bool


@dataclass(frozen=True)
class ContainerFacts:
    name: str
    bot_id: str | None  # its storebot.bot-id label
    state: str  # Docker's: created, running, restarting, paused, exited, dead, removing


@dataclass(frozen=True)
class Repair:
    """One repair: planned, then done (`ok`) or tried and refused by Docker (`ok=False`,
    `detail` says why; nothing changed, the next pass tries again)."""

    action: Action
    bot_id: str | None
    container: str
    detail: str
    ok: bool = True


# The decision (pure) -------------------------------------------------------------


def plan(
    bots: Iterable[BotFacts],
    containers: Iterable[ContainerFacts],
    now: datetime,
    stale_after: timedelta,
    name_for: Callable[[str], str],
) -> list[Repair]:
    """The repairs that make Docker agree with `bots`; `name_for` gives the name storebot
    gives a bot's container. Removals come first, then the bots in the given order."""
    rows = {b.id: b for b in bots}
    repairs: list[Repair] = []
    owned: dict[str, ContainerFacts] = {}
    for c in containers:
        row = rows.get(c.bot_id or "")
        why = _foreign(c, row, name_for)
        if why:
            repairs.append(Repair(Action.remove, row.id if row else None, c.name, why))
        else:
            assert row is not None
            owned[row.id] = c
    for b in rows.values():
        step = _decide(b, owned.get(b.id), now, stale_after, name_for(b.id))
        if step is not None:
            repairs.append(step)
    return repairs


def _foreign(c: ContainerFacts, row: BotFacts | None, name_for: Callable[[str], str]) -> str:
    """Why a container must go ('' if it is the one its bot should have)."""
    if row is None:
        known = c.bot_id or "no id"
        return f"container {c.name} of a bot the database does not know ({known}): removed"
    if row.status is BotStatus.destroyed:
        return f"container {c.name} of a destroyed bot: removed"
    if c.name != name_for(row.id):
        return f"container {c.name}, not the one storebot names for bot {row.id}: removed"
    return ""


def _decide(
    b: BotFacts, c: ContainerFacts | None, now: datetime, stale_after: timedelta, name: str
) -> Repair | None:
    state = c.state if c is not None else "missing"
    if b.status is BotStatus.running:
        if state in UP or state == "removing":
            return None
        if not b.has_config:
            return Repair(Action.fail, b.id, name, NO_CONFIG)
        if c is None:
            return Repair(Action.recreate, b.id, name, "its container was missing: re-created")
        return Repair(Action.start, b.id, name, f"its container was {state}: started")
    if b.status in HELD and state in UP:
        why = f"{b.status}, but its container was {state}: stopped"
        return Repair(Action.stop, b.id, name, why)
    if b.status is BotStatus.deploying and b.updated_at < now - stale_after:
        if b.has_config:
            return Repair(Action.finish_deploy, b.id, name, FINISHED)
        return Repair(Action.fail, b.id, name, INTERRUPTED)
    return None


# One pass ------------------------------------------------------------------------


async def reconcile(h: Hosting) -> list[Repair]:
    """One pass; returns the repairs made (and those Docker refused, `ok=False`).

    Docker unreachable: nothing changes, a warning is logged, the result is []."""
    try:
        bots, containers = await _survey(h)
        await _refresh_network(h)
    except DockerUnavailable as exc:
        log.warning("reconcile skipped: %s", exc)
        return []
    stale = timedelta(seconds=h.settings.DEPLOY_STALE_SECONDS)
    steps = plan(bots, containers, utcnow(), stale, h.container_name)
    return await _carry_out(h, steps)


async def _survey(h: Hosting) -> tuple[list[BotFacts], list[ContainerFacts]]:
    s = h.settings
    ours = [f"{LABEL_INSTANCE}={s.STOREBOT_INSTANCE}", f"{LABEL_MANAGED}=true"]
    containers = [
        ContainerFacts(name, labels.get(LABEL_BOT), state)
        for name, state, labels in await h.docker.containers(ours)
    ]
    # Containers first, rows second: a deploy commits its row before it creates the
    # container, so the row of every container listed is visible here.
    seen = {c.bot_id for c in containers if c.bot_id}
    with h.session() as session:
        rows = session.exec(
            select(Bot.id, Bot.status, Bot.updated_at).where(
                or_(col(Bot.status) != BotStatus.destroyed, col(Bot.id).in_(seen))
            )
        ).all()
    bots = [BotFacts(i, BotStatus(st), at, _has_config(h, i)) for i, st, at in rows]
    return bots, containers


def _has_config(h: Hosting, bot_id: str) -> bool:
    path = bot_files.data_dir(h.settings.DATA_ROOT, bot_id) / ".nullclaw" / bot_files.CONFIG
    return path.exists()


async def _refresh_network(h: Hosting) -> None:
    """The bots' network and firewall again, not from Hosting's cache: a restarted
    dockerd, or an operator, may have dropped rules since they were first made."""
    try:
        await h.prepare_network(fresh=True)
    except DockerUnavailable:
        raise
    except EngineError as exc:  # starting will fail too, and say so per bot
        log.warning("reconcile: cannot prepare the bots' network: %s", exc)


async def _carry_out(h: Hosting, steps: list[Repair]) -> list[Repair]:
    gate = asyncio.Semaphore(CONCURRENCY)
    down: list[str] = []

    async def one(step: Repair) -> Repair | None:
        async with gate:
            if down:
                return None
            try:
                return await _do(h, step)
            except DockerUnavailable as exc:  # the rest waits for the next pass
                down.append(str(exc))
            except Exception:  # one bad repair must not stop the others
                log.exception("reconcile: %s of %s failed", step.action, step.container)
            return None

    done = [r for r in await asyncio.gather(*(one(s) for s in steps)) if r is not None]
    if down:
        log.warning("reconcile stopped early: %s", down[0])
    for r in done:
        level = logging.INFO if r.ok else logging.WARNING
        log.log(level, "reconcile: %s %s: %s", r.action, r.bot_id or r.container, r.detail)
    return done


async def _do(h: Hosting, r: Repair) -> Repair | None:
    if r.action is Action.remove:
        return await _remove(h, r)
    if r.action is Action.stop:
        return await _stop(h, r)
    return await _bring_up(h, r)


# The repairs: each re-reads its row and returns None when it changed meanwhile -----


async def _remove(h: Hosting, r: Repair) -> Repair | None:
    if not await h.docker.remove(r.container):
        return None  # gone already
    with h.session() as s:
        bot = s.get(Bot, r.bot_id) if r.bot_id else None
        _record(h, s, bot, r, event=True)
    return r


async def _stop(h: Hosting, r: Repair) -> Repair | None:
    with h.session() as s:
        bot = s.get(Bot, r.bot_id or "")
        if bot is None or bot.status not in HELD:
            return None  # resumed meanwhile: its container is meant to run
        h.release(s)
        if not await _up(h, r.container):
            return None
        await h.docker.stop(r.container, timeout=2)
        _record(h, s, bot, r, event=True)
    return r


async def _bring_up(h: Hosting, r: Repair) -> Repair | None:
    """recreate, start, finish_deploy or fail: start_and_wait, which waits for /health
    through Traefik and, for a deploy, marks the bot running; failed when there is
    no config.json to start from."""
    with h.session() as s:
        bot = s.get(Bot, r.bot_id or "")
        if bot is None or not _still_due(h, s, bot):
            return None
        h.release(s)
        if r.action in (Action.recreate, Action.start) and await _up(h, r.container):
            return None  # back meanwhile (Docker's restart policy after a dockerd restart)
        if not _has_config(h, bot.id):
            why = NO_CONFIG if bot.status is BotStatus.running else INTERRUPTED
            return _mark_failed(h, s, bot, r, why)
        try:
            await h.start_and_wait(s, bot, actor=ACTOR, why=r.detail)
        except HealthTimeout as exc:  # marked failed and stopped by start_and_wait
            failed = replace(r, action=Action.fail, detail=str(exc))
            _record(h, s, bot, failed, event=False)
            return failed
        except InvalidTransition:  # suspended or destroyed meanwhile: their word stands
            return None
        except DockerUnavailable:
            raise
        except EngineError as exc:
            if bot.status is BotStatus.deploying:
                return _mark_failed(h, s, bot, r, f"{INTERRUPTED} ({exc})")
            return replace(r, ok=False, detail=str(exc))  # e.g. image missing: retried
        s.refresh(bot)
        h.release(s)
        if bot.status is not BotStatus.running:  # suspended or destroyed while it started
            await _their_word_stands(h, bot)
            return None
        _record(h, s, bot, r, event=r.action is not Action.finish_deploy)
    return r


async def _up(h: Hosting, name: str) -> bool:
    state = await h.docker.state(name)
    return state is not None and state.status in UP


def _still_due(h: Hosting, s: Session, bot: Bot) -> bool:
    """The row still needs what the plan decided: running, or a stale deploy that this
    process now claims (compare-and-set on updated_at, as deploy's take-over does, so a
    customer's retry and this pass never both proceed)."""
    if bot.status is BotStatus.running:
        return True
    stale = utcnow() - timedelta(seconds=h.settings.DEPLOY_STALE_SECONDS)
    if bot.status is not BotStatus.deploying or bot.updated_at >= stale:
        return False
    claimed = s.execute(
        update(Bot)
        .where(
            col(Bot.id) == bot.id,
            col(Bot.status) == BotStatus.deploying,
            col(Bot.updated_at) == bot.updated_at,
        )
        .values(updated_at=utcnow())
    ).rowcount  # type: ignore[attr-defined]
    s.commit()
    s.refresh(bot)
    return bool(claimed == 1)


def _mark_failed(h: Hosting, s: Session, bot: Bot, r: Repair, reason: str) -> Repair | None:
    done = replace(r, action=Action.fail, detail=reason)
    s.add(RepairRecord(bot_id=bot.id, action=done.action, detail=reason))
    try:
        h.transition(s, bot, BotStatus.failed, actor=ACTOR, reason=reason)
    except InvalidTransition:
        return None
    return done


async def _their_word_stands(h: Hosting, bot: Bot) -> None:
    name = h.container_name(bot.id)
    if bot.status is BotStatus.destroyed:
        await h.docker.remove(name)
    else:
        await h.docker.stop(name, timeout=1)


def _record(h: Hosting, s: Session, bot: Bot | None, r: Repair, *, event: bool) -> None:
    """A `repair` row, and for a bot whose status did not change a BotEvent (a status
    change was recorded by its transition)."""
    s.add(RepairRecord(bot_id=bot.id if bot else None, action=r.action, detail=r.detail))
    if bot is not None and event:
        h.record(s, bot, actor=ACTOR, reason=r.detail)  # commits both
    else:
        s.commit()


# For /stats ----------------------------------------------------------------------


def repair_counts(session: Session, since: datetime | None = None) -> dict[str, int]:
    """How many repairs of each action were made (since `since`, if given)."""
    stmt = select(RepairRecord.action, func.count()).group_by(col(RepairRecord.action))
    if since is not None:
        stmt = stmt.where(col(RepairRecord.at) >= since)
    return {action: int(n) for action, n in session.exec(stmt)}
