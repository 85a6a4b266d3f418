"""What a hosted bot's container looks like: pure functions from settings to a spec.

The spec is the keyword arguments of docker-py's `containers.create`, so the Docker
adapter passes it through and tests can read every hardening option here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from storebot.nullclaw_config import GATEWAY_PORT
from storebot.settings import Settings, parse_memory

NULLCLAW_HOME = "/nullclaw-data"
CONFIG_IN_CONTAINER = f"{NULLCLAW_HOME}/.nullclaw/config.json"
NOBODY = "65534:65534"
# Only these gateway paths are routed; /telegram, /pair and the rest stay unreachable.
PUBLIC_PATHS = ("/health", "/ready", "/webhook")

LABEL_MANAGED = "storebot.managed"
LABEL_INSTANCE = "storebot.instance"
LABEL_BOT = "storebot.bot-id"
LABEL_CONFIG = "storebot.config-hash"
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    cpus: float
    mem_bytes: int
    pids: int


def container_name(settings: Settings, bot_id: str) -> str:
    return f"storebot-{settings.STOREBOT_INSTANCE}-{bot_id}"


def traefik_labels(settings: Settings, bot_id: str) -> dict[str, str]:
    name = f"sb-{bot_id}"
    host = f"Host(`{settings.bot_host(bot_id)}`)"
    paths = " || ".join(f"Path(`{p}`)" for p in PUBLIC_PATHS)
    router = f"traefik.http.routers.{name}"
    mw = f"traefik.http.middlewares.{name}"
    labels = {
        "traefik.enable": "true",
        "traefik.docker.network": settings.BOT_NETWORK,
        f"traefik.http.services.{name}.loadbalancer.server.port": str(GATEWAY_PORT),
        f"{router}.rule": f"{host} && ({paths})",
        f"{router}.entrypoints": ",".join(settings.entrypoints),
        f"{router}.service": name,
        f"{router}.middlewares": f"{name}-rl,{name}-if,{name}-buf",
        # Limits count per bot (its Host), not per client: they protect the bot's
        # single-threaded gateway, whoever calls it.
        f"{mw}-rl.ratelimit.average": str(settings.DEFAULT_RATE_LIMIT_RPS),
        f"{mw}-rl.ratelimit.burst": str(settings.DEFAULT_RATE_LIMIT_BURST),
        f"{mw}-rl.ratelimit.period": "1s",
        f"{mw}-rl.ratelimit.sourcecriterion.requesthost": "true",
        f"{mw}-if.inflightreq.amount": str(settings.BOT_MAX_IN_FLIGHT),
        f"{mw}-if.inflightreq.sourcecriterion.requesthost": "true",
        # Traefik reads the whole body before passing it on: a client trickling a
        # /webhook body cannot hold the gateway's single thread.
        f"{mw}-buf.buffering.maxRequestBodyBytes": str(MAX_BODY_BYTES),
    }
    if settings.TRAEFIK_CERT_RESOLVER:
        labels[f"{router}.tls.certresolver"] = settings.TRAEFIK_CERT_RESOLVER
    if settings.TRAEFIK_PROBE_ENTRYPOINT:
        # storebot's own health probe: plain HTTP on an internal entrypoint
        labels[f"{router}-probe.rule"] = f"{host} && Path(`/health`)"
        labels[f"{router}-probe.entrypoints"] = settings.TRAEFIK_PROBE_ENTRYPOINT
        labels[f"{router}-probe.service"] = name
    return labels


def container_spec(
    settings: Settings, bot_id: str, data_dir: PurePosixPath, limits: Limits
) -> dict[str, Any]:
    labels = {
        LABEL_MANAGED: "true",
        LABEL_INSTANCE: settings.STOREBOT_INSTANCE,
        LABEL_BOT: bot_id,
        **traefik_labels(settings, bot_id),
    }
    return {
        "image": settings.NULLCLAW_IMAGE,
        "command": ["gateway", "--port", str(GATEWAY_PORT), "--host", "::"],
        "name": container_name(settings, bot_id),
        "hostname": bot_id,
        "labels": labels,
        "environment": {"HOME": NULLCLAW_HOME},
        "user": NOBODY,
        # nullclawd ignores SIGTERM as PID 1; under an init it stops in well under 1 s
        "init": True,
        "read_only": True,
        # the container's own private tmpfs, not the host's /tmp
        "tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={settings.BOT_TMPFS_SIZE}"},  # noqa: S108
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": limits.pids,
        "mem_limit": limits.mem_bytes,
        "memswap_limit": limits.mem_bytes,
        "nano_cpus": int(limits.cpus * 1e9),
        "log_config": {
            "Type": "json-file",
            "Config": {
                "max-size": settings.BOT_LOG_MAX_SIZE,
                "max-file": str(settings.BOT_LOG_MAX_FILES),
            },
        },
        "restart_policy": {"Name": "unless-stopped"},
        "network": settings.BOT_NETWORK,
        "mounts": [
            {"Type": "bind", "Source": str(data_dir), "Target": NULLCLAW_HOME, "ReadOnly": False},
            {
                "Type": "bind",
                "Source": str(data_dir / ".nullclaw" / "config.json"),
                "Target": CONFIG_IN_CONTAINER,
                "ReadOnly": True,
            },
        ],
    }


def default_limits(settings: Settings) -> Limits:
    return Limits(
        cpus=settings.DEFAULT_CPU_LIMIT,
        mem_bytes=parse_memory(settings.DEFAULT_MEM_LIMIT),
        pids=settings.BOT_PIDS_LIMIT,
    )
