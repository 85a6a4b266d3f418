"""The anomaly rules, directly: thresholds, short histories, gaps, counter resets."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from storebot.anomaly import (
    Finding,
    History,
    Rule,
    Sample,
    Thresholds,
    cpu_rule,
    duration,
    evaluate,
    increase,
    memory_rule,
    oom_rule,
    requests_rule,
    size,
    spend_rule,
    token_rule,
    usd,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TH = Thresholds()
MIB = 1024**2


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def cpu_series(
    fractions: list[float], limit: float = 0.5, step: float = 15, start: float = 0
) -> list[Sample]:
    """Samples `step` s apart; interval i uses fractions[i] of the CPU limit."""
    cpu, out = 10**9, [Sample(at=at(start), cpu_ns=10**9, cpu_limit=limit)]
    for i, f in enumerate(fractions, 1):
        cpu += round(f * limit * step * 1e9)
        out.append(Sample(at=at(start + i * step), cpu_ns=cpu, cpu_limit=limit))
    return out


def counter_series(field: str, values: list[int | None], step: float = 15) -> list[Sample]:
    return [Sample(at=at(i * step), **{field: v}) for i, v in enumerate(values)]


def last(history: list[Sample]) -> datetime:
    return history[-1].at


# CPU -------------------------------------------------------------------------------


def test_cpu_at_its_limit_for_the_window_is_found_with_the_numbers() -> None:
    h = cpu_series([0.98] * 20)  # 21 samples, 5 min
    found = cpu_rule(h, TH, last(h))
    assert found == Finding(
        Rule.cpu,
        "CPU 98% of its 0.50-CPU limit for 5 min (21 samples, 15 s apart; threshold 90% for 5 min)",
    )


def test_cpu_just_under_the_threshold_is_not_found() -> None:
    h = cpu_series([0.89] * 40)
    assert cpu_rule(h, TH, last(h)) is None


def test_cpu_just_over_the_threshold_is_found() -> None:
    h = cpu_series([0.905] * 20)
    assert cpu_rule(h, TH, last(h)) is not None


def test_cpu_history_shorter_than_the_window_gives_no_verdict() -> None:
    h = cpu_series([1.0] * 19)  # 4 min 45 s
    assert cpu_rule(h, TH, last(h)) is None
    assert cpu_rule(h[:1], TH, last(h)) is None
    assert cpu_rule([], TH, T0) is None


def test_cpu_run_is_broken_by_a_quiet_interval_but_only_a_recent_one() -> None:
    recent_dip = cpu_series([1.0] * 10 + [0.3] + [1.0] * 15)
    assert cpu_rule(recent_dip, TH, last(recent_dip)) is None
    old_dip = cpu_series([0.3] + [1.0] * 25)
    found = cpu_rule(old_dip, TH, last(old_dip))
    assert found is not None and "for 6 min 15 s (26 samples" in found.evidence


def test_cpu_gap_longer_than_max_gap_breaks_the_run() -> None:
    busy = cpu_series([1.0] * 25)  # 6 min 15 s, busy all along ...
    h = busy[:12] + busy[17:]  # ... but with no sample for 90 s in the middle
    assert cpu_rule(h, TH, last(h)) is None
    # the same hole within max_gap is just a longer interval
    assert cpu_rule(h, replace(TH, max_gap=timedelta(seconds=90)), last(h)) is not None


def test_cpu_counter_going_down_is_a_restart_and_breaks_the_run() -> None:
    h = cpu_series([1.0] * 30)
    h[20] = replace(h[20], cpu_ns=10**6)  # container restarted just before sample 20
    for i in range(21, len(h)):
        h[i] = replace(h[i], cpu_ns=10**6 + (i - 20) * int(15 * 0.5e9))
    assert cpu_rule(h, TH, last(h)) is None  # only 2.5 min since the restart


def test_cpu_stale_history_gives_no_verdict() -> None:
    h = cpu_series([1.0] * 30)
    assert cpu_rule(h, TH, last(h) + timedelta(seconds=59)) is not None
    assert cpu_rule(h, TH, last(h) + timedelta(seconds=61)) is None


def test_cpu_without_a_limit_or_a_reading_gives_no_verdict() -> None:
    h = [replace(s, cpu_limit=None) for s in cpu_series([1.0] * 30)]
    assert cpu_rule(h, TH, last(h)) is None
    h = cpu_series([1.0] * 30)
    h[-5] = replace(h[-5], cpu_ns=None)
    assert cpu_rule(h, TH, last(h)) is None


# Memory ----------------------------------------------------------------------------


def mem_series(fractions: list[float], limit: int = 512 * MIB, step: float = 15) -> list[Sample]:
    return [
        Sample(at=at(i * step), mem_bytes=int(f * limit), mem_limit=limit)
        for i, f in enumerate(fractions)
    ]


def test_memory_near_its_limit_for_the_window_is_found() -> None:
    h = mem_series([0.96, 0.97] * 10 + [0.99])
    found = memory_rule(h, TH, last(h))
    assert found == Finding(
        Rule.memory,
        "memory at 96%-99% of its 512 MiB limit for 5 min (21 samples; threshold 95% for 5 min)",
    )


def test_memory_evidence_gives_one_figure_when_steady() -> None:
    h = mem_series([0.97] * 25, limit=64 * MIB)
    found = memory_rule(h, TH, last(h))
    assert found is not None and found.evidence.startswith("memory at 97% of its 64 MiB limit")


def test_memory_just_under_or_briefly_over_is_not_found() -> None:
    assert memory_rule(mem_series([0.949] * 40), TH, at(39 * 15)) is None
    h = mem_series([0.99] * 20)  # 4 min 45 s
    assert memory_rule(h, TH, last(h)) is None
    h = mem_series([0.99] * 15 + [0.5] + [0.99] * 15)
    assert memory_rule(h, TH, last(h)) is None


def test_memory_gap_breaks_the_run() -> None:
    h = mem_series([0.99] * 12) + [
        replace(s, at=s.at + timedelta(minutes=4)) for s in mem_series([0.99] * 12)
    ]
    assert memory_rule(h, TH, last(h)) is None


# Counters: OOM kills, requests, spend ----------------------------------------------


def test_increase_counts_a_drop_as_a_restart_from_zero() -> None:
    assert increase([5, 7, 7, 10]) == 5
    assert increase([100, 120, 3, 10]) == 20 + 3 + 7
    assert increase([None, 4, None, 6]) == 2
    assert increase([]) == 0


def test_three_oom_kills_within_the_window_are_found() -> None:
    h = counter_series("oom_kills", [0, 0, 1, 1, 2, 3])
    found = oom_rule(h, TH, last(h))
    assert found is not None and found.evidence.startswith("3 OOM kills in the last 10 min")
    assert oom_rule(counter_series("oom_kills", [0, 1, 2, 2]), TH, at(45)) is None


def test_oom_kills_name_the_memory_limit_when_known() -> None:
    h = [replace(s, mem_limit=64 * MIB) for s in counter_series("oom_kills", [0, 4])]
    found = oom_rule(h, TH, last(h))
    assert found is not None and "of its 64 MiB memory limit" in found.evidence


def test_oom_kills_before_the_window_do_not_count() -> None:
    h = counter_series("oom_kills", [0, 3] + [3] * 60)  # kills at 15 s, then 15 min calm
    assert oom_rule(h, TH, last(h)) is None
    assert oom_rule(h[:30], TH, h[29].at) is not None  # 7 min after the kills


def test_oom_counter_reset_still_counts_the_kills() -> None:
    h = counter_series("oom_kills", [2, 3, 1, 2])
    assert oom_rule(h, TH, last(h)) is not None  # 1 + 1 + 1


def test_a_counter_baseline_older_than_a_gap_is_not_used() -> None:
    window_start = at(20 * 60) - TH.oom_window
    near = [Sample(at=window_start - timedelta(seconds=50), oom_kills=0)]
    far = [Sample(at=window_start - timedelta(seconds=70), oom_kills=0)]
    tail = [Sample(at=at(20 * 60), oom_kills=3)]
    assert oom_rule(near + tail, TH, at(20 * 60)) is not None
    assert oom_rule(far + tail, TH, at(20 * 60)) is None  # one sample: no increase


def test_request_rate_over_the_window() -> None:
    steady = counter_series("requests", [1000 + 25 * 15 * i for i in range(9)])  # 25/s, 2 min
    found = requests_rule(steady, TH, last(steady))
    assert found == Finding(
        Rule.requests,
        "Traefik saw 3,000 requests in 2 min (25.0/s, refused ones included; "
        "threshold 20/s over 2 min)",
    )
    slow = counter_series("requests", [1000 + 19 * 15 * i for i in range(20)])
    assert requests_rule(slow, TH, last(slow)) is None


def test_request_threshold_is_the_count_over_the_window() -> None:
    exact = counter_series("requests", [0, 2400], step=120)
    assert requests_rule(exact, TH, last(exact)) is not None
    under = counter_series("requests", [0, 2399], step=120)
    assert requests_rule(under, TH, last(under)) is None


def test_request_burst_in_a_short_history_is_already_a_verdict() -> None:
    h = counter_series("requests", [50, 3050])  # 3000 in 15 s
    found = requests_rule(h, TH, last(h))
    assert found is not None and "(200.0/s" in found.evidence


def test_requests_across_a_traefik_restart_and_a_missed_scrape() -> None:
    h = counter_series("requests", [90_000, 91_000, None, 200, 1_600])
    assert increase(s.requests for s in h) == 1000 + 200 + 1400
    assert requests_rule(h, TH, last(h)) is not None  # 2600 in 1 min
    h = counter_series("requests", [90_000, 90_100, None, 200, 300])
    assert requests_rule(h, TH, last(h)) is None


def test_spend_velocity() -> None:
    fast = counter_series("spend_micro", [0, 1_000_000, 2_600_000], step=15 * 60)
    found = spend_rule(fast, TH, last(fast))
    assert found == Finding(
        Rule.spend, "LLM spend $2.60 in 30 min ($5.20/h; threshold $5.00/h over 30 min)"
    )
    slow = counter_series("spend_micro", [0, 1_000_000, 2_400_000], step=15 * 60)
    assert spend_rule(slow, TH, last(slow)) is None


def test_spend_in_a_short_history_counts_when_it_already_exceeds_the_window() -> None:
    h = counter_series("spend_micro", [7_000_000, 9_600_000])  # $2.60 in 15 s
    found = spend_rule(h, TH, last(h))
    assert found is not None and "$2.60 in 15 s ($624.00/h" in found.evidence
    assert spend_rule(counter_series("spend_micro", [9_600_000]), TH, at(0)) is None


# Token -----------------------------------------------------------------------------


def test_a_rejected_token_is_found_at_once() -> None:
    h = [Sample(at=at(0), token_ok=True), Sample(at=at(15), token_ok=False), Sample(at=at(30))]
    found = token_rule(h, TH, at(30))
    assert found is not None and found.rule is Rule.token
    assert "getMe at 2026-03-01 12:00 UTC" in found.evidence


def test_a_token_found_good_again_or_never_checked_is_fine() -> None:
    h = [Sample(at=at(0), token_ok=False), Sample(at=at(15), token_ok=True)]
    assert token_rule(h, TH, at(15)) is None
    assert token_rule([Sample(at=at(0))], TH, at(0)) is None


# evaluate and History --------------------------------------------------------------


def test_evaluate_runs_every_rule() -> None:
    # a revoked token: nullclawd spins at its CPU limit and nothing else is wrong
    h = [replace(s, mem_bytes=3 * MIB, mem_limit=512 * MIB) for s in cpu_series([1.0] * 24)]
    h[-1] = replace(h[-1], token_ok=False)
    assert [f.rule for f in evaluate(h, TH, last(h))] == [Rule.cpu, Rule.token]
    assert evaluate(h[:2], TH, h[1].at) == []


def test_history_keeps_the_longest_window_plus_one_baseline() -> None:
    th = Thresholds(spend_window=timedelta(minutes=10))
    hist = History.for_thresholds(th)  # 10 min + 1 min
    for s in cpu_series([1.0] * 80):  # 20 min
        hist.add("a", s)
    kept = hist.samples("a")
    assert kept[-1].at - kept[0].at == timedelta(minutes=11)
    assert [f.rule for f in evaluate(kept, th, kept[-1].at)] == [Rule.cpu]


def test_history_ignores_out_of_order_samples_and_is_bounded() -> None:
    hist = History(timedelta(hours=1), maxlen=5)
    for s in cpu_series([1.0] * 9):
        hist.add("a", s)
    hist.add("a", Sample(at=at(0)))
    assert [s.at for s in hist.samples("a")] == [at(15 * i) for i in range(5, 10)]


def test_history_forgets_and_retains_bots() -> None:
    hist = History(timedelta(minutes=5))
    for bot in ("a", "b", "c"):
        hist.add(bot, Sample(at=T0))
    hist.forget("a")
    hist.forget("zzz")
    hist.retain(["b", "d"])
    assert hist.bots() == ["b"]
    assert hist.samples("a") == ()


# Formatting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (15, "15 s"),
        (300, "5 min"),
        (310, "5 min 10 s"),
        (3_600, "1 h"),
        (3_725, "1 h 2 min 5 s"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text
    assert duration(timedelta(seconds=seconds)) == text


def test_size_and_usd() -> None:
    assert size(512 * MIB) == "512 MiB"
    assert size(3 * 1024**3 // 2) == "1.5 GiB"
    assert size(100) == "100 B"
    assert usd(2_600_000) == "$2.60"
    assert usd(1_234_567_890) == "$1,234.57"
