"""The ops chat through the real dispatcher and the Telegram fake, on bot rows without
containers: who is heard where, bad input, /credit, /bots paging, /stats, /destroy's
confirmation; and `storebot admin list --status` / `admin stats`.

Tests that stop or remove a (missing) container need the Docker engine, which
answers "already done"; the kill switch against a real container and Traefik is in
tests/test_ops_chat.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker
import pytest
from aiogram.filters.callback_data import CallbackData
from sqlalchemy import Engine
from sqlmodel import select

from storebot import ledger, ops
from storebot.app import build_hosting
from storebot.chat import texts
from storebot.chat.ops import Act, BotsPage, CardAction, DestroyConfirmed, OpenCard
from storebot.db import make_engine, session
from storebot.models import Bot, BotEvent, BotStatus, LedgerEntry, LedgerKind, RepairRecord, utcnow
from storebot.settings import Settings
from tests.chat_helpers import SHOP_KEY, shop_env, storebot
from tests.cli_helpers import cli
from tests.conftest import base_env
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import free_port
from tests.rows import add_bot

OPS = -100777
ADMIN, ADMIN2, STRANGER, OWNER = 5550901, 5550902, 5550903, 5550904
ADMIN_NAME = "root_op"
ACTOR = f"ops:{ADMIN} @{ADMIN_NAME}"


@dataclass
class Ops:
    """The management bot, polling the fake, seen from its ops chat."""

    tg: FakeTelegram
    token: str
    settings: Settings
    engine: Engine
    seen: int = 0

    def send(self, text: str, user: int = ADMIN, username: str | None = ADMIN_NAME) -> None:
        self.tg.send_group_text(self.token, OPS, user, text, username=username)

    def press(
        self, msg: dict[str, Any], data: CallbackData, user: int = ADMIN, username: str = ADMIN_NAME
    ) -> str:
        return self.tg.press_group_button(
            self.token, OPS, user, msg["message_id"], data.pack(), username=username
        )

    async def says(self, snippet: str, timeout: float = 10) -> dict[str, Any]:
        msg = await self.tg.await_message(
            self.token, OPS, snippet, since=self.seen, timeout=timeout
        )
        self.seen = len(self.tg.sent(self.token, OPS))
        return msg

    def said(self) -> list[str]:
        return self.tg.sent(self.token, OPS)

    async def quiet(self) -> None:
        """Everything injected so far is handled: an admin's /help is answered after it
        (updates are fetched in order), plus a moment for slower handlers."""
        self.send("/help")
        await self.says("Ops commands")
        await asyncio.sleep(0.5)

    def bot(self, bot_id: str) -> Bot:
        with session(self.engine) as s:
            found = s.get(Bot, bot_id)
            assert found is not None
            return found

    def events(self, bot_id: str) -> list[BotEvent]:
        with session(self.engine) as s:
            return list(s.exec(select(BotEvent).where(BotEvent.bot_id == bot_id)))


def ops_settings(db: str, telegram: FakeTelegram, tmp_path: Path, **extra: Any) -> Settings:
    defaults: dict[str, Any] = {
        "DATABASE_URL": db,
        "TELEGRAM_API_BASE": telegram.base_url,
        "WEB_PORT": free_port(),
        "THROTTLE_PER_MINUTE": 600,
        "OPS_CHAT_ID": OPS,
        "ADMIN_USER_IDS": f"{ADMIN}, {ADMIN2}",
        "DATA_ROOT": tmp_path / "bots",
        "SUPPORT_EMAIL": "help@storebot.test",
    }
    env = base_env(**(defaults | extra))
    return Settings(_env_file=None, **env)  # type: ignore[arg-type]


@pytest.fixture
async def ops_chat(migrated_db: str, telegram: FakeTelegram, tmp_path: Path) -> AsyncIterator[Ops]:
    shop = telegram.add_bot(username="storebot_ops_test_bot")
    with FakeStripe(api_key=SHOP_KEY) as stripe:
        settings = ops_settings(
            migrated_db,
            telegram,
            tmp_path,
            **shop_env(shop.token, stripe),
        )
        engine = make_engine(migrated_db)
        try:
            async with storebot(settings):
                yield Ops(telegram, shop.token, settings, engine)
        finally:
            engine.dispose()


def credit(engine: Engine, bot_id: str, micro: int, ref: str) -> None:
    with session(engine) as s:
        ledger.credit_topup(s, bot_id, micro, ref=ref, actor="test")
        s.commit()


# Who is heard where -------------------------------------------------------------------


async def test_the_ops_commands_are_offered_in_the_ops_chat_only(ops_chat: Ops) -> None:
    scope = {"type": "chat", "chat_id": OPS}
    ops_menu = [c["command"] for c in ops_chat.tg.commands(ops_chat.token, scope)]
    assert ops_menu == [
        "bots",
        "bot",
        "find",
        "suspend",
        "resume",
        "destroy",
        "credit",
        "stats",
        "help",
    ]
    assert "suspend" not in [c["command"] for c in ops_chat.tg.commands(ops_chat.token)]


async def test_strangers_in_the_ops_chat_get_nothing(ops_chat: Ops) -> None:
    add_bot(ops_chat.engine, "opsq0001", OWNER)
    for text in ("/suspend opsq0001 mine now", "/bots", "/stats", "/start", "hello", "/help"):
        ops_chat.send(text, user=STRANGER, username="mallory")
    ops_chat.send("123456789:" + "A" * 35, user=STRANGER)  # no customer handler either
    for n in range(40):  # a flood: no "slow down" either
        ops_chat.send(f"spam {n}", user=STRANGER, username="mallory")
    await ops_chat.quiet()
    help_msg = ops_chat.tg.chat_messages(ops_chat.token, OPS)[-1]
    # forged buttons on a message of the bot in the ops chat
    ops_chat.press(help_msg, DestroyConfirmed(bot_id="opsq0001", yes=True), user=STRANGER)
    query = ops_chat.press(help_msg, CardAction(act=Act.suspend, bot_id="opsq0001"), STRANGER)
    ops_chat.press(help_msg, BotsPage(page=0, status=""), user=STRANGER)
    await ops_chat.quiet()

    assert [t for t in ops_chat.said() if "Ops commands" not in t] == []
    assert ops_chat.tg.callback_answer(query) is None  # not even the button is answered
    assert ops_chat.tg.sent(ops_chat.token, STRANGER) == []
    assert ops_chat.tg.sent(ops_chat.token, OWNER) == []
    assert ops_chat.bot("opsq0001").status is BotStatus.running
    assert ops_chat.events("opsq0001") == []


async def test_admins_chatting_in_the_ops_chat_get_no_customer_answers(ops_chat: Ops) -> None:
    ops_chat.send("hello all, deploying at 5")
    ops_chat.send("/newbot")
    ops_chat.send("/mybots")
    await ops_chat.quiet()
    assert [t for t in ops_chat.said() if "Ops commands" not in t] == []


async def test_an_admin_outside_the_ops_chat_is_a_customer(ops_chat: Ops) -> None:
    add_bot(ops_chat.engine, "opsq0002", OWNER)
    tg, token = ops_chat.tg, ops_chat.token
    for text in ("/suspend opsq0002 spam", "/bots", "/stats", "/credit opsq0002 5 gift"):
        tg.send_text(token, ADMIN, text, username=ADMIN_NAME)
    tg.send_text(token, ADMIN, "/help", username=ADMIN_NAME)  # answered as for a customer
    await tg.await_message(token, ADMIN, "How it works")
    await asyncio.sleep(0.5)
    said = tg.sent(token, ADMIN)
    assert not [t for t in said if "opsq0002" in t or "Bots (" in t or "Top-ups" in t], said
    assert ops_chat.bot("opsq0002").status is BotStatus.running
    assert ops_chat.events("opsq0002") == []
    with session(ops_chat.engine) as s:
        assert ledger.balance(s, "opsq0002") == 0
    assert ops_chat.said() == []


# Bad input ----------------------------------------------------------------------------


async def test_bad_input_gets_a_clear_answer(ops_chat: Ops) -> None:
    add_bot(ops_chat.engine, "opsq0003", OWNER)
    cases = [
        ("/suspend", "Usage: /suspend ID [reason]"),
        ("/suspend nope1234 spam", "No bot with id 'nope1234'. /bots lists them."),
        ("/resume", "Usage: /resume ID"),
        ("/resume nope1234", "Bot nope1234 was not resumed: No bot with id 'nope1234'"),
        ("/destroy", "Usage: /destroy ID"),
        ("/destroy nope1234", "No bot with id 'nope1234'"),
        ("/bot", "Usage: /bot ID"),
        ("/bots sleeping", "unknown status 'sleeping'; one of: awaiting_payment"),
        ("/credit", "Usage: /credit ID AMOUNT [note]"),
        ("/credit opsq0003", "Usage: /credit ID AMOUNT [note]"),
        ("/credit opsq0003 lots", "'lots' is not an amount in dollars"),
        ("/credit opsq0003 0 nothing", "an adjustment needs a non-zero amount"),
        ("/credit opsq0003 99999", "up to 10000"),
        ("/credit nope1234 5", "No bot with id 'nope1234'"),
    ]
    for command, answer in cases:
        ops_chat.send(command)
        await ops_chat.says(answer)
    with session(ops_chat.engine) as s:
        assert ledger.balance(s, "opsq0003") == 0


# Credit -------------------------------------------------------------------------------


async def test_credit_goes_on_the_ledger_with_actor_and_note(ops_chat: Ops) -> None:
    add_bot(ops_chat.engine, "opsq0004", OWNER)
    ops_chat.send("/credit opsq0004 5 refund: upstream outage on 11-24")
    await ops_chat.says("Bot opsq0004: $5.00 (refund: upstream outage on 11-24); balance $5.00.")
    ops_chat.send("/credit opsq0004 -1.50", user=ADMIN2, username=None)
    await ops_chat.says(f"Bot opsq0004: -$1.50 (by {ADMIN2}); balance $3.50.")
    with session(ops_chat.engine) as s:
        rows = s.exec(select(LedgerEntry).where(LedgerEntry.bot_id == "opsq0004")).all()
        assert [(e.kind, e.amount_micro, e.actor, e.note) for e in rows] == [
            ("adjust", 5_000_000, ACTOR, "refund: upstream outage on 11-24"),
            ("adjust", -1_500_000, f"ops:{ADMIN2}", f"by {ADMIN2}"),
        ]
        assert ledger.balance(s, "opsq0004") == 3_500_000
        assert ledger.check_sums(s) == {}


# /bots --------------------------------------------------------------------------------


async def test_bots_pages_and_filters(ops_chat: Ops) -> None:
    statuses = [BotStatus.running] * 17 + [BotStatus.suspended] * 4 + [BotStatus.destroyed] * 2
    for n, status in enumerate(statuses):
        add_bot(ops_chat.engine, f"opsp{n:04d}", 5551000 + n, status=status, username=f"b{n}_bot")
    credit(ops_chat.engine, "opsp0000", 1_230_000, "cs_p0")

    ops_chat.send("/bots")
    first = await ops_chat.says("Bots (all but destroyed): 21, page 1 of 3")
    lines = first["text"].splitlines()[1:]
    assert len(lines) == ops.PAGE_SIZE
    assert lines[0].split() == ["opsp0000", "running", "@b0_bot", "owner", "5551000", "$1.23"]
    assert lines[9].startswith("opsp0009 ")
    labels = [b["text"] for row in first["reply_markup"]["inline_keyboard"] for b in row]
    assert "« Prev" not in labels and "Next »" in labels and "• all" in labels

    ops_chat.press(first, BotsPage(page=1, status=""))
    second = await ops_chat.says("page 2 of 3")
    assert second["message_id"] == first["message_id"]  # edited in place
    assert second["text"].splitlines()[1].startswith("opsp0010 ")
    ops_chat.press(second, BotsPage(page=2, status=""))
    third = await ops_chat.says("page 3 of 3")
    assert [line.split()[0] for line in third["text"].splitlines()[1:]] == [
        "opsp0020"
    ]  # destroyed ones are left out
    labels = [b["text"] for row in third["reply_markup"]["inline_keyboard"] for b in row]
    assert "« Prev" in labels and "Next »" not in labels

    ops_chat.press(third, BotsPage(page=0, status="suspended"))
    suspended = await ops_chat.says("Bots (suspended): 4, page 1 of 1")
    assert [line.split()[1] for line in suspended["text"].splitlines()[1:]] == ["suspended"] * 4
    ops_chat.send("/bots@storebot_ops_test_bot destroyed")  # as a tap in the menu sends it
    gone = await ops_chat.says("Bots (destroyed): 2, page 1 of 1")
    assert "opsp0021" in gone["text"] and "opsp0022" in gone["text"]
    ops_chat.press(gone, BotsPage(page=7, status="destroyed"))  # past the end: the last page
    await asyncio.sleep(0.3)
    assert ops_chat.tg.message(ops_chat.token, OPS, gone["message_id"])["text"] == gone["text"]


# /find --------------------------------------------------------------------------------


async def test_find_by_username_id_or_owner(ops_chat: Ops) -> None:
    e = ops_chat.engine
    add_bot(e, "opsf0001", 5553001, username="Alice_Helper_bot")
    add_bot(e, "opsf0002", 5553002, status=BotStatus.destroyed, username="bob_bot")
    add_bot(e, "opsf0003", 5553001)  # no username yet
    add_bot(e, "zzfx0004", 5553003, username="a100percent_bot")

    async def found(text: str) -> tuple[list[str], dict[str, Any]]:
        ops_chat.send(f"/find {text}")
        msg = await ops_chat.says("atch")  # "Bots matching ..." or "No bot matches ..."
        ids = [line.split()[0] for line in msg["text"].splitlines()[1:]]
        return ids, msg

    assert (await found("alice"))[0] == ["opsf0001"]  # any case, part of the name
    assert (await found("@BOB"))[0] == ["opsf0002"]  # destroyed ones too
    assert (await found("5553001"))[0] == ["opsf0001", "opsf0003"]  # the owner's bots
    ids, msg = await found("opsf")  # the start of an id
    assert ids == ["opsf0001", "opsf0002", "opsf0003"]
    buttons = [b for row in msg["reply_markup"]["inline_keyboard"] for b in row]
    assert [b["text"] for b in buttons] == [
        "opsf0001 @Alice_Helper_bot",
        "opsf0002 @bob_bot",
        "opsf0003",
    ]
    assert buttons[0]["callback_data"] == OpenCard(bot_id="opsf0001").pack()
    # LIKE's wildcards are plain text (as wildcards both would match a100percent_bot);
    # an id must start with the text
    for wild in ("a%p", "a_0", "sf0"):
        ids, msg = await found(wild)
        assert ids == [] and "No bot matches" in msg["text"], wild
    assert (await found("100p"))[0] == ["zzfx0004"]

    for n in range(12):
        add_bot(e, f"opsm{n:04d}", 5553100 + n, username=f"many{n}_bot")
    ids, msg = await found("many")
    assert len(ids) == ops.FIND_LIMIT and "the first 10" in msg["text"]

    ops_chat.send("/find")
    await ops_chat.says("Usage: /find TEXT")
    ops_chat.send("/find @")
    await ops_chat.says("say what to look for")


# /stats -------------------------------------------------------------------------------


async def test_stats_show_the_counts(ops_chat: Ops) -> None:
    e, now = ops_chat.engine, utcnow()
    for n, status in enumerate([BotStatus.running] * 3 + [BotStatus.suspended, BotStatus.failed]):
        add_bot(e, f"opss{n:04d}", 5552000 + n, status=status)
    with session(e) as s:
        for bot_id in ("opss0000", "opss0001"):  # paying for hosting now
            row = s.get(Bot, bot_id)
            assert row is not None
            row.paid_until = now + timedelta(days=20)
            s.add(row)
        s.add(RepairRecord(bot_id="opss0002", action="recreate", detail="x"))
        s.add(BotEvent(bot_id="opss0002", to_status="running", actor="scheduler", reason="y"))
        ledger.credit_topup(s, "opss0000", 5_000_000, ref="cs_s0", actor="stripe")
        ledger.post(s, "opss0001", 20_000_000, LedgerKind.credit, actor="stripe", ref="cs_s1")
        s.add(
            LedgerEntry(
                bot_id="opss0001",
                at=now - timedelta(days=10),
                kind=LedgerKind.credit,
                amount_micro=7_000_000,
                actor="stripe",
            )
        )
        old_spend = now - timedelta(days=3)
        ledger.write_debits(
            s,
            [
                ledger.Debit("opss0000", 250_000, now),
                ledger.Debit("opss0001", 1_000_000, old_spend),
            ],
        )
        s.commit()

    ops_chat.send("/stats")
    said = (await ops_chat.says("Bots: "))["text"]
    assert "Bots: failed 1, running 3, suspended 1 (total 5)" in said
    assert "Top-ups: $25.00 today, $32.00 in 30 days" in said
    assert "Hosting: 2 paid bot(s), 18.00 USD a month" in said
    assert "LLM spend: $0.25 today, $1.25 in 7 days" in said
    assert "Repairs (reconciler): 1 today, 1 in 7 days" in said
    assert "Host: load " in said and "free of" in said


def test_host_memory_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4000000 kB\nMemFree: 1 kB\nMemAvailable:    1000000 kB\n")
    assert ops.host_memory(meminfo) == (4_096_000_000, 1_024_000_000)
    assert ops.host_memory(tmp_path / "missing") is None


# Actions that touch Docker (the containers are missing: "already done") -----------------


async def test_suspend_tells_the_owner_and_records_who_and_why(
    ops_chat: Ops, docker_client: docker.DockerClient
) -> None:
    add_bot(ops_chat.engine, "opsk0001", OWNER)
    add_bot(ops_chat.engine, "opsk0002", OWNER, status=BotStatus.suspended)
    ops_chat.send("/suspend opsk0001 phishing links")
    await ops_chat.says(f"Bot opsk0001 suspended. The owner ({OWNER}) was told.")
    notice = await ops_chat.tg.await_message(ops_chat.token, OWNER, "suspended by our team")
    assert "phishing links" in notice["text"] and "help@storebot.test" in notice["text"]
    [event] = ops_chat.events("opsk0001")
    assert (event.to_status, event.actor, event.reason) == ("suspended", ACTOR, "phishing links")

    ops_chat.send("/suspend opsk0002 again")
    await ops_chat.says("Bot opsk0002 was already suspended.")
    ops_chat.send("/suspend opsk0001")
    await ops_chat.says("Bot opsk0001 was already suspended.")
    assert len(ops_chat.tg.sent(ops_chat.token, OWNER)) == 1  # told once
    assert ops_chat.events("opsk0002") == []

    add_bot(ops_chat.engine, "opsk0003", OWNER)
    ops_chat.send("/suspend opsk0003")  # no reason: recorded as such
    await ops_chat.says("Bot opsk0003 suspended.")
    [event] = ops_chat.events("opsk0003")
    assert event.reason == ops.NO_REASON
    plain = await ops_chat.tg.await_message(ops_chat.token, OWNER, "opsk0003 has been suspended")
    assert "by our team.\n" in plain["text"] and ops.NO_REASON not in plain["text"]


async def test_destroy_asks_first_and_only_an_admin_confirms(
    ops_chat: Ops, docker_client: docker.DockerClient
) -> None:
    add_bot(ops_chat.engine, "opsd0001", OWNER, username="doomed_bot")
    ops_chat.send("/destroy opsd0001")
    ask = await ops_chat.says("Destroy bot opsd0001 (@doomed_bot), running?")
    yes = DestroyConfirmed(bot_id="opsd0001", yes=True)
    assert {b["callback_data"] for row in ask["reply_markup"]["inline_keyboard"] for b in row} == {
        yes.pack(),
        DestroyConfirmed(bot_id="opsd0001", yes=False).pack(),
    }
    assert ops_chat.bot("opsd0001").status is BotStatus.running  # nothing yet

    ignored = ops_chat.press(ask, yes, user=STRANGER, username="mallory")  # forged
    await ops_chat.quiet()
    assert ops_chat.tg.callback_answer(ignored) is None
    assert ops_chat.bot("opsd0001").status is BotStatus.running

    ops_chat.press(ask, DestroyConfirmed(bot_id="opsd0001", yes=False))
    await ops_chat.says("Kept: bot opsd0001 was not touched.")
    assert ops_chat.bot("opsd0001").status is BotStatus.running

    ops_chat.send("/destroy opsd0001")
    ask = await ops_chat.says("Destroy bot opsd0001")
    ops_chat.press(ask, yes, user=ADMIN2, username="second_op")
    done = await ops_chat.says("Bot opsd0001 destroyed.")
    assert "It had no subscription." in done["text"]
    assert f"The owner ({OWNER}) was told." in done["text"]
    assert done["message_id"] == ask["message_id"]
    await ops_chat.tg.await_message(ops_chat.token, OWNER, "removed by our team")
    assert ops_chat.bot("opsd0001").status is BotStatus.destroyed
    [event] = ops_chat.events("opsd0001")
    assert event.actor == f"ops:{ADMIN2} @second_op"

    ops_chat.press(ask, yes)  # a second press
    await ops_chat.says("Bot opsd0001 was already destroyed.")


# The same from the command line ----------------------------------------------------------


def test_cli_list_by_status_and_stats(migrated_db: str, tmp_path: Path) -> None:
    engine = make_engine(migrated_db)
    add_bot(engine, "opsc0001", OWNER)
    add_bot(engine, "opsc0002", OWNER, status=BotStatus.suspended)
    add_bot(engine, "opsc0003", OWNER, status=BotStatus.destroyed)
    credit(engine, "opsc0001", 2_000_000, "cs_c1")
    engine.dispose()
    env = base_env(DATABASE_URL=migrated_db, DATA_ROOT=tmp_path / "bots")

    def run(*args: str) -> Any:
        proc = cli(env, "admin", *args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert [b["id"] for b in json.loads(run("list", "--status", "suspended", "--json"))] == [
        "opsc0002"
    ]
    assert [b["id"] for b in json.loads(run("list", "--status", "destroyed", "--json"))] == [
        "opsc0003"
    ]
    assert run("list", "--status", "failed") == "no failed bots\n"
    found = json.loads(run("find", "opsc", "--json"))  # destroyed ones too
    assert [(b["id"], b["status"], b["owner"]) for b in found] == [
        ("opsc0001", "running", OWNER),
        ("opsc0002", "suspended", OWNER),
        ("opsc0003", "destroyed", OWNER),
    ]
    assert run("find", "nothing-like-it") == "no bot matches 'nothing-like-it'\n"
    empty = cli(env, "admin", "find", "@")
    assert empty.returncode == 1 and "say what to look for" in empty.stderr
    bad = cli(env, "admin", "list", "--status", "sleeping")
    assert bad.returncode == 1 and "unknown status 'sleeping'" in bad.stderr

    figures = json.loads(run("stats", "--json"))
    assert figures["bots"] == {"running": 1, "suspended": 1, "destroyed": 1}
    assert figures["topups_today"] == 2_000_000
    text = run("stats")
    assert "Bots: destroyed 1, running 1, suspended 1 (total 3)" in text
    assert "Top-ups: $2.00 today" in text
    assert "stats" in cli(env, "admin", "--help").stdout
    assert "--status STATUS" in cli(env, "admin", "list", "--help").stdout


async def test_stats_reads_the_ledger_by_kind_and_time(migrated_db: str) -> None:
    settings = Settings(_env_file=None, **base_env(DATABASE_URL=migrated_db))  # type: ignore[arg-type]
    h = build_hosting(settings)
    add_bot(h.db, "opst0001", OWNER)
    now = utcnow()
    with session(h.db) as s:
        ledger.adjust(s, "opst0001", 3_000_000, actor="ops:1", note="gift")  # not revenue
        s.add(
            LedgerEntry(
                bot_id="opst0001",
                at=now - timedelta(days=31),
                kind=LedgerKind.credit,
                amount_micro=9_000_000,
                actor="stripe",
            )
        )
        s.commit()
    try:
        st = await ops.stats(h, now)
    finally:
        await h.aclose()
    assert (st.topups_today, st.topups_30d, st.llm_today, st.llm_7d) == (0, 0, 0, 0)
    assert texts.ops_stats(st).startswith("Bots: running 1 (total 1)")
