"""Lifecycle of a deployed bot: suspend, resume, restart, rotate its gateway token,
destroy, show, list, logs.

Each action is idempotent: run twice, or re-run after a crash halfway, and it
converges (Docker first, then the database, so the database never claims more than
Docker has done; suspend is the exception: the kill switch must hold with Docker down,
and a suspended bot's container is stopped by the reconciler if not by suspend).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from storebot import bot_files, deploy
from storebot.errors import (
    BotNotFound,
    DeployInProgress,
    DockerUnavailable,
    InvalidTransition,
    StateChanged,
    StorebotError,
    TokenFormatError,
)
from storebot.hosting import Hosting
from storebot.lifecycle import plan_action
from storebot.models import Bot, BotStatus, Customer, utcnow
from storebot.tokens import check_token_format, redact


@dataclass(frozen=True)
class Outcome:
    id: str
    status: str
    changed: bool
    message: str


async def suspend(h: Hosting, bot_id: str, *, actor: str, reason: str = "") -> Outcome:
    """The kill switch. The database first (the meter, the reconciler and every other
    process follow it), then the meter, then the container (stopped = route gone):
    with Docker down, the bot is still suspended and its LLM access off, and the
    reconciler stops the container once Docker answers again."""
    with h.session() as s:
        bot = h.get_bot(s, bot_id)
        target = plan_action("suspend", bot.status)
        h.release(s)
        if target is not None:
            h.transition(s, bot, BotStatus.suspended, actor=actor, reason=reason or "suspended")
            await h.tell_meter()  # its LLM token refused now
        done = f"bot {bot.id} suspended" if target else f"bot {bot.id} was already suspended"
        try:
            await h.docker.stop(h.container_name(bot.id), timeout=2)
        except DockerUnavailable as exc:
            return Outcome(
                bot.id,
                bot.status,
                target is not None,
                f"{done} and its LLM access is off, but its container is not stopped yet: "
                f"{str(exc).rstrip('.')}. The reconciler stops it when Docker answers "
                "again (or suspend it again then).",
            )
        return Outcome(bot.id, bot.status, target is not None, done)


async def resume(h: Hosting, bot_id: str, *, actor: str, reason: str = "") -> Outcome:
    with h.session() as s:
        bot = h.get_bot(s, bot_id)
        target = plan_action("resume", bot.status)
        _require_data(h, bot)
        h.release(s)
        if target is not None:
            await h.recheck_token(bot)
        await h.start_and_wait(s, bot, actor=actor, why=reason or "resumed")
        if target is None:
            return Outcome(bot.id, bot.status, False, f"bot {bot.id} was already running")
        return Outcome(bot.id, bot.status, True, f"bot {bot.id} resumed")


async def restart(h: Hosting, bot_id: str, *, actor: str, reason: str = "") -> Outcome:
    with h.session() as s:
        bot = h.get_bot(s, bot_id)
        plan_action("restart", bot.status)
        _require_data(h, bot)
        h.release(s)
        await h.recheck_token(bot)
        with _one_at_a_time(bot.id):
            # stopped, then started by start_and_wait (which re-creates a missing one)
            await h.docker.stop(h.container_name(bot.id), timeout=2)
            await h.start_and_wait(s, bot, actor=actor, why=reason or "restarted")
            await _their_word_stands(h, s, bot)
        h.record(s, bot, actor=actor, reason=reason or "restarted")
        return Outcome(bot.id, bot.status, True, f"bot {bot.id} restarted")


#: status_reason of a bot suspended because Telegram no longer accepts its token
TOKEN_REVOKED = "Telegram token revoked"  # noqa: S105 (a reason, not a secret)


def awaiting_new_token(bot: Bot) -> bool:
    return bot.status is BotStatus.suspended and (bot.status_reason or "").startswith(TOKEN_REVOKED)


async def replace_token(h: Hosting, bot_id: str, token: str, *, actor: str) -> str:
    """The owner's new Telegram token for a bot suspended because its token was revoked:
    checked (format, getMe, the same Telegram bot), written with fresh gateway and LLM
    tokens, and the bot resumed. Returns the new gateway token."""
    token = token.strip()
    tg_id = check_token_format(token)
    me = await h.telegram.get_me(token)
    with h.session() as s:
        bot = h.get_bot(s, bot_id)
        if not awaiting_new_token(bot):
            raise InvalidTransition(f"bot {bot.id} is {bot.status}; it needs no new token")
        if tg_id != bot.telegram_bot_id:
            raise TokenFormatError(
                f"That token belongs to @{me.username}, not to @{bot.telegram_username}. "
                f"Send the new token of @{bot.telegram_username} (@BotFather, /token)."
            )
        _require_data(h, bot)
        owner = s.get(Customer, bot.customer_id)
        assert owner is not None
        with _one_at_a_time(bot.id):
            try:
                gateway_token = deploy.write_secrets(h, bot, token=token, owner=owner.telegram_id)
            except OSError as exc:
                raise deploy.cannot_write(h, exc) from None
            bot.token_encrypted = h.tokens.seal(token)
            bot.telegram_username = me.username
            s.add(bot)
            s.commit()
            await h.start_and_wait(s, bot, actor=actor, why="new Telegram token")
        return gateway_token


async def rotate_gateway_token(h: Hosting, bot_id: str, *, actor: str) -> str:
    """A new gateway token for a running bot; the old one stops working. Returns it.

    The LLM token is renewed with it (config.json needs the raw one, kept only hashed).
    The container is re-created with the new config and must answer /health again.
    """
    with h.session() as s:
        bot = h.get_bot(s, bot_id)
        if bot.status is not BotStatus.running:
            raise InvalidTransition(
                f"only a running bot can get a new gateway token; bot {bot.id} is {bot.status}"
            )
        _require_data(h, bot)
        token, owner = _token_and_owner(h, s, bot)
        h.release(s)
        await h.recheck_token(bot)
        with _one_at_a_time(bot.id):
            try:
                gateway_token = deploy.write_secrets(h, bot, token=token, owner=owner)
            except OSError as exc:
                raise deploy.cannot_write(h, exc) from None
            s.add(bot)
            s.commit()  # the database names the tokens the file now holds
            await _their_word_stands(h, s, bot)  # suspended meanwhile: do not start it
            await h.start_and_wait(s, bot, actor=actor, why="new gateway token")
            await _their_word_stands(h, s, bot)
        h.record(s, bot, actor=actor, reason="new gateway token")
        return gateway_token


def _token_and_owner(h: Hosting, s: Session, bot: Bot) -> tuple[str, int]:
    owner = s.get(Customer, bot.customer_id)
    if not bot.token_encrypted or owner is None:
        raise StorebotError(f"bot {bot.id} has no Telegram token on record; deploy it again")
    return h.tokens.open(bot.token_encrypted), owner.telegram_id


# Bots being restarted or given new secrets by this process. Two racing rewrites of
# one config.json could leave the database naming the other's tokens.
_BUSY: set[str] = set()


@contextmanager
def _one_at_a_time(bot_id: str) -> Iterator[None]:
    if bot_id in _BUSY:
        raise DeployInProgress(f"bot {bot_id} is restarting right now; try again in a moment")
    _BUSY.add(bot_id)
    try:
        yield
    finally:
        _BUSY.discard(bot_id)


async def _their_word_stands(h: Hosting, s: Session, bot: Bot) -> None:
    """If another process suspended or destroyed the bot while this action ran, its
    container goes down again and StateChanged says so (start_and_wait only notices
    that when it changes the status itself)."""
    s.refresh(bot)
    h.release(s)
    if bot.status is BotStatus.running:
        return
    name = h.container_name(bot.id)
    if bot.status is BotStatus.destroyed:
        await h.docker.remove(name)
        _purge_if_due(h, bot)  # a config this action wrote after destroy removed the data
    else:
        await h.docker.stop(name, timeout=1)
    raise StateChanged(
        f"bot {bot.id} became {bot.status} while this action ran; it stays {bot.status}"
    )


async def destroy(h: Hosting, bot_id: str, *, actor: str, reason: str = "") -> Outcome:
    with h.session() as s:
        bot = h.get_bot(s, bot_id)
        target = plan_action("destroy", bot.status)
        h.release(s)
        await h.docker.remove(h.container_name(bot.id))
        keep = h.settings.DATA_RETENTION_DAYS
        if target is None:
            _purge_if_due(h, bot)
            return Outcome(bot.id, bot.status, False, f"bot {bot.id} was already destroyed")
        if keep:
            bot.data_purge_after = utcnow() + timedelta(days=keep)
        else:  # a workspace can be large: not on the event loop
            await asyncio.to_thread(bot_files.remove_bot_files, h.settings.DATA_ROOT, bot.id)
        bot.destroyed_at = utcnow()
        bot.token_claim = None  # the Telegram token may be hosted again
        bot.token_encrypted = None
        h.transition(s, bot, BotStatus.destroyed, actor=actor, reason=reason or "destroyed")
        await h.tell_meter()
        kept = f"; data kept until {bot.data_purge_after:%Y-%m-%d}" if keep else ""
        return Outcome(bot.id, bot.status, True, f"bot {bot.id} destroyed{kept}")


def purge_expired_data(h: Hosting) -> list[str]:
    """Remove the data of destroyed bots whose retention period has passed."""
    with h.session() as s:
        due = s.exec(
            select(Bot).where(
                Bot.status == BotStatus.destroyed,
                col(Bot.data_purge_after).is_not(None),
                col(Bot.data_purge_after) <= utcnow(),
            )
        )
        return [b.id for b in due if _purge_if_due(h, b)]


def _purge_if_due(h: Hosting, bot: Bot) -> bool:
    if bot.data_purge_after is None or bot.data_purge_after <= utcnow():
        return bot_files.remove_bot_files(h.settings.DATA_ROOT, bot.id)
    return False


def _require_data(h: Hosting, bot: Bot) -> None:
    cfg = bot_files.data_dir(h.settings.DATA_ROOT, bot.id) / ".nullclaw" / "config.json"
    if not cfg.exists():
        raise StorebotError(
            f"bot {bot.id} has no config at {cfg}; deploy its token again to rebuild it"
        )


async def show(h: Hosting, bot_id: str) -> dict[str, Any]:
    with h.session() as s:
        bot = h.get_bot(s, bot_id)
        owner = s.get(Customer, bot.customer_id)
        info = describe(h, bot)
        h.release(s)
        state = await h.docker.state(h.container_name(bot.id), h.settings.BOT_NETWORK)
        info |= {
            "owner_telegram_id": owner.telegram_id if owner else None,
            "plan": bot.plan,
            "limits": {"cpus": bot.cpu_limit, "memory": bot.mem_limit, "pids": bot.pids_limit},
            "status_reason": bot.status_reason,
            "created_at": bot.created_at.isoformat(timespec="seconds"),
            "container_state": None
            if state is None
            else {
                "status": state.status,
                "exit_code": state.exit_code,
                "oom_killed": state.oom_killed,
                "started_at": state.started_at,
                "ip": state.ip,
            },
            "events": [
                {
                    "at": e.at.isoformat(timespec="seconds"),
                    "from": e.from_status,
                    "to": e.to_status,
                    "actor": e.actor,
                    "reason": e.reason,
                }
                for e in h.events(s, bot.id)
            ],
        }
        return info


def list_bots(h: Hosting, *, include_destroyed: bool = False) -> list[dict[str, Any]]:
    with h.session() as s:
        stmt = select(Bot).order_by(col(Bot.created_at))
        if not include_destroyed:
            stmt = stmt.where(Bot.status != BotStatus.destroyed)
        return [describe(h, b) for b in s.exec(stmt)]


def describe(h: Hosting, bot: Bot) -> dict[str, Any]:
    return {
        "id": bot.id,
        "status": str(bot.status),
        "url": h.settings.bot_url(bot.id),
        "container": h.container_name(bot.id),
        "telegram_username": bot.telegram_username,
    }


async def logs(h: Hosting, bot_id: str, *, tail: int = 100) -> str:
    with h.session() as s:
        bot = h.get_bot(s, bot_id)
    text = await h.docker.logs(h.container_name(bot.id), tail=tail)
    if text is None:
        if bot.last_log:
            return "(no container; last lines kept when it failed)\n" + bot.last_log
        raise BotNotFound(f"bot {bot.id} has no container ({bot.status}) and no kept log")
    return redact(text)
