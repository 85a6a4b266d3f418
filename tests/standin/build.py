"""Build the stand-in `nullclaw` images used by the Docker tests.

There is no registry: the images are made FROM scratch with ``docker import`` of
an in-memory tarball holding a statically linked busybox (all applets linked in
/bin) plus the shell script ``tests/standin/nullclaw`` (or ``nullclaw-unhealthy``)
at /usr/local/bin/nullclaw, a small ``curl`` shim (``tests/standin/curl``) and the
LLM request template of ``tests/standin/llm_request.py`` (at its TEMPLATE_PATH).
The layout matches the upstream image (see NULLCLAW.md): HOME=/nullclaw-data,
uid:gid 65534:65534, ENTRYPOINT ["nullclaw"], CMD ["gateway","--port","3000","--host","::"].

Usage::

    from tests.standin.build import ensure_images, STANDIN_IMAGE, UNHEALTHY_IMAGE
    ensure_images(docker.from_env())

or ``python -m tests.standin.build`` (builds, prints the tags).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker
import docker.errors

from tests.standin import llm_request

__all__ = [
    "BUSYBOX_PATH",
    "HASH_LABEL",
    "STANDIN_IMAGE",
    "UNHEALTHY_IMAGE",
    "StandinBuildError",
    "ensure_images",
]

STANDIN_IMAGE = "storebot-test/nullclaw:standin"
UNHEALTHY_IMAGE = "storebot-test/nullclaw:unhealthy"

#: image label holding the content hash; an image is rebuilt when it differs
HASH_LABEL = "org.storebot.standin.hash"
#: where the statically linked busybox is taken from (Debian: busybox-static)
BUSYBOX_PATH = Path(os.environ.get("STANDIN_BUSYBOX", "/bin/busybox"))

# Bump to force a rebuild when the tarball layout / image config changes.
_LAYOUT_VERSION = "2"

_HERE = Path(__file__).resolve().parent
_SCRIPTS = {
    STANDIN_IMAGE: _HERE / "nullclaw",
    UNHEALTHY_IMAGE: _HERE / "nullclaw-unhealthy",
}
#: busybox-wget based `curl` shim at /usr/local/bin/curl (upstream carries curl)
_CURL_SHIM = _HERE / "curl"

_UID = _GID = 65534

_CHANGES = [
    "ENV HOME=/nullclaw-data",
    "ENV PATH=/usr/local/bin:/bin",
    "USER 65534:65534",
    "WORKDIR /nullclaw-data",
    'ENTRYPOINT ["nullclaw"]',
    'CMD ["gateway","--port","3000","--host","::"]',
]

# Used only if `busybox --list` cannot be run on this host.
_FALLBACK_APPLETS = [
    "sh",
    "ash",
    "cat",
    "cut",
    "echo",
    "env",
    "grep",
    "head",
    "kill",
    "ls",
    "mkdir",
    "nc",
    "printf",
    "sed",
    "sha256sum",
    "sleep",
    "tail",
    "test",
    "tr",
    "usleep",
    "wc",
    "id",
    "true",
    "false",
    "ps",
]


class StandinBuildError(RuntimeError):
    pass


def _check_static_busybox(path: Path) -> bytes:
    hint = "install it with `apt-get install busybox-static`"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StandinBuildError(f"cannot read busybox at {path} ({exc}); {hint}") from exc
    if data[:4] != b"\x7fELF":
        raise StandinBuildError(f"{path} is not an ELF executable; {hint}")
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    if is64:
        (e_phoff,) = struct.unpack_from(endian + "Q", data, 0x20)
        e_phentsize, e_phnum = struct.unpack_from(endian + "HH", data, 0x36)
    else:
        (e_phoff,) = struct.unpack_from(endian + "I", data, 0x1C)
        e_phentsize, e_phnum = struct.unpack_from(endian + "HH", data, 0x2A)
    for i in range(e_phnum):
        (p_type,) = struct.unpack_from(endian + "I", data, e_phoff + i * e_phentsize)
        if p_type == 3:  # PT_INTERP: dynamically linked
            raise StandinBuildError(
                f"{path} is dynamically linked and cannot run in a FROM-scratch image; "
                f"{hint} (it replaces /bin/busybox with a static build)"
            )
    return data


def _applets(path: Path) -> list[str]:
    try:
        out = subprocess.run(
            [str(path), "--list"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        names = [n.strip() for n in out.split() if n.strip()]
    except (OSError, subprocess.SubprocessError):
        names = []
    names = sorted(set(names or _FALLBACK_APPLETS) - {"busybox"})
    return [n for n in names if "/" not in n and n not in ("", ".", "..")]


def _content_hash(busybox: bytes, script: bytes, curl: bytes, template: bytes, tag: str) -> str:
    h = hashlib.sha256()
    for part in (
        _LAYOUT_VERSION.encode(),
        tag.encode(),
        json.dumps(_CHANGES).encode(),
        hashlib.sha256(busybox).digest(),
        script,
        curl,
        template,
    ):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _tarball(
    busybox: bytes, script: bytes, curl: bytes, template: bytes, applets: list[str]
) -> bytes:
    buf = io.BytesIO()
    mtime = 1_700_000_000

    def add_dir(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.DIRTYPE
        ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, mtime
        tf.addfile(ti)

    def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), mode, mtime
        tf.addfile(ti, io.BytesIO(data))

    def add_symlink(name: str, target: str) -> None:
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.SYMTYPE
        ti.linkname, ti.mode, ti.mtime = target, 0o777, mtime
        tf.addfile(ti)

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        template_path = llm_request.TEMPLATE_PATH.lstrip("/")
        template_dir = template_path.rpartition("/")[0]
        dirs = ["bin", "etc", "usr", "usr/local", "usr/local/bin", "proc", "sys", "dev"]
        parts = template_dir.split("/")
        dirs += ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for d in dict.fromkeys(dirs):
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_dir("nullclaw-data", 0o755, _UID, _GID)
        add_dir("nullclaw-data/.nullclaw", 0o755, _UID, _GID)
        add_dir("nullclaw-data/workspace", 0o755, _UID, _GID)
        add_file("bin/busybox", busybox, 0o755)
        for name in applets:
            add_symlink(f"bin/{name}", "busybox")
        add_file("usr/local/bin/nullclaw", script, 0o755)
        add_file("usr/local/bin/curl", curl, 0o755)
        add_file(template_path, template, 0o644)
        add_file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n"
            b"nobody:x:65534:65534:nobody:/nullclaw-data:/bin/false\n",
        )
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def _current(client: docker.DockerClient, tag: str) -> tuple[str | None, str | None]:
    """(image id, hash label) of the image tagged `tag`, or (None, None)."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None, None
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    return image.id, labels.get(HASH_LABEL)


def _current_hash(client: docker.DockerClient, tag: str) -> str | None:
    return _current(client, tag)[1]


def _import(client: docker.DockerClient, tag: str, tar: bytes, content_hash: str) -> None:
    repository, _, tagname = tag.rpartition(":")
    out = client.api.import_image_from_data(
        tar,
        repository=repository,
        tag=tagname,
        changes=[*_CHANGES, f"LABEL {HASH_LABEL}={content_hash}"],
    )
    # the answer is a stream of JSON objects; look for an error in it
    text = out if isinstance(out, str) else json.dumps(out)
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and (msg.get("error") or msg.get("errorDetail")):
            raise StandinBuildError(f"docker import of {tag} failed: {msg}")
    got = _current_hash(client, tag)
    if got != content_hash:
        raise StandinBuildError(
            f"docker import of {tag} did not produce the expected image "
            f"(label {HASH_LABEL}={got!r}); import output: {text[:500]}"
        )


def ensure_images(client: docker.DockerClient) -> None:
    """Build STANDIN_IMAGE and UNHEALTHY_IMAGE unless already up to date.

    An image is (re)built when it is absent or its HASH_LABEL differs from the
    hash of (busybox, script, image config).  Safe to call from several
    processes at once (serialised with a lock file in the temp dir).
    """
    busybox = _check_static_busybox(BUSYBOX_PATH)
    lock_path = Path(tempfile.gettempdir()) / "storebot-standin-build.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            applets: list[str] | None = None
            curl = _CURL_SHIM.read_bytes()
            template = llm_request.template()
            for tag, script_path in _SCRIPTS.items():
                script = script_path.read_bytes()
                want = _content_hash(busybox, script, curl, template, tag)
                old_id, have = _current(client, tag)
                if have == want:
                    continue
                if applets is None:
                    applets = _applets(BUSYBOX_PATH)
                tar = _tarball(busybox, script, curl, template, applets)
                _import(client, tag, tar, want)
                if old_id is not None:
                    # drop the outdated, now untagged image (kept if still in use)
                    with contextlib.suppress(docker.errors.APIError):
                        client.images.remove(old_id)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


if __name__ == "__main__":
    _client = docker.from_env()
    ensure_images(_client)
    for _tag in (STANDIN_IMAGE, UNHEALTHY_IMAGE):
        print(_tag, _client.images.get(_tag).id)
