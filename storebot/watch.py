"""The anomaly watch: every ANOMALY_INTERVAL_SECONDS, one sweep over all running bots
(`storebot.sampling`), their recent LLM spend (the ledger) and, every
TOKEN_CHECK_MINUTES, their Telegram tokens (getMe); the pure rules of
`storebot.anomaly` decide. A finding suspends the bot (ANOMALY_AUTO_SUSPEND), posts
the evidence to the ops chat with a Resume button and tells the owner why. A revoked
token suspends with `bot_ops.TOKEN_REVOKED`, and the owner is asked for the new one
(the chat then takes it: `bot_ops.replace_token`).

State (sample histories, spend counters, when each token was last checked) lives in
this process: after a restart the rules simply need a new window of samples.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import col, select

from storebot import bot_ops
from storebot.anomaly import Finding, History, Rule, Thresholds, evaluate
from storebot.effects import Effect
from storebot.errors import StorebotError, TokenRejected
from storebot.hosting import Hosting
from storebot.ledger import usd_to_micro
from storebot.models import Bot, BotStatus, Customer, LedgerEntry, LedgerKind, utcnow
from storebot.sampling import Sampler
from storebot.settings import Settings

log = logging.getLogger(__name__)
TOKEN_CHECKS_AT_ONCE = 8


def minutes(m: float) -> timedelta:
    return timedelta(minutes=m)


def thresholds(s: Settings) -> Thresholds:
    return Thresholds(
        max_gap=max(timedelta(seconds=60), timedelta(seconds=4 * s.ANOMALY_INTERVAL_SECONDS)),
        cpu_fraction=s.ANOMALY_CPU_PERCENT / 100,
        cpu_window=minutes(s.ANOMALY_CPU_MINUTES),
        mem_fraction=s.ANOMALY_MEM_PERCENT / 100,
        mem_window=minutes(s.ANOMALY_MEM_MINUTES),
        oom_kills=s.ANOMALY_OOM_KILLS,
        oom_window=minutes(s.ANOMALY_OOM_MINUTES),
        rps=s.ANOMALY_RPS,
        rps_window=minutes(s.ANOMALY_RPS_MINUTES),
        spend_micro_per_hour=usd_to_micro(s.ANOMALY_SPEND_USD_PER_HOUR),
        spend_window=minutes(s.ANOMALY_SPEND_MINUTES),
    )


@dataclass(frozen=True)
class Watched:
    id: str
    owner: int
    username: str | None
    token_encrypted: str | None


@dataclass
class Watch:
    h: Hosting
    th: Thresholds = field(init=False)
    sampler: Sampler = field(init=False)
    history: History = field(init=False)
    spent: dict[str, int] = field(default_factory=dict)  # cumulative since start
    spend_until: datetime = field(init=False)
    token_checked: dict[str, datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.h.settings
        self.th = thresholds(s)
        self.history = History.for_thresholds(self.th)
        # the meter writes a debit up to METER_SYNC_SECONDS after its time: read behind
        self.spend_lag = timedelta(seconds=2 * s.METER_SYNC_SECONDS + 1)
        self.spend_until = utcnow() - self.spend_lag
        self.sampler = Sampler(
            self.h.docker,
            s.STOREBOT_INSTANCE,
            metrics_url=s.TRAEFIK_METRICS_URL,
            http=self.h.http,
            cgroup_root=s.CGROUP_ROOT,
        )

    async def run(self) -> list[Effect]:
        """One sweep: samples, rules, and what was done about each finding."""
        bots = await asyncio.to_thread(self._running)
        spent = await asyncio.to_thread(self._spend)
        spend = {b: spent.get(b, 0) for b in bots}  # a counter from zero: a baseline
        tokens = await self._check_tokens(bots)
        samples = await self.sampler.sweep(spend_micro=spend, token_ok=tokens)
        self.history.retain(bots)
        effects: list[Effect] = []
        now = utcnow()
        for bot in bots.values():
            if (sample := samples.get(bot.id)) is not None:
                self.history.add(bot.id, sample)
            findings = evaluate(self.history.samples(bot.id), self.th, now)
            if findings:
                effects += await self._act(bot, findings)
        return effects

    def _running(self) -> dict[str, Watched]:
        with self.h.session() as s:
            rows = s.exec(
                select(Bot, Customer.telegram_id)
                .join(Customer, col(Customer.id) == col(Bot.customer_id))
                .where(Bot.status == BotStatus.running)
            ).all()
        return {
            b.id: Watched(b.id, owner, b.telegram_username, b.token_encrypted) for b, owner in rows
        }

    def _spend(self) -> dict[str, int]:
        """Cumulative LLM spend per bot since this watch started (read a little behind
        the clock: the meter writes its debits in batches)."""
        until = utcnow() - self.spend_lag
        with self.h.session() as s:
            rows = s.exec(
                select(LedgerEntry.bot_id, func.sum(LedgerEntry.amount_micro))
                .where(
                    LedgerEntry.kind == LedgerKind.debit,
                    col(LedgerEntry.at) > self.spend_until,
                    col(LedgerEntry.at) <= until,
                )
                .group_by(col(LedgerEntry.bot_id))
            ).all()
        self.spend_until = until
        for bot_id, total in rows:
            self.spent[bot_id] = self.spent.get(bot_id, 0) - int(total)
        return dict(self.spent)

    async def _check_tokens(self, bots: dict[str, Watched]) -> dict[str, bool]:
        """getMe for bots not checked within TOKEN_CHECK_MINUTES: False when Telegram
        rejects the token; no verdict when Telegram does not answer."""
        every = timedelta(minutes=self.h.settings.TOKEN_CHECK_MINUTES)
        now, gate = utcnow(), asyncio.Semaphore(TOKEN_CHECKS_AT_ONCE)
        due = [
            b
            for b in bots.values()
            if b.token_encrypted
            and (b.id not in self.token_checked or now - self.token_checked[b.id] >= every)
        ]

        async def check(b: Watched) -> tuple[str, bool | None]:
            async with gate:
                return b.id, await self._token_ok(b)

        results = await asyncio.gather(*(check(b) for b in due))
        return {bot_id: ok for bot_id, ok in results if ok is not None}

    async def _token_ok(self, bot: Watched) -> bool | None:
        """getMe with the bot's token: False when Telegram rejects it, None when it
        does not answer (no verdict)."""
        if not bot.token_encrypted:
            return None
        try:
            await self.h.telegram.get_me(self.h.tokens.open(bot.token_encrypted))
        except TokenRejected:
            return False
        except StorebotError:
            return None
        finally:
            self.token_checked[bot.id] = utcnow()
        return True

    async def _act(self, bot: Watched, findings: list[Finding]) -> list[Effect]:
        evidence = [f"{f.rule}: {f.evidence}" for f in findings]
        revoked = any(f.rule is Rule.token for f in findings)
        if not revoked and await self._token_ok(bot) is False:
            # a revoked token makes nullclawd spin at full CPU (NULLCLAW.md), and the
            # periodic getMe may be half an hour away: ask Telegram before calling it abuse
            revoked = True
            evidence.append("token: Telegram rejects the bot's token (getMe, asked now)")
        # the owner may lift it with a new token only when the token explains it all
        self_service = revoked and all(f.rule in (Rule.token, Rule.cpu) for f in findings)
        suspended = False
        if self.h.settings.ANOMALY_AUTO_SUSPEND or self_service:
            prefix = bot_ops.TOKEN_REVOKED + ": " if self_service else "auto-suspended: "
            reason = prefix + "; ".join(evidence)
            try:
                out = await bot_ops.suspend(self.h, bot.id, actor="watch", reason=reason[:2000])
                suspended = out.changed
            except StorebotError as exc:
                log.warning("could not suspend bot %s: %s", bot.id, exc)
            self.token_checked.pop(bot.id, None)
        # acted on (or, watch only, reported) once: the next time needs a fresh window of
        # samples, not the same one seen again every sweep
        self.history.forget(bot.id)
        self.sampler.oom.forget(bot.id)
        detail = {"evidence": evidence, "suspended": suspended, "username": bot.username}
        effects = [Effect("anomaly", bot.owner, bot.id, detail)]
        if suspended:
            kind = "token_revoked" if self_service else "suspended_for_abuse"
            effects.append(Effect(kind, bot.owner, bot.id, detail))
        return effects
