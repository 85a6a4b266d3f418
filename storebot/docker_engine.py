"""The one adapter to the Docker engine.

docker-py is synchronous: every call goes through `asyncio.to_thread` here and
nowhere else. Lookups are by deterministic container name, and 404/409 answers mean
"already done", so each method can be re-run after a crash and converge.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import docker
import docker.errors
import requests

from storebot.errors import DockerUnavailable, EngineError, ImageMissing

T = TypeVar("T")
SPEC_HASH_LABEL = "storebot.spec-hash"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"


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


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class DockerEngine:
    def __init__(self, base_url: str | None = None, timeout: int = 30) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    def _docker(self) -> docker.DockerClient:
        # Built lazily (and rebuilt after a failure) so a daemon that comes back is used.
        with self._lock:
            if self._client is None:
                _probe(self._base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET)
                if self._base_url:
                    self._client = docker.DockerClient(
                        base_url=self._base_url, version="auto", timeout=self._timeout
                    )
                else:
                    self._client = docker.from_env(timeout=self._timeout)
            return self._client

    async def _run(self, fn: Callable[[docker.DockerClient], T]) -> T:
        def call() -> T:
            try:
                return fn(self._docker())
            except (requests.ConnectionError, requests.Timeout) as exc:
                self._client = None
                raise DockerUnavailable(_unreachable(self._base_url, exc)) from None
            except docker.errors.APIError as exc:
                # Anything the daemon refused that the caller did not handle itself.
                raise EngineError(f"Docker refused: {exc.explanation or exc}") from None
            except docker.errors.DockerException as exc:
                self._client = None
                raise DockerUnavailable(_unreachable(self._base_url, exc)) from None

        return await asyncio.to_thread(call)

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

    async def stop(self, name: str, timeout: int = 5) -> bool:
        def stop(d: docker.DockerClient) -> bool:
            c = _get(d, name)
            if c is None:
                return False
            if c.status in ("running", "restarting", "paused"):
                c.stop(timeout=timeout)
            return True

        return await self._run(stop)

    async def restart(self, name: str, timeout: int = 5) -> bool:
        def restart(d: docker.DockerClient) -> bool:
            c = _get(d, name)
            if c is None:
                return False
            c.restart(timeout=timeout)
            return True

        return await self._run(restart)

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


def _unreachable(base_url: str | None, exc: BaseException) -> str:
    where = base_url or "the local Docker socket (DOCKER_HOST unset)"
    return (
        f"Docker is not reachable at {where}: {type(exc).__name__}. "
        "Start the Docker daemon (or fix DOCKER_HOST) and retry; nothing was lost."
    )
