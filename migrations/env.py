"""Alembic environment: the URL comes from storebot (`storebot migrate`)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import storebot.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from storebot.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "storebot sets sqlalchemy.url"
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=url.startswith("sqlite"),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
