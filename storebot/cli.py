"""`storebot` command line: `migrate` and the `admin` commands.

Every admin command takes `--json` for scripts. Errors meant for people
(`StorebotError`) print one clear message on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from storebot.errors import StorebotError

EXAMPLES = """\
examples:
  storebot check
  storebot migrate
  storebot admin deploy --token 123456:AA... --owner 5550001
  echo "$TOKEN" | storebot admin deploy --token - --owner 5550001 --json
  storebot admin list
  storebot admin list --status suspended
  storebot admin stats
  storebot admin suspend b3k9x2qa --reason "spam reports"
  storebot admin destroy b3k9x2qa --yes
  storebot admin credit b3k9x2qa 5 --note "refund: upstream outage on 11-24"
  storebot meter

settings come from the environment and ./.env (see .env.example).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="storebot",
        description="Sell and run managed NullClaw assistants.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", help="create or upgrade the database schema")
    sub.add_parser("run", help="run the management bot and the web app (Stripe webhook, /healthz)")
    sub.add_parser(
        "meter",
        help="run the LLM meter the hosted bots call (METER_HOST:METER_PORT, GET /metrics)",
    )
    sub.add_parser(
        "check",
        help="check settings, Docker, the nullclawd image and the database; say what to fix",
    )
    admin = sub.add_parser("admin", help="operate hosted bots (deploy, list, suspend, ...)")
    cmds = admin.add_subparsers(dest="action", required=True, metavar="ACTION")

    def cmd(name: str, help_: str, *, bot_id: bool = True) -> argparse.ArgumentParser:
        c = cmds.add_parser(name, help=help_, description=help_)
        if bot_id:
            c.add_argument("bot_id", metavar="ID", help="the bot's id (see `storebot admin list`)")
        c.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return c

    d = cmd("deploy", "deploy a customer's Telegram bot as a hosted assistant", bot_id=False)
    d.add_argument(
        "--token", required=True, help="the bot token from @BotFather, or - to read it from stdin"
    )
    d.add_argument(
        "--owner",
        required=True,
        type=int,
        metavar="TELEGRAM_ID",
        help="the owner's numeric Telegram user id (only they can talk to the bot)",
    )
    d.add_argument("--plan", default="standard", help="hosting plan (default: standard)")
    lst = cmd("list", "list hosted bots", bot_id=False)
    lst.add_argument("--all", action="store_true", help="include destroyed bots")
    lst.add_argument(
        "--status",
        metavar="STATUS",
        help="only bots in this status: running, suspended, failed, deploying, destroyed, ...",
    )
    f = cmd("find", "find bots (destroyed ones too) by id, @username or owner", bot_id=False)
    f.add_argument(
        "text",
        metavar="TEXT",
        help="the start of a bot id, part of an @username, or an owner's Telegram id",
    )
    cmd("show", "show one bot: status, limits, container, recent events")
    s = cmd("suspend", "stop a bot now and take its route down (kill switch)")
    s.add_argument("--reason", default="", help="why (recorded with your name)")
    cmd("resume", "start a suspended or failed bot again")
    cmd("restart", "restart a bot's container")
    x = cmd("destroy", "remove a bot's container and data (asks first)")
    x.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    lg = cmd("logs", "show a bot's recent log lines, tokens redacted")
    lg.add_argument("--tail", type=int, default=100, help="how many lines (default 100)")
    cr = cmd("credit", "add (or with a negative amount, take) LLM credit, with a note")
    cr.add_argument("amount", metavar="USD", help="dollars, e.g. 5 or 2.50 or -1")
    cr.add_argument("--note", required=True, help="why (kept on the ledger with your name)")
    cmd("balance", "show a bot's LLM balance and spend today / over 7 days")
    cmd(
        "reconcile",
        "compare the database with Docker once and repair drift (start, stop, remove)",
        bot_id=False,
    )
    cmd("purge-data", "remove data of destroyed bots past DATA_RETENTION_DAYS", bot_id=False)
    cmd(
        "stats",
        "bots by status, revenue (top-ups, hosting), LLM spend, host load, repairs",
        bot_id=False,
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "migrate":
            return _migrate()
        if args.command == "check":
            return asyncio.run(_check())
        if args.command == "run":
            return _run()
        if args.command == "meter":
            return _meter()
        return asyncio.run(_admin(args))
    except StorebotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _migrate() -> int:
    from storebot.db import migrate
    from storebot.settings import load_settings

    settings = load_settings()
    migrate(settings.DATABASE_URL)
    print("database is up to date")
    return 0


def _run() -> int:
    import logging

    from storebot.db import migrate
    from storebot.runner import run
    from storebot.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings()
    settings.bot_token()
    settings.stripe_keys()
    migrate(settings.DATABASE_URL)
    asyncio.run(run(settings))
    return 0


def _meter() -> int:
    import logging

    from storebot.meter import run
    from storebot.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # exit 1 when debits could not be written at shutdown (the log says how many)
    return 0 if asyncio.run(run(load_settings())) else 1


async def _check() -> int:
    from sqlalchemy import inspect

    from storebot.app import build_hosting
    from storebot.settings import load_settings

    h = build_hosting(load_settings())
    problems = []
    s = h.settings
    if s.meter_outside_bot_subnet():
        print(
            f"note: LLM_METER_URL ({s.LLM_METER_URL}) is outside BOT_NETWORK_SUBNET "
            f"({s.BOT_NETWORK_SUBNET}); on one host the meter listens on the subnet's "
            "gateway (.1). Bots' LLM calls fail silently if it is not reachable."
        )
    try:
        image = h.settings.NULLCLAW_IMAGE
        try:
            await h.docker.ping()
            if not await h.docker.image_present(image):
                problems.append(f"image {image} is missing: docker pull {image}")
        except StorebotError as exc:
            problems.append(str(exc))
        try:
            if "bot" not in inspect(h.db).get_table_names():
                problems.append("the database is not set up: run `storebot migrate`")
        except Exception as exc:  # any driver error is a finding to report here
            problems.append(f"cannot open DATABASE_URL: {type(exc).__name__}: {exc}")
    finally:
        await h.aclose()
    print("\n".join(f"problem: {p}" for p in problems) or "settings, Docker, image, database: ok")
    return 1 if problems else 0


async def _admin(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from storebot.app import build_hosting
    from storebot.settings import load_settings

    hosting = build_hosting(load_settings())
    try:
        return await ACTIONS[args.action](hosting, args)
    except (OperationalError, ProgrammingError) as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            raise StorebotError(
                "the database is not set up: run `storebot migrate` first"
            ) from None
        raise
    finally:
        await hosting.aclose()


def _actor() -> str:
    return f"admin-cli:{getpass.getuser()}"


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


async def _deploy(h: Any, args: argparse.Namespace) -> int:
    from storebot.deploy import deploy

    token = sys.stdin.readline().strip() if args.token == "-" else args.token  # noqa: S105

    async def progress(step: str) -> None:
        if not args.json:
            print(f"... {step}", file=sys.stderr)

    result = await deploy(
        h,
        token=token,
        owner_telegram_id=args.owner,
        plan=args.plan,
        actor=_actor(),
        progress=progress,
    )
    _emit(
        args,
        asdict(result),
        (
            f"bot {result.id} is {result.status}: t.me/{result.telegram_username}\n"
            f"  gateway URL:   {result.url}\n"
            f"  gateway token: {result.gateway_token}\n"
            f"  container:     {result.container}\n"
            "The gateway token is shown only this once: hand it to the owner now."
        ),
    )
    return 0


async def _list(h: Any, args: argparse.Namespace) -> int:
    from storebot.bot_ops import list_bots
    from storebot.models import BotStatus
    from storebot.ops import parse_status

    status = parse_status(args.status) if args.status else None
    bots = list_bots(h, include_destroyed=args.all or status is BotStatus.destroyed)
    if status:
        bots = [b for b in bots if b["status"] == status]
    rows = [f"{b['id']:<10} {b['status']:<17} {b['url']}" for b in bots]
    none = f"no {status} bots" if status else "no bots yet"
    _emit(args, bots, "\n".join(rows) if rows else none)
    return 0


async def _find(h: Any, args: argparse.Namespace) -> int:
    from storebot.ops import find_bots

    found = find_bots(h, args.text, limit=None)
    rows = [
        f"{b.id:<10} {b.status:<17} {'@' + b.username if b.username else '-':<24} "
        f"owner {b.owner or '-'}"
        for b in found
    ]
    _emit(args, [asdict(b) for b in found], "\n".join(rows) or f"no bot matches {args.text!r}")
    return 0


async def _show(h: Any, args: argparse.Namespace) -> int:
    from storebot.bot_ops import show

    info = await show(h, args.bot_id)
    lines = [f"{k}: {v}" for k, v in info.items() if k != "events"]
    lines += ["events (newest first):"] + [
        f"  {e['at']} {e['from'] or '-'} -> {e['to']} by {e['actor']}: {e['reason']}"
        for e in info["events"]
    ]
    _emit(args, info, "\n".join(lines))
    return 0


def _outcome(fn_name: str) -> Callable[[Any, argparse.Namespace], Awaitable[int]]:
    async def run(h: Any, args: argparse.Namespace) -> int:
        from storebot import bot_ops

        fn = getattr(bot_ops, fn_name)
        out = await fn(h, args.bot_id, actor=_actor(), reason=getattr(args, "reason", ""))
        _emit(args, asdict(out), out.message)
        return 0

    return run


async def _destroy(h: Any, args: argparse.Namespace) -> int:
    from storebot.bot_ops import destroy, show

    if not args.yes:
        info = await show(h, args.bot_id)
        if not sys.stdin.isatty():
            raise StorebotError("destroy deletes the bot and its data: add --yes to confirm")
        answer = input(  # noqa: ASYNC250  (an operator at a terminal; nothing else runs)
            f"Destroy bot {info['id']} (@{info['telegram_username']}, {info['status']})? "
            "Its container and data are deleted. Type the id to confirm: "
        )
        if answer.strip() != info["id"]:
            print("not destroyed", file=sys.stderr)
            return 1
    if h.settings.STRIPE_SECRET_KEY is None or h.settings.STRIPE_WEBHOOK_SECRET is None:
        out = await destroy(h, args.bot_id, actor=_actor())
        note = "no Stripe keys here: if it had a hosting subscription, cancel it in Stripe"
        _emit(args, asdict(out) | {"billing": note}, f"{out.message}\n{note}")
        return 0
    from storebot import ops
    from storebot.app import build_payments

    gw = build_payments(h.settings)
    try:  # the subscription ends with the bot: no more charges
        gone = await ops.destroy(h, gw, args.bot_id, actor=_actor())
    finally:
        await gw.aclose()
    out = gone.done.outcome
    _emit(args, asdict(out) | {"billing": gone.billing}, f"{out.message}; {gone.billing}")
    return 0


async def _logs(h: Any, args: argparse.Namespace) -> int:
    from storebot.bot_ops import logs

    text = await logs(h, args.bot_id, tail=args.tail)
    _emit(args, {"id": args.bot_id, "logs": text}, text.rstrip("\n"))
    return 0


async def _purge(h: Any, args: argparse.Namespace) -> int:
    from storebot.bot_ops import purge_expired_data

    purged = purge_expired_data(h)
    _emit(args, purged, f"purged data of {len(purged)} bot(s): {' '.join(purged)}".rstrip(": "))
    return 0


async def _credit(h: Any, args: argparse.Namespace) -> int:
    from storebot.topups import admin_credit

    out = admin_credit(h, args.bot_id, args.amount, actor=_actor(), note=args.note)
    await h.tell_meter()
    _emit(args, asdict(out), out.message)
    return 0


async def _balance(h: Any, args: argparse.Namespace) -> int:
    from storebot.ledger import format_usd
    from storebot.topups import bot_report

    r = bot_report(h, args.bot_id)
    days = r.days_left()
    text = (
        f"bot {args.bot_id}: balance {format_usd(r.balance)}, spent today "
        f"{format_usd(r.today)}, last 7 days {format_usd(r.week)}"
        + (f", about {days:.1f} days left at that rate" if days is not None else "")
    )
    _emit(args, asdict(r) | {"days_left": days}, text)
    return 0


async def _stats(h: Any, args: argparse.Namespace) -> int:
    from storebot.chat.texts import ops_stats
    from storebot.ops import stats

    st = await stats(h)
    _emit(args, asdict(st), ops_stats(st))
    return 0


async def _reconcile(h: Any, args: argparse.Namespace) -> int:
    from storebot.reconciler import reconcile

    repairs = await reconcile(h)
    lines = [
        f"{'ok ' if r.ok else 'FAILED '}{r.action} {r.bot_id or '-'}: {r.detail}" for r in repairs
    ]
    _emit(args, [asdict(r) for r in repairs], "\n".join(lines) or "nothing to repair")
    return 0 if all(r.ok for r in repairs) else 1


ACTIONS: dict[str, Callable[[Any, argparse.Namespace], Awaitable[int]]] = {
    "deploy": _deploy,
    "list": _list,
    "find": _find,
    "show": _show,
    "suspend": _outcome("suspend"),
    "resume": _outcome("resume"),
    "restart": _outcome("restart"),
    "destroy": _destroy,
    "logs": _logs,
    "purge-data": _purge,
    "credit": _credit,
    "reconcile": _reconcile,
    "balance": _balance,
    "stats": _stats,
}
