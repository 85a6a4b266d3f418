"""Meter benchmark: `storebot meter` against the OpenRouter fake, directly and through it.

Three processes, all Python, sharing this machine's cores: the fake upstream
(`python -m tests.fakes.openrouter`), the meter as shipped (`python -m storebot meter`,
its log in the temp dir), and this process as the load generator: a minimal keep-alive
HTTP/1.1 client that sends nullclawd's own request (tests/standin/llm_request.py:
~39 KB, a ~30 KB system prompt and 14 tool schemas) as prebuilt bytes, so that it
spends as little CPU as possible. A fresh SQLite database in a temp dir (or a fresh
schema in --database-url) holds N bots (default 20) with large balances.

In one run:
  latency     K requests (default 2000) of each kind at concurrency 4: directly to the
              fake and through the meter, non-streamed and streamed (the whole SSE
              stream read), alternating in small blocks so machine noise hits both
              alike. p50/p90/p99 and the latency the meter adds (target: p99 +<= 5 ms).
  throughput  non-streamed requests/s at saturation (concurrency 32, 10 s), through the
              meter (target >= 1,000/s) and directly for reference, alternating, with
              the CPU each process used (from /proc/<pid>/stat; 100% = one core).
  memory      the meter's RSS (/proc/<pid>/status VmRSS) every 10k of 100k requests
              (half of them streamed); target: growth from 10k to 100k <= 10 MB.
  stop        SIGTERM to the meter under load: it must exit 0 having written every
              pending debit.
  ledger      debits == (calls the fake answered for the meter) x ceil(cost x markup
              x 1e6) micro-USD each, one row per call; balances moved by the same sum.

Everything it starts is stopped, and its temp files and schema removed, also on
Ctrl-C or SIGTERM; when the stop or ledger check misses, the meter's log is kept. The
CPU lines say how the cores were shared, `other` being processes outside this
benchmark: figures taken while `other` is high are noisy.
    .venv/bin/python -m bench.meter [--quick] [--bots 20] [--requests 2000] ...

--meter-profile FILE runs the same meter as `python -m cProfile -o FILE -m storebot
meter` and prints its top functions at the end (cProfile makes it slower, and exit 0
whatever the meter returned).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import pstats
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODEL = "openai/gpt-4o-mini"
UPSTREAM_KEY = "sk-or-v1-bench-" + "k" * 24
USER_TEXT = "What is on my calendar tomorrow? Also remind me to call the bank at 9."
BALANCE = 10**12  # micro-USD per bot: $1M, never runs out here
CLK = os.sysconf("SC_CLK_TCK")


# -- /proc: CPU and memory ------------------------------------------------------------------
def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    total = sum(values)
    return (total - values[3] - values[4]) / CLK, total / CLK


@dataclass
class CpuSnap:
    at: float
    procs: dict[str, float]
    busy: float
    total: float


@dataclass
class CpuWatch:
    pids: dict[str, int]

    def snap(self) -> CpuSnap:
        busy, total = machine_cpu()
        procs = {name: proc_cpu(pid) for name, pid in self.pids.items()}
        return CpuSnap(time.perf_counter(), procs, busy, total)

    @staticmethod
    def shares(a: CpuSnap, b: CpuSnap) -> dict[str, float]:
        """% of one core over the interval, per process, plus `other` and `idle`."""
        wall = b.at - a.at
        out = {k: 100 * (b.procs[k] - a.procs[k]) / wall for k in a.procs}
        busy, cores = 100 * (b.busy - a.busy) / wall, (b.total - a.total) / wall
        out["other"] = max(0.0, busy - sum(out.values()))
        out["idle"] = max(0.0, 100 * cores - busy)
        return out


NAMES = {"loadgen": "load generator"}


def fmt_shares(s: dict[str, float]) -> str:
    parts = [f"{NAMES.get(k, k)} {v:.0f}%" for k, v in s.items()]
    return ", ".join(parts) + f" (of {100 * (os.cpu_count() or 1)}%)"


# -- the load generator's HTTP/1.1 client ---------------------------------------------------
class Conn:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        r, w = self.reader, self.writer
        assert r is not None
        try:
            w.write(raw)
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            low = head.lower()
            i = low.find(b"\r\ncontent-length:")
            if i >= 0:
                body = await r.readexactly(int(low[i + 17 : low.index(b"\r\n", i + 2)]))
            elif b"\r\ntransfer-encoding: chunked" in low:
                body = await _chunked(r)
            else:
                body = await r.read()
                self.close()
            if b"\r\nconnection: close" in low:
                self.close()
            return int(head[9:12]), body
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _chunked(r: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await r.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            await r.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append((await r.readexactly(size + 2))[:-2])


def raw_request(host: str, port: int, path: str, key: str, body: bytes) -> bytes:
    """What nullclawd's curl sends (headers in its order), as bytes."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: curl/8.17.0\r\n"
        f"Accept: */*\r\nContent-Type: application/json\r\nauthorization: Bearer {key}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    bad: int = 0
    errors: int = 0
    sample: str = ""


@dataclass
class Target:
    name: str
    host: str
    port: int
    raws: dict[bool, list[bytes]]  # stream? -> one request per bot (worker i: bot i % n)
    tally: Tally = field(default_factory=Tally)
    conns: list[Conn] = field(default_factory=list)

    def conn(self, i: int) -> Conn:
        while len(self.conns) <= i:
            self.conns.append(Conn(self.host, self.port))
        return self.conns[i]

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()


async def one(t: Target, i: int, stream: bool) -> float | None:
    """One request by worker i; its latency in seconds, None on a connection error."""
    raws = t.raws[stream]
    raw, conn, tally = raws[i % len(raws)], t.conn(i), t.tally
    tally.sent += 1
    start = time.perf_counter()
    try:
        status, body = await conn.call(raw)
    except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        tally.errors += 1
        return None
    took = time.perf_counter() - start
    # the fake's answer (not the meter's own "top up" one), whole
    if status == 200 and b'"FakeProvider"' in body and (not stream or body.endswith(b"[DONE]\n\n")):
        tally.ok += 1
    else:
        tally.bad += 1
        tally.sample = tally.sample or f"HTTP {status}: {body[:300]!r}"
    return took


async def block(t: Target, stream: bool, n: int, conc: int, out: list[float]) -> None:
    """n requests, `conc` at a time; their latencies appended to `out`."""

    async def worker(i: int, k: int) -> None:
        for _ in range(k):
            took = await one(t, i, stream)
            if took is not None:
                out.append(took)

    await asyncio.gather(*(worker(i, n // conc + (i < n % conc)) for i in range(conc)))


# -- the processes --------------------------------------------------------------------------
@dataclass
class Procs:
    tmp: Path
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE if name == "fake" else log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches us only; we stop them
        )
        log.close()
        self.running.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, name: str, lines: int = 30) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.running):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.running.clear()


def start_fake(procs: Procs, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    """The OpenRouter fake on a free port; (process, its base URL)."""
    argv = [sys.executable, "-m", "tests.fakes.openrouter", "--port", "0"]
    argv += ["--api-key", UPSTREAM_KEY, "--cost", args.cost, "--latency-ms", str(args.latency_ms)]
    proc = procs.start("fake", argv, dict(os.environ), REPO)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("listening on "):
        raise RuntimeError(f"the fake did not start: {line!r}\n{procs.log_tail('fake')}")
    return proc, line.split()[-1]


def meter_argv(profile: str | None) -> list[str]:
    if profile is None:
        return [sys.executable, "-m", "storebot", "meter"]
    return [sys.executable, "-m", "cProfile", "-o", profile, "-m", "storebot", "meter"]


def start_meter(
    procs: Procs, env: dict[str, str], profile: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    """`storebot meter` on a free port, once healthy; (process, port)."""
    from tests.harness import free_port

    port = free_port()
    env = env | {"METER_PORT": str(port)}
    proc = procs.start("meter", meter_argv(profile), env, procs.tmp)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the meter exited ({proc.returncode}):\n{procs.log_tail('meter')}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp,
        ):
            if resp.status == 200:
                return proc, port
        time.sleep(0.05)
    raise RuntimeError(f"the meter did not become healthy:\n{procs.log_tail('meter')}")


# -- the database ---------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_database(base: str | None, tmp: Path) -> Iterator[str]:
    """SQLite in `tmp`, or a fresh schema in the PostgreSQL `base`, dropped at the end."""
    if base is None:
        yield f"sqlite:///{tmp / 'meter.db'}"
        return
    from sqlalchemy import create_engine, text

    schema = "bench_" + secrets.token_hex(5)
    admin = create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in base else "?"
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def add_bots(url: str, n: int) -> list[str]:
    """n running bots with large balances; their LLM tokens."""
    from storebot import ledger
    from storebot.db import make_engine, migrate, session
    from tests.rows import add_bot

    migrate(url)
    engine = make_engine(url)
    tokens = []
    try:
        for i in range(n):
            bot_id, token = f"mb{i:06d}", f"sbllm_bench_{i}_{secrets.token_hex(8)}"
            add_bot(engine, bot_id, llm_token=token)
            with session(engine) as s:
                ledger.credit_topup(s, bot_id, BALANCE, ref=f"bench-{bot_id}", actor="bench")
                s.commit()
            tokens.append(token)
    finally:
        engine.dispose()
    return tokens


def ledger_figures(url: str) -> tuple[int, int, int]:
    """(debit rows, sum of debits in micro-USD, sum of balances)."""
    from sqlalchemy import func
    from sqlmodel import col, select

    from storebot.db import make_engine, session
    from storebot.models import LedgerEntry, LedgerKind, LlmAccount

    engine = make_engine(url)
    try:
        with session(engine) as s:
            debits = select(func.count(), func.coalesce(func.sum(LedgerEntry.amount_micro), 0))
            debits = debits.where(col(LedgerEntry.kind) == LedgerKind.debit.value)
            rows, total = s.exec(debits).one()
            balances = s.exec(select(func.coalesce(func.sum(LlmAccount.balance_micro), 0))).one()
    finally:
        engine.dispose()
    return int(rows), -int(total), int(balances)


# -- the phases -----------------------------------------------------------------------------
@dataclass
class Results:
    latency: dict[tuple[str, bool], list[float]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # % of one core
    cpu_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # CPU ms per request
    rss: list[tuple[int, float]] = field(default_factory=list)  # (requests done, MB)
    stop: dict[str, Any] = field(default_factory=dict)


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def added_ms(meter: list[float], direct: list[float], p: int) -> float:
    return 1e3 * (pct(meter, p) - pct(direct, p))


def kind(stream: bool) -> str:
    return "streamed" if stream else "non-streamed"


def count(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


async def phase_latency(
    args: argparse.Namespace, targets: list[Target], cpu: CpuWatch, res: Results
) -> None:
    """Every (target, stream) kind in blocks, the order reversed every round."""
    combos = [(t, s) for s in (False, True) for t in targets]
    for t, s in combos:  # connections open, caches warm, the meter's upstream pool filled
        await block(t, s, max(args.block, args.concurrency * 10), args.concurrency, [])
        res.latency[(t.name, s)] = []
    s0 = cpu.snap()
    for r in range(math.ceil(args.requests / args.block)):
        n = min(args.block, args.requests - r * args.block)
        for t, s in combos if r % 2 == 0 else combos[::-1]:
            await block(t, s, n, args.concurrency, res.latency[(t.name, s)])
    res.cpu["latency"] = CpuWatch.shares(s0, cpu.snap())
    print_latency(args, res)


def print_latency(args: argparse.Namespace, res: Results) -> None:
    print(
        f"latency, ms, concurrency {args.concurrency}, {args.requests} requests of each kind, "
        f"alternating in blocks of {args.block}:"
    )
    for s in (False, True):
        for name in ("direct", "meter"):
            v = res.latency[(name, s)]
            print(
                f"  {kind(s):13} {name:7} p50 {1e3 * pct(v, 50):6.2f}  p90 {1e3 * pct(v, 90):6.2f}"
                f"  p99 {1e3 * pct(v, 99):6.2f}  (n={len(v)})"
            )
        m, d = res.latency[("meter", s)], res.latency[("direct", s)]
        print(
            f"  {kind(s):13} {'+meter':7} p50 {added_ms(m, d, 50):+6.2f}"
            f"  p99 {added_ms(m, d, 99):+6.2f}   (added: meter - direct)"
        )
    print(f"  CPU meanwhile: {fmt_shares(res.cpu['latency'])}")


async def saturate(
    t: Target, conc: int, warm: float, duration: float, cpu: CpuWatch
) -> tuple[int, CpuSnap, CpuSnap]:
    """Non-streamed requests, `conc` at a time, counted for `duration` s after `warm` s."""
    stop = False
    done = 0

    async def worker(i: int) -> None:
        nonlocal done
        while not stop:
            if await one(t, i, False) is not None:
                done += 1
            elif t.tally.errors > 100:
                raise RuntimeError(f"{t.name}: too many connection errors")

    tasks = [asyncio.create_task(worker(i)) for i in range(conc)]
    try:
        await asyncio.sleep(warm)
        n0, s0 = done, cpu.snap()
        await asyncio.sleep(duration)
        n1, s1 = done, cpu.snap()
    finally:
        stop = True
        await asyncio.gather(*tasks)
    return n1 - n0, s0, s1


async def phase_throughput(
    args: argparse.Namespace, targets: list[Target], cpu: CpuWatch, res: Results
) -> None:
    """Each target saturated in `rounds` slices, alternating, the order reversed every round."""
    counts = {t.name: 0 for t in targets}
    walls = {t.name: 0.0 for t in targets}
    secs: dict[str, dict[str, float]] = {t.name: {} for t in targets}  # CPU seconds
    slice_s = args.duration / args.rounds
    for r in range(args.rounds):
        for t in targets if r % 2 == 0 else targets[::-1]:
            n, s0, s1 = await saturate(t, args.load_concurrency, args.warmup, slice_s, cpu)
            wall = s1.at - s0.at
            counts[t.name] += n
            walls[t.name] += wall
            for k, v in CpuWatch.shares(s0, s1).items():
                secs[t.name][k] = secs[t.name].get(k, 0.0) + v / 100 * wall
    for name in counts:
        res.rates[name] = counts[name] / walls[name]
        res.cpu[name] = {k: 100 * v / walls[name] for k, v in secs[name].items()}
        res.cpu_ms[name] = {k: 1e3 * v / counts[name] for k, v in secs[name].items()}
    print_throughput(args, res)


def print_throughput(args: argparse.Namespace, res: Results) -> None:
    print(
        f"throughput, non-streamed, concurrency {args.load_concurrency}, {args.duration:g} s "
        f"each, in {args.rounds} alternating slices:"
    )
    for name in ("meter", "direct"):
        ms = res.cpu_ms[name]
        own = ["meter"] if name == "meter" else []
        per = ", ".join(f"{NAMES.get(k, k)} {ms[k]:.3f} ms" for k in [*own, "fake", "loadgen"])
        print(f"  {name:7} {res.rates[name]:7.0f} req/s   CPU: {fmt_shares(res.cpu[name])}")
        print(f"  {'':7} CPU per request: {per}")
        if own:
            print(f"  {'':7} meter alone on one free core: ~{1e3 / ms['meter']:.0f} req/s")


async def phase_memory(args: argparse.Namespace, meter: Target, pid: int, res: Results) -> None:
    """`memory_requests` requests, half streamed; the meter's RSS every tenth of them."""
    total, every = args.memory_requests, max(1, args.memory_requests // 10)
    issued = done = 0
    before = proc_rss_mb(pid)

    async def worker(i: int) -> None:
        nonlocal issued, done
        j = 0
        while issued < total:
            issued += 1
            j += 1
            await one(meter, i, (i + j) % 2 == 1)  # each worker alternates
            done += 1
            if done % every == 0:
                res.rss.append((done, proc_rss_mb(pid)))
            if meter.tally.errors > 100:
                raise RuntimeError("meter: too many connection errors")

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(args.load_concurrency)))
    rate = total / (time.perf_counter() - start)
    print(
        f"memory, meter RSS MB over {total} requests (half streamed, concurrency "
        f"{args.load_concurrency}, {rate:.0f} req/s):"
    )
    print(f"  before: {before:.1f}  " + "  ".join(f"{count(n)}:{mb:.1f}" for n, mb in res.rss))
    (n0, mb0), (n1, mb1) = res.rss[0], res.rss[-1]
    print(f"  growth from {count(n0)} to {count(n1)}: {mb1 - mb0:+.1f} MB")


async def phase_stop(
    args: argparse.Namespace, meter: Target, proc: subprocess.Popen[bytes], res: Results
) -> None:
    """SIGTERM while `load_concurrency` workers keep calling; the meter must exit 0."""
    signalled = False

    async def worker(i: int) -> None:
        while True:
            if await one(meter, i, i % 2 == 1) is None and signalled:
                return

    tasks = [asyncio.create_task(worker(i)) for i in range(args.load_concurrency)]
    await asyncio.sleep(args.warmup)
    rows_before = (await asyncio.to_thread(ledger_figures, args.db_url))[0]
    proc.send_signal(signal.SIGTERM)
    signalled, sent = True, time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        for task in tasks:
            task.cancel()
    seconds = time.perf_counter() - sent
    written = (await asyncio.to_thread(ledger_figures, args.db_url))[0] - rows_before
    res.stop = {"exit": code, "seconds": seconds, "written": written}
    print(
        f"stop: SIGTERM under load, exit {code} after {seconds:.2f} s; "
        f"{written} debits not yet in the ledger at SIGTERM written by the stop"
    )


def check_ledger(
    args: argparse.Namespace, direct: Tally, meter_ok: int, fake_url: str
) -> dict[str, Any]:
    """The fake's own count and cost of calls against the ledger's debits and balances."""
    stats_url = fake_url.rsplit("/api/", 1)[0] + "/__fake/stats"
    with urllib.request.urlopen(stats_url) as resp:  # noqa: S310 (our URL)
        stats = json.load(resp)
    rows, debited, balances = ledger_figures(args.db_url)
    cost, markup = Decimal(args.cost), Decimal(args.markup)
    per_call = math.ceil(cost * markup * 1_000_000)
    metered = stats["count"] - direct.sent  # the fake's calls that came through the meter
    metered_cost = Decimal(stats["cost_total"]) - direct.sent * cost
    balances_ok = balances == args.bots * BALANCE - debited
    return {
        "fake_count": stats["count"],
        "direct": direct.sent,
        "metered": metered,
        "per_call": per_call,
        "expected": metered * per_call,
        "rows": rows,
        "debited": debited,
        "answered": meter_ok,
        "balances_ok": balances_ok,
        "exact": rows == metered
        and debited == metered * per_call
        and metered_cost == metered * cost
        and balances_ok
        and meter_ok <= rows
        and direct.errors == 0,
    }


# -- the summary ----------------------------------------------------------------------------
Row = tuple[str, str, bool | None]  # what, figure, PASS/MISS (None: a figure only)
CORRECTNESS = ("SIGTERM under load", "ledger == upstream x markup", "bad answers")


def ms3(values: list[float]) -> str:
    return "/".join(f"{1e3 * pct(values, p):.2f}" for p in (50, 90, 99))


def latency_rows(res: Results) -> list[Row]:
    rows: list[Row] = []
    for s in (False, True):
        d, m = res.latency[("direct", s)], res.latency[("meter", s)]
        rows.append(
            (f"latency {kind(s)}, ms", f"p50/p90/p99 direct {ms3(d)}; meter {ms3(m)}", None)
        )
        p50, p99 = added_ms(m, d, 50), added_ms(m, d, 99)
        figure = f"p50 {p50:+.2f} ms, p99 {p99:+.2f} ms (<= 5 ms)"
        rows.append((f"added latency {kind(s)}", figure, p99 <= 5))
    return [*rows, ("  CPU during latency", fmt_shares(res.cpu["latency"]), None)]


def throughput_rows(res: Results) -> list[Row]:
    meter, direct, ms = res.rates["meter"], res.rates["direct"], res.cpu_ms["meter"]
    per = (
        f"meter {ms['meter']:.3f} ms, fake {ms['fake']:.3f} ms, load generator "
        f"{ms['loadgen']:.3f} ms; meter on one free core: ~{1e3 / ms['meter']:.0f} req/s"
    )
    return [
        (
            "throughput through the meter",
            f"{meter:.0f} req/s (>= 1000); direct {direct:.0f} req/s",
            meter >= 1000,
        ),
        ("  CPU per request via meter", per, None),
        ("  CPU at meter saturation", fmt_shares(res.cpu["meter"]), None),
        ("  CPU at direct saturation", fmt_shares(res.cpu["direct"]), None),
    ]


def memory_rows(args: argparse.Namespace, res: Results) -> list[Row]:
    (n0, mb0), (n1, mb1) = res.rss[0], res.rss[-1]
    figure = (
        f"{mb0:.1f} MB at {count(n0)} -> {mb1:.1f} MB at {count(n1)} requests: "
        f"{mb1 - mb0:+.1f} MB (<= {args.memory_slack_mb:g} MB)"
    )
    return [("meter RSS", figure, mb1 - mb0 <= args.memory_slack_mb)]


def stop_row(args: argparse.Namespace, res: Results, traceback: bool) -> Row:
    st = res.stop
    figure = (
        f"exit {st['exit']} in {st['seconds']:.2f} s; {st['written']} debits not in the "
        "ledger at SIGTERM were written by the stop"
        + (", Traceback in the meter's log" if traceback else "")
        + (" (under cProfile: exit 0 whatever the meter returned)" if args.meter_profile else "")
    )
    return ("SIGTERM under load", figure, st["exit"] == 0 and not traceback)


def ledger_row(lg: dict[str, Any]) -> Row:
    figure = (
        f"{lg['metered']} metered calls at the fake ({lg['fake_count']} - {lg['direct']} "
        f"direct) x {lg['per_call']} = {lg['expected']} micro-USD; ledger {lg['rows']} debits "
        f"= {lg['debited']}; {lg['answered']} answers seen by the client; balances "
        + ("match" if lg["balances_ok"] else "DO NOT match")
    )
    return ("ledger == upstream x markup", figure, lg["exact"])


def summary_rows(
    args: argparse.Namespace, res: Results, ledger: dict[str, Any], log: str, targets: list[Target]
) -> list[Row]:
    """The rows of the phases that ran, the stop and the ledger, the meter log's warnings."""
    rows = latency_rows(res) if res.latency else []
    rows += throughput_rows(res) if res.rates else []
    rows += memory_rows(args, res) if res.rss else []
    rows += [stop_row(args, res, "Traceback" in log), ledger_row(ledger)]
    warnings = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
    if warnings:
        figure = f"{len(warnings)} warnings/errors, first: {warnings[0][:160]}"
        rows.append(("meter log", figure, None))
    bad = "; ".join(f"{t.name}: {t.tally.bad} ({t.tally.sample})" for t in targets if t.tally.bad)
    if bad:
        rows.append(("bad answers", bad, False))
    return rows


def print_summary(rows: list[Row], took: float) -> tuple[int, bool]:
    """Print the summary block; (exit status, whether the correctness checks passed)."""
    width = max(len(r[0]) for r in rows)
    print(f"\nsummary ({took:.0f} s)")
    for what, figure, ok in rows:
        mark = "" if ok is None else ("PASS " if ok else "MISS ")
        print(f"  {mark:5}{what:{width}}  {figure}")
    correct = all(ok is not False for what, _, ok in rows if what in CORRECTNESS)
    return (0 if all(ok is not False for _, _, ok in rows) else 1), correct


def show_profile(path: str) -> None:
    out = io.StringIO()
    stats = pstats.Stats(path, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    print(f"\nmeter profile ({path}):")
    print(out.getvalue())


# -- one run --------------------------------------------------------------------------------
def request_bodies() -> dict[bool, bytes]:
    """nullclawd's exact body: stream? -> bytes."""
    from tests.standin.llm_request import request_body

    return {s: request_body(MODEL, USER_TEXT, stream=s) for s in (False, True)}


def targets(
    fake_url: str, meter_port: int, tokens: list[str], bodies: dict[bool, bytes]
) -> tuple[Target, Target]:
    """The fake called directly, and through the meter (one prebuilt request per bot)."""
    host, port = "127.0.0.1", int(fake_url.split(":")[2].split("/")[0])
    path = fake_url.split(str(port), 1)[1] + "/chat/completions"
    direct = {s: [raw_request(host, port, path, UPSTREAM_KEY, b)] for s, b in bodies.items()}
    meter = {
        s: [raw_request(host, meter_port, "/v1/chat/completions", tok, b) for tok in tokens]
        for s, b in bodies.items()
    }
    return Target("direct", host, port, direct), Target("meter", host, meter_port, meter)


def meter_env(args: argparse.Namespace, fake_url: str) -> dict[str, str]:
    from tests.harness import base_env

    return os.environ | base_env(
        "meterbench",
        DATABASE_URL=args.db_url,
        OPENROUTER_API_KEY=UPSTREAM_KEY,
        OPENROUTER_BASE_URL=fake_url,
        OPENROUTER_MODEL=MODEL,
        METER_HOST="127.0.0.1",
        METER_SYNC_SECONDS=args.sync_seconds,
        METER_UPSTREAM_TIMEOUT_SECONDS=60,
        LLM_MARKUP=args.markup,
    )


def print_header(args: argparse.Namespace, bodies: dict[bool, bytes]) -> None:
    how = " ".join(meter_argv(args.meter_profile)[1:])
    print(
        f"meter benchmark: {os.cpu_count()} cores, {args.bots} bots, "
        f"DB {args.db_url.split(':')[0]}, upstream latency {args.latency_ms:g} ms"
    )
    print(f"  meter: python {how}")
    print(
        f"  body: {len(bodies[False])} bytes ({len(bodies[True])} streamed), nullclawd's from "
        f"tests/standin/llm_request.py; cost {args.cost} x markup {args.markup}, "
        f"sync every {args.sync_seconds:g} s"
    )


async def load(
    args: argparse.Namespace,
    direct: Target,
    meter: Target,
    proc: subprocess.Popen[bytes],
    cpu: CpuWatch,
) -> Results:
    """The phases in order; the last one stops the meter."""
    res = Results()
    try:
        if "latency" not in args.skip:
            await phase_latency(args, [direct, meter], cpu, res)
        if "throughput" not in args.skip:
            await phase_throughput(args, [meter, direct], cpu, res)
        if "memory" not in args.skip:
            await phase_memory(args, meter, proc.pid, res)
        meter.close()
        await phase_stop(args, meter, proc, res)
    finally:
        direct.close()
        meter.close()
    return res


def measure(args: argparse.Namespace, procs: Procs, started: float) -> int:
    tokens = add_bots(args.db_url, args.bots)
    fake, fake_url = start_fake(procs, args)
    meter_proc, meter_port = start_meter(procs, meter_env(args, fake_url), args.meter_profile)
    bodies = request_bodies()
    direct, meter = targets(fake_url, meter_port, tokens, bodies)
    cpu = CpuWatch({"meter": meter_proc.pid, "fake": fake.pid, "loadgen": os.getpid()})
    print_header(args, bodies)
    res = asyncio.run(load(args, direct, meter, meter_proc, cpu))
    ledger = check_ledger(args, direct.tally, meter.tally.ok, fake_url)
    if args.meter_profile:
        show_profile(args.meter_profile)
    rows = summary_rows(args, res, ledger, procs.log("meter"), [direct, meter])
    code, correct = print_summary(rows, time.perf_counter() - started)
    if not correct:  # keep the meter's log for whoever looks into it
        kept = Path(tempfile.mkdtemp(prefix="meterbench-logs-"))
        shutil.copy(procs.tmp / "meter.log", kept)
        print(f"the meter's log is kept in {kept}")
    return code


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="meterbench-") as tmp_name:
        procs = Procs(Path(tmp_name))
        try:
            with fresh_database(args.database_url, procs.tmp) as url:
                args.db_url = url
                return measure(args, procs, started)
        finally:
            procs.stop_all()


# -- command line ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.meter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--quick", action="store_true", help="a smoke run of a few seconds")
    add("--bots", type=int, default=20, help="bots (default 20)")
    add("--requests", type=int, default=2000, help="latency: requests of each kind (default 2000)")
    add("--concurrency", type=int, default=4, help="latency: requests at a time (default 4)")
    add("--block", type=int, default=100, help="latency: alternation block (default 100)")
    add(
        "--load-concurrency",
        type=int,
        default=32,
        help="throughput, memory and stop: requests at a time (default 32)",
    )
    add("--duration", type=float, default=10, help="throughput: seconds per target (default 10)")
    add("--rounds", type=int, default=2, help="throughput: alternating slices (default 2)")
    add("--warmup", type=float, default=1.0, help="seconds before measuring (default 1)")
    add("--memory-requests", type=int, default=100_000, help="memory: requests (default 100000)")
    add("--memory-slack-mb", type=float, default=10, help="memory: allowed growth (default 10)")
    add("--latency-ms", type=float, default=0, help="the fake's model time (default 0)")
    add("--cost", default="0.0012", help="usage.cost per call, USD (default 0.0012)")
    add("--markup", default="1.25", help="LLM_MARKUP (default 1.25)")
    add("--sync-seconds", type=float, default=1.0, help="METER_SYNC_SECONDS (default 1)")
    add(
        "--database-url",
        help="PostgreSQL base URL (a fresh schema is made and dropped), e.g. "
        "postgresql+psycopg://storebot:storebot@127.0.0.1:5432/storebot_test; "
        "default: SQLite in a temp dir",
    )
    add(
        "--skip",
        action="append",
        default=[],
        choices=["latency", "throughput", "memory"],
        help="leave a phase out (repeatable)",
    )
    add(
        "--meter-profile",
        metavar="FILE",
        help="run the meter as `python -m cProfile -o FILE -m storebot meter`, print the top",
    )
    args = p.parse_args(argv)
    if args.meter_profile:
        args.meter_profile = str(Path(args.meter_profile).resolve())  # the meter runs in a temp dir
    if args.quick:
        args.bots, args.requests, args.block = min(args.bots, 5), 200, 50
        args.duration, args.warmup, args.memory_requests = 2, 0.3, 5000
        args.memory_slack_mb = max(args.memory_slack_mb, 20)
    return args


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
