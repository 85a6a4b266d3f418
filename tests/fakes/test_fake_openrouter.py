"""Tests of the OpenRouter fake itself, through real clients (httpx, aiohttp)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.fakes.openrouter import OMIT, FakeOpenRouter

KEY = "sk-or-v1-test-key"
MODEL = "anthropic/claude-sonnet-4"
MESSAGES = [{"role": "user", "content": "Hello?"}]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter(KEY) as server:
        yield server


def post(fake: FakeOpenRouter, key: str | None = KEY, **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    payload = {"model": MODEL, "messages": MESSAGES} | body
    return httpx.post(fake.completions_url, json=payload, headers=headers, timeout=5)


def stream_lines(fake: FakeOpenRouter, **body: Any) -> list[str]:
    """The lines of a streamed completion, as an SSE parser reads them."""
    payload = {"model": MODEL, "messages": MESSAGES, "stream": True} | body
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", fake.completions_url, json=payload, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(response.iter_lines())


def data_events(lines: list[str]) -> list[Any]:
    """The payloads of the ``data:`` lines, JSON-decoded but for ``[DONE]``."""
    payloads = [line[6:] for line in lines if line.startswith("data: ")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def test_completion_has_openrouters_shape_and_exact_cost(fake: FakeOpenRouter) -> None:
    fake.reply, fake.cost = "Hi! How can I help?", "0.000123"
    response = post(fake, usage={"include": True}, max_tokens=50)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert '"cost":0.000123,' in response.text
    body = response.json(parse_float=Decimal)
    assert body["id"].startswith("gen-") and response.headers["X-Generation-Id"] == body["id"]
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL and body["provider"] == "FakeProvider"
    assert abs(body["created"] - time.time()) < 5
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hi! How can I help?"
    usage = body["usage"]
    assert usage["cost"] == Decimal("0.000123")
    assert int(usage["cost"] * 1_000_000) == 123
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["is_byok"] is False

    (rec,) = fake.requests
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert rec.body["max_tokens"] == 50 and rec.model == MODEL
    assert rec.stream is False and rec.usage_requested is True
    assert (rec.status, rec.outcome, rec.cost) == (200, "ok", 0.000123)
    assert rec.generation_id == body["id"]
    assert rec.size == len(response.request.content) and abs(rec.at - time.time()) < 5
    assert fake.count == 1 and fake.cost_total == Decimal("0.000123")


async def test_stream_line_by_line_through_aiohttp(fake: FakeOpenRouter) -> None:
    fake.reply = "one two three"
    payload = {"model": MODEL, "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(fake.completions_url, json=payload, headers=headers) as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        lines = [line.decode() async for line in response.content]

    assert lines[:2] == [": OPENROUTER PROCESSING\n", "\n"]
    assert all(line == "\n" for line in lines[1::2]), "each event ends with a blank line"
    events = lines[2::2]
    assert events[-1] == "data: [DONE]\n"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert {c["id"] for c in chunks} == {response.headers["X-Generation-Id"]}
    assert {(c["object"], c["model"], c["provider"]) for c in chunks} == {
        ("chat.completion.chunk", MODEL, "FakeProvider")
    }
    first, *words, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"]["content"] for c in words) == "one two three"
    assert {c["choices"][0]["finish_reason"] for c in [first, *words]} == {None}
    assert finish["choices"][0]["finish_reason"] == "stop" and "usage" not in finish
    assert usage["choices"] == []
    assert usage["usage"]["cost"] == 0.0012 and usage["usage"]["completion_tokens"] == 3
    (rec,) = fake.requests
    assert (rec.stream, rec.usage_requested, rec.outcome, rec.cost) == (True, False, "ok", 0.0012)


def test_stream_options_usage_in_finish_chunk_and_legacy_usage() -> None:
    with FakeOpenRouter(KEY, usage_in_finish_chunk=True, processing_comments=0) as fake:
        lines = stream_lines(fake)
        assert lines[0].startswith("data: ")
        *_, finish, done = data_events(lines)
        assert finish["choices"][0]["finish_reason"] == "stop" and finish["usage"]["cost"] == 0.0012
        assert done == "[DONE]"

    with FakeOpenRouter(KEY, legacy_usage=True) as fake:
        assert "cost" not in post(fake).json()["usage"]
        assert post(fake, usage={"include": True}).json()["usage"]["cost"] == 0.0012
        *_, finish, done = data_events(stream_lines(fake))
        assert "usage" not in finish and done == "[DONE]"
        *_, usage, done = data_events(stream_lines(fake, stream_options={"include_usage": True}))
        assert usage["choices"] == [] and usage["usage"]["cost"] == 0.0012
        assert [r.cost for r in fake.requests] == [None, 0.0012, None, 0.0012]


def test_auth_and_request_errors_have_openrouters_shape(fake: FakeOpenRouter) -> None:
    fake.fail_next(500)  # rejected requests leave the knobs alone
    missing = post(fake, key=None)
    assert missing.status_code == 401
    assert missing.json() == {"error": {"message": "No auth credentials found", "code": 401}}
    wrong = post(fake, key="sk-or-v1-other")
    assert wrong.json() == {"error": {"message": "User not found.", "code": 401}}
    assert wrong.status_code == 401
    headers = {"Authorization": f"Bearer {KEY}"}
    bad_json = httpx.post(fake.completions_url, content=b"{nope", headers=headers)
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == 400
    assert post(fake, messages=[]).status_code == 400
    assert httpx.post(fake.base_url + "/embeddings", headers=headers).status_code == 404
    assert httpx.get(fake.completions_url, headers=headers).json()["error"]["code"] == 404
    assert post(fake).status_code == 500
    outcomes = [(r.status, r.outcome) for r in fake.requests]
    assert outcomes == [
        (401, "unauthorized"),
        (401, "unauthorized"),
        (400, "bad_request"),
        (400, "bad_request"),
        (404, "not_found"),
        (404, "not_found"),
        (500, "failed"),
    ]
    assert fake.requests[1].headers["Authorization"] == "Bearer sk-or-v1-other"
    assert fake.requests[2].body is None and fake.requests[2].size == 5


def test_fail_next(fake: FakeOpenRouter) -> None:
    fake.fail_next(429, times=2, headers={"Retry-After": "1"})
    fake.fail_next(502, body="upstream exploded")
    for _ in range(2):
        limited = post(fake, stream=True)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
        assert limited.json() == {"error": {"message": "Rate limit exceeded", "code": 429}}
    failed = post(fake)
    assert (failed.status_code, failed.text) == (502, "upstream exploded")
    assert post(fake).status_code == 200
    assert [r.cost for r in fake.requests] == [None, None, None, 0.0012]


def test_delay_next_latency_and_stall(fake: FakeOpenRouter) -> None:
    fake.delay_next(0.2)
    started = time.monotonic()
    assert post(fake).status_code == 200
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    assert post(fake).status_code == 200
    assert time.monotonic() - started < 0.2

    fake.latency, fake.reply = 0.2, "slow words"
    started = time.monotonic()
    assert post(fake).status_code == 200
    assert time.monotonic() - started >= 0.2
    fake.delay_next(0, stall=0.2)
    payload = {"model": MODEL, "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    with httpx.stream("POST", fake.completions_url, json=payload, headers=headers) as response:
        seen = [(time.monotonic() - started, line) for line in response.iter_lines() if line]
    assert seen[0][1] == ": OPENROUTER PROCESSING" and seen[0][0] < 0.19, "before the latency"
    first_word_at = next(at for at, line in seen if '"content":"slow "' in line)
    second_word_at = next(at for at, line in seen if '"content":"words"' in line)
    assert first_word_at >= 0.2 and second_word_at >= 0.4, "latency, then the stall"


def test_garbage_next(fake: FakeOpenRouter) -> None:
    fake.garbage_next(times=2)
    garbage = post(fake)
    assert garbage.status_code == 200
    assert garbage.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        garbage.json()
    lines = [line for line in stream_lines(fake) if line.startswith("data: ")]
    broken = [line for line in lines if not line.endswith(("}", "[DONE]"))]
    assert len(broken) == 1 and lines.index(broken[0]) == 2, "right after the first word"
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken[0][6:])
    assert json.loads(lines[-2][6:])["usage"]["cost"] == 0.0012 and lines[-1] == "data: [DONE]"
    fake.garbage_next(body="data: not json\n\n")
    assert "data: not json" in stream_lines(fake)
    assert [r.outcome for r in fake.requests] == ["garbage", "garbage", "garbage"]


def test_drop_next(fake: FakeOpenRouter) -> None:
    fake.drop_next(times=2)
    with pytest.raises(httpx.RemoteProtocolError):
        post(fake)
    seen: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        seen.extend(stream_lines(fake))
    assert post(fake).status_code == 200
    assert [r.outcome for r in fake.requests] == ["dropped", "dropped", "ok"]
    assert [r.cost for r in fake.requests] == [None, None, 0.0012]
    assert fake.cost_total == Decimal("0.0012")


def test_stream_error_next(fake: FakeOpenRouter) -> None:
    fake.stream_error_next(times=2)
    lines = [line for line in stream_lines(fake) if line]
    assert "data: [DONE]" not in lines
    last = json.loads(lines[-1][6:])
    assert last["error"] == {
        "code": "server_error",
        "message": "Provider disconnected unexpectedly",
    }
    assert last["choices"][0]["finish_reason"] == "error" and "usage" not in last
    assert last["object"] == "chat.completion.chunk" and last["model"] == MODEL
    response = post(fake)
    assert response.status_code == 200 and "choices" not in response.json()
    assert response.json()["error"]["message"] == "Provider disconnected unexpectedly"
    assert [(r.outcome, r.cost) for r in fake.requests] == [("stream_error", None)] * 2


def test_cost_next_usage_next_and_totals(fake: FakeOpenRouter) -> None:
    fake.cost_next("0.0001245", 0)
    fake.usage_next(cost=None)
    fake.usage_next(times=1, cost=OMIT, prompt_tokens=7)
    costs = [post(fake).json()["usage"] for _ in range(3)]
    assert costs[0]["cost"] is None and costs[1]["prompt_tokens"] == 7
    assert "cost" not in costs[1] and costs[2]["cost"] == 0.0012
    assert post(fake).json()["usage"]["cost"] == 0.0012
    recorded = [r.cost for r in fake.requests]
    assert recorded == [None, None, 0.0012, 0.0012], "cost_next values were overridden"
    fake.clear()
    fake.cost_next("0.0001245", 0)
    assert [post(fake).json()["usage"]["cost"] for _ in range(3)] == [0.0001245, 0, 0.0012]
    assert fake.cost_total == Decimal("0.0013245")
    stats = httpx.get(fake.base_url.removesuffix("/api/v1") + "/__fake/stats").json()
    assert stats == {"count": 3, "outcomes": {"ok": 3}, "cost_total": "0.0013245"}
    with pytest.raises(ValueError):
        fake.cost = "nan"


def test_wait_for_requests_and_thread_safety(fake: FakeOpenRouter) -> None:
    def hammer() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as client:
            for _ in range(10):
                client.post(fake.completions_url, json={"messages": MESSAGES})

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    recorded = fake.wait_for_requests(40, timeout=5)
    for thread in threads:
        thread.join()
    assert len(recorded) == fake.count == 40
    assert {r.model for r in recorded} == {None}
    assert post(fake).json()["model"] == MODEL
    with pytest.raises(TimeoutError):
        fake.wait_for_requests(100, timeout=0.05)


def test_runs_in_its_own_process() -> None:
    command = [sys.executable, "-m", "tests.fakes.openrouter", "--api-key", KEY]
    command += ["--cost", "0.0005", "--latency-ms", "10", "--reply", "from afar"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        assert base_url.endswith("/api/v1")
        headers = {"Authorization": f"Bearer {KEY}"}
        response = httpx.post(
            base_url + "/chat/completions", json={"messages": MESSAGES}, headers=headers
        )
        body = response.json()
        assert body["choices"][0]["message"]["content"] == "from afar"
        assert body["usage"]["cost"] == 0.0005
        stats = httpx.get(base_url.removesuffix("/api/v1") + "/__fake/stats").json()
        assert stats["count"] == 1 and stats["cost_total"] == "0.0005"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
        if process.stdout is not None:
            process.stdout.close()
