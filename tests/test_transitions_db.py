"""Status changes are compare-and-set: a concurrent change is never overwritten."""

from __future__ import annotations

import pytest
from sqlmodel import select

from storebot.app import build_hosting
from storebot.errors import StateChanged
from storebot.models import Bot, BotEvent, BotStatus, Customer
from tests.conftest import make_settings


async def test_concurrent_change_wins_over_a_stale_one(migrated_db: str) -> None:
    h = build_hosting(make_settings(DATABASE_URL=migrated_db))
    try:
        with h.session() as s:
            c = Customer(telegram_id=1)
            s.add(c)
            s.commit()
            assert c.id is not None
            s.add(
                Bot(
                    id="cas00001",
                    customer_id=c.id,
                    status=BotStatus.deploying,
                    cpu_limit=1,
                    mem_limit=2**29,
                    pids_limit=64,
                )
            )
            s.commit()
        with h.session() as slow, h.session() as operator:
            deploying = h.get_bot(slow, "cas00001")  # a slow deploy read it
            kill = h.get_bot(operator, "cas00001")
            h.transition(operator, kill, BotStatus.suspended, actor="ops", reason="abuse")
            with pytest.raises(StateChanged, match="became suspended"):
                h.transition(slow, deploying, BotStatus.running, actor="deploy")
            assert deploying.status is BotStatus.suspended
        with h.session() as s:
            assert h.get_bot(s, "cas00001").status is BotStatus.suspended
            events = [(e.to_status, e.actor) for e in s.exec(select(BotEvent))]
            assert events == [("suspended", "ops")]
    finally:
        await h.aclose()
