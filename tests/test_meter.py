"""The LLM meter against the OpenRouter fake, on SQLite and PostgreSQL: forwarding and
debiting (streamed and not), the top-up answer at zero, refusals, bad input, upstream
failures (never charged), the race for the last cents, metrics, and the real
`storebot meter` process stopping without losing a debit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event
from sqlmodel import select

from storebot import ledger
from storebot.db import make_engine, session
from storebot.ledger import Debit
from storebot.meter import build_meter, serve
from storebot.meter.book import Book
from storebot.models import BotStatus, LedgerEntry, LedgerKind, utcnow
from storebot.settings import Settings
from tests.conftest import base_env
from tests.fakes.openrouter import FakeOpenRouter
from tests.fakes.telegram import FakeTelegram
from tests.harness import free_port, until_answers
from tests.rows import add_bot, set_status

MODEL = "openai/gpt-4o-mini"  # OPENROUTER_MODEL in base_env
UPSTREAM_KEY = "sk-or-v1-" + "k" * 20
COST = Decimal("0.0012")  # what the fake reports per call (USD)
CHARGED = 1_500  # micro-USD: 0.0012 x 1.25 markup
SYNC = 0.05


def chat_body(text: str = "hello", *, stream: bool = False, model: str = "meter/x") -> bytes:
    return json.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}
    ).encode()


@dataclass
class MeterUnderTest:
    url: str
    engine: Engine
    upstream: FakeOpenRouter
    settings: Settings
    http: httpx.AsyncClient

    def bot(self, bot_id: str, balance: int = 0, status: BotStatus = BotStatus.running) -> str:
        """A bot with LLM token `tok-<id>` and `balance` micro-USD of credit."""
        add_bot(self.engine, bot_id, status=status, llm_token=f"tok-{bot_id}")
        if balance:
            with session(self.engine) as s:
                ledger.credit_topup(s, bot_id, balance, ref=f"cs-{bot_id}", actor="test")
                s.commit()
        return bot_id

    async def synced(self) -> None:
        """Until a sync that started now is done (what storebot asks after a change)."""
        answer = await self.http.post(f"{self.url}/sync")
        assert answer.status_code == 200 and answer.json() == {"status": "synced"}

    async def call(
        self, bot_id: str | None, body: bytes | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if bot_id is not None:
            headers["Authorization"] = f"Bearer tok-{bot_id}"
        return await self.http.post(
            f"{self.url}/v1/chat/completions",
            content=chat_body() if body is None else body,
            headers=headers,
            **kw,
        )

    def balance(self, bot_id: str) -> int:
        with session(self.engine) as s:
            return ledger.balance(s, bot_id)

    def debits(self, bot_id: str) -> list[LedgerEntry]:
        with session(self.engine) as s:
            return list(
                s.exec(
                    select(LedgerEntry).where(
                        LedgerEntry.bot_id == bot_id, LedgerEntry.kind == LedgerKind.debit
                    )
                )
            )


def meter_env(db: str, upstream: FakeOpenRouter, **overrides: Any) -> dict[str, str]:
    settings: dict[str, Any] = {
        "DATABASE_URL": db,
        "OPENROUTER_API_KEY": UPSTREAM_KEY,
        "OPENROUTER_BASE_URL": upstream.base_url,
        "METER_HOST": "127.0.0.1",
        "METER_PORT": free_port(),
        "METER_SYNC_SECONDS": SYNC,
        "METER_UPSTREAM_TIMEOUT_SECONDS": 1.5,
        "LLM_MARKUP": "1.25",
    }
    return base_env(**(settings | overrides))


@pytest.fixture
async def meter(migrated_db: str, telegram: FakeTelegram) -> AsyncIterator[MeterUnderTest]:
    shop = telegram.add_bot(username="storebot_shop_bot")
    with FakeOpenRouter(api_key=UPSTREAM_KEY, cost=COST) as upstream:
        env = meter_env(
            migrated_db,
            upstream,
            STOREBOT_BOT_TOKEN=shop.token,
            TELEGRAM_API_BASE=telegram.base_url,
        )
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        m = build_meter(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(serve(m, stop))
        url = f"http://127.0.0.1:{settings.METER_PORT}"
        engine = make_engine(migrated_db)
        async with httpx.AsyncClient(timeout=10) as http:
            await until_answers(http, f"{url}/healthz")
            try:
                yield MeterUnderTest(url, engine, upstream, settings, http)
            finally:
                stop.set()
                await task
                engine.dispose()


async def test_forwards_with_the_server_key_and_fixed_model_then_debits(
    meter: MeterUnderTest,
) -> None:
    bot = meter.bot("mtr00001", balance=1_000_000)
    await meter.synced()
    resp = await meter.call(bot, chat_body("hi", model="meter/anthropic/claude-opus-4"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "fake reply"
    [sent] = meter.upstream.requests
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # never the bot's token
    assert sent.model == MODEL  # forced, whatever the bot asked for
    assert sent.body["messages"] == [{"role": "user", "content": "hi"}]
    await meter.synced()
    assert meter.balance(bot) == 1_000_000 - CHARGED
    assert [d.amount_micro for d in meter.debits(bot)] == [-CHARGED]


async def test_streams_through_and_debits_the_cost_of_the_last_chunk(
    meter: MeterUnderTest,
) -> None:
    bot = meter.bot("mtr00002", balance=1_000_000)
    await meter.synced()
    meter.upstream.reply = "one two three"
    resp = await meter.call(bot, chat_body(stream=True))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    lines = resp.text.splitlines()
    assert ": OPENROUTER PROCESSING" in lines  # passed through untouched
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
    words = [
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in lines
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    ]
    assert "".join(words).split() == ["one", "two", "three"]
    await meter.synced()
    assert meter.balance(bot) == 1_000_000 - CHARGED


@pytest.mark.parametrize("stream", [False, True])
async def test_an_empty_balance_gets_a_top_up_answer_not_an_error(
    meter: MeterUnderTest, stream: bool
) -> None:
    bot = meter.bot(f"mtr0000{3 + stream}", balance=0)
    await meter.synced()
    resp = await meter.call(bot, chat_body(stream=stream))
    assert resp.status_code == 200  # nullclawd shows an HTTP error as a generic text
    if stream:
        events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(
            c["choices"][0]["delta"].get("content", "")
            for c in map(json.loads, events[:-1])
            if c["choices"]
        )
    else:
        body = resp.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["finish_reason"] == "stop"
        text = body["choices"][0]["message"]["content"]
    assert "/topup" in text and "@storebot_shop_bot" in text and bot in text
    assert meter.upstream.count == 0  # upstream never called
    assert meter.debits(bot) == []


async def test_unknown_missing_and_suspended_tokens_are_refused(meter: MeterUnderTest) -> None:
    bot = meter.bot("mtr00005", balance=1_000_000)
    gone = meter.bot("mtr00006", balance=1_000_000, status=BotStatus.destroyed)
    await meter.synced()
    assert (await meter.call(None)).status_code == 401
    assert (await meter.call("nobody")).status_code == 401
    wrong_scheme = await meter.http.post(
        f"{meter.url}/v1/chat/completions",
        content=chat_body(),
        headers={"Authorization": "Basic tok-mtr00005"},
    )
    assert wrong_scheme.status_code == 401
    assert (await meter.call(gone)).status_code == 403
    assert (await meter.call(bot)).status_code == 200
    set_status(meter.engine, bot, BotStatus.suspended)  # the kill switch, from another process
    started = time.monotonic()
    while (await meter.call(bot)).status_code != 403:
        assert time.monotonic() - started < 5, "the suspension never reached the meter"
        await asyncio.sleep(0.02)
    refused = await meter.call(bot)
    assert refused.json()["error"]["code"] == "bot_not_running"
    assert meter.upstream.count >= 1
    assert all(r.status == 200 for r in meter.upstream.requests)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"model": "x"}', b"", "\ufffd".encode("utf-16")],
    ids=["broken", "array", "no-messages", "empty", "not-utf8"],
)
async def test_malformed_requests_get_400_and_cost_nothing(
    meter: MeterUnderTest, body: bytes
) -> None:
    bot = meter.bot("mtr00007", balance=1_000_000)
    await meter.synced()
    resp = await meter.call(bot, body)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert meter.upstream.count == 0
    await meter.synced()
    assert meter.balance(bot) == 1_000_000


async def test_upstream_failures_reach_the_bot_as_errors_and_are_never_charged(
    meter: MeterUnderTest,
) -> None:
    bot = meter.bot("mtr00008", balance=1_000_000)
    await meter.synced()
    up = meter.upstream
    up.fail_next(500)
    assert (await meter.call(bot)).status_code == 502
    up.fail_next(402)  # our key ran dry: the bot must not see a 402 (nullclawd would)
    assert (await meter.call(bot)).status_code == 502
    up.garbage_next()
    assert (await meter.call(bot)).status_code == 502
    up.drop_next()
    assert (await meter.call(bot)).status_code == 502
    up.stream_error_next()  # a non-streamed call gets {"error"} with HTTP 200
    assert (await meter.call(bot)).status_code == 502
    up.delay_next(5)
    started = time.monotonic()
    timed_out = await meter.call(bot)
    assert timed_out.status_code == 504
    assert time.monotonic() - started < 4.5  # METER_UPSTREAM_TIMEOUT_SECONDS=1.5, not 5
    # streamed: an error event mid-stream, a dropped stream, a stalled one
    up.stream_error_next()
    assert (await meter.call(bot, chat_body(stream=True))).status_code == 200
    up.drop_next()
    await meter.call(bot, chat_body(stream=True))
    up.delay_next(0, stall=5)
    started = time.monotonic()
    await meter.call(bot, chat_body(stream=True))
    assert time.monotonic() - started < 4.5
    up.fail_next(503)
    assert (await meter.call(bot, chat_body(stream=True))).status_code == 502
    await meter.synced()
    assert meter.debits(bot) == []  # nothing charged for any of them
    assert (await meter.call(bot)).status_code == 200  # and the meter is still fine
    await meter.synced()
    assert meter.balance(bot) == 1_000_000 - CHARGED


async def test_fifty_concurrent_calls_racing_for_the_last_cents(meter: MeterUnderTest) -> None:
    """Enough credit for 2.5 calls: calls are admitted while the balance is above zero,
    so it ends no lower than -(METER_MAX_IN_FLIGHT_PER_BOT x one call's cost); the rest
    get the top-up answer, and every forwarded call is on the ledger."""
    slots = meter.settings.METER_MAX_IN_FLIGHT_PER_BOT
    bot = meter.bot("mtr00009", balance=CHARGED * 5 // 2)
    await meter.synced()
    meter.upstream.latency = 0.1
    answers = await asyncio.gather(*(meter.call(bot) for _ in range(50)))
    assert [a.status_code for a in answers] == [200] * 50
    topup = [a for a in answers if "/topup" in a.text]
    forwarded = meter.upstream.count
    assert 3 <= forwarded <= 2.5 + slots
    assert len(topup) == 50 - forwarded
    await meter.synced()
    assert meter.balance(bot) == CHARGED * 5 // 2 - forwarded * CHARGED
    assert meter.balance(bot) >= -slots * CHARGED  # the stated overspend bound
    assert len(meter.debits(bot)) == forwarded
    with session(meter.engine) as s:
        assert ledger.check_sums(s) == {}


async def test_a_missing_cost_is_charged_the_fallback_never_nothing(
    meter: MeterUnderTest,
) -> None:
    from tests.fakes.openrouter import OMIT

    bot = meter.bot("mtr00010", balance=1_000_000)
    await meter.synced()
    meter.upstream.usage_next(cost=OMIT)
    assert (await meter.call(bot)).status_code == 200
    await meter.synced()
    assert meter.balance(bot) == 1_000_000 - meter.settings.LLM_UNKNOWN_COST_MICRO


async def test_metrics_per_bot(meter: MeterUnderTest) -> None:
    bot = meter.bot("mtr00011", balance=1_000_000)
    await meter.synced()
    await meter.call(bot)
    await meter.call("nobody")
    text = (await meter.http.get(f"{meter.url}/metrics")).text
    assert f'storebot_meter_requests_total{{bot="{bot}",outcome="forwarded"}} 1.0' in text
    assert f'storebot_meter_debited_micro_usd_total{{bot="{bot}"}} {CHARGED}.0' in text
    assert 'storebot_meter_refusals_total{bot="unknown",reason="unknown_token"} 1.0' in text
    assert f'storebot_meter_upstream_seconds_count{{bot="{bot}"}} 1.0' in text


async def test_metrics_and_sync_are_not_served_to_the_bots(migrated_db: str) -> None:
    """An address in BOT_NETWORK_SUBNET is a bot, except the bridge gateway (.1), which
    is the host itself (storebot scraping, or asking for a sync)."""
    with FakeOpenRouter(api_key=UPSTREAM_KEY) as upstream:
        env = meter_env(migrated_db, upstream, BOT_NETWORK_SUBNET="127.0.0.0/8")
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        stop = asyncio.Event()
        task = asyncio.create_task(serve(build_meter(settings), stop))
        url = f"http://127.0.0.1:{settings.METER_PORT}/metrics"
        try:
            as_bot = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
            async with httpx.AsyncClient(transport=as_bot) as bot, httpx.AsyncClient() as host:
                await until_answers(host, url)  # the host may read the metrics
                assert (await bot.get(url)).status_code == 403
                sync = url.removesuffix("/metrics") + "/sync"
                assert (await bot.post(sync)).status_code == 403
                assert (await host.post(sync)).status_code == 200
        finally:
            stop.set()
            await task


async def test_a_sync_asked_for_counts_at_once(migrated_db: str) -> None:
    """Syncing only every 30 s, the meter still serves a new bot's token, a top-up and a
    suspension at once when storebot asks (POST /sync answers once a sync that started
    after the request is done)."""
    engine = make_engine(migrated_db)
    with FakeOpenRouter(api_key=UPSTREAM_KEY, cost=COST) as upstream:
        env = meter_env(migrated_db, upstream, METER_SYNC_SECONDS=30)
        settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
        stop = asyncio.Event()
        task = asyncio.create_task(serve(build_meter(settings), stop))
        url = f"http://127.0.0.1:{settings.METER_PORT}"
        meter = MeterUnderTest(url, engine, upstream, settings, httpx.AsyncClient(timeout=10))
        try:
            await until_answers(meter.http, f"{url}/healthz")
            await meter.synced()  # the start's syncs are over: the next is 30 s away
            bot = meter.bot("mtr00020")
            assert (await meter.call(bot)).status_code == 401
            answers = await asyncio.gather(*(meter.http.post(f"{url}/sync") for _ in range(5)))
            assert {a.status_code for a in answers} == {200}
            assert (await meter.call(bot)).status_code == 200  # known: the top-up answer
            assert upstream.count == 0
            with session(engine) as s:
                ledger.credit_topup(s, bot, 1_000_000, ref="cs-mtr00020", actor="test")
                s.commit()
            await meter.synced()
            assert (await meter.call(bot)).status_code == 200 and upstream.count == 1
            set_status(engine, bot, BotStatus.suspended)
            await meter.synced()
            assert (await meter.call(bot)).status_code == 403
        finally:
            stop.set()
            await task
            await meter.http.aclose()
            engine.dispose()


async def test_a_reload_that_fails_after_the_write_never_writes_a_batch_twice(
    migrated_db: str,
) -> None:
    """The database drops between the sync's write (committed) and its reload: the
    next sync must not write the same debits again, and the balance stays exact."""
    engine = make_engine(migrated_db)
    add_bot(engine, "mtr00030", llm_token="tok-mtr00030")
    with session(engine) as s:
        ledger.credit_topup(s, "mtr00030", 1_000_000, ref="cs-mtr00030", actor="test")
        s.commit()
    book = Book(engine, 4)
    await book.sync()
    for _ in range(3):
        book.charge(Debit("mtr00030", 1_000, utcnow()))
    reloads = []

    @event.listens_for(engine, "before_cursor_execute")
    def lose_the_reload(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        if "llm_token_hash" in statement and statement.lstrip().upper().startswith("SELECT"):
            reloads.append(statement)
            if len(reloads) == 1:
                raise ConnectionError("server closed the connection unexpectedly")

    with pytest.raises(ConnectionError):
        await book.sync()
    assert book.unwritten == 0 and book.balance("mtr00030") == 997_000
    await book.sync()
    assert len(reloads) == 2
    event.remove(engine, "before_cursor_execute", lose_the_reload)
    with session(engine) as s:
        assert ledger.balance(s, "mtr00030") == 997_000  # 3 debits, each once
        assert ledger.check_sums(s) == {}
    assert book.balance("mtr00030") == 997_000
    book.close()


def test_the_meter_process_writes_every_debit_before_it_stops(
    migrated_db: str, tmp_path: Any
) -> None:
    """`storebot meter` as a process, syncing only every 30 s: SIGTERM still writes the
    debits of the calls it served."""
    engine = make_engine(migrated_db)
    add_bot(engine, "mtr00012", llm_token="tok-mtr00012")
    with session(engine) as s:
        ledger.credit_topup(s, "mtr00012", 1_000_000, ref="cs-proc", actor="test")
        s.commit()
    with FakeOpenRouter(api_key=UPSTREAM_KEY, cost=COST) as upstream:
        env = os.environ | meter_env(migrated_db, upstream, METER_SYNC_SECONDS=30)
        url = f"http://127.0.0.1:{env['METER_PORT']}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "storebot", "meter"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(timeout=10) as http:
                for _ in range(300):
                    try:
                        if http.get(f"{url}/healthz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.05)
                for _ in range(3):
                    resp = http.post(
                        f"{url}/v1/chat/completions",
                        content=chat_body(),
                        headers={"Authorization": "Bearer tok-mtr00012"},
                    )
                    assert resp.status_code == 200, resp.text
            with session(engine) as s:
                assert ledger.balance(s, "mtr00012") == 1_000_000  # not synced yet
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert b"Traceback" not in out
    with session(engine) as s:
        assert ledger.balance(s, "mtr00012") == 1_000_000 - 3 * CHARGED
    engine.dispose()
