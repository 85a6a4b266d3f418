"""A container's CPU and memory, read from the kernel's cgroup files (v1 or v2, with
either of Docker's cgroup drivers): no Docker call and no one-second wait.

Needs the host's cgroup tree (storebot on the host, or the tree mounted read-only:
CGROUP_ROOT). `DockerEngine.stats_all` uses this and falls back to Docker's stats API
where the files are not visible (a remote daemon).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CgroupReading:
    cpu_ns: int
    cpu_limit: float | None
    mem_bytes: int
    mem_limit: int | None


# Where Docker's two cgroup drivers put a container, relative to a hierarchy's root.
_CGROUP_DIRS = ("docker/{id}", "system.slice/docker-{id}.scope")
_NO_LIMIT = 1 << 62  # cgroup v1 writes "no limit" as a huge page-aligned number


def read_cgroup(root: Path, container_id: str) -> CgroupReading | None:
    """A container's CPU and memory from the kernel's cgroup files (v2 or v1), or
    None when they are not visible here (remote daemon, other layout, just exited)."""
    v2 = (root / "cgroup.controllers").exists()
    for pattern in _CGROUP_DIRS:
        rel = pattern.format(id=container_id)
        try:
            return _read_v2(root / rel) if v2 else _read_v1(root, rel)
        except (OSError, ValueError, KeyError):
            continue
    return None


def _read_v2(d: Path) -> CgroupReading:
    cpu = _keyed(d / "cpu.stat")
    quota, period = (d / "cpu.max").read_text().split()
    mem_max = (d / "memory.max").read_text().strip()
    usage = int((d / "memory.current").read_text())
    return CgroupReading(
        cpu_ns=cpu["usage_usec"] * 1000,
        cpu_limit=None if quota == "max" else int(quota) / int(period),
        mem_bytes=max(usage - _keyed(d / "memory.stat").get("inactive_file", 0), 0),
        mem_limit=None if mem_max == "max" else int(mem_max),
    )


def _read_v1(root: Path, rel: str) -> CgroupReading:
    cpu, mem = root / "cpu" / rel, root / "memory" / rel
    quota = int((cpu / "cpu.cfs_quota_us").read_text())
    period = int((cpu / "cpu.cfs_period_us").read_text())
    limit = int((mem / "memory.limit_in_bytes").read_text())
    usage = int((mem / "memory.usage_in_bytes").read_text())
    return CgroupReading(
        cpu_ns=int((root / "cpuacct" / rel / "cpuacct.usage").read_text()),
        cpu_limit=quota / period if quota > 0 else None,
        mem_bytes=max(usage - _keyed(mem / "memory.stat").get("total_inactive_file", 0), 0),
        mem_limit=None if limit >= _NO_LIMIT else limit,
    )


def _keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file ("name value" per line)."""
    pairs = (line.split() for line in path.read_text().splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2}
