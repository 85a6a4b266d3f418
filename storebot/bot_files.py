"""Each bot's data directory under DATA_ROOT: the nullclawd home, owned by uid 65534.

DATA_ROOT/<bot-id>/                 -> /nullclaw-data (rw)
    .nullclaw/config.json  (0400)   -> also mounted read-only over itself
    workspace/
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

NOBODY_UID = 65534


def data_dir(root: Path, bot_id: str) -> Path:
    return root / bot_id


def write_bot_files(root: Path, bot_id: str, config_json: bytes) -> Path:
    """Create the home and (re)write config.json atomically; idempotent."""
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    home = data_dir(root, bot_id)
    dot = home / ".nullclaw"
    for d in (home, dot, home / "workspace"):
        d.mkdir(exist_ok=True, mode=0o700)
        os.chown(d, NOBODY_UID, NOBODY_UID)
    tmp = dot / ".config.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    try:
        os.write(fd, config_json)
        os.fchown(fd, NOBODY_UID, NOBODY_UID)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dot / "config.json")
    return home


def remove_bot_files(root: Path, bot_id: str) -> bool:
    home = data_dir(root, bot_id)
    if not home.exists():
        return False
    shutil.rmtree(home)
    return True
