"""Hosting plans: what a bot may use and what it costs. Pure apart from reading the file.

Operators edit plans without code in a TOML file named by PLANS_FILE
(see infra/plans.example.toml). Without one there is a single plan, `standard`,
whose limits are the DEFAULT_* settings, at 9.00 a month.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from storebot.container_spec import Limits, default_limits
from storebot.errors import SettingsError, StorebotError
from storebot.settings import Settings, parse_memory

DEFAULT_PRICE_CENTS = 900


@dataclass(frozen=True)
class Plan:
    name: str
    title: str
    price_cents: int  # per month, in CURRENCY's minor unit
    limits: Limits
    llm_credit_cents: int = 0  # LLM credit included with each paid month


def load_plans(settings: Settings) -> dict[str, Plan]:
    if settings.PLANS_FILE is None:
        return {
            "standard": Plan("standard", "Standard", DEFAULT_PRICE_CENTS, default_limits(settings))
        }
    where = str(settings.PLANS_FILE)
    try:
        data = tomllib.loads(settings.PLANS_FILE.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"PLANS_FILE {where}: cannot read it: {exc}") from None
    entries = data.get("plan")
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"PLANS_FILE {where}: needs at least one [[plan]] table")
    plans = [_plan(settings, where, i, e) for i, e in enumerate(entries)]
    by_name = {p.name: p for p in plans}
    if len(by_name) != len(plans):
        raise SettingsError(f"PLANS_FILE {where}: two plans share a name")
    return by_name


def _plan(settings: Settings, where: str, i: int, e: Any) -> Plan:
    def fail(msg: str) -> SettingsError:
        return SettingsError(f"PLANS_FILE {where}: plan #{i + 1}: {msg}")

    if not isinstance(e, dict):
        raise fail("must be a table")
    name = e.get("name")
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 32:
        raise fail("`name` must be a short identifier such as basic or pro")
    defaults = default_limits(settings)
    try:
        price = int(e["price_cents"])
        credit = int(e.get("llm_credit_cents", 0))
        cpus = float(e.get("cpus", defaults.cpus))
        mem = parse_memory(str(e.get("memory", settings.DEFAULT_MEM_LIMIT)))
        pids = int(e.get("pids", defaults.pids))
    except KeyError:
        raise fail("`price_cents` (monthly price in cents) is required") from None
    except (TypeError, ValueError) as exc:
        raise fail(str(exc)) from None
    if price <= 0 or credit < 0 or not 0 < cpus <= 64 or mem < 16 * 1024**2 or pids < 8:
        raise fail("price > 0, credit >= 0, 0 < cpus <= 64, memory >= 16m, pids >= 8")
    return Plan(name, str(e.get("title", name.title())), price, Limits(cpus, mem, pids), credit)


def get_plan(settings: Settings, name: str) -> Plan:
    plans = load_plans(settings)
    if name not in plans:
        raise StorebotError(f"unknown plan {name!r}; known plans: {', '.join(plans)}")
    return plans[name]


def plan_limits(settings: Settings, name: str) -> Limits:
    return get_plan(settings, name).limits


def format_price(cents: int, currency: str) -> str:
    return f"{cents / 100:.2f} {currency.upper()}"
