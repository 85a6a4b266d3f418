"""Composition root of the shared services: the only place that builds real adapters.

settings -> database -> Docker / Telegram / HTTP clients -> Hosting; Stripe. The
management bot is composed on top of these in `storebot.runner`. Tests build the
same objects with settings that point at fakes and test services.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httpx

from storebot.db import make_engine
from storebot.docker_engine import DockerEngine
from storebot.hosting import Hosting
from storebot.settings import Settings
from storebot.telegram_api import BotApi
from storebot.tokens import TokenBox

if TYPE_CHECKING:
    from storebot.stripe_gateway import StripeGateway


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
    from storebot.stripe_gateway import StripeGateway  # stripe: not for the admin CLI

    secret_key, webhook_secret = settings.stripe_keys()
    return StripeGateway(secret_key, webhook_secret, settings.STRIPE_API_BASE, settings.CURRENCY)
