"""The data directory is handled as root inside a tree the bot owns: no link is followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storebot.bot_files import config_digest, remove_bot_files, write_bot_files
from storebot.errors import StorebotError


def test_layout_owner_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "bots"
    home = write_bot_files(root, "abc12345", b'{"a": 1}')
    assert oct(root.stat().st_mode)[-3:] == "700"
    for d in (home, home / ".nullclaw", home / "workspace"):
        assert (d.stat().st_uid, oct(d.stat().st_mode)[-3:]) == (65534, "700")
    cfg = home / ".nullclaw" / "config.json"
    assert cfg.read_bytes() == b'{"a": 1}'
    assert (cfg.stat().st_uid, oct(cfg.stat().st_mode)[-3:]) == (65534, "400")
    before = config_digest(root, "abc12345")
    write_bot_files(root, "abc12345", b'{"a": 2}')
    assert config_digest(root, "abc12345") not in ("", before)


def test_planted_directory_symlink_is_refused(tmp_path: Path) -> None:
    root, victim = tmp_path / "bots", tmp_path / "etc"
    victim.mkdir()
    home = write_bot_files(root, "abc12345", b"{}")
    (home / "workspace").rmdir()
    (home / "workspace").symlink_to(victim)  # what a hostile bot can do in its home
    with pytest.raises(StorebotError, match="symlink"):
        write_bot_files(root, "abc12345", b"{}")
    assert victim.stat().st_uid == os.getuid()  # not chowned to 65534


def test_planted_tmp_file_symlink_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "bots"
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    home = write_bot_files(root, "abc12345", b"{}")
    (home / ".nullclaw" / ".config.json.tmp").symlink_to(victim)
    write_bot_files(root, "abc12345", b'{"new": true}')
    assert victim.read_text() == "root:x:0:0\n"
    assert victim.stat().st_uid == os.getuid()
    assert (home / ".nullclaw" / "config.json").read_bytes() == b'{"new": true}'


def test_remove_does_not_follow_links(tmp_path: Path) -> None:
    root, keep = tmp_path / "bots", tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    home = write_bot_files(root, "abc12345", b"{}")
    (home / "workspace" / "link").symlink_to(keep)
    assert remove_bot_files(root, "abc12345") is True
    assert not home.exists() and (keep / "precious").exists()
    assert remove_bot_files(root, "abc12345") is False
