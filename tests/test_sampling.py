"""The sweep: Traefik's metrics parsed, cgroup files read, OOM bursts counted, and one
real sweep over containers on this host's Docker engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from storebot.anomaly import History, Rule, Thresholds, evaluate
from storebot.cgroups import CGROUP_ROOT, CgroupReading, read_cgroup
from storebot.container_spec import LABEL_BOT, LABEL_INSTANCE, LABEL_MANAGED
from storebot.docker_engine import DockerEngine, OomEvent
from storebot.sampling import (
    OomCounter,
    Sampler,
    fetch_metrics,
    parse_metrics,
    router_requests,
)
from tests.conftest import INSTANCE
from tests.harness import STANDIN

MIB = 1024**2

# What Traefik 3.7 serves (--metrics.prometheus.addRoutersLabels=true) for two bots
# behind our labels, trimmed: bot k3x9p2qa met its rate limit (429s), its -probe
# router is storebot's own health check.
METRICS = """\
# HELP traefik_config_reloads_total Config reloads
# TYPE traefik_config_reloads_total counter
traefik_config_reloads_total 2
# HELP traefik_entrypoint_requests_total How many HTTP requests processed on an entrypoint, \
partitioned by status code, protocol, and method.
# TYPE traefik_entrypoint_requests_total counter
traefik_entrypoint_requests_total{code="200",entrypoint="web",method="GET",protocol="http"} 25
traefik_entrypoint_requests_total{code="429",entrypoint="web",method="GET",protocol="http"} 35
# TYPE traefik_router_request_duration_seconds histogram
traefik_router_request_duration_seconds_bucket{code="200",method="GET",protocol="http",\
router="sb-k3x9p2qa@docker",service="sb-k3x9p2qa@docker",le="0.1"} 25
traefik_router_request_duration_seconds_count{code="200",method="GET",protocol="http",\
router="sb-k3x9p2qa@docker",service="sb-k3x9p2qa@docker"} 25
# HELP traefik_router_requests_bytes_total The total size of requests in bytes handled by \
a router, partitioned by service, status code, protocol, and method.
# TYPE traefik_router_requests_bytes_total counter
traefik_router_requests_bytes_total{code="200",method="GET",protocol="http",\
router="sb-k3x9p2qa@docker",service="sb-k3x9p2qa@docker"} 0
# HELP traefik_router_requests_total How many HTTP requests are processed on a router, \
partitioned by service, status code, protocol, and method.
# TYPE traefik_router_requests_total counter
traefik_router_requests_total{code="200",method="GET",protocol="http",\
router="sb-k3x9p2qa-probe@docker",service="sb-k3x9p2qa@docker"} 1
traefik_router_requests_total{code="200",method="GET",protocol="http",\
router="sb-k3x9p2qa@docker",service="sb-k3x9p2qa@docker"} 25
traefik_router_requests_total{code="429",method="GET",protocol="http",\
router="sb-k3x9p2qa@docker",service="sb-k3x9p2qa@docker"} 35
traefik_router_requests_total{code="200",method="POST",protocol="http",\
router="sb-m7c2v8d1@docker",service="sb-m7c2v8d1@docker"} 1.234567e+06
traefik_router_requests_total{code="401",method="POST",protocol="http",\
router="sb-m7c2v8d1@docker",service="sb-m7c2v8d1@docker"} 33
traefik_router_requests_total{code="200",method="GET",protocol="http",\
router="dashboard@internal",service="api@internal"} 7
# HELP traefik_service_requests_total How many HTTP requests processed on a service, \
partitioned by status code, protocol, and method.
# TYPE traefik_service_requests_total counter
traefik_service_requests_total{code="200",method="GET",protocol="http",\
service="sb-k3x9p2qa@docker"} 26
"""


def test_router_requests_count_every_code_and_leave_out_the_probe() -> None:
    assert router_requests(METRICS) == {"k3x9p2qa": 60, "m7c2v8d1": 1_234_600}
    assert router_requests("") == {}


def test_parse_metrics_reads_escapes_timestamps_and_skips_junk() -> None:
    text = (
        'm{a="x\\"y",b="c\\\\d\\ne", c = "}{"} 3 1700000000000\n'
        "m 4\n"
        "m_total 5\n"
        'm{a="z"} NaN\n'
        "m{broken 6\n"
        'm{a="w"} not-a-number\n'
    )
    got = list(parse_metrics(text, "m"))
    assert got[0] == ({"a": 'x"y', "b": "c\\d\ne", "c": "}{"}, 3.0)
    assert got[1] == ({}, 4.0)
    assert got[2][0] == {"a": "z"} and got[2][1] != got[2][1]  # NaN
    assert len(got) == 3
    assert router_requests('traefik_router_requests_total{router="sb-a1@docker"} NaN') == {}


# OOM events ------------------------------------------------------------------------


def oom(container: str, at: float, bot: str | None = "b1") -> OomEvent:
    return OomEvent(container, {LABEL_BOT: bot} if bot else {}, at)


def test_a_burst_of_oom_events_is_one_kill() -> None:
    counter = OomCounter()
    counter.add([oom("c1", 10.000), oom("c1", 10.003), oom("c1", 10.006), oom("c1", 11.2)])
    assert counter.totals == {"b1": 2}
    # the next sweep may see the end of the same burst again
    counter.add([oom("c1", 11.21), oom("c1", 12.5), oom("c2", 12.5), oom("c3", 1, bot=None)])
    assert counter.totals == {"b1": 4}
    counter.forget("b1")
    assert counter.totals == {}


def test_a_storm_of_oom_events_counts_one_kill_per_burst_length() -> None:
    counter = OomCounter(burst=0.1)
    counter.add(oom("c1", 100 + i * 0.05) for i in range(20))  # one second of OOMs
    assert counter.totals == {"b1": 10}


# cgroup files ----------------------------------------------------------------------

CID = "ab" * 32


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_read_cgroup_v2_systemd_layout(tmp_path: Path) -> None:
    d = f"system.slice/docker-{CID}.scope"
    write(
        tmp_path,
        {
            "cgroup.controllers": "cpuset cpu io memory pids\n",
            f"{d}/cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
            f"{d}/cpu.max": "50000 100000\n",
            f"{d}/memory.current": "10485760\n",
            f"{d}/memory.max": "67108864\n",
            f"{d}/memory.stat": "anon 4194304\nfile 6291456\ninactive_file 2097152\n",
        },
    )
    assert read_cgroup(tmp_path, CID) == CgroupReading(
        cpu_ns=2_500_000_000, cpu_limit=0.5, mem_bytes=8 * MIB, mem_limit=64 * MIB
    )
    write(tmp_path, {f"{d}/cpu.max": "max 100000\n", f"{d}/memory.max": "max\n"})
    reading = read_cgroup(tmp_path, CID)
    assert reading is not None and reading.cpu_limit is None and reading.mem_limit is None


def test_read_cgroup_v1_cgroupfs_layout(tmp_path: Path) -> None:
    d = f"docker/{CID}"
    write(
        tmp_path,
        {
            f"cpuacct/{d}/cpuacct.usage": "1553981361\n",
            f"cpu/{d}/cpu.cfs_quota_us": "150000\n",
            f"cpu/{d}/cpu.cfs_period_us": "100000\n",
            f"memory/{d}/memory.usage_in_bytes": "2834432\n",
            f"memory/{d}/memory.limit_in_bytes": "536870912\n",
            f"memory/{d}/memory.stat": "cache 1990656\ntotal_inactive_file 217088\n",
        },
    )
    assert read_cgroup(tmp_path, CID) == CgroupReading(
        cpu_ns=1_553_981_361, cpu_limit=1.5, mem_bytes=2834432 - 217088, mem_limit=512 * MIB
    )
    write(
        tmp_path,
        {
            f"cpu/{d}/cpu.cfs_quota_us": "-1\n",
            f"memory/{d}/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    reading = read_cgroup(tmp_path, CID)
    assert reading is not None and reading.cpu_limit is None and reading.mem_limit is None


def test_read_cgroup_of_an_unknown_container_is_none(tmp_path: Path) -> None:
    assert read_cgroup(tmp_path, CID) is None
    write(tmp_path, {f"memory/docker/{CID}/memory.usage_in_bytes": "garbage"})
    assert read_cgroup(tmp_path, CID) is None


# Traefik's metrics over HTTP -------------------------------------------------------


class _Metrics(BaseHTTPRequestHandler):
    text = METRICS

    def do_GET(self) -> None:
        ok = self.path == "/metrics"
        body = (self.text if ok else "oops").encode()
        self.send_response(200 if ok else 500)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def metrics_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


async def test_fetch_metrics(metrics_url: str) -> None:
    async with httpx.AsyncClient() as http:
        assert await fetch_metrics(http, f"{metrics_url}/metrics") == METRICS
        with pytest.raises(httpx.HTTPStatusError):
            await fetch_metrics(http, f"{metrics_url}/broken")


# One sweep over real containers ----------------------------------------------------


@pytest.fixture
def bots(docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:
    """Three stand-ins with our labels: idle, spinning at 0.5 CPU, and one whose
    child processes keep being OOM-killed (the container itself stays up)."""
    scripts = {
        "idle": ("sleep 600", 1.0, 64),
        "busy": ("while :; do :; done", 0.5, 64),
        "oomy": (
            "while :; do head -c 40000000 /dev/zero | sort >/dev/null; sleep 0.3; done",
            1.0,
            16,
        ),
    }
    names = {}
    for role, (script, cpus, mem) in scripts.items():
        bot_id = f"{role}{INSTANCE[-4:]}"
        docker_client.containers.run(
            STANDIN,
            entrypoint=["sh", "-c", script],
            command=[],
            name=f"storebot-{INSTANCE}-{bot_id}",
            labels={LABEL_MANAGED: "true", LABEL_INSTANCE: INSTANCE, LABEL_BOT: bot_id},
            init=True,
            nano_cpus=int(cpus * 1e9),
            mem_limit=mem * MIB,
            memswap_limit=mem * MIB,
            restart_policy={"Name": "unless-stopped"},
            detach=True,
        )
        names[role] = bot_id
    yield names
    for bot_id in names.values():
        docker_client.containers.get(f"storebot-{INSTANCE}-{bot_id}").remove(force=True)


@pytest.mark.docker
async def test_one_sweep_over_real_containers(bots: dict[str, str], metrics_url: str) -> None:
    idle, busy, oomy = bots["idle"], bots["busy"], bots["oomy"]
    engine = DockerEngine()
    # windows shrunk to seconds; half the CPU limit, as other tests may share the cores
    th = Thresholds(
        cpu_fraction=0.5,
        cpu_window=timedelta(seconds=2),
        max_gap=timedelta(seconds=30),
        oom_kills=1,
    )
    history = History.for_thresholds(th)
    _Metrics.text = METRICS.replace("k3x9p2qa", busy)  # Traefik saw 60 requests for busy
    async with httpx.AsyncClient() as http:
        sampler = Sampler(engine, INSTANCE, metrics_url=f"{metrics_url}/metrics", http=http)
        try:
            first = await sampler.sweep(spend_micro={busy: 1000}, token_ok={idle: True})
            for _ in range(30):  # until the OOM kills show (a few seconds)
                await asyncio.sleep(1)
                second = await sampler.sweep(spend_micro={busy: 1000})
                if second[oomy].oom_kills and (second[busy].at - first[busy].at).seconds >= 3:
                    break
            label = f"{LABEL_INSTANCE}={INSTANCE}"
            fast = await engine.stats_all(label)
            api = await engine.stats_all(label, cgroup_root=None)
        finally:
            _Metrics.text = METRICS
            await engine.close()

    for s in (first[idle], first[busy], second[idle], second[busy]):
        assert s.mem_bytes is not None and 0 < s.mem_bytes < 16 * MIB
        assert s.mem_limit == 64 * MIB
    assert (first[busy].requests, second[busy].requests) == (60, 60)
    assert second[idle].requests == 0  # no router series yet: nothing seen
    assert (first[idle].cpu_limit, first[busy].cpu_limit) == (1.0, 0.5)
    assert first[oomy].mem_limit == 16 * MIB
    assert first[busy].spend_micro == 1000 and first[idle].token_ok is True
    assert first[idle].spend_micro is None and second[idle].token_ok is None

    def cpu_share(bot: str) -> float:
        a, b = first[bot], second[bot]
        assert a.cpu_ns is not None and b.cpu_ns is not None and b.cpu_limit is not None
        return (b.cpu_ns - a.cpu_ns) / 1e9 / (b.at - a.at).total_seconds() / b.cpu_limit

    assert 0.5 < cpu_share(busy) < 1.1, "a spinning container uses (about) its whole limit"
    assert cpu_share(idle) < 0.05
    assert second[oomy].oom_kills is not None and second[oomy].oom_kills >= 1

    # the cgroup files are read wherever this host shows them, the API asked otherwise
    for st in fast:
        assert st.source == ("cgroup" if read_cgroup(CGROUP_ROOT, st.id) else "api")
    # the same figures through the Docker API, for hosts whose cgroups are not visible
    by_bot = {s.labels[LABEL_BOT]: s for s in api}
    for bot in (idle, busy):
        assert by_bot[bot].source == "api"
        assert (by_bot[bot].cpu_limit, by_bot[bot].mem_limit) == (
            second[bot].cpu_limit,
            second[bot].mem_limit,
        )
        assert by_bot[bot].cpu_ns >= (second[bot].cpu_ns or 0)
        assert 0 < by_bot[bot].mem_bytes < 16 * MIB

    # and what the anomaly watch makes of them
    for sweep in (first, second):
        for bot, sample in sweep.items():
            history.add(bot, sample)
    now = second[busy].at
    assert [f.rule for f in evaluate(history.samples(busy), th, now)] == [Rule.cpu]
    assert evaluate(history.samples(idle), th, now) == []
    assert Rule.oom in [f.rule for f in evaluate(history.samples(oomy), th, now)]


@pytest.mark.docker
async def test_a_sweep_survives_traefik_being_unreachable(bots: dict[str, str]) -> None:
    engine = DockerEngine()
    async with httpx.AsyncClient() as http:
        sampler = Sampler(engine, INSTANCE, metrics_url="http://127.0.0.1:9/metrics", http=http)
        try:
            got = await sampler.sweep()
        finally:
            await engine.close()
    assert got[bots["idle"]].requests is None
    assert got[bots["idle"]].mem_bytes
