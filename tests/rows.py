"""Rows a test needs in place without going through a deploy (no Docker)."""

from __future__ import annotations

import hashlib

from sqlalchemy import Engine

from storebot.customers import customer_for
from storebot.db import session
from storebot.models import Bot, BotStatus


def add_bot(
    engine: Engine,
    bot_id: str,
    owner: int = 4_000_001,
    *,
    status: BotStatus = BotStatus.running,
    llm_token: str | None = None,
    username: str | None = None,
) -> str:
    """A bot of `owner` (created if new) in `status`, as a finished deploy leaves it."""
    token_hash = hashlib.sha256(llm_token.encode()).hexdigest() if llm_token else None
    with session(engine) as s:
        c = customer_for(s, owner)
        assert c.id is not None
        s.add(
            Bot(
                id=bot_id,
                customer_id=c.id,
                status=status,
                telegram_username=username,
                llm_token_hash=token_hash,
                cpu_limit=1,
                mem_limit=2**29,
                pids_limit=64,
            )
        )
        s.commit()
    return bot_id


def set_status(engine: Engine, bot_id: str, status: BotStatus) -> None:
    with session(engine) as s:
        bot = s.get(Bot, bot_id)
        assert bot is not None
        bot.status = status
        s.add(bot)
        s.commit()
