"""The meter's HTTP app: POST /v1/chat/completions for the bots; GET /metrics,
GET /healthz and POST /sync (re-read the bots now) for the host.

One call: bearer -> bot (the SHA-256 of its LLM token, looked up in memory) -> refused
unless the bot may run -> body checked, the model forced to OPENROUTER_MODEL -> one of
the bot's slots -> balance > 0 ? forward and debit `usage.cost` x LLM_MARKUP : the
"top up" answer (200, see `replies`). An upstream failure reaches the bot as an error
and is not charged.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
from aiohttp import web

from storebot.ledger import Debit, cost_to_micro
from storebot.meter import replies
from storebot.meter.book import MAY_CALL, Book, Caller
from storebot.meter.metrics import CONTENT_TYPE, MeterMetrics
from storebot.meter.upstream import Costs, Upstream, UpstreamFailed, drain
from storebot.models import utcnow
from storebot.settings import Settings

log = logging.getLogger(__name__)
SYNC_NOW_TIMEOUT_SECONDS = 5.0
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass
class Syncs:
    """The sync loop's clock: a sync can be asked for now, and waited for."""

    wanted: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0
    finished: int = 0
    last_ok: int = 0  # the number of the last sync that succeeded
    _done: asyncio.Condition = field(default_factory=asyncio.Condition)

    def begin(self) -> None:
        self.wanted.clear()
        self.started += 1

    async def end(self, ok: bool) -> None:
        self.finished = self.started
        if ok:
            self.last_ok = self.started
        async with self._done:
            self._done.notify_all()

    async def one_from_now(self, timeout: float) -> bool:
        """Ask for a sync and wait for one that started after this call; True if it
        succeeded within `timeout` seconds."""
        target = self.started + 1
        self.wanted.set()
        async with self._done:
            try:
                await asyncio.wait_for(
                    self._done.wait_for(lambda: self.finished >= target), timeout
                )
            except TimeoutError:
                return False
        return self.last_ok >= target


@dataclass
class Meter:
    settings: Settings
    book: Book
    upstream: Upstream
    metrics: MeterMetrics
    shop_username: str | None = None  # the management bot, named in the "top up" answer
    syncs: Syncs = field(default_factory=Syncs)


def _fail(status: int, message: str, kind: str, code: str) -> web.Response:
    return web.json_response(replies.error(message, kind, code), status=status)


def build_meter_app(m: Meter) -> web.Application:
    s = m.settings
    bot_net = ipaddress.ip_network(s.BOT_NETWORK_SUBNET)
    host_on_bridge = bot_net.network_address + 1  # Docker gives the bridge gateway .1

    def authenticate(request: web.Request) -> Caller | web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        caller = m.book.caller(hashlib.sha256(token.encode()).hexdigest()) if token else None
        if caller is None:
            m.metrics.refusals.labels("unknown", "unknown_token").inc()
            why = "no API key" if not token else "this API key is not valid"
            return _fail(401, why, "invalid_request_error", "invalid_api_key")
        if caller.status not in MAY_CALL:
            m.metrics.refusals.labels(caller.bot_id, "suspended").inc()
            m.metrics.requests.labels(caller.bot_id, "refused").inc()
            return _fail(
                403,
                f"bot {caller.bot_id} is {caller.status}: its LLM access is off",
                "permission_error",
                "bot_not_running",
            )
        return caller

    async def completions(request: web.Request) -> web.StreamResponse:
        caller = authenticate(request)
        if isinstance(caller, web.Response):
            return caller
        bot = caller.bot_id
        try:
            payload = orjson.loads(await request.read())
            if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
                raise ValueError("not a chat completion request")
        except web.HTTPRequestEntityTooLarge:
            raise
        except ValueError as exc:
            m.metrics.requests.labels(bot, "bad_request").inc()
            return _fail(400, f"malformed request: {exc}", "invalid_request_error", "bad_json")
        stream = payload.get("stream") is True
        # One model for everyone, whatever was asked. (OpenRouter reports usage.cost in
        # every answer: no opt-in needed any more.)
        payload["model"] = s.OPENROUTER_MODEL
        async with m.book.slot(bot):
            if m.book.balance(bot) <= 0:
                return empty_balance(request, bot, stream)
            body = orjson.dumps(payload)  # orjson: a third of stdlib json's time
            if stream:
                return await forward_stream(request, bot, body)
            return await forward(bot, body)

    def empty_balance(request: web.Request, bot: str, stream: bool) -> web.Response:
        m.metrics.refusals.labels(bot, "empty_balance").inc()
        m.metrics.requests.labels(bot, "empty_balance").inc()
        text = replies.empty_balance_text(bot, m.shop_username)
        if stream:
            body = replies.completion_stream(s.OPENROUTER_MODEL, text)
            return web.Response(body=body, headers=SSE_HEADERS)
        body = replies.completion(s.OPENROUTER_MODEL, text)
        return web.Response(body=body, content_type="application/json")

    def charge(bot: str, cost: Decimal | None, note: str) -> None:
        if cost is None:
            m.metrics.uncosted.labels(bot).inc()
            micro = s.LLM_UNKNOWN_COST_MICRO
        else:
            micro = cost_to_micro(cost, s.LLM_MARKUP)
        if micro > 0:
            m.book.charge(Debit(bot, micro, utcnow(), note))
            m.metrics.debited.labels(bot).inc(micro)

    def upstream_error(bot: str, exc: UpstreamFailed) -> web.Response:
        m.metrics.requests.labels(bot, "upstream_error").inc()
        kind = "invalid_request_error" if exc.status == 400 else "upstream_error"
        return _fail(exc.status, str(exc), kind, f"upstream_{exc.status}")

    async def forward(bot: str, body: bytes) -> web.Response:
        started = time.perf_counter()
        try:
            answer = await m.upstream.complete(body)
        except UpstreamFailed as exc:
            return upstream_error(bot, exc)
        finally:
            m.metrics.upstream_seconds.labels(bot).observe(time.perf_counter() - started)
        charge(bot, answer.cost, "chat")
        m.metrics.requests.labels(bot, "forwarded").inc()
        return web.Response(body=answer.body, content_type="application/json")

    async def forward_stream(request: web.Request, bot: str, body: bytes) -> web.StreamResponse:
        started, costs = time.perf_counter(), Costs()
        out: web.StreamResponse | None = None
        try:
            async with m.upstream.stream(body) as resp:
                out = web.StreamResponse(headers=SSE_HEADERS)
                await out.prepare(request)
                async for data in resp.content.iter_any():
                    costs.feed(data)
                    try:
                        await out.write(data)
                    except ConnectionError:  # the bot hung up: still learn the cost
                        await drain(resp, costs)
                        break
                costs.close()
        except UpstreamFailed as exc:
            if out is None:  # nothing sent yet: a proper error status
                return upstream_error(bot, exc)
            log.warning("stream of bot %s broke: %s", bot, exc)  # the bot sees it cut short
        except TimeoutError:
            log.warning("stream of bot %s: the bot did not read it to the end in time", bot)
        finally:
            m.metrics.upstream_seconds.labels(bot).observe(time.perf_counter() - started)
        if costs.cost is not None or costs.done:  # a complete answer, or one with a price
            charge(bot, costs.cost, "chat stream")
            m.metrics.requests.labels(bot, "forwarded").inc()
        else:
            m.metrics.requests.labels(bot, "upstream_error").inc()
        assert out is not None
        return out

    def from_a_bot(request: web.Request) -> bool:
        # Bots reach this port: what other bots spend is none of their business. The
        # host's own address on the bridge (the gateway) is storebot, not a bot.
        ip = _address(request.remote)
        return ip is not None and ip in bot_net and ip != host_on_bridge

    async def metrics(request: web.Request) -> web.Response:
        if from_a_bot(request):
            return web.Response(status=403, text="forbidden")
        m.metrics.unwritten.set(m.book.unwritten)
        return web.Response(body=m.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def sync_now(request: web.Request) -> web.Response:
        """storebot, after a suspend, a start or a top-up: re-read statuses, tokens and
        balances now (answered once done) instead of within METER_SYNC_SECONDS."""
        if from_a_bot(request):
            return web.Response(status=403, text="forbidden")
        if await m.syncs.one_from_now(SYNC_NOW_TIMEOUT_SECONDS):
            return web.json_response({"status": "synced"})
        return web.json_response({"status": "sync failed or late"}, status=503)

    async def healthz(request: web.Request) -> web.Response:
        ok = m.book.synced
        return web.json_response({"status": "ok" if ok else "starting"}, status=200 if ok else 503)

    app = web.Application(client_max_size=s.METER_MAX_BODY_BYTES)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/sync", sync_now)
    return app


def _address(remote: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(remote or "")
    except ValueError:
        return None
