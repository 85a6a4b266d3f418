from __future__ import annotations

from pathlib import PurePosixPath

from storebot.container_spec import container_spec, default_limits, traefik_labels
from tests.conftest import make_settings


def test_routes_only_public_paths_with_limits() -> None:
    s = make_settings(TRAEFIK_ENTRYPOINTS="websecure", DEFAULT_RATE_LIMIT_RPS=7)
    labels = traefik_labels(s, "abc12345")
    rule = labels["traefik.http.routers.sb-abc12345.rule"]
    assert rule == (
        "Host(`abc12345.bots.storebot.test`) && "
        "(Path(`/health`) || Path(`/ready`) || Path(`/webhook`))"
    )
    assert "/telegram" not in rule and "/pair" not in rule and "PathPrefix" not in rule
    assert labels["traefik.http.middlewares.sb-abc12345-rl.ratelimit.average"] == "7"
    assert labels["traefik.http.middlewares.sb-abc12345-rl.ratelimit.burst"] == "20"
    assert labels["traefik.http.middlewares.sb-abc12345-if.inflightreq.amount"] == "4"
    assert labels["traefik.http.routers.sb-abc12345.tls.certresolver"] == "letsencrypt"
    assert labels["traefik.http.routers.sb-abc12345.middlewares"] == (
        "sb-abc12345-rl,sb-abc12345-if,sb-abc12345-buf"
    )
    assert labels["traefik.http.middlewares.sb-abc12345-buf.buffering.maxRequestBodyBytes"] == (
        "65536"
    )
    assert labels["traefik.http.routers.sb-abc12345-probe.rule"].endswith("Path(`/health`)")


def test_spec_hardening_and_no_ports() -> None:
    s = make_settings()
    spec = container_spec(s, "abc12345", PurePosixPath("/d/abc12345"), default_limits(s))
    assert spec["user"] == "65534:65534"
    assert spec["read_only"] is True and spec["init"] is True
    assert spec["cap_drop"] == ["ALL"]
    assert spec["security_opt"] == ["no-new-privileges:true"]
    assert "ports" not in spec and "privileged" not in spec
    assert not any("docker.sock" in m["Source"] for m in spec["mounts"])
    cfg = [m for m in spec["mounts"] if m["Target"].endswith("config.json")]
    assert cfg and cfg[0]["ReadOnly"] is True
