"""`storebot run`: the management bot, the web app (Stripe webhook, /healthz) and the
scheduled jobs, in one process.

Composition root of the running service: settings -> shared services
(`storebot.app`) -> aiogram Bot and Dispatcher -> web app -> run until SIGTERM ->
close everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommand, BotCommandScopeChat
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

from storebot.app import build_hosting, build_payments
from storebot.chat.handlers import make_router
from storebot.chat.mybots import make_mybots_router
from storebot.chat.notify import send_effects
from storebot.chat.ops import COMMANDS as OPS_COMMANDS
from storebot.chat.ops import make_ops_router
from storebot.chat.throttle import Throttle
from storebot.chat.topup import make_topup_router
from storebot.effects import Effect
from storebot.hosting import Hosting
from storebot.jobs import OnEffects, resume_renewed, start_jobs
from storebot.settings import Settings
from storebot.stripe_gateway import StripeGateway
from storebot.web import build_web_app

log = logging.getLogger(__name__)
TELEGRAM_WEBHOOK_PATH = "/telegram/webhook"
COMMANDS = [
    BotCommand(command="start", description="Welcome and menu"),
    BotCommand(command="newbot", description="Create an assistant"),
    BotCommand(command="mybots", description="Your assistants"),
    BotCommand(command="topup", description="Add LLM credit"),
    BotCommand(command="balance", description="LLM credit and spend"),
    BotCommand(command="help", description="How it works"),
    BotCommand(command="cancel", description="Stop what you are doing"),
]


@dataclass
class Management:
    """Everything `storebot run` runs, built and wired, not started."""

    settings: Settings
    hosting: Hosting
    payments: StripeGateway
    bot: Bot
    dispatcher: Dispatcher
    web: web.Application
    on_effects: OnEffects

    async def aclose(self) -> None:
        await self.bot.session.close()
        await self.payments.aclose()
        await self.hosting.aclose()


def _secret(settings: Settings) -> str:
    assert settings.TELEGRAM_WEBHOOK_SECRET is not None  # checked by Settings
    return settings.TELEGRAM_WEBHOOK_SECRET.get_secret_value()


def build_management(settings: Settings) -> Management:
    hosting, payments = build_hosting(settings), build_payments(settings)
    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.TELEGRAM_API_BASE))
    bot = Bot(settings.bot_token(), session=session)
    dp = Dispatcher(hosting=hosting, payments=payments)
    throttle = Throttle(settings.THROTTLE_PER_MINUTE)
    dp.message.outer_middleware(throttle)
    dp.callback_query.outer_middleware(throttle)
    if settings.OPS_CHAT_ID is not None:  # first: nothing said there reaches the rest
        dp.include_router(make_ops_router(settings.OPS_CHAT_ID, settings.admin_ids()))
    dp.include_router(make_topup_router())  # first: a typed amount is not a token
    dp.include_router(make_router())
    dp.include_router(make_mybots_router())

    async def on_effects(effects: list[Effect]) -> None:
        await send_effects(bot, settings, effects)
        resumed = await resume_renewed(hosting, effects)
        if resumed:
            await send_effects(bot, settings, resumed)

    app = build_web_app(hosting, payments, on_effects)
    if settings.TELEGRAM_MODE == "webhook":
        # updates arrive as POSTs; aiogram rejects any without Telegram's secret header
        SimpleRequestHandler(dp, bot, secret_token=_secret(settings)).register(
            app, path=TELEGRAM_WEBHOOK_PATH
        )
    return Management(settings, hosting, payments, bot, dp, app, on_effects)


async def serve(m: Management, stop: asyncio.Event) -> None:
    """Run polling and the web app until `stop` is set, then shut down cleanly."""
    runner = web.AppRunner(m.web)
    await runner.setup()
    site = web.TCPSite(runner, m.settings.WEB_HOST, m.settings.WEB_PORT)
    await site.start()
    await m.bot.set_my_commands(COMMANDS)
    await _set_ops_commands(m)
    polling = None
    if m.settings.TELEGRAM_MODE == "webhook":
        await m.bot.set_webhook(
            f"{m.settings.PUBLIC_BASE_URL}{TELEGRAM_WEBHOOK_PATH}",
            secret_token=_secret(m.settings),
            allowed_updates=m.dispatcher.resolve_used_update_types(),
        )
    else:
        polling = asyncio.create_task(m.dispatcher.start_polling(m.bot, handle_signals=False))
    scheduler = start_jobs(m.hosting, m.on_effects)
    log.info("storebot running: web on %s:%s", m.settings.WEB_HOST, m.settings.WEB_PORT)
    try:
        await stop.wait()
    finally:
        scheduler.shutdown(wait=False)
        if polling is not None:
            with contextlib.suppress(RuntimeError):  # polling may not have started yet
                await m.dispatcher.stop_polling()
            await polling
        await runner.cleanup()
        await m.aclose()


async def _set_ops_commands(m: Management) -> None:
    chat = m.settings.OPS_CHAT_ID
    if chat is None:
        return
    if not m.settings.admin_ids():
        log.warning("OPS_CHAT_ID is set but ADMIN_USER_IDS is empty: nobody can use the ops chat")
    try:
        await m.bot.set_my_commands(OPS_COMMANDS, scope=BotCommandScopeChat(chat_id=chat))
    except TelegramAPIError as exc:  # e.g. the bot is not (yet) a member of that chat
        log.warning("cannot set the ops chat's command menu (OPS_CHAT_ID %s): %s", chat, exc)


async def run(settings: Settings) -> None:
    m = build_management(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(m, stop)
