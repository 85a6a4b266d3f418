"""The one adapter to the Docker engine.

docker-py is synchronous: every call goes through `asyncio.to_thread` here and
nowhere else. Lookups are by deterministic container name, and 404/409 answers mean
"already done", so each method can be re-run after a crash and converge.

Resource accounting (`stats_all`) reads the kernel's cgroup files of each container
when this host's cgroup tree is visible (the daemon is local and /sys/fs/cgroup is
there: `storebot.cgroups`), and asks the Docker API otherwise; see `storebot.sampling`
for why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import docker
import docker.errors
import docker.utils
import requests

from storebot.cgroups import CGROUP_ROOT, CgroupReading, read_cgroup
from storebot.errors import DockerUnavailable, EngineError, ImageMissing

T = TypeVar("T")
SPEC_HASH_LABEL = "storebot.spec-hash"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# Docker answers a stats request at its collector's next one-second tick, so the API
# path asks for every container at once (up to this many) to share one tick.
STATS_CONCURRENCY = 128


@dataclass(frozen=True)
class ContainerState:
    name: str
    status: str  # created, running, exited, ...
    running: bool
    exit_code: int
    oom_killed: bool
    started_at: str
    ip: str | None


@dataclass(frozen=True)
class NetworkInfo:
    id: str
    bridge: str


@dataclass(frozen=True)
class ContainerStats:
    """One reading of a running container's resource accounting."""

    id: str
    name: str
    labels: dict[str, str]
    read_at: datetime
    cpu_ns: int  # CPU time used since the container (re)started
    cpu_limit: float | None  # CPUs; None = no limit
    mem_bytes: int  # working set: usage minus inactive page cache, as `docker stats`
    mem_limit: int | None
    source: str  # "cgroup" or "api"


@dataclass(frozen=True)
class OomEvent:
    container_id: str
    labels: dict[str, str]
    at: float  # daemon's clock, Unix seconds


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class DockerEngine:
    def __init__(self, base_url: str | None = None, timeout: int = 30) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        # (CPU limit, memory limit) per container id, for the API path of stats_all
        self._limits: dict[str, tuple[float | None, int | None]] = {}

    def _docker(self) -> docker.DockerClient:
        # Built lazily (and rebuilt after a failure) so a daemon that comes back is used.
        with self._lock:
            if self._client is None:
                _probe(self._base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET)
                # the pool holds STATS_CONCURRENCY connections so that stats_all's
                # parallel API path reuses them instead of opening and dropping extras
                if self._base_url:
                    self._client = docker.DockerClient(
                        base_url=self._base_url,
                        version="auto",
                        timeout=self._timeout,
                        max_pool_size=STATS_CONCURRENCY,
                    )
                else:
                    self._client = docker.from_env(
                        timeout=self._timeout, max_pool_size=STATS_CONCURRENCY
                    )
            return self._client

    async def _run(self, fn: Callable[[docker.DockerClient], T]) -> T:
        def call() -> T:
            try:
                return fn(self._docker())
            except (requests.ConnectionError, requests.Timeout) as exc:
                self._drop_client()
                raise DockerUnavailable(_unreachable(self._base_url, exc)) from None
            except docker.errors.APIError as exc:
                # Anything the daemon refused that the caller did not handle itself.
                raise EngineError(f"Docker refused: {exc.explanation or exc}") from None
            except docker.errors.DockerException as exc:
                self._drop_client()
                raise DockerUnavailable(_unreachable(self._base_url, exc)) from None

        return await asyncio.to_thread(call)

    def _drop_client(self) -> None:
        """Forget a client whose daemon went away, closing its pooled sockets (the
        next call builds a new one)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    async def ping(self) -> None:
        await self._run(lambda d: d.ping())

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    # Network
    async def ensure_network(self, name: str, subnet: str, labels: dict[str, str]) -> NetworkInfo:
        def ensure(d: docker.DockerClient) -> NetworkInfo:
            found = d.networks.list(names=[name])
            net = next((n for n in found if n.name == name), None)
            if net is None:
                pool = docker.types.IPAMPool(subnet=subnet)
                try:
                    net = d.networks.create(
                        name,
                        driver="bridge",
                        ipam=docker.types.IPAMConfig(pool_configs=[pool]),
                        # no bot may talk to another bot on this bridge
                        options={"com.docker.network.bridge.enable_icc": "false"},
                        labels=labels,
                    )
                except docker.errors.APIError as exc:
                    # A racing deploy may be creating it right now (Docker then says 409,
                    # or that the address pool overlaps, before it lists the network).
                    net = _await_network(d, name)
                    if net is None:
                        raise EngineError(
                            f"cannot create network {name}: {exc.explanation}"
                        ) from None
            net.reload()
            attrs = net.attrs
            net_id = str(net.id)
            if attrs["Options"].get("com.docker.network.bridge.enable_icc") != "false":
                raise EngineError(
                    f"network {name} exists but lets containers talk to each other; "
                    "remove it (docker network rm) so storebot can recreate it"
                )
            bridge = attrs["Options"].get("com.docker.network.bridge.name") or f"br-{net_id[:12]}"
            return NetworkInfo(id=net_id, bridge=bridge)

        return await self._run(ensure)

    # Containers
    async def image_present(self, image: str) -> bool:
        def look(d: docker.DockerClient) -> bool:
            try:
                d.images.get(image)
            except docker.errors.ImageNotFound:
                return False
            return True

        return await self._run(look)

    async def run(self, spec: dict[str, Any]) -> str:
        """Create (or re-create, if its spec changed) and start; returns the id."""
        spec = {**spec, "labels": {**spec["labels"], SPEC_HASH_LABEL: spec_hash(spec)}}
        name = spec["name"]

        def run(d: docker.DockerClient) -> str:
            current = _get(d, name)
            if (
                current is not None
                and current.labels.get(SPEC_HASH_LABEL) != spec["labels"][SPEC_HASH_LABEL]
            ):
                current.remove(force=True)
                current = None
            if current is None:
                try:
                    current = d.containers.create(**spec)
                except docker.errors.ImageNotFound:
                    raise ImageMissing(
                        f"image {spec['image']} is not on this Docker host: run "
                        f"`docker pull {spec['image']}` or set NULLCLAW_IMAGE"
                    ) from None
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # created meanwhile by a racing call
                        raise EngineError(f"cannot create {name}: {exc.explanation}") from None
                    current = d.containers.get(name)
            if current.status != "running":
                current.start()
            return str(current.id)

        return await self._run(run)

    async def running_as(self, spec: dict[str, Any]) -> bool:
        """Whether the container of `spec` is running and was created from this very
        spec (so `run` would leave it alone)."""
        wanted = spec_hash(spec)

        def check(d: docker.DockerClient) -> bool:
            c = _get(d, spec["name"])
            return (
                c is not None
                and c.status == "running"
                and (c.labels.get(SPEC_HASH_LABEL) == wanted)
            )

        return await self._run(check)

    async def stop(self, name: str, timeout: int = 5) -> bool:
        def stop(d: docker.DockerClient) -> bool:
            c = _get(d, name)
            if c is None:
                return False
            if c.status in ("running", "restarting", "paused"):
                c.stop(timeout=timeout)
            return True

        return await self._run(stop)

    async def remove(self, name: str) -> bool:
        def remove(d: docker.DockerClient) -> bool:
            c = _get(d, name)
            if c is None:
                return False
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                return False
            return True

        return await self._run(remove)

    async def state(self, name: str, network: str | None = None) -> ContainerState | None:
        def state(d: docker.DockerClient) -> ContainerState | None:
            c = _get(d, name)
            return None if c is None else _state(c, network)

        return await self._run(state)

    async def logs(self, name: str, tail: int = 100) -> str | None:
        def logs(d: docker.DockerClient) -> str | None:
            c = _get(d, name)
            if c is None:
                return None
            raw: bytes = c.logs(tail=tail, stdout=True, stderr=True, timestamps=False)
            return raw.decode(errors="replace")

        return await self._run(logs)

    # Resource accounting
    async def stats_all(
        self, label: str, cgroup_root: Path | None = CGROUP_ROOT
    ) -> list[ContainerStats]:
        """CPU and memory of every running container carrying `label` ("key=value"):
        one list call, then the cgroup files of each (no Docker call), or the Docker
        API, all containers at once, for those whose files are not visible here.
        `cgroup_root=None` forces the API path."""

        def sweep(d: docker.DockerClient) -> list[ContainerStats]:
            listed = d.api.containers(filters={"label": [label], "status": "running"})
            found: list[ContainerStats] = []
            rest = []
            for c in listed:
                reading = read_cgroup(cgroup_root, c["Id"]) if cgroup_root else None
                if reading is None:
                    rest.append(c)
                    continue
                found.append(_stats(c, datetime.now(UTC), reading, "cgroup"))
            if rest:
                with ThreadPoolExecutor(min(len(rest), STATS_CONCURRENCY)) as pool:
                    found += [s for s in pool.map(lambda c: self._api_stats(d, c), rest) if s]
            live = {c["Id"] for c in listed}
            for gone in [k for k in self._limits if k not in live]:
                self._limits.pop(gone, None)
            return found

        return await self._run(sweep)

    def _api_stats(self, d: docker.DockerClient, c: dict[str, Any]) -> ContainerStats | None:
        cid = c["Id"]
        try:
            if cid not in self._limits:
                host = d.api.inspect_container(cid)["HostConfig"]
                self._limits[cid] = (_cpus(host), int(host.get("Memory") or 0) or None)
            # one-shot (API 1.41+) skips priming the CPU delta we do not use
            one_shot = None if docker.utils.version_lt(d.api.api_version, "1.41") else True
            raw = d.api.stats(cid, stream=False, one_shot=one_shot)
        except docker.errors.APIError:
            return None  # stopped or removed since the list: no reading this time
        cpu, mem = raw.get("cpu_stats") or {}, raw.get("memory_stats") or {}
        if "usage" not in mem:
            return None  # not running any more: Docker answers with empty stats
        memstat = mem.get("stats") or {}
        inactive = memstat.get("total_inactive_file", memstat.get("inactive_file", 0))
        cpu_limit, mem_limit = self._limits[cid]
        reading = CgroupReading(
            cpu_ns=int(cpu["cpu_usage"]["total_usage"]),
            cpu_limit=cpu_limit,
            mem_bytes=max(int(mem["usage"]) - int(inactive), 0),
            mem_limit=mem_limit,
        )
        return _stats(c, _parse_time(raw.get("read")), reading, "api")

    async def oom_events(self, label: str, since: int, until: int) -> list[OomEvent]:
        """OOM kills Docker saw in containers carrying `label`, between two Unix times.

        Docker answers from its last 256 events of every kind, host-wide, so call
        this often: a flood between two calls loses the oldest (an undercount). The
        kernel may report one kill as several events a few ms apart."""

        def events(d: docker.DockerClient) -> list[OomEvent]:
            filters = {"type": "container", "event": "oom", "label": [label]}
            stream = d.events(since=since, until=until, filters=filters, decode=True)
            try:
                return [
                    OomEvent(
                        container_id=e["Actor"]["ID"],
                        labels=e["Actor"].get("Attributes") or {},
                        at=e["timeNano"] / 1e9,
                    )
                    for e in stream
                ]
            finally:
                stream.close()

        return await self._run(events)

    # Reconciliation
    async def containers(self, labels: list[str]) -> list[tuple[str, str, dict[str, str]]]:
        """(name, state, labels) of every container carrying all `labels` ("key=value"),
        running or not, in one call. State is Docker's: created, running, restarting,
        paused, exited, dead or removing."""

        def listing(d: docker.DockerClient) -> list[tuple[str, str, dict[str, str]]]:
            found = d.api.containers(all=True, filters={"label": labels})
            return [
                (
                    (c.get("Names") or ["/?"])[0].lstrip("/"),
                    str(c.get("State") or ""),
                    c.get("Labels") or {},
                )
                for c in found
            ]

        return await self._run(listing)


def _probe(base_url: str) -> None:
    """Connect once to the daemon's socket (and close it) before docker-py does: its
    constructor leaks a socket when the daemon is down."""
    url = urlsplit(base_url)
    try:
        if url.scheme in ("unix", "http+unix"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(url.path)
        elif url.scheme in ("tcp", "http", "https") and url.hostname:
            socket.create_connection((url.hostname, url.port or 2375), timeout=5).close()
    except OSError as exc:
        raise requests.ConnectionError(str(exc)) from None


def _await_network(d: docker.DockerClient, name: str) -> Any:
    for _ in range(20):
        net = next((n for n in d.networks.list(names=[name]) if n.name == name), None)
        if net is not None:
            return net
        time.sleep(0.1)
    return None


def _get(d: docker.DockerClient, name: str) -> Any:
    try:
        return d.containers.get(name)
    except docker.errors.NotFound:
        return None


def _state(c: Any, network: str | None = None) -> ContainerState:
    st = c.attrs["State"]
    nets = c.attrs["NetworkSettings"]["Networks"] or {}
    ip = (nets.get(network) or {}).get("IPAddress") if network else None
    return ContainerState(
        name=c.name,
        status=st["Status"],
        running=bool(st["Running"]),
        exit_code=int(st["ExitCode"]),
        oom_killed=bool(st["OOMKilled"]),
        started_at=st["StartedAt"],
        ip=ip or None,
    )


def _stats(c: dict[str, Any], at: datetime, r: CgroupReading, source: str) -> ContainerStats:
    return ContainerStats(
        id=c["Id"],
        name=(c.get("Names") or ["/?"])[0].lstrip("/"),
        labels=c.get("Labels") or {},
        read_at=at,
        cpu_ns=r.cpu_ns,
        cpu_limit=r.cpu_limit,
        mem_bytes=r.mem_bytes,
        mem_limit=r.mem_limit,
        source=source,
    )


def _cpus(host: dict[str, Any]) -> float | None:
    if host.get("NanoCpus"):
        return int(host["NanoCpus"]) / 1e9
    quota, period = host.get("CpuQuota") or 0, host.get("CpuPeriod") or 100_000
    return quota / period if quota > 0 else None


def _parse_time(value: str | None) -> datetime:
    """Docker's RFC 3339 time with nanoseconds; now if absent."""
    if not value or value.startswith("0001-"):
        return datetime.now(UTC)
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def _unreachable(base_url: str | None, exc: BaseException) -> str:
    where = base_url or "the local Docker socket (DOCKER_HOST unset)"
    return (
        f"Docker is not reachable at {where}: {type(exc).__name__}. "
        "Start the Docker daemon (or fix DOCKER_HOST) and retry; nothing was lost."
    )
