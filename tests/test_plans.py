from __future__ import annotations

from pathlib import Path

import pytest

from storebot.errors import SettingsError, StorebotError
from storebot.plans import format_price, get_plan, load_plans, plan_limits
from tests.conftest import REPO, make_settings


def test_default_plan_follows_settings() -> None:
    s = make_settings(DEFAULT_CPU_LIMIT=2, DEFAULT_MEM_LIMIT="1g")
    [plan] = load_plans(s).values()
    assert plan.name == "standard" and plan.price_cents > 0
    assert (plan.limits.cpus, plan.limits.mem_bytes) == (2, 1024**3)


def test_example_file_loads() -> None:
    s = make_settings(PLANS_FILE=REPO / "infra" / "plans.example.toml")
    plans = load_plans(s)
    assert list(plans) == ["basic", "pro"]
    assert plans["pro"].llm_credit_cents == 500
    assert plan_limits(s, "basic").mem_bytes == 256 * 1024**2
    with pytest.raises(StorebotError, match="known plans: basic, pro"):
        get_plan(s, "standard")
    assert format_price(plans["basic"].price_cents, s.CURRENCY) == "5.00 USD"


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("nonsense = [", "cannot read"),
        ("", "at least one"),
        ('[[plan]]\nname = "x y"\nprice_cents = 1', "short identifier"),
        ('[[plan]]\nname = "a"', "price_cents"),
        ('[[plan]]\nname = "a"\nprice_cents = 0', "price > 0"),
        ('[[plan]]\nname = "a"\nprice_cents = 1\nmemory = "0"', "memory >= 16m"),
        ('[[plan]]\nname = "a"\nprice_cents = 1\n[[plan]]\nname = "a"\nprice_cents = 2', "share"),
    ],
)
def test_bad_plan_files_say_what_is_wrong(tmp_path: Path, text: str, expect: str) -> None:
    f = tmp_path / "plans.toml"
    f.write_text(text)
    with pytest.raises(SettingsError, match=expect) as err:
        load_plans(make_settings(PLANS_FILE=f))
    assert "PLANS_FILE" in str(err.value)
