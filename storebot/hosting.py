"""What every bot operation shares: its dependencies and the steps that bring a bot up.

`Hosting` is built once by the composition root (`storebot.app.build_hosting`) and
passed to the deploy and lifecycle services. It knows no Telegram chat and no CLI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from storebot import bot_files, firewall
from storebot.container_spec import LABEL_INSTANCE, Limits, container_name, container_spec
from storebot.db import session as new_session
from storebot.docker_engine import DockerEngine, NetworkInfo
from storebot.errors import BotNotFound, HealthTimeout
from storebot.health import wait_healthy
from storebot.lifecycle import check_transition
from storebot.models import Bot, BotEvent, BotStatus, utcnow
from storebot.settings import Settings
from storebot.telegram_api import BotApi
from storebot.tokens import TokenBox, redact

log = logging.getLogger(__name__)
FAILURE_LOG_LINES = 50


@dataclass
class Hosting:
    settings: Settings
    db: Engine
    docker: DockerEngine
    telegram: BotApi
    http: httpx.AsyncClient
    tokens: TokenBox
    _network: NetworkInfo | None = field(default=None, init=False)

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
        """Change status, record the event, commit (one unit of work)."""
        check_transition(bot.status, to)
        session.add(
            BotEvent(
                bot_id=bot.id, from_status=bot.status, to_status=to, actor=actor, reason=reason
            )
        )
        bot.status = to
        bot.status_reason = reason or None
        bot.updated_at = utcnow()
        session.add(bot)
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

    def spec(self, bot: Bot) -> dict[str, object]:
        data = PurePosixPath(bot_files.data_dir(self.settings.DATA_ROOT, bot.id))
        limits = Limits(cpus=bot.cpu_limit, mem_bytes=bot.mem_limit, pids=bot.pids_limit)
        return container_spec(self.settings, bot.id, data, limits)

    async def prepare_network(self) -> NetworkInfo:
        if self._network is None:
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

        On timeout: keep the last log lines, stop the container (a broken nullclawd may
        spin at full CPU), mark failed and raise HealthTimeout.
        """
        await self.prepare_network()
        await self.docker.run(self.spec(bot))
        s = self.settings
        if await wait_healthy(
            self.http, s.HEALTH_PROBE_URL, s.bot_host(bot.id), s.HEALTH_TIMEOUT_SECONDS
        ):
            if bot.status is not BotStatus.running:
                self.transition(session, bot, BotStatus.running, actor=actor, reason=why)
            return
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
