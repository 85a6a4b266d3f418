"""Each bot's data directory under DATA_ROOT: the nullclawd home, owned by uid 65534.

    DATA_ROOT/               (0700 root: no host user reads another bot's tokens)
        <bot-id>/            -> /nullclaw-data (rw)
            .nullclaw/config.json  (0400)  -> also mounted read-only over itself
            workspace/

storebot runs as root inside directories the bot owns and can fill with symlinks.
Every step below therefore works relative to directory descriptors opened with
O_NOFOLLOW and never follows a link: a planted `.nullclaw -> /etc` is refused, not
chowned.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path

from storebot.errors import StorebotError

NOBODY_UID = 65534
CONFIG = "config.json"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def data_dir(root: Path, bot_id: str) -> Path:
    return root / bot_id


def _subdir(parent_fd: int, name: str, *, owner: int | None) -> int:
    """Open (creating if needed) a real directory under parent_fd; never a symlink."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StorebotError(
                f"{name!r} in a bot's data directory is not a plain directory (a symlink?): "
                "refusing to touch it; inspect it by hand"
            ) from None
        raise
    if owner is not None:
        os.fchown(fd, owner, owner)
    return fd


def write_bot_files(root: Path, bot_id: str, config_json: bytes) -> Path:
    """Create the home and (re)write config.json atomically; idempotent."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        os.fchmod(root_fd, 0o700)
        home_fd = _subdir(root_fd, bot_id, owner=NOBODY_UID)
        try:
            os.close(_subdir(home_fd, "workspace", owner=NOBODY_UID))
            dot_fd = _subdir(home_fd, ".nullclaw", owner=NOBODY_UID)
            try:
                _write_config(dot_fd, config_json)
            finally:
                os.close(dot_fd)
        finally:
            os.close(home_fd)
    finally:
        os.close(root_fd)
    return data_dir(root, bot_id)


def _write_config(dot_fd: int, data: bytes) -> None:
    tmp = ".config.json.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dot_fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o400, dir_fd=dot_fd)
    try:
        os.write(fd, data)
        os.fchown(fd, NOBODY_UID, NOBODY_UID)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, CONFIG, src_dir_fd=dot_fd, dst_dir_fd=dot_fd)


def config_digest(root: Path, bot_id: str) -> str:
    """A short hash of the bot's config.json ('' if absent): part of the container spec,
    so a rewritten config re-creates the container (a file bind mount keeps the old
    inode, and nullclawd reads its config only at start)."""
    path = data_dir(root, bot_id) / ".nullclaw" / CONFIG
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def remove_bot_files(root: Path, bot_id: str) -> bool:
    home = data_dir(root, bot_id)
    if not home.exists() and not home.is_symlink():
        return False
    if home.is_symlink():
        home.unlink()
    else:
        shutil.rmtree(home)  # fd-based on Linux: does not follow links inside
    return True
