"""`storebot meter`: the LLM metering proxy the hosted bots call, in its own process
(restarting storebot never cuts a bot's LLM traffic).

Composition root: settings -> database -> Book (memory) + Upstream (OpenRouter) ->
aiohttp app on METER_HOST:METER_PORT -> a sync task -> run until SIGTERM -> a last
sync (no debit is lost on a clean stop) -> close.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import httpx
from aiohttp import web

from storebot.db import make_engine
from storebot.errors import StorebotError
from storebot.meter.app import Meter, build_meter_app
from storebot.meter.book import Book
from storebot.meter.metrics import MeterMetrics
from storebot.meter.upstream import Upstream
from storebot.settings import Settings
from storebot.telegram_api import BotApi

log = logging.getLogger(__name__)
#: syncs asked for (POST /sync) come no closer than this: a full re-read each
MIN_SYNC_GAP_SECONDS = 0.1


def build_meter(settings: Settings) -> Meter:
    return Meter(
        settings=settings,
        book=Book(make_engine(settings.DATABASE_URL), settings.METER_MAX_IN_FLIGHT_PER_BOT),
        upstream=Upstream(
            settings.OPENROUTER_BASE_URL,
            settings.OPENROUTER_API_KEY.get_secret_value(),
            settings.METER_UPSTREAM_TIMEOUT_SECONDS,
        ),
        metrics=MeterMetrics(),
    )


async def keep_synced(m: Meter, stop: asyncio.Event) -> None:
    """Sync the book every METER_SYNC_SECONDS, or at once when asked (POST /sync), until
    `stop`, then once more: a sync that was already running when `stop` came may miss
    the last calls' debits."""
    while True:
        last = stop.is_set()
        m.syncs.begin()
        ok = False
        try:
            await m.book.sync()
            ok = True
        except Exception as exc:  # the database may be away for a while: keep serving
            m.metrics.sync_failures.inc()
            log.warning("meter sync failed (%d debits kept): %s", m.book.unwritten, exc)
        finally:
            await m.syncs.end(ok)
        if last:
            return
        ended = time.monotonic()
        await _first_of(stop, m.syncs.wanted, timeout=m.settings.METER_SYNC_SECONDS)
        if not stop.is_set():  # asked for: still no more than one sync per MIN_SYNC_GAP
            await asyncio.sleep(ended + MIN_SYNC_GAP_SECONDS - time.monotonic())


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def write_the_rest(m: Meter, attempts: int = 5) -> bool:
    """At shutdown: the debits a failed last sync kept, written or (after `attempts`)
    reported; True when none is left unwritten."""
    for attempt in range(attempts):
        if not m.book.unwritten:
            return True
        try:
            await m.book.sync()
        except Exception as exc:
            log.warning("writing the last %d debits failed: %s", m.book.unwritten, exc)
            await asyncio.sleep(min(2**attempt, 10))
    if m.book.unwritten:
        log.error("%d debits were never written to the ledger", m.book.unwritten)
    return not m.book.unwritten


async def learn_shop_name(m: Meter) -> None:
    """The management bot's @username, for the "top up" answer (best effort)."""
    token = m.settings.STOREBOT_BOT_TOKEN
    if token is None:
        return
    async with httpx.AsyncClient() as http:
        api = BotApi(m.settings.TELEGRAM_API_BASE, http)
        for _ in range(10):
            try:
                m.shop_username = (await api.get_me(token.get_secret_value())).username
                return
            except StorebotError as exc:
                log.warning("meter: cannot learn the management bot's name yet: %s", exc)
                await asyncio.sleep(30)


async def serve(m: Meter, stop: asyncio.Event) -> bool:
    """Serve until `stop`; True when every debit taken is on the ledger at the end."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its URLs carry the bot token
    await m.upstream.start()
    await m.book.sync()  # tokens and balances known before the first call
    runner = web.AppRunner(build_meter_app(m), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, m.settings.METER_HOST, m.settings.METER_PORT)
    await site.start()
    finished = asyncio.Event()  # set once no call is in flight any more
    syncing = asyncio.create_task(keep_synced(m, finished))
    naming = asyncio.create_task(learn_shop_name(m))
    log.info("meter listening on %s:%s", m.settings.METER_HOST, m.settings.METER_PORT)
    try:
        await stop.wait()
    finally:
        naming.cancel()
        await runner.cleanup()  # no new calls; calls in flight finish first
        finished.set()
        await syncing  # its last sync writes the last debits
        written = await write_the_rest(m)
        await m.upstream.aclose()
        m.book.close()
    return written


async def run(settings: Settings) -> bool:
    m = build_meter(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await serve(m, stop)
