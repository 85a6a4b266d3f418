"""Deploy: a customer's Telegram bot token becomes a running, routed, healthy nullclawd.

Steps, each safe to re-run: check the token (format, then getMe) -> claim it in the
database (one token, one live bot) -> fresh gateway and LLM tokens -> data dir and
config.json -> container -> /health through Traefik -> running. A deploy that failed
(Docker down, image missing, never healthy) leaves the bot `failed`; deploying the same
token for the same owner again resumes that bot instead of refusing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storebot import bot_files
from storebot.container_spec import Limits
from storebot.customers import customer_for
from storebot.errors import (
    BotNotFound,
    DeployInProgress,
    EngineError,
    ImageMissing,
    InvalidTransition,
    StorebotError,
    TokenAlreadyHosted,
)
from storebot.hosting import Hosting
from storebot.models import Bot, BotEvent, BotStatus, Customer, utcnow
from storebot.nullclaw_config import dump_config, render_config
from storebot.plans import plan_limits
from storebot.telegram_api import TelegramBot
from storebot.tokens import (
    check_token_format,
    new_bot_id,
    new_gateway_token,
    new_llm_token,
    sha256_hex,
)

RESUMABLE = (BotStatus.failed, BotStatus.awaiting_token, BotStatus.deploying)

Progress = Callable[[str], Awaitable[None]]


async def _quiet(_step: str) -> None:
    return None


@dataclass(frozen=True)
class DeployResult:
    id: str
    status: str
    url: str
    gateway_token: str
    container: str
    telegram_username: str


async def deploy(
    h: Hosting,
    *,
    token: str,
    owner_telegram_id: int,
    plan: str = "standard",
    actor: str,
    progress: Progress = _quiet,
    order_id: str | None = None,
) -> DeployResult:
    """Deploy `token` for its owner: as a new bot (admin), or into the paid order
    `order_id` (the management bot), whose plan and limits were fixed at checkout."""
    token = token.strip()
    tg_bot_id = check_token_format(token)
    limits = plan_limits(h.settings, plan) if order_id is None else None
    if order_id is not None:
        with h.session() as session:
            _check_order(h, session, order_id, owner_telegram_id)
    await progress("checking the token with Telegram")
    me = await _precheck(h, token)
    with h.session() as session:
        if limits is None:
            assert order_id is not None
            bot = _claim_order(h, session, order_id, tg_bot_id, owner_telegram_id, actor)
        else:
            bot = _claim(h, session, tg_bot_id, owner_telegram_id, plan, limits, actor)
        h.release(session)
        await progress(f"preparing bot {bot.id} (@{me.username})")
        gateway_token = _provision(h, session, bot, token, me, owner_telegram_id, actor)
        try:
            await progress("starting its container and waiting for it to answer")
            await h.start_and_wait(session, bot, actor=actor, why="deployed")
        except EngineError as exc:
            session.refresh(bot)
            if bot.status is BotStatus.deploying:
                h.transition(session, bot, BotStatus.failed, actor=actor, reason=str(exc))
            raise
        return DeployResult(
            id=bot.id,
            status=bot.status,
            url=h.settings.bot_url(bot.id),
            gateway_token=gateway_token,
            container=h.container_name(bot.id),
            telegram_username=me.username,
        )


async def _precheck(h: Hosting, token: str) -> TelegramBot:
    """getMe, and meanwhile the engine's readiness: nothing is claimed unless all pass.

    A token problem is reported first: it is the customer's to fix.
    """
    me, ready = await asyncio.gather(
        h.telegram.get_me(token), _engine_ready(h), return_exceptions=True
    )
    for outcome in (me, ready):
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(me, TelegramBot)
    return me


async def _engine_ready(h: Hosting) -> None:
    image = h.settings.NULLCLAW_IMAGE
    present, _ = await asyncio.gather(h.docker.image_present(image), h.prepare_network())
    if not present:
        raise ImageMissing(
            f"image {image} is not on this Docker host: run `docker pull {image}` "
            "(or set NULLCLAW_IMAGE), then deploy again"
        )


def _claim(
    h: Hosting,
    session: Session,
    tg_bot_id: int,
    owner: int,
    plan: str,
    limits: Limits,
    actor: str,
) -> Bot:
    """The bot row this deploy owns, status `deploying`; refuses a token in use."""
    customer = customer_for(session, owner)
    existing = session.exec(select(Bot).where(Bot.token_claim == tg_bot_id)).first()
    if existing is not None:
        return _take_over(h, session, existing, customer, plan, limits, actor)
    assert customer.id is not None
    bot = Bot(
        id=new_bot_id(),
        customer_id=customer.id,
        plan=plan,
        status=BotStatus.deploying,
        telegram_bot_id=tg_bot_id,
        token_claim=tg_bot_id,
        cpu_limit=limits.cpus,
        mem_limit=limits.mem_bytes,
        pids_limit=limits.pids,
    )
    session.add(bot)
    session.add(
        BotEvent(
            bot_id=bot.id,
            from_status=None,
            to_status=BotStatus.deploying,
            actor=actor,
            reason=f"deploy requested (plan {plan})",
        )
    )
    try:
        session.commit()
    except IntegrityError:
        # Lost a race for the same token (or, once in 36^8, for the same id).
        session.rollback()
        raise DeployInProgress(
            "this token is being deployed right now by another request; "
            "wait for it to finish (`storebot admin list`)"
        ) from None
    return bot


ORDER_READY = (BotStatus.awaiting_token, BotStatus.failed)


def _check_order(h: Hosting, session: Session, order_id: str, owner: int) -> Bot:
    """The owner's paid order, ready for a token; a clear refusal otherwise."""
    bot = session.get(Bot, order_id)
    customer = session.get(Customer, bot.customer_id) if bot else None
    if bot is None or customer is None or customer.telegram_id != owner:
        raise BotNotFound(f"no order {order_id!r} of yours; start again with /newbot")
    if bot.status is BotStatus.awaiting_payment:
        raise InvalidTransition(
            "this order is not paid yet: finish the payment first, then send the token"
        )
    if bot.status not in ORDER_READY:
        raise InvalidTransition(f"this order's bot is already {bot.status}")
    return bot


def _claim_order(
    h: Hosting, session: Session, order_id: str, tg_bot_id: int, owner: int, actor: str
) -> Bot:
    """Move the paid order to `deploying` with this token claimed (compare-and-set)."""
    bot = _check_order(h, session, order_id, owner)
    holder = session.exec(select(Bot).where(Bot.token_claim == tg_bot_id)).first()
    if holder is not None and holder.id != bot.id:
        customer = session.get(Customer, holder.customer_id)
        if customer is None or customer.telegram_id != owner:
            raise TokenAlreadyHosted(
                "this Telegram bot is already hosted here for another customer; "
                "create a new bot with @BotFather and send its token"
            )
        raise TokenAlreadyHosted(
            f"this token already runs as your bot {holder.id}; "
            "create a new bot with @BotFather for this order"
        )
    before = bot.status
    try:
        moved = session.execute(
            update(Bot)
            .where(col(Bot.id) == bot.id, col(Bot.status) == before)
            .values(
                status=BotStatus.deploying,
                updated_at=utcnow(),
                token_claim=tg_bot_id,
                telegram_bot_id=tg_bot_id,
            )
        ).rowcount  # type: ignore[attr-defined]
    except IntegrityError:  # the token was claimed a moment ago by another order
        session.rollback()
        raise TokenAlreadyHosted("this Telegram bot was just taken by another order") from None
    if moved != 1:
        session.rollback()
        raise DeployInProgress(f"bot {bot.id} is being deployed right now")
    session.add(
        BotEvent(
            bot_id=bot.id,
            from_status=before,
            to_status=BotStatus.deploying,
            actor=actor,
            reason="token received",
        )
    )
    session.commit()
    session.refresh(bot)
    return bot


def _take_over(
    h: Hosting,
    session: Session,
    bot: Bot,
    customer: Customer,
    plan: str,
    limits: Limits,
    actor: str,
) -> Bot:
    if bot.customer_id != customer.id:
        raise TokenAlreadyHosted(
            "this Telegram bot is already hosted here for another customer; "
            "create a new bot with @BotFather and use its token"
        )
    # a bot left `deploying` this long ago by a crashed process may be taken over
    stale_after = timedelta(seconds=h.settings.DEPLOY_STALE_SECONDS)
    stale = bot.status is BotStatus.deploying and bot.updated_at < utcnow() - stale_after
    if bot.status not in RESUMABLE or (bot.status is BotStatus.deploying and not stale):
        if bot.status is BotStatus.deploying:
            raise DeployInProgress(f"bot {bot.id} with this token is being deployed right now")
        raise TokenAlreadyHosted(
            f"this token already runs as bot {bot.id} ({bot.status}); "
            "use restart/resume, or destroy it first"
        )
    # Compare-and-set: of two racing retries only one moves the row.
    moved = session.execute(
        update(Bot)
        .where(
            col(Bot.id) == bot.id,
            col(Bot.status) == bot.status,
            col(Bot.updated_at) == bot.updated_at,
        )
        .values(
            status=BotStatus.deploying,
            updated_at=utcnow(),
            plan=plan,
            cpu_limit=limits.cpus,
            mem_limit=limits.mem_bytes,
            pids_limit=limits.pids,
        )
    ).rowcount  # type: ignore[attr-defined]
    if moved != 1:
        session.rollback()
        raise DeployInProgress(f"bot {bot.id} with this token is being deployed right now")
    session.add(
        BotEvent(
            bot_id=bot.id,
            from_status=bot.status,
            to_status=BotStatus.deploying,
            actor=actor,
            reason="deploy retried",
        )
    )
    session.commit()
    session.refresh(bot)
    return bot


def _provision(
    h: Hosting, session: Session, bot: Bot, token: str, me: TelegramBot, owner: int, actor: str
) -> str:
    """Fresh secrets every (re)deploy: the raw ones exist only in config.json and here."""
    bot.token_encrypted = h.tokens.seal(token)
    bot.telegram_username = me.username
    bot.last_log = None
    try:
        gateway_token = write_secrets(h, bot, token=token, owner=owner)
    except OSError as exc:
        h.transition(
            session, bot, BotStatus.failed, actor=actor, reason=f"cannot write data dir: {exc}"
        )
        raise cannot_write(h, exc) from None
    session.add(bot)
    session.commit()
    return gateway_token


def write_secrets(h: Hosting, bot: Bot, *, token: str, owner: int) -> str:
    """New gateway and LLM tokens, written into the bot's config.json; returns the gateway
    token. Both are new together: config.json needs the raw LLM token, which we keep
    only hashed. The hashes are set on `bot` (not committed) once the file is written;
    an OSError leaves `bot` as it was. A running container reads the file only at start:
    `Hosting.start_and_wait` re-creates it (the spec carries the config's digest)."""
    gateway_token, llm_token = new_gateway_token(), new_llm_token()
    gateway_hash = sha256_hex(gateway_token)
    config = render_config(
        bot_token=token,
        owner_telegram_id=owner,
        llm_token=llm_token,
        meter_url=h.settings.LLM_METER_URL,
        model=h.settings.OPENROUTER_MODEL,
        gateway_token_hash=gateway_hash,
    )
    bot_files.write_bot_files(h.settings.DATA_ROOT, bot.id, dump_config(config))
    bot.gateway_token_hash = gateway_hash
    bot.llm_token_hash = sha256_hex(llm_token)
    return gateway_token


def cannot_write(h: Hosting, exc: OSError) -> StorebotError:
    return StorebotError(
        f"cannot write the bot's data under {h.settings.DATA_ROOT}: {exc.strerror}. "
        "storebot must run as root (it hands the directory to uid 65534)."
    )
