"""Settings: defaults, and a clear refusal naming the variable for bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storebot.errors import SettingsError
from storebot.settings import Settings, load_settings, parse_memory
from tests.conftest import base_env


def _load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    for k in list(base_env()):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_settings(env_file=None)


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = _load(monkeypatch, tmp_path, base_env())
    assert s.DEFAULT_RATE_LIMIT_RPS == 5
    assert s.DEFAULT_RATE_LIMIT_BURST == 20
    assert s.DEFAULT_CPU_LIMIT == 1
    assert parse_memory(s.DEFAULT_MEM_LIMIT) == 512 * 1024**2
    assert Path("/var/lib/clawdeploy/bots") == s.DATA_ROOT
    assert s.DATABASE_URL.startswith("sqlite:///")
    assert s.TELEGRAM_API_BASE == "https://api.telegram.org"
    assert s.bot_url("abc") == "https://abc.bots.storebot.test/"


@pytest.mark.parametrize(
    ("name", "value", "expect"),
    [
        ("STOREBOT_SECRET_KEY", "change-me", "placeholder"),
        ("STOREBOT_SECRET_KEY", "not-a-fernet-key-at-all", "Fernet key"),
        ("OPENROUTER_API_KEY", "sk-or-...", "placeholder"),
        ("BASE_DOMAIN", "bots.example.com", "placeholder"),
        ("BASE_DOMAIN", "https://bots.mine.net/", "DNS name"),
        ("SUPPORT_EMAIL", "nobody", "e-mail"),
        ("DEFAULT_MEM_LIMIT", "lots", "size like 512m"),
        ("DEFAULT_MEM_LIMIT", "0", "unlimited"),
        ("BOT_TMPFS_SIZE", "0", "unlimited"),
        ("DEFAULT_RATE_LIMIT_RPS", "0", "greater than 0"),
        ("LLM_METER_URL", "meter:8089", "http(s) URL"),
        ("DATABASE_URL", "mysql://x", "sqlite:///"),
    ],
)
def test_bad_value_names_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str, expect: str
) -> None:
    with pytest.raises(SettingsError) as err:
        _load(monkeypatch, tmp_path, base_env(**{name: value}))
    assert name in str(err.value)
    assert expect in str(err.value)


def test_missing_variable_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = base_env()
    del env["BASE_DOMAIN"]
    with pytest.raises(SettingsError, match=r"BASE_DOMAIN: is required"):
        _load(monkeypatch, tmp_path, env)


def test_env_example_placeholder_file_refused_at_startup(tmp_path: Path) -> None:
    """The shipped .env.example copied as-is must not start: it has placeholder secrets."""
    (tmp_path / ".env").write_text((Path(__file__).parent.parent / ".env.example").read_text())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "storebot", "admin", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "STOREBOT_SECRET_KEY" in proc.stderr
    assert "placeholder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_meter_outside_subnet_is_noticed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    inside = _load(monkeypatch, tmp_path, base_env())
    assert inside.meter_outside_bot_subnet() is False  # the defaults agree
    moved = _load(monkeypatch, tmp_path, base_env(BOT_NETWORK_SUBNET="10.99.0.0/16"))
    assert moved.meter_outside_bot_subnet() is True
    named = _load(monkeypatch, tmp_path, base_env(LLM_METER_URL="http://meter.internal:8089/v1"))
    assert named.meter_outside_bot_subnet() is False


def test_selling_needs_stripe_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = _load(
        monkeypatch, tmp_path, base_env(STRIPE_SECRET_KEY="sk_test_abc", STRIPE_WEBHOOK_SECRET="")
    )
    with pytest.raises(SettingsError, match="STRIPE_WEBHOOK_SECRET") as err:
        s.stripe_keys()
    assert "STRIPE_SECRET_KEY" not in str(err.value)
    with pytest.raises(SettingsError, match="placeholder"):
        _load(monkeypatch, tmp_path, base_env(STRIPE_SECRET_KEY="changeme"))


def test_empty_optional_values_mean_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = _load(monkeypatch, tmp_path, base_env(PLANS_FILE="", DOCKER_HOST="", STRIPE_SECRET_KEY=""))
    assert s.PLANS_FILE is None and s.DOCKER_HOST is None and s.STRIPE_SECRET_KEY is None


def test_every_setting_is_documented_in_env_example() -> None:
    text = (Path(__file__).parent.parent / ".env.example").read_text()
    documented = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
    assert set(Settings.model_fields) - documented == set()
