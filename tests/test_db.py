"""Schema on SQLite and PostgreSQL: migrations, token claim uniqueness."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from storebot.db import make_engine, migrate, session
from storebot.models import Bot, BotStatus, Customer


def test_migrate_twice(db_url: str) -> None:
    migrate(db_url)
    migrate(db_url)
    engine = make_engine(db_url)
    assert {"customer", "bot", "bot_event", "alembic_version"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


def test_one_token_one_live_bot(migrated_db: str) -> None:
    engine = make_engine(migrated_db)
    with session(engine) as s:
        c = Customer(telegram_id=7_000_000_001)  # needs BIGINT
        s.add(c)
        s.commit()
        common = {"customer_id": c.id, "cpu_limit": 1, "mem_limit": 2**29, "pids_limit": 64}
        s.add(Bot(id="aaaa0001", token_claim=42, status=BotStatus.running, **common))
        s.commit()
        # destroyed bots release their claim (NULL): many may share NULL
        s.add(Bot(id="aaaa0002", token_claim=None, status=BotStatus.destroyed, **common))
        s.add(Bot(id="aaaa0003", token_claim=None, status=BotStatus.destroyed, **common))
        s.commit()
        s.add(Bot(id="aaaa0004", token_claim=42, **common))
        with pytest.raises(IntegrityError):
            s.commit()
    engine.dispose()
