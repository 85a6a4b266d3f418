"""One sweep over all of this instance's bot containers: the anomaly watch's samples.

CPU and memory. Docker's stats endpoint answers at its collector's next one-second
tick, even with `one-shot=true` on Docker 20.10: asked container by container that
is about a second each (100 s for 100 bots), and `docker stats --no-stream` asks for
all at once and waits two ticks. So `DockerEngine.stats_all` lists the containers
once and reads each one's cgroup files (v1 or v2, cgroupfs or systemd driver) with no
further Docker call. `bench/sweep.py`, 100 stand-ins, 2 cores, Docker 20.10, cgroup
v1: 0.035 s a sweep against 3.0 s for `docker stats --no-stream` (ratio 0.012), and
0.2 % of one core for storebot sweeping every 15 s. That needs the host's cgroup tree:
storebot on the host, or in compose a read-only bind of the host's /sys/fs/cgroup
(at any path: `cgroup_root`). Where it is not visible (remote DOCKER_HOST, Swarm nodes) the engine
falls back to the API, asking for up to 128 containers at once so that they share
one tick: 0.77 s for 100.

OOM kills come from Docker's event log, one call per sweep, not from the cgroup's
counter: when the main process is killed the container restarts in a new cgroup
whose counter starts again at zero, so a restart loop would go unseen. The kernel
often reports one kill as a burst of events a few milliseconds apart; a burst counts
once.

Requests come from Traefik's Prometheus metrics: `traefik_router_requests_total` of
the bot's router `sb-<bot>` counts what the rate limiter refused (429) as well, which
the service series do not. Traefik must run with
`--metrics.prometheus.addRoutersLabels=true`.

CPU, OOM and request figures are cumulative; `storebot.anomaly` turns them into
rates between sweeps.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx

from storebot.anomaly import Sample
from storebot.cgroups import CGROUP_ROOT
from storebot.container_spec import LABEL_BOT, LABEL_INSTANCE
from storebot.docker_engine import ContainerStats, DockerEngine, OomEvent

log = logging.getLogger(__name__)

ROUTER_REQUESTS = "traefik_router_requests_total"
# Our public router per bot is `sb-<bot id>` (container_spec.traefik_labels); the
# provider suffix is @docker or @swarm. `sb-<bot id>-probe` is our own health probe.
_ROUTER = re.compile(r"^sb-([a-z0-9]+)@[A-Za-z0-9_-]+$")
_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_metrics(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """The (labels, value) of every sample of metric `name` in Prometheus text format."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None or m.group(1) != name:
            continue
        labels = {
            k: re.sub(r"\\[\\\"n]", lambda e: _ESCAPES[e.group(0)], v)
            for k, v in _LABEL.findall(m.group(2) or "")
        }
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        yield labels, value


def router_requests(text: str) -> dict[str, int]:
    """Cumulative requests per bot id that Traefik's public router of the bot saw,
    every status code together (429s from its rate limiter included)."""
    counts: dict[str, int] = {}
    for labels, value in parse_metrics(text, ROUTER_REQUESTS):
        m = _ROUTER.match(labels.get("router", ""))
        if m and math.isfinite(value):
            counts[m.group(1)] = counts.get(m.group(1), 0) + int(value)
    return counts


async def fetch_metrics(http: httpx.AsyncClient, url: str) -> str:
    resp = await http.get(url, timeout=5)
    resp.raise_for_status()
    return resp.text


class OomCounter:
    """OOM kills per bot since this process started. Events of one container less
    than `burst` seconds after the first of a burst are the same kill."""

    def __init__(self, burst: float = 0.1) -> None:
        self.totals: dict[str, int] = {}
        self._burst = burst
        self._burst_start: dict[str, float] = {}

    def add(self, events: Iterable[OomEvent]) -> None:
        for e in sorted(events, key=lambda e: e.at):
            bot = e.labels.get(LABEL_BOT)
            if not bot:
                continue
            start = self._burst_start.get(e.container_id)
            if start is not None and e.at < start + self._burst:
                continue
            self._burst_start[e.container_id] = e.at
            self.totals[bot] = self.totals.get(bot, 0) + 1

    def forget(self, bot_id: str) -> None:
        self.totals.pop(bot_id, None)


class Sampler:
    """Sweeps the containers of one STOREBOT_INSTANCE; keeps the OOM tally between
    sweeps, so build one per process and call `sweep()` on a schedule."""

    def __init__(
        self,
        engine: DockerEngine,
        instance: str,
        *,
        metrics_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        cgroup_root: Path | None = CGROUP_ROOT,
    ) -> None:
        self._engine = engine
        self._label = f"{LABEL_INSTANCE}={instance}"
        self._metrics_url = metrics_url
        self._http = http
        self._cgroup_root = cgroup_root
        self.oom = OomCounter()
        self._events_until = int(time.time())
        self._warned = False

    async def sweep(
        self,
        *,
        spend_micro: Mapping[str, int] | None = None,
        token_ok: Mapping[str, bool] | None = None,
    ) -> dict[str, Sample]:
        """A sample per bot: its running container's figures, Traefik's request
        count, and the spend and getMe verdicts the caller measured (by bot id).
        Raises EngineError when Docker cannot be asked; Traefik being unreachable
        only leaves `requests` unset."""
        now = datetime.now(UTC)
        # whole seconds, one behind: Docker may still be recording the last second
        since, until = self._events_until, int(time.time()) - 1
        stats, events, requests = await asyncio.gather(
            self._engine.stats_all(self._label, self._cgroup_root),
            self._engine.oom_events(self._label, since, until) if until > since else _no_events(),
            self._requests(),
        )
        self._events_until = max(until, since)
        self.oom.add(events)
        spend, tokens = spend_micro or {}, token_ok or {}

        def sample(bot: str, st: ContainerStats | None) -> Sample:
            return Sample(
                at=now if st is None else st.read_at,
                cpu_ns=None if st is None else st.cpu_ns,
                cpu_limit=None if st is None else st.cpu_limit,
                mem_bytes=None if st is None else st.mem_bytes,
                mem_limit=None if st is None else st.mem_limit,
                oom_kills=self.oom.totals.get(bot, 0),
                requests=None if requests is None else requests.get(bot, 0),
                spend_micro=spend.get(bot),
                token_ok=tokens.get(bot),
            )

        out = {bot: sample(bot, st) for st in stats if (bot := st.labels.get(LABEL_BOT))}
        # bots seen otherwise, e.g. restarting after an OOM kill at this moment
        for bot in {*self.oom.totals, *spend, *tokens} - out.keys():
            out[bot] = sample(bot, None)
        return out

    async def _requests(self) -> dict[str, int] | None:
        if not self._metrics_url or self._http is None:
            return None
        try:
            text = await fetch_metrics(self._http, self._metrics_url)
        except httpx.HTTPError as exc:
            log.warning("no request counts this sweep: %s: %s", type(exc).__name__, exc)
            return None
        if ROUTER_REQUESTS not in text and "traefik_service_" in text and not self._warned:
            self._warned = True
            log.warning(
                "Traefik's metrics at %s have no router series, so no request rates: "
                "start Traefik with --metrics.prometheus.addRoutersLabels=true",
                self._metrics_url,
            )
        return router_requests(text)


async def _no_events() -> list[OomEvent]:
    return []
