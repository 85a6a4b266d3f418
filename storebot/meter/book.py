"""What the meter knows about each bot, in memory: whose LLM token this is, whether the
bot may call the LLM, and its balance.

The hot path (one LLM call) reads only memory. A sync, every METER_SYNC_SECONDS
(or when storebot asks), writes the debits taken since the last one to the ledger in
one transaction, then reloads tokens, statuses and balances (credits arrive from
storebot's process). So a suspension or a top-up reaches the meter within one sync,
a debit is never lost (a failed write keeps the batch for the next sync) and never
written twice (a failed reload does not bring a written batch back).

A bot's balance here is its stored balance minus the debits not yet written, so it
is exact within this process at every moment; calls are admitted one slot at a time
per bot (METER_MAX_IN_FLIGHT_PER_BOT). Overspend bound: a call is admitted only while
the balance is > 0, and its cost is known only when it ends, so at most
METER_MAX_IN_FLIGHT_PER_BOT calls can be running when the balance crosses zero. A
balance never goes below -(METER_MAX_IN_FLIGHT_PER_BOT x the cost of one call).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import col, select

from storebot import ledger
from storebot.db import session
from storebot.ledger import Debit
from storebot.models import Bot, BotStatus, LlmAccount

log = logging.getLogger(__name__)

#: a bot in these states may call the LLM (deploying: its first call may come before
#: the deploy marks it running)
MAY_CALL = frozenset({BotStatus.running, BotStatus.deploying})


@dataclass(frozen=True)
class Caller:
    bot_id: str
    status: BotStatus


class Book:
    def __init__(self, engine: Engine, slots_per_bot: int) -> None:
        self._engine = engine
        self._slots_per_bot = slots_per_bot
        self._callers: dict[str, Caller] = {}  # sha256 of the LLM token -> bot
        self._stored: dict[str, int] = {}  # balance on the ledger at the last sync
        self._unwritten: list[Debit] = []
        self._unwritten_by_bot: defaultdict[str, int] = defaultdict(int)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self.synced = False

    # Hot path (memory only) ------------------------------------------------------------

    def caller(self, token_hash: str) -> Caller | None:
        return self._callers.get(token_hash)

    def balance(self, bot_id: str) -> int:
        return self._stored.get(bot_id, 0) - self._unwritten_by_bot.get(bot_id, 0)

    def charge(self, debit: Debit) -> None:
        self._unwritten.append(debit)
        self._unwritten_by_bot[debit.bot_id] += debit.micro

    @asynccontextmanager
    async def slot(self, bot_id: str) -> AsyncIterator[None]:
        sem = self._slots.get(bot_id)
        if sem is None:
            sem = self._slots[bot_id] = asyncio.Semaphore(self._slots_per_bot)
        async with sem:
            yield

    def close(self) -> None:
        self._engine.dispose()

    @property
    def unwritten(self) -> int:
        return len(self._unwritten)

    # Sync ---------------------------------------------------------------------------

    async def sync(self) -> None:
        """Write the debits taken so far, then reload everything (two thread calls: a
        batch the ledger has taken is never written again, even if the reload fails)."""
        batch, self._unwritten = self._unwritten, []
        if batch:
            try:
                await asyncio.to_thread(self._write, batch)
            except BaseException:
                self._unwritten[:0] = batch  # kept, in order, for the next sync
                raise
            for d in batch:  # now on the ledger: from unwritten to stored
                self._stored[d.bot_id] = self._stored.get(d.bot_id, 0) - d.micro
                left = self._unwritten_by_bot[d.bot_id] - d.micro
                if left:
                    self._unwritten_by_bot[d.bot_id] = left
                else:
                    del self._unwritten_by_bot[d.bot_id]
        callers, stored = await asyncio.to_thread(self._reload)
        # debits taken while the reload ran are still unwritten: balance() stays exact
        self._callers, self._stored = callers, stored
        for gone in self._slots.keys() - {c.bot_id for c in callers.values()}:
            if not self._slots[gone].locked():
                del self._slots[gone]
        self.synced = True

    def _write(self, batch: list[Debit]) -> None:
        with session(self._engine) as s:
            ledger.write_debits(s, batch)
            s.commit()

    def _reload(self) -> tuple[dict[str, Caller], dict[str, int]]:
        with session(self._engine) as s:
            bots = s.exec(
                select(Bot.llm_token_hash, Bot.id, Bot.status).where(
                    col(Bot.llm_token_hash).is_not(None)
                )
            ).all()
            stored = dict(s.exec(select(LlmAccount.bot_id, LlmAccount.balance_micro)).all())
            s.rollback()  # read-only: end the transaction
        callers = {h: Caller(bot_id, BotStatus(st)) for h, bot_id, st in bots if h}
        return callers, {k: int(v) for k, v in stored.items()}
