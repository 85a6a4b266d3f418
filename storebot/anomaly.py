"""Anomaly rules: pure functions over one bot's recent samples, no I/O.

Every sweep (`storebot.sampling`) gives each running bot a `Sample`; the job keeps
them in a `History` and calls `evaluate()`, which returns the `Finding`s that justify
suspending the bot, each with evidence written for the ops chat.

Three kinds of rule:
- levels held for a while (CPU near its limit, memory near its limit): every interval
  of the trailing run must pass, the run must cover the whole window, and a gap longer
  than `max_gap` (or a restart, seen as a counter going down) ends the run. Too short a
  history gives no verdict.
- counts within a window (OOM kills, requests through Traefik, LLM spend): the increase
  of a cumulative counter over the trailing window (from the last value before it, if
  that is at most `max_gap` older), counting a counter that went down (container or
  Traefik restarted) as restarted from zero. Rates are taken over the whole window even
  when the history is shorter: a count only grows with more history, so reaching the
  window's allowance early is already a verdict.
- a Telegram token that getMe rejects: at once, since nullclawd then retries without
  pause at its CPU limit forever.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Rule(StrEnum):
    cpu = "cpu"
    memory = "memory"
    oom = "oom"
    requests = "requests"
    spend = "spend"
    token = "token"  # noqa: S105


@dataclass(frozen=True)
class Sample:
    """What one sweep saw of one bot; None means "not measured this time"."""

    at: datetime
    cpu_ns: int | None = None  # CPU time used since the container started
    cpu_limit: float | None = None  # CPUs (1.5 = one and a half); None = no limit
    mem_bytes: int | None = None  # working set (usage minus inactive page cache)
    mem_limit: int | None = None
    oom_kills: int | None = None  # cumulative
    requests: int | None = None  # cumulative, as Traefik counts them (429s included)
    spend_micro: int | None = None  # cumulative LLM spend, micro-USD
    token_ok: bool | None = None  # getMe verdict, when checked this time


@dataclass(frozen=True)
class Thresholds:
    """Defaults suit a sweep every 15 s and DEFAULT_RATE_LIMIT_RPS=5."""

    # An interval longer than this between two samples is a hole in the record.
    max_gap: timedelta = timedelta(seconds=60)
    cpu_fraction: float = 0.90  # of the container's CPU limit ...
    cpu_window: timedelta = timedelta(minutes=5)  # ... in every interval for this long
    mem_fraction: float = 0.95  # of the memory limit, in every sample for this long
    mem_window: timedelta = timedelta(minutes=5)
    oom_kills: int = 3  # OOM kills ...
    oom_window: timedelta = timedelta(minutes=10)  # ... within this window
    # Requests Traefik saw, refused ones included: its rate limit keeps the bot safe,
    # so this flags a bot whose URL is being hammered (or that hammers itself), at four
    # times the default per-bot limit, averaged over the window.
    rps: float = 20.0
    rps_window: timedelta = timedelta(minutes=2)
    spend_micro_per_hour: int = 5_000_000  # $5/h ...
    spend_window: timedelta = timedelta(minutes=30)  # ... averaged over this window

    @property
    def longest_window(self) -> timedelta:
        return max(
            self.cpu_window, self.mem_window, self.oom_window, self.rps_window, self.spend_window
        )


@dataclass(frozen=True)
class Finding:
    rule: Rule
    evidence: str


class History:
    """The recent samples of every bot, oldest first, bounded by `keep` (time) and
    `maxlen` (count); the job feeds it once per sweep."""

    def __init__(self, keep: timedelta, maxlen: int = 2000) -> None:
        self._keep = keep
        self._maxlen = maxlen
        self._bots: dict[str, deque[Sample]] = {}

    @classmethod
    def for_thresholds(cls, th: Thresholds) -> History:
        # the longest window, and the baseline up to max_gap before it that counts need
        return cls(th.longest_window + th.max_gap)

    def add(self, bot_id: str, sample: Sample) -> None:
        ring = self._bots.setdefault(bot_id, deque(maxlen=self._maxlen))
        if ring and sample.at <= ring[-1].at:
            return  # out of order or repeated: keep the record monotonic
        ring.append(sample)
        horizon = sample.at - self._keep
        while ring[0].at < horizon:
            ring.popleft()

    def samples(self, bot_id: str) -> Sequence[Sample]:
        return tuple(self._bots.get(bot_id, ()))

    def forget(self, bot_id: str) -> None:
        """After a suspension: a resumed bot starts a fresh record."""
        self._bots.pop(bot_id, None)

    def retain(self, bot_ids: Iterable[str]) -> None:
        """Drop bots that are no longer running."""
        keep = set(bot_ids)
        for bot_id in [b for b in self._bots if b not in keep]:
            del self._bots[bot_id]

    def bots(self) -> list[str]:
        return list(self._bots)


def evaluate(history: Sequence[Sample], th: Thresholds, now: datetime) -> list[Finding]:
    """Every rule over one bot's samples (oldest first)."""
    rules = (cpu_rule, memory_rule, oom_rule, requests_rule, spend_rule, token_rule)
    return [f for rule in rules if (f := rule(history, th, now)) is not None]


# Levels held for a while -----------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """The trailing intervals that all passed: (seconds, value) each."""

    intervals: list[tuple[float, float]]

    @property
    def seconds(self) -> float:
        return sum(dt for dt, _ in self.intervals)

    @property
    def samples(self) -> int:
        return len(self.intervals) + 1

    @property
    def typical_gap(self) -> float:
        gaps = sorted(dt for dt, _ in self.intervals)
        return gaps[len(gaps) // 2]


def _held(
    history: Sequence[Sample],
    now: datetime,
    th: Thresholds,
    window: timedelta,
    value: Callable[[Sample, Sample], float | None],
    floor: float,
) -> _Run | None:
    """The run of trailing intervals whose value is >= floor, if it spans `window`."""
    if len(history) < 2 or now - history[-1].at > th.max_gap:
        return None  # no recent record: no verdict
    intervals: list[tuple[float, float]] = []
    for a, b in zip(reversed(history[:-1]), reversed(history[1:]), strict=True):
        dt = b.at - a.at
        if dt <= timedelta(0) or dt > th.max_gap:
            break
        v = value(a, b)
        if v is None or v < floor:
            break
        intervals.append((dt.total_seconds(), v))
    run = _Run(intervals)
    return run if intervals and run.seconds >= window.total_seconds() else None


def _cpu_fraction(a: Sample, b: Sample) -> float | None:
    if a.cpu_ns is None or b.cpu_ns is None or not b.cpu_limit or b.cpu_ns < a.cpu_ns:
        return None  # not measured, no limit, or the container restarted
    seconds = (b.at - a.at).total_seconds()
    return (b.cpu_ns - a.cpu_ns) / 1e9 / seconds / b.cpu_limit


def cpu_rule(history: Sequence[Sample], th: Thresholds, now: datetime) -> Finding | None:
    run = _held(history, now, th, th.cpu_window, _cpu_fraction, th.cpu_fraction)
    if run is None:
        return None
    mean = sum(dt * v for dt, v in run.intervals) / run.seconds
    limit = history[-1].cpu_limit or 0.0
    return Finding(
        Rule.cpu,
        f"CPU {mean:.0%} of its {limit:.2f}-CPU limit for {duration(run.seconds)} "
        f"({run.samples} samples, {duration(run.typical_gap)} apart; "
        f"threshold {th.cpu_fraction:.0%} for {duration(th.cpu_window)})",
    )


def _mem_fraction(s: Sample) -> float | None:
    if s.mem_bytes is None or not s.mem_limit:
        return None
    return s.mem_bytes / s.mem_limit


def _mem_both(a: Sample, b: Sample) -> float | None:
    fa, fb = _mem_fraction(a), _mem_fraction(b)
    return None if fa is None or fb is None else min(fa, fb)


def memory_rule(history: Sequence[Sample], th: Thresholds, now: datetime) -> Finding | None:
    run = _held(history, now, th, th.mem_window, _mem_both, th.mem_fraction)
    if run is None:
        return None
    used = [f for s in history[-run.samples :] if (f := _mem_fraction(s)) is not None]
    low, high = f"{min(used):.0%}", f"{max(used):.0%}"
    return Finding(
        Rule.memory,
        f"memory at {low if low == high else f'{low}-{high}'} of its "
        f"{size(history[-1].mem_limit or 0)} limit for {duration(run.seconds)} "
        f"({run.samples} samples; threshold {th.mem_fraction:.0%} for "
        f"{duration(th.mem_window)})",
    )


# Counts within a window ------------------------------------------------------------


def increase(values: Iterable[int | None]) -> int:
    """How much a cumulative counter grew; a drop means it restarted from zero."""
    total, last = 0, None
    for v in values:
        if v is None:
            continue
        if last is not None:
            total += v - last if v >= last else v
        last = v
    return total


def _counted(
    history: Sequence[Sample],
    now: datetime,
    window: timedelta,
    th: Thresholds,
    field: Callable[[Sample], int | None],
) -> tuple[int, float]:
    """(increase, seconds it was seen over) of a counter in the trailing window; the
    last value before the window is the baseline, unless it is older than a gap."""
    start = now - window
    known = [s for s in history if field(s) is not None]
    first = next((i for i, s in enumerate(known) if s.at >= start), len(known))
    if first > 0 and start - known[first - 1].at <= th.max_gap:
        first -= 1
    inside = known[first:]
    if len(inside) < 2:
        return 0, 0.0
    return increase(field(s) for s in inside), (inside[-1].at - inside[0].at).total_seconds()


def _per_second(count: int, seen: float, window: timedelta) -> float:
    # over the whole window even when seen for less: see the module docstring
    return count / max(seen, window.total_seconds())


def oom_rule(history: Sequence[Sample], th: Thresholds, now: datetime) -> Finding | None:
    kills, _ = _counted(history, now, th.oom_window, th, lambda s: s.oom_kills)
    if kills < th.oom_kills:
        return None
    limit = next((s.mem_limit for s in reversed(history) if s.mem_limit), None)
    within = f" of its {size(limit)} memory limit" if limit else ""
    return Finding(
        Rule.oom,
        f"{kills} OOM kills in the last {duration(th.oom_window)}: it keeps running out"
        f"{within} (threshold {th.oom_kills})",
    )


def requests_rule(history: Sequence[Sample], th: Thresholds, now: datetime) -> Finding | None:
    count, seen = _counted(history, now, th.rps_window, th, lambda s: s.requests)
    if seen <= 0 or _per_second(count, seen, th.rps_window) < th.rps:
        return None
    return Finding(
        Rule.requests,
        f"Traefik saw {count:,} requests in {duration(seen)} ({count / seen:.1f}/s, "
        f"refused ones included; threshold {th.rps:g}/s over {duration(th.rps_window)})",
    )


def spend_rule(history: Sequence[Sample], th: Thresholds, now: datetime) -> Finding | None:
    spent, seen = _counted(history, now, th.spend_window, th, lambda s: s.spend_micro)
    if seen <= 0 or _per_second(spent, seen, th.spend_window) * 3600 < th.spend_micro_per_hour:
        return None
    return Finding(
        Rule.spend,
        f"LLM spend {usd(spent)} in {duration(seen)} ({usd(spent * 3600 / seen)}/h; "
        f"threshold {usd(th.spend_micro_per_hour)}/h over {duration(th.spend_window)})",
    )


def token_rule(history: Sequence[Sample], th: Thresholds, now: datetime) -> Finding | None:
    checked = next((s for s in reversed(history) if s.token_ok is not None), None)
    if checked is None or checked.token_ok:
        return None
    return Finding(
        Rule.token,
        f"Telegram rejected the bot's token (getMe at {checked.at:%Y-%m-%d %H:%M} UTC): "
        "revoked in BotFather? nullclawd then retries without pause at its CPU limit",
    )


# Evidence formatting ---------------------------------------------------------------


def duration(value: float | timedelta) -> str:
    seconds = round(value.total_seconds() if isinstance(value, timedelta) else value)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    parts.append(f"{secs} s" if secs or not (hours or minutes) else "")
    return " ".join(p for p in parts if p)


def size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def usd(micro: float) -> str:
    return f"${micro / 1_000_000:,.2f}"
