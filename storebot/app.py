"""Composition root: the only place that builds the real adapters.

settings -> database -> Docker / Telegram / HTTP clients -> Hosting. Tests build the
same `Hosting` with settings that point at fakes and test services.
"""

from __future__ import annotations

import logging

import httpx

from storebot.db import make_engine
from storebot.docker_engine import DockerEngine
from storebot.hosting import Hosting
from storebot.settings import Settings
from storebot.stripe_gateway import StripeGateway
from storebot.telegram_api import BotApi
from storebot.tokens import TokenBox


def build_hosting(settings: Settings) -> Hosting:
    # httpx logs each request URL at INFO, and Bot API URLs contain the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    http = httpx.AsyncClient(headers={"User-Agent": "storebot"})
    return Hosting(
        settings=settings,
        db=make_engine(settings.DATABASE_URL),
        docker=DockerEngine(settings.DOCKER_HOST),
        telegram=BotApi(settings.TELEGRAM_API_BASE, http),
        http=http,
        tokens=TokenBox(settings.STOREBOT_SECRET_KEY.get_secret_value()),
    )


def build_payments(settings: Settings) -> StripeGateway:
    secret_key, webhook_secret = settings.stripe_keys()
    return StripeGateway(secret_key, webhook_secret, settings.STRIPE_API_BASE, settings.CURRENCY)
