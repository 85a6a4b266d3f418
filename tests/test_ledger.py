"""The LLM ledger on SQLite and PostgreSQL: money parsing, exactly-once credits,
batched debits, concurrent writers, reports, and the balance alert rule."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine
from sqlmodel import SQLModel, select

from storebot import ledger
from storebot.app import build_hosting
from storebot.balance_alerts import alert_due, due_alerts
from storebot.db import make_engine, session
from storebot.ledger import BadAmount, Debit
from storebot.models import LedgerEntry, LedgerKind, LlmAccount, utcnow
from tests.conftest import make_settings
from tests.rows import add_bot

PERCENTS = [50, 20, 5, 0]


@pytest.fixture
def engine(migrated_db: str) -> Engine:
    e = make_engine(migrated_db)
    yield e  # type: ignore[misc]
    e.dispose()


# Money -------------------------------------------------------------------------------


def test_money_formats_and_parses() -> None:
    assert ledger.format_usd(12_340_000) == "$12.34"
    assert ledger.format_usd(0) == "$0.00"
    assert ledger.format_usd(-2_500_000) == "-$2.50"
    assert ledger.format_usd(4_200) == "$0.0042"  # below a cent: not shown as zero
    assert ledger.parse_usd(" $12,50 ", Decimal(5), Decimal(500)) == 12_500_000
    assert ledger.cost_to_micro(Decimal("0.0000001"), Decimal("1.25")) == 1  # rounded up
    assert ledger.cost_to_micro(Decimal("0.0012"), Decimal("1.25")) == 1_500


@pytest.mark.parametrize(
    ("typed", "why"),
    [
        ("abc", "not an amount"),
        ("4.99", r"between \$5 and \$500"),
        ("500.01", r"between \$5 and \$500"),
        ("10.001", "two decimals"),
        ("NaN", "two decimals"),
        ("-10", "between"),
    ],
)
def test_typed_amounts_out_of_range_or_malformed_are_refused(typed: str, why: str) -> None:
    with pytest.raises(BadAmount, match=why):
        ledger.parse_usd(typed, Decimal(5), Decimal(500))


# Writing ------------------------------------------------------------------------------


def test_topup_is_credited_once_per_payment(engine: Engine) -> None:
    bot = add_bot(engine, "led00001")
    with session(engine) as s:
        assert ledger.credit_topup(s, bot, 10_000_000, ref="cs_1", actor="stripe") == 10_000_000
        s.commit()
        assert ledger.credit_topup(s, bot, 10_000_000, ref="cs_1", actor="stripe") is None
        s.commit()
        assert ledger.balance(s, bot) == 10_000_000
        assert ledger.account(s, bot).reference_micro == 10_000_000
        assert len(s.exec(select(LedgerEntry)).all()) == 1


def test_debits_in_batches_keep_the_balance_equal_to_the_sum(engine: Engine) -> None:
    a, b = add_bot(engine, "led00002"), add_bot(engine, "led00003")
    now = utcnow()
    with session(engine) as s:
        ledger.credit_topup(s, a, 5_000_000, ref="cs_a", actor="stripe")
        s.commit()
        ledger.write_debits(s, [Debit(a, 1_000, now), Debit(b, 7, now), Debit(a, 2_000, now)])
        s.commit()
        assert ledger.balance(s, a) == 5_000_000 - 3_000
        assert ledger.balance(s, b) == -7  # an account is made on first use
        assert ledger.check_sums(s) == {}
        kinds = {e.kind for e in s.exec(select(LedgerEntry)).all()}
        assert kinds == {LedgerKind.credit, LedgerKind.debit}


def test_adjustment_needs_a_note_and_is_recorded_with_it(engine: Engine) -> None:
    bot = add_bot(engine, "led00004")
    with session(engine) as s:
        with pytest.raises(BadAmount, match="note"):
            ledger.adjust(s, bot, 1_000_000, actor="admin", note=" ")
        assert ledger.adjust(s, bot, -1_000_000, actor="admin", note="refund") == -1_000_000
        entry = s.exec(select(LedgerEntry)).one()
        assert (entry.kind, entry.note, entry.actor) == ("adjust", "refund", "admin")


def test_concurrent_credits_and_debits_lose_nothing(engine: Engine) -> None:
    """Two processes write at once (storebot credits, the meter debits): every write
    counts, and the kept balance stays the sum of the ledger."""
    bot = add_bot(engine, "led00005")
    errors: list[BaseException] = []

    def credits() -> None:
        try:
            for i in range(40):
                with session(engine) as s:
                    ledger.credit_topup(s, bot, 1_000_000, ref=f"cs_{i}", actor="stripe")
                    s.commit()
        except BaseException as exc:
            errors.append(exc)

    def debits() -> None:
        try:
            for _ in range(40):
                with session(engine) as s:
                    ledger.write_debits(s, [Debit(bot, 1_000, utcnow())] * 5)
                    s.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (credits, debits, debits)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with session(engine) as s:
        assert ledger.balance(s, bot) == 40 * 1_000_000 - 2 * 40 * 5 * 1_000
        assert ledger.check_sums(s) == {}


def test_report_counts_today_and_the_last_week(engine: Engine) -> None:
    bot = add_bot(engine, "led00006")
    now = utcnow().replace(hour=12)
    with session(engine) as s:
        ledger.credit_topup(s, bot, 20_000_000, ref="cs_r", actor="stripe")
        ledger.write_debits(
            s,
            [
                Debit(bot, 700_000, now - timedelta(days=3)),
                Debit(bot, 300_000, now - timedelta(hours=1)),
                Debit(bot, 5_000_000, now - timedelta(days=9)),  # older than a week
            ],
        )
        s.commit()
        r = ledger.report(s, bot, now)
    assert (r.balance, r.today, r.week) == (14_000_000, 300_000, 1_000_000)
    assert r.days_left() == pytest.approx(14_000_000 / (1_000_000 / 7))
    assert ledger.Report(5, 0, 0).days_left() is None


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


# Balance alerts ---------------------------------------------------------------------


def test_alert_rule() -> None:
    ref = 10_000_000
    assert alert_due(6_000_000, ref, PERCENTS, None) is None
    assert alert_due(5_000_000, ref, PERCENTS, None) == 50  # at the level counts
    assert alert_due(1_000_000, ref, PERCENTS, None) == 20  # the deepest level only
    assert alert_due(1_000_000, ref, PERCENTS, 20) is None  # sent already
    assert alert_due(400_000, ref, PERCENTS, 20) == 5
    assert alert_due(0, ref, PERCENTS, 5) == 0
    assert alert_due(-30, ref, PERCENTS, 0) is None
    assert alert_due(0, 0, PERCENTS, None) is None  # never topped up: no alerts


def test_each_crossing_alerts_once_and_a_topup_rearms(migrated_db: str) -> None:
    h = build_hosting(make_settings(DATABASE_URL=migrated_db))
    bot = add_bot(h.db, "led00007", owner=4_000_007)
    with h.session() as s:
        ledger.credit_topup(s, bot, 10_000_000, ref="cs_x", actor="stripe")
        s.commit()
    assert due_alerts(h) == []

    def spend(micro: int) -> None:
        with h.session() as s:
            ledger.write_debits(s, [Debit(bot, micro, utcnow())])
            s.commit()

    spend(6_000_000)  # 40% left
    [alert] = due_alerts(h)
    assert (alert.kind, alert.telegram_id, alert.detail["percent"]) == (
        "balance_alert",
        4_000_007,
        50,
    )
    assert due_alerts(h) == []  # once per crossing
    spend(4_000_000)  # empty
    assert [a.detail["percent"] for a in due_alerts(h)] == [0]
    assert due_alerts(h) == []
    with h.session() as s:
        ledger.credit_topup(s, bot, 5_000_000, ref="cs_y", actor="stripe")
        s.commit()
        assert s.get(LlmAccount, bot).alerted_percent is None  # type: ignore[union-attr]
    spend(4_000_000)  # 1.00 of 5.00 left: 20%
    assert [a.detail["percent"] for a in due_alerts(h)] == [20]
    h.db.dispose()
