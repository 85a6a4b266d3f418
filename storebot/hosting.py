"""What every bot operation shares: its dependencies and the steps that bring a bot up.

`Hosting` is built once by the composition root (`storebot.app.build_hosting`) and
passed to the deploy and lifecycle services. It knows no Telegram chat and no CLI.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from storebot import bot_files, firewall
from storebot.container_spec import (
    LABEL_CONFIG,
    LABEL_INSTANCE,
    Limits,
    container_name,
    container_spec,
)
from storebot.db import session as new_session
from storebot.docker_engine import DockerEngine, NetworkInfo
from storebot.errors import BotNotFound, HealthTimeout, StateChanged, StorebotError
from storebot.health import wait_healthy, wait_unrouted
from storebot.lifecycle import check_transition
from storebot.models import Bot, BotEvent, BotStatus, utcnow
from storebot.settings import Settings
from storebot.telegram_api import BotApi
from storebot.tokens import TokenBox, redact

FAILURE_LOG_LINES = 50
#: how long a (re)start waits for Traefik to drop a stopped container's route
ROUTE_DROP_SECONDS = 10.0

log = logging.getLogger(__name__)


@dataclass
class Hosting:
    settings: Settings
    db: Engine
    docker: DockerEngine
    telegram: BotApi
    http: httpx.AsyncClient
    tokens: TokenBox
    _network: NetworkInfo | None = field(default=None, init=False)
    _starting: defaultdict[str, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock), init=False
    )

    def session(self) -> Session:
        return new_session(self.db)

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.docker.close()
        self.db.dispose()

    # State
    def get_bot(self, session: Session, bot_id: str) -> Bot:
        bot = session.get(Bot, bot_id.strip().lower())
        if bot is None:
            raise BotNotFound(f"no bot with id {bot_id!r}; `storebot admin list` shows them all")
        return bot

    def transition(
        self, session: Session, bot: Bot, to: BotStatus, *, actor: str, reason: str = ""
    ) -> None:
        """Change status, record the event, commit (one unit of work).

        Compare-and-set on the status this process last read: if another process
        changed it meanwhile (an operator's suspend during a slow deploy), nothing is
        overwritten and StateChanged says what it is now. Pending changes to the row
        (hashes, limits, kept logs) are committed in the same transaction.
        """
        check_transition(bot.status, to)
        before, now = bot.status, utcnow()
        session.add(bot)
        session.flush()
        moved = session.execute(
            update(Bot)
            .where(col(Bot.id) == bot.id, col(Bot.status) == before)
            .values(status=to, status_reason=reason or None, updated_at=now)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            session.refresh(bot)
            self.release(session)
            raise StateChanged(
                f"bot {bot.id} became {bot.status} while this action ran "
                f"(it expected {before}); nothing was overwritten"
            )
        session.add(
            BotEvent(bot_id=bot.id, from_status=before, to_status=to, actor=actor, reason=reason)
        )
        session.commit()
        # what the UPDATE wrote, without a refresh: a refresh would begin a transaction
        # and hold a pooled connection through the caller's next await
        wrote = {"status": to, "status_reason": reason or None, "updated_at": now}
        for name, value in wrote.items():
            set_committed_value(bot, name, value)

    @staticmethod
    def release(session: Session) -> None:
        """End the session's (read) transaction so its pooled connection goes back
        before a slow await: Docker, Telegram, a health wait. A connection held there
        idles in a transaction; enough of them exhaust the pool, and the next checkout
        blocks the event loop that would have given them back. Loaded rows stay usable
        (sessions do not expire on commit); nothing may be pending."""
        session.commit()

    def record(self, session: Session, bot: Bot, *, actor: str, reason: str) -> None:
        """An action that changes no status (restart, rotate, ...)."""
        session.add(
            BotEvent(
                bot_id=bot.id,
                from_status=bot.status,
                to_status=bot.status,
                actor=actor,
                reason=reason,
            )
        )
        session.commit()

    def events(self, session: Session, bot_id: str, limit: int = 10) -> list[BotEvent]:
        stmt = (
            select(BotEvent)
            .where(BotEvent.bot_id == bot_id)
            .order_by(col(BotEvent.id).desc())
            .limit(limit)
        )
        return list(session.exec(stmt))

    # Docker
    def container_name(self, bot_id: str) -> str:
        return container_name(self.settings, bot_id)

    def spec(self, bot: Bot) -> dict[str, Any]:
        root = self.settings.DATA_ROOT
        data = PurePosixPath(bot_files.data_dir(root, bot.id))
        limits = Limits(cpus=bot.cpu_limit, mem_bytes=bot.mem_limit, pids=bot.pids_limit)
        spec = container_spec(self.settings, bot.id, data, limits)
        spec["labels"][LABEL_CONFIG] = bot_files.config_digest(root, bot.id)
        return spec

    async def recheck_token(self, bot: Bot) -> None:
        """getMe again before starting a bot: a token revoked since makes nullclawd
        spin at full CPU while /health still says ok (NULLCLAW.md)."""
        if not bot.token_encrypted:
            raise StorebotError(f"bot {bot.id} has no Telegram token on record; deploy it again")
        await self.telegram.get_me(self.tokens.open(bot.token_encrypted))

    async def prepare_network(self, *, fresh: bool = False) -> NetworkInfo:
        """The bot network and its firewall, made sure of once per process (`fresh`:
        again, e.g. after dockerd restarted or someone edited the rules)."""
        if self._network is None or fresh:
            s = self.settings
            net = await self.docker.ensure_network(
                s.BOT_NETWORK, s.BOT_NETWORK_SUBNET, {LABEL_INSTANCE: s.STOREBOT_INSTANCE}
            )
            if s.BOT_FIREWALL:
                meter = urlsplit(s.LLM_METER_URL)
                port = meter.port or (443 if meter.scheme == "https" else 80)
                await firewall.ensure(net.bridge, meter.hostname, port)
            self._network = net
        return self._network

    async def start_and_wait(self, session: Session, bot: Bot, *, actor: str, why: str) -> None:
        """Ensure the container runs, wait for /health through Traefik, mark running.

        A container that is not running with this spec is (re)started only once
        Traefik has dropped its old route (see `wait_unrouted`), so the 200 awaited
        here is not followed by a 404 when Traefik catches up with the stop.

        On timeout: keep the last log lines, stop the container (a broken nullclawd may
        spin at full CPU), mark failed and raise HealthTimeout. If another process
        suspended or destroyed the bot meanwhile, its word stands: the container is
        stopped again and StateChanged raised.
        """
        self.release(session)
        await self.prepare_network()
        s = self.settings
        spec = self.spec(bot)
        # one start of a bot at a time in this process: a second one (a double-pressed
        # Resume, the reconciler) could stop the container the first just started
        async with self._starting[bot.id]:
            if not await self.docker.running_as(spec):
                # (re)started below: first let Traefik drop the route of the stopped one
                await self.docker.stop(spec["name"], timeout=2)
                if not await wait_unrouted(
                    self.http, s.HEALTH_PROBE_URL, s.bot_host(bot.id), ROUTE_DROP_SECONDS
                ):
                    log.warning("Traefik still routes %s to a stopped container", bot.id)
            await self.docker.run(spec)
            # the meter learns a new LLM token while nullclawd boots, not after
            healthy, _ = await asyncio.gather(
                wait_healthy(
                    self.http, s.HEALTH_PROBE_URL, s.bot_host(bot.id), s.HEALTH_TIMEOUT_SECONDS
                ),
                self.tell_meter(),
            )
        try:
            if not healthy:
                await self._fail_unhealthy(session, bot, actor)
            if bot.status is not BotStatus.running:
                self.transition(session, bot, BotStatus.running, actor=actor, reason=why)
                await self.tell_meter()  # served, not refused as suspended, from now on
        except StateChanged:
            if bot.status is not BotStatus.running:
                await self.docker.stop(self.container_name(bot.id), timeout=1)
            raise

    async def tell_meter(self) -> bool:
        """Have the meter re-read the bots now and wait for it (POST /sync): a suspended
        bot refused, a started bot's new LLM token and a top-up served at once, not
        within METER_SYNC_SECONDS. Best effort: if the meter does not answer, its own
        sync catches up; False says so."""
        meter = urlsplit(self.settings.LLM_METER_URL)
        try:
            r = await self.http.post(
                f"{meter.scheme}://{meter.netloc}/sync", timeout=httpx.Timeout(6, connect=0.5)
            )
        except httpx.HTTPError as exc:
            log.info("the meter did not sync now (%s); it will within its interval", exc)
            return False
        return r.status_code == 200

    async def _fail_unhealthy(self, session: Session, bot: Bot, actor: str) -> None:
        s = self.settings
        name = self.container_name(bot.id)
        tail = redact(await self.docker.logs(name, tail=FAILURE_LOG_LINES) or "")
        await self.docker.stop(name, timeout=1)
        bot.last_log = tail
        reason = f"no answer on /health within {s.HEALTH_TIMEOUT_SECONDS:g}s"
        self.transition(session, bot, BotStatus.failed, actor=actor, reason=reason)
        last = "\n".join(tail.strip().splitlines()[-10:]) or "(no output)"
        raise HealthTimeout(
            f"bot {bot.id} did not become healthy ({reason}); it is marked failed and its "
            f"container stopped. Last log lines:\n{last}"
        )
