"""`storebot run` as operators start it: a process that serves and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import REPO, base_env
from tests.fakes.stripe import FakeStripe
from tests.fakes.telegram import FakeTelegram
from tests.harness import free_port


def test_run_serves_then_stops_cleanly_on_sigterm(migrated_db: str, telegram: FakeTelegram) -> None:
    shop = telegram.add_bot()
    port = free_port()
    with FakeStripe(api_key="sk_test_run0123456789") as stripe:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/root",
            **base_env(
                DATABASE_URL=migrated_db,
                TELEGRAM_API_BASE=telegram.base_url,
                STOREBOT_BOT_TOKEN=shop.token,
                STRIPE_SECRET_KEY="sk_test_run0123456789",
                STRIPE_WEBHOOK_SECRET="whsec_run",
                STRIPE_API_BASE=stripe.base_url,
                WEB_PORT=port,
            ),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "storebot", "run"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline, healthy = time.monotonic() + 30, False
            while time.monotonic() < deadline and not healthy:
                try:
                    healthy = httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                except httpx.HTTPError:
                    time.sleep(0.1)
            assert healthy, "storebot run never answered /healthz"
            telegram.wait_for(lambda: telegram.commands(shop.token), timeout=10)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
            assert proc.returncode == 0, out
            assert time.monotonic() - started < 10
            assert "Traceback" not in out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_run_says_what_is_missing(migrated_db: str) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/root",
        **base_env(DATABASE_URL=migrated_db),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "storebot", "run"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "STOREBOT_BOT_TOKEN" in proc.stderr and "Traceback" not in proc.stderr
