"""config.json exactly per NULLCLAW.md: each key here fails silently if wrong."""

from __future__ import annotations

import json

import pytest

from storebot.nullclaw_config import dump_config, render_config
from storebot.tokens import sha256_hex


def _config() -> dict:  # type: ignore[type-arg]
    return render_config(
        bot_token="1:" + "a" * 35,
        owner_telegram_id=5550001,
        llm_token="sbllm_x",
        meter_url="http://10.213.0.1:8089/v1",
        model="anthropic/claude-3.5-haiku",
        gateway_token_hash=sha256_hex("gw"),
    )


def test_exact_shape() -> None:
    c = _config()
    assert c["models"]["providers"] == {
        "meter": {"api_key": "sbllm_x", "base_url": "http://10.213.0.1:8089/v1"}
    }
    # split at the first '/': provider meter, model keeps its own slash
    assert c["agents"]["defaults"]["model"]["primary"] == "meter/anthropic/claude-3.5-haiku"
    account = c["channels"]["telegram"]["accounts"]["main"]
    assert account == {"bot_token": "1:" + "a" * 35, "allow_from": ["5550001"]}
    assert all(isinstance(x, str) for x in account["allow_from"])
    assert c["channels"]["cli"] is False
    assert c["reliability"]["provider_retries"] == 0
    assert c["gateway"] == {
        "host": "::",
        "port": 3000,
        "require_pairing": True,
        "allow_public_bind": True,
        "paired_tokens": [sha256_hex("gw")],
    }
    assert "default_provider" not in c and "default_model" not in c
    assert "openrouter" not in c["models"]["providers"]


def test_uppercase_hash_refused() -> None:
    with pytest.raises(ValueError, match="lowercase"):
        render_config(
            bot_token="t",
            owner_telegram_id=1,
            llm_token="l",
            meter_url="http://m/v1",
            model="m",
            gateway_token_hash=sha256_hex("gw").upper(),
        )


def test_dump_is_json_under_64k() -> None:
    data = dump_config(_config())
    assert json.loads(data) == _config()
    assert len(data) < 64 * 1024
