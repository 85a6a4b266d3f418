"""storebot's own HTTP endpoints: the Stripe webhook and a health check.

POST /stripe/webhook: the raw body's signature is checked first (400 and nothing
changes otherwise), then the event is applied exactly once (a top-up: the meter is
asked to re-read balances), then its effects are handed to `on_effects` (the chat
layer). Stripe gets 200 once the database has the
event, even if telling someone fails: the state is what counts after a restart.
GET /healthz: 200 when the database answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy import text

from storebot.effects import Effect
from storebot.hosting import Hosting
from storebot.orders import apply_event
from storebot.stripe_gateway import BadWebhook, StripeGateway

log = logging.getLogger(__name__)
OnEffects = Callable[[list[Effect]], Awaitable[None]]
MAX_WEBHOOK_BYTES = 512 * 1024


def build_web_app(h: Hosting, gw: StripeGateway, on_effects: OnEffects) -> web.Application:
    async def stripe_webhook(request: web.Request) -> web.Response:
        payload = await request.read()
        try:
            event = gw.parse_event(payload, request.headers.get("Stripe-Signature"))
        except BadWebhook as exc:
            log.warning("stripe webhook refused: %s", exc)
            return web.json_response({"error": str(exc)}, status=400)
        effects = await asyncio.to_thread(apply_event, h, event)
        if any(e.kind == "topped_up" for e in effects):
            await h.tell_meter()  # the bot answers again before its owner hears of it
        try:
            await on_effects(effects)
        except Exception:  # the event is applied; a failed message must not undo that
            log.exception("effects of stripe event %s not delivered", event["id"])
        return web.json_response({"received": True})

    async def healthz(request: web.Request) -> web.Response:
        try:
            await asyncio.to_thread(_ping_db, h)
        except Exception as exc:  # any driver error means "not healthy"
            return web.json_response({"status": "unhealthy", "db": str(exc)}, status=503)
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=MAX_WEBHOOK_BYTES)
    app.router.add_post("/stripe/webhook", stripe_webhook)
    app.router.add_get("/healthz", healthz)
    return app


def _ping_db(h: Hosting) -> None:
    with h.db.connect() as conn:
        conn.execute(text("SELECT 1"))
